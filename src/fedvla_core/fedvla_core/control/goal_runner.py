"""One goal's closed-loop controller, without ROS: snapshot -> policy.act -> motion plan, step by step.

The policy server node (fedvla_policy.server_node) wraps a ``GoalRunner`` per goal: it waits for
frames, asks ``poll`` whether the goal ends or which inputs to step on, calls ``step`` and publishes
what comes back (the trajectory, the hold on a refused chunk or an end, feedback, expert usage).
benchmarks/realtime_execution.py drives the same runner against a hand-stepped sim, so the
benchmark measures the server's own step, not a copy of it.

A step plans from the setpoint the controller follows (``reference``, inputs.ReferenceTracker in
the server), not from the lagging measured position, and passes the observation's age to the
planner, so that with trajectory_timing 'chunk' action k is due (k + 1) periods after the
observation was taken (motion.py).

With ``async_inference`` (chunk_scheduler.py) a step does not wait for the policy: ``policy.act`` runs
on a worker (an executor), started when the executing chunk's remaining actions fall below
``chunk_size_threshold``; ``step`` returns None while the published trajectory keeps executing, and
``collect`` (called by ``step`` and, between frames, by the node) turns a finished chunk, blended with
the executing one, into the next trajectory. Inference never delays a publication: nothing that
publishes waits on the worker.
"""
from __future__ import annotations

import time
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from enum import Enum
from typing import Callable, Protocol

import numpy as np

from fedvla_core.control.inputs import (LatestInputs, ReferenceTracker, Snapshot, current_positions, progress,
                                        proprio_vector, step_budget)
from fedvla_core.control.chunk_scheduler import TimedChunk, blend, should_infer
from fedvla_core.control.server_config import ServerConfig
from fedvla_core.control.motion import MotionRejected, PlannedTrajectory

#: The next step needs frames received at least this many control periods after the last step's.
STEP_SPACING = 0.7


class EndReason(str, Enum):
    """Why a goal ended (the result's reason starts with the text; stale_input etc. add a detail)."""

    SUCCEEDED = "success"
    CANCELED = "canceled"
    PREEMPTED = "preempted"
    MAX_STEPS = "max_steps"
    TIME_LIMIT = "time_limit"
    STALE_INPUT = "stale_input"
    JOINT_STATE = "joint state"
    POLICY_ERROR = "policy error"


@dataclass(frozen=True)
class GoalEnd:
    """The end of a goal: ``reason`` is the result's reason text; ``log`` an error line for the node's log."""

    kind: EndReason
    reason: str
    log: str = ""

    @property
    def success(self) -> bool:
        return self.kind is EndReason.SUCCEEDED

    @property
    def status(self) -> str:
        """The goal handle's terminal transition: succeed, canceled or abort."""
        return {EndReason.SUCCEEDED: "succeed", EndReason.CANCELED: "canceled"}.get(self.kind, "abort")

    @property
    def hold(self) -> bool:
        """Whether the arm brakes and holds: not when preempted (the next goal takes over at once), and not
        when the joint state lacks a joint (there is no state to brake from)."""
        return self.kind not in (EndReason.PREEMPTED, EndReason.JOINT_STATE)


@dataclass(frozen=True)
class ChunkRejected:
    """The motion backend refused this step's chunk: hold the arm; the step counts and the goal goes on."""

    reason: str


StepOutcome = PlannedTrajectory | ChunkRejected | GoalEnd


@dataclass(frozen=True)
class _Inference:
    """One policy call: the chunk, how long act took and the trunk's (activations, tokens) around it."""

    chunk: np.ndarray
    latency_ms: float
    before: tuple[int, int] | None
    after: tuple[int, int] | None


@dataclass(frozen=True)
class _Pending:
    """An inference running on the worker: its future, the snapshot it was started on and that
    observation's clock time (the new chunk's time origin)."""

    future: object  # concurrent.futures.Future-like: done(), result()
    snap: Snapshot
    observed_at: float


class Reference(Protocol):
    """Where the next trajectory starts: the setpoint the controller follows at ``now`` (inputs.ReferenceTracker)."""

    def state(self, now: float, measured_pos: np.ndarray,
              measured_vel: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]: ...

    def clear(self) -> None: ...


def expert_usage_layers(policy) -> tuple[list[tuple[list[int], float]], float]:
    """Per trunk layer (expert counts, mean active experts per token) and the overall mean, since the
    last reset_expert_stats() (the start of the goal)."""
    counts = [np.asarray(c, dtype=np.int64).ravel().tolist() for c in policy.expert_counts()]
    overall = float(policy.mean_active_experts())
    ffns = policy.trunk_ffns() if hasattr(policy, "trunk_ffns") else []
    per_layer = [float(f.mean_active_experts()) for f in ffns] if len(ffns) == len(counts) else [overall] * len(counts)
    return list(zip(counts, per_layer)), overall


def routed_and_tokens(policy) -> tuple[int, int] | None:
    """(expert activations, tokens) of the trunk since the last reset, to get one step's mean by difference."""
    if not hasattr(policy, "trunk_ffns"):
        return None
    ffns = policy.trunk_ffns()
    return sum(sum(f.expert_counts()) for f in ffns), sum(int(f.tokens_seen()) for f in ffns)


class GoalRunner:
    """The control loop of one goal: ``poll`` says whether it ends or which snapshot to step on, ``step``
    turns a snapshot into a trajectory to publish, a refused chunk or the goal's end.

    policy: ``act({"images", "instruction", "proprio"}) -> (H, action_dim)``, optionally ``reset()`` and
    the expert statistics of FedVLAPolicy. motion: a motion backend (``plan(current, chunk, velocity,
    observation_age_s=...)``). cfg: the server's config (joints, control rate, timeouts, horizon, default
    budget). clock: monotonic seconds, the clock of the snapshot's ``received`` times. observation_age:
    seconds since the snapshot's observation, at planning time (default: from its header stamps against
    ``time.time()``, else its arrival). executor (async_inference only): where ``policy.act`` runs
    (``submit(fn) -> future``; default: a one-thread pool of this runner's, shut down by ``close``).
    on_chunk_ready: called from the worker when an inference has finished (the node wakes its loop to
    ``collect`` at once).
    """

    def __init__(self, policy, motion, cfg: ServerConfig, instruction: str, max_steps: int = 0,
                 time_limit_s: float = 0.0, *, reference: Reference | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 observation_age: Callable[[Snapshot], float] | None = None,
                 executor: Executor | None = None, on_chunk_ready: Callable[[], None] | None = None):
        self.policy, self.motion, self.cfg, self.instruction = policy, motion, cfg, instruction
        self.max_steps, self.time_limit_s = step_budget(max_steps, time_limit_s, cfg.default_max_steps,
                                                        cfg.default_time_limit_s)
        self.reference = reference if reference is not None else ReferenceTracker()
        self.clock = clock
        self.observation_age = observation_age or (lambda snap: snap.age(time.time(), self.clock()))
        self.period = 1.0 / cfg.control_rate_hz
        self.horizon = cfg.execute_horizon or None
        if hasattr(policy, "reset"):
            policy.reset()
        self.reference.clear()
        if hasattr(policy, "reset_expert_stats"):
            policy.reset_expert_stats()
        self.start = clock()
        self.steps = 0
        self.mean_active = 0.0  # this step's routed experts per token (the goal's mean when not measurable)
        self.latency_ms = 0.0  # the last policy.act
        self.plan_ms = 0.0  # the last motion plan
        self.last_observation_age_s = 0.0
        self.usage: tuple[list[tuple[list[int], float]], float] | None = None  # expert_usage_layers since the start
        self.usage_error = ""  # why usage is None after a step
        self._last_frame = -np.inf
        self._last_step_time = self.start
        self._first_step_time = np.inf
        # async_inference: the chunk the published trajectory executes, the inference running, the worker
        self.inferences = 0  # policy calls finished
        self._executing: TimedChunk | None = None
        self._pending: _Pending | None = None
        self._measured: tuple[np.ndarray, np.ndarray] | None = None  # the last step's measured arm state
        self._on_chunk_ready = on_chunk_ready
        self._owned_executor = None
        if cfg.async_inference and executor is None:
            executor = self._owned_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="policy-act")
        self._executor = executor

    # ------------------------------------------------------------------ between steps
    def progress(self, now: float | None = None) -> float:
        now = self.clock() if now is None else now
        return progress(self.steps, self.max_steps, now - self.start, self.time_limit_s)

    @property
    def frames_after(self) -> float:
        """A step runs as soon as a complete set of new frames is in (the observation is as fresh as it
        gets), at most once per ~control period: frames must be at least STEP_SPACING periods newer than
        the last step's (a faster camera does not step faster; a 10 Hz camera with jitter never skips a
        frame). The first step takes only frames that arrived after the goal began."""
        return self.start if self.steps == 0 else self._last_frame + STEP_SPACING * self.period

    def budget_end(self, now: float | None = None) -> GoalEnd | None:
        """The step or time limit, when reached."""
        now = self.clock() if now is None else now
        if self.steps >= self.max_steps:
            return GoalEnd(EndReason.MAX_STEPS, EndReason.MAX_STEPS.value)
        if now - self.start >= self.time_limit_s:
            return GoalEnd(EndReason.TIME_LIMIT, EndReason.TIME_LIMIT.value)
        return None

    def poll(self, inputs: LatestInputs, cameras: list[str], now: float | None = None,
             success_time: float = -np.inf) -> Snapshot | GoalEnd | None:
        """The goal's end, the snapshot to step on, or None: wait for frames (then poll again).

        success_time: when the task last reported success (clock seconds). Only a success signal that
        arrived after the first step counts: std_msgs/Bool has no stamp, and a True from before a reset
        can be delivered late (seen: "success" 5 steps into a goal).
        """
        cfg = self.cfg
        now = self.clock() if now is None else now
        if self.steps > 0 and success_time >= self._first_step_time:
            return GoalEnd(EndReason.SUCCEEDED, EndReason.SUCCEEDED.value)
        end = self.budget_end(now)
        if end is not None:
            return end
        stale = inputs.stale_reason(cameras, now, cfg.stale_input_timeout_s)
        if stale:
            return GoalEnd(EndReason.STALE_INPUT, stale)
        after = self.frames_after
        snap = inputs.snapshot(cameras, cfg.max_frame_skew_s, after=after)
        if snap is not None:
            return snap
        waited = now - self._last_step_time
        limit = cfg.startup_input_timeout_s if self.steps == 0 else cfg.stale_input_timeout_s
        if waited <= limit:
            return None
        silent = inputs.cameras_without_frame_after(cameras, after)
        if silent:
            notes = inputs.refusal_notes()
            return GoalEnd(EndReason.STALE_INPUT, "stale_input: " + ", ".join(
                f"camera '{c}'" + (f" (its last message was refused: {notes[c]})" if c in notes else "")
                for c in silent) + f" sent no new frame for {waited:.2f} s")
        return GoalEnd(EndReason.STALE_INPUT, f"stale_input: no new, consistent set of camera frames for {waited:.2f} s "
                                              f"(cameras {cameras}, max_frame_skew_s {cfg.max_frame_skew_s})")

    # ------------------------------------------------------------------ one step
    def step(self, snap: Snapshot) -> StepOutcome | None:
        """One control step on ``snap``: the trajectory to publish, a refused chunk (hold; the step counts)
        or the goal's end (stale snapshot, joint missing from the joint state, policy error); with
        async_inference also None (no new chunk yet: the published trajectory goes on)."""
        cfg = self.cfg
        stale = snap.stale_reason(self.clock(), cfg.stale_input_timeout_s)
        if stale:
            return GoalEnd(EndReason.STALE_INPUT, stale)
        self._last_frame = snap.newest_frame_received
        try:
            proprio = proprio_vector(snap.observed_joint, cfg.arm_joint_names, cfg.gripper_joint)
            current, velocity = current_positions(snap.joint, cfg.arm_joint_names, cfg.gripper_joint)
        except KeyError as exc:
            return GoalEnd(EndReason.JOINT_STATE, f"joint state: {exc.args[0]}")
        if self.cfg.async_inference:
            return self._step_async(snap, proprio, current, velocity)
        try:
            inference = self._act(snap.images, proprio)
        except Exception as exc:  # noqa: BLE001 - a model error ends the goal, the server lives on
            return policy_error(exc)
        t_act = time.perf_counter()
        self.latency_ms = inference.latency_ms
        if not np.all(np.isfinite(inference.chunk)):
            return NON_FINITE
        outcome = self._plan(snap, inference.chunk[:self.horizon], current, velocity, self.clock())
        self.plan_ms = (time.perf_counter() - t_act) * 1e3
        self._count_step()
        self._record_usage(inference)
        return outcome

    def _plan(self, snap: Snapshot, actions: np.ndarray, current: np.ndarray, velocity: np.ndarray,
              now: float) -> StepOutcome:
        """Plan `actions` from the reference setpoint (else the measured state), timed from `snap`'s age."""
        current, velocity = self.reference.state(now, current, velocity)
        self.last_observation_age_s = self.observation_age(snap)
        try:
            return self.motion.plan(current, actions, velocity, observation_age_s=self.last_observation_age_s)
        except MotionRejected as exc:
            return ChunkRejected(str(exc))

    def _act(self, images: dict, proprio: np.ndarray) -> _Inference:
        """One policy call (on the goal's thread when synchronous, on the worker when async)."""
        before = routed_and_tokens(self.policy)
        t0 = time.perf_counter()
        chunk = np.asarray(self.policy.act({"images": images, "instruction": self.instruction, "proprio": proprio}))
        latency_ms = (time.perf_counter() - t0) * 1e3
        return _Inference(chunk, latency_ms, before, routed_and_tokens(self.policy))

    def _count_step(self) -> None:
        self.steps += 1
        self._last_step_time = self.clock()
        self._first_step_time = min(self._first_step_time, self._last_step_time)

    def _record_usage(self, inference: _Inference) -> None:
        self.inferences += 1
        before, after = inference.before, inference.after
        try:
            self.usage, self.usage_error = expert_usage_layers(self.policy), ""
        except Exception as exc:  # noqa: BLE001 - usage stats must never stop the arm
            self.usage, self.usage_error = None, str(exc)
        self.mean_active = self.usage[1] if self.usage is not None else 0.0  # since the goal started
        if before is not None and after is not None and after[1] > before[1]:
            self.mean_active = (after[0] - before[0]) / (after[1] - before[1])  # this step's forward pass

    # ------------------------------------------------------------------ asynchronous chunks
    @property
    def inference_pending(self) -> bool:
        return self._pending is not None

    def _step_async(self, snap: Snapshot, proprio: np.ndarray, current: np.ndarray,
                    velocity: np.ndarray) -> StepOutcome | None:
        """A step that never waits for the policy: collect a finished chunk, start the next inference when
        the executing chunk runs low. None: nothing new to publish (the published trajectory goes on)."""
        self._measured = (current, velocity)
        self._count_step()
        outcome = self.collect()
        if isinstance(outcome, GoalEnd):
            return outcome
        now = self.clock()
        if self._pending is None and should_infer(self._executing, now, self.period, self.cfg.chunk_size_threshold):
            observed_at = now - self.observation_age(snap)
            future = self._executor.submit(self._act, snap.images, proprio)
            self._pending = _Pending(future, snap, observed_at)
            if self._on_chunk_ready is not None:
                future.add_done_callback(lambda _f: self._on_chunk_ready())
        return outcome

    def collect(self) -> StepOutcome | None:
        """The next trajectory when the running inference has finished (its chunk blended with the
        executing one, chunk_scheduler.blend), its refusal or the goal's end on a policy error; None
        while it runs or when none does."""
        pending = self._pending
        if pending is None or not pending.future.done():
            return None
        self._pending = None
        try:
            inference: _Inference = pending.future.result()
        except Exception as exc:  # noqa: BLE001 - a model error ends the goal, the server lives on
            return policy_error(exc)
        t_done = time.perf_counter()
        self.latency_ms = inference.latency_ms
        if not np.all(np.isfinite(inference.chunk)):
            return NON_FINITE
        cfg = self.cfg
        now = self.clock()
        new = TimedChunk(np.asarray(inference.chunk[:self.horizon], dtype=float), pending.observed_at)
        actions = blend(self._executing, new, now, self.period, cfg.chunk_blend, cfg.chunk_blend_weight,
                        freeze_s=cfg.min_action_lead_s)
        measured = self._measured if self._measured is not None else current_positions(
            pending.snap.joint, cfg.arm_joint_names, cfg.gripper_joint)
        outcome = self._plan(pending.snap, actions, *measured, now)
        # a refused chunk: the arm holds and the next step infers at once
        self._executing = None if isinstance(outcome, ChunkRejected) else TimedChunk(actions, pending.observed_at)
        self.plan_ms = (time.perf_counter() - t_done) * 1e3
        self._record_usage(inference)
        return outcome

    def close(self) -> None:
        """End the goal's worker: waits for a running ``policy.act`` (the next goal resets the same policy)."""
        self._pending = None
        if self._owned_executor is not None:
            self._owned_executor.shutdown(wait=True)
            self._owned_executor = None


NON_FINITE = GoalEnd(EndReason.POLICY_ERROR, "policy error: the policy returned non-finite actions",
                     log="policy.act returned non-finite actions")


def policy_error(exc: BaseException) -> GoalEnd:
    return GoalEnd(EndReason.POLICY_ERROR, f"policy error: {exc}", log=f"policy.act failed: {exc!r}")
