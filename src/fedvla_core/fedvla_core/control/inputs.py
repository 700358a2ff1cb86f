"""The policy server's decisions, without ROS: goal validation, input freshness, observations.

server_node.py is a thin shell that feeds ROS messages into these functions and classes and
turns their answers into ROS messages; everything here is unit-tested without a ROS graph.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from fedvla_core.control.goal_arbitration import BUSY_REFUSAL
from fedvla_core.control.goal_refusal import INVALID_GOAL, NOT_READY, UNGROUNDED, refusal_reason
from fedvla_core.control.input_checks import goal_limits_problem
from fedvla_core.control.input_sync import StampedHistory


# ----------------------------------------------------------------------------- goal acceptance

def instruction_problem(instruction: str, max_length: int) -> str | None:
    """Why an instruction is unusable, or None when it is fine."""
    if not instruction or not instruction.strip():
        return "instruction is empty" if not instruction else "instruction is only whitespace"
    if len(instruction) > max_length:
        return f"instruction is too long ({len(instruction)} > {max_length} characters)"
    if not instruction.isprintable():
        bad = next(c for c in instruction if not c.isprintable())
        return f"instruction contains a non-printable character ({bad!r})"
    return None


def goal_rejection_reason(instruction: str, *, max_length: int, model_loaded: bool,
                          missing_cameras: list[str], have_joint_state: bool,
                          goal_running: bool, on_new_goal: str, max_steps: int = 0, time_limit_s: float = 0.0,
                          grounding: Callable[[str], str | None] | None = None,
                          input_notes: dict[str, str] | None = None) -> str | None:
    """The reason (``"<code>: <detail>"``, goal_refusal) a new goal must be refused, or None to run it.

    Checks in a fixed order: the goal itself (invalid_goal), the server's readiness (not_ready), the
    instruction against what the policy was trained on (``grounding``: instruction -> problem or None;
    ungrounded), another goal running (busy). ``input_notes`` (input name -> why its last message was
    refused) explain a missing input.
    """
    notes = input_notes or {}

    def note(key: str) -> str:
        return f" (its last message was refused: {notes[key]})" if key in notes else ""

    problem = instruction_problem(instruction, max_length) or goal_limits_problem(max_steps, time_limit_s)
    if problem:
        return refusal_reason(INVALID_GOAL, problem)
    if not model_loaded:
        return refusal_reason(NOT_READY, "no checkpoint loaded (set the 'checkpoint' parameter or call load_checkpoint)")
    if missing_cameras:
        return refusal_reason(NOT_READY, "no camera frame received yet from: "
                              + ", ".join(c + note(c) for c in missing_cameras))
    if not have_joint_state:
        return refusal_reason(NOT_READY, "no joint state received yet" + note("joint_states"))
    problem = grounding(instruction) if grounding is not None else None
    if problem:
        return refusal_reason(UNGROUNDED, problem)
    if goal_running and on_new_goal == "reject":
        return BUSY_REFUSAL
    return None


# ----------------------------------------------------------------------------- latest inputs

def stale_camera(camera: str, age: float, timeout: float) -> str:
    """The stale_input reason of a camera whose newest frame is ``age`` s old."""
    return f"stale_input: camera '{camera}' has not published for {age:.2f} s (timeout {timeout:.2f} s)"


def stale_joint_states(age: float, timeout: float) -> str:
    """The stale_input reason of joint states whose newest message is ``age`` s old."""
    return f"stale_input: joint states have not arrived for {age:.2f} s (timeout {timeout:.2f} s)"


@dataclass
class Frame:
    image: np.ndarray  # HxWx3 RGB uint8
    stamp: float  # header stamp in seconds (0 when the publisher left it unset)
    received: float  # time.monotonic() at arrival


@dataclass
class JointSample:
    positions: dict[str, float]
    velocities: dict[str, float]
    received: float
    stamp: float = 0.0  # header stamp in seconds (0 when the publisher left it unset)


@dataclass
class Snapshot:
    """One consistent set of inputs for a policy step."""

    images: dict[str, np.ndarray]
    joint: JointSample  # the newest joint state: where the arm is now (trajectories start here)
    newest_frame_received: float
    proprio_joint: JointSample | None = None  # the joint state at the frames' stamp: what the policy reads
    frame_stamp: float = 0.0  # header stamp (s) of the newest frame; 0 when a frame is unstamped
    frames_received: dict[str, float] = field(default_factory=dict)  # camera -> arrival (time.monotonic())

    @property
    def observed_joint(self) -> JointSample:
        return self.proprio_joint if self.proprio_joint is not None else self.joint

    def stale_reason(self, now: float, timeout: float) -> str | None:
        """Which of this snapshot's inputs is older than ``timeout`` at ``now`` (a camera, or the joint state)."""
        for cam, received in self.frames_received.items():
            if now - received > timeout:
                return stale_camera(cam, now - received, timeout)
        if now - self.joint.received > timeout:
            return stale_joint_states(now - self.joint.received, timeout)
        return None

    def age(self, clock_now: float, monotonic_now: float) -> float:
        """Seconds since the observation: from the header stamps (capture time, same clock as
        ``clock_now``) when the frames carry them, else from their arrival; never negative."""
        age = clock_now - self.frame_stamp if self.frame_stamp > 0 else monotonic_now - self.newest_frame_received
        return max(0.0, age)


class LatestInputs:
    """Thread-safe store of the newest camera frames and joint state (written by subscriptions)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._frames: dict[str, Frame] = {}
        self._joint: JointSample | None = None
        self._joint_history = StampedHistory()
        self._refused: dict[str, str] = {}  # input (camera name or "joint_states") -> why its last message was refused

    def note_refused(self, source: str, reason: str) -> None:
        """Remember why the last message of ``source`` was refused (named when that input goes missing)."""
        with self._lock:
            self._refused[source] = reason

    def refusal_notes(self) -> dict[str, str]:
        with self._lock:
            return dict(self._refused)

    def put_frame(self, camera: str, frame: Frame) -> None:
        with self._lock:
            self._frames[camera] = frame
            self._refused.pop(camera, None)

    def put_joint(self, sample: JointSample) -> None:
        with self._lock:
            self._joint = sample
            self._refused.pop("joint_states", None)
        self._joint_history.add(sample.stamp, sample)

    def missing_cameras(self, cameras: list[str]) -> list[str]:
        with self._lock:
            return [c for c in cameras if c not in self._frames]

    def cameras_without_frame_after(self, cameras: list[str], after: float) -> list[str]:
        """Cameras whose newest frame arrived at or before ``after`` (time.monotonic()): the ones holding a step up."""
        with self._lock:
            return [c for c in cameras if c not in self._frames or self._frames[c].received <= after]

    def has_joint_state(self) -> bool:
        with self._lock:
            return self._joint is not None

    def joint(self) -> JointSample | None:
        with self._lock:
            return self._joint

    def stale_reason(self, cameras: list[str], now: float, timeout: float) -> str | None:
        """Which input went quiet for longer than ``timeout`` (a camera, or the joint states)."""
        with self._lock:
            for cam in cameras:
                frame = self._frames.get(cam)
                if frame is None:
                    return f"stale_input: no frame from camera '{cam}'"
                if now - frame.received > timeout:
                    return stale_camera(cam, now - frame.received, timeout) + self._note(cam)
            if self._joint is None:
                return "stale_input: no joint state" + self._note("joint_states")
            if now - self._joint.received > timeout:
                return stale_joint_states(now - self._joint.received, timeout) + self._note("joint_states")
        return None

    def _note(self, source: str) -> str:
        """(lock held) why the last message of ``source`` was refused, when it was."""
        return f"; its last message was refused: {self._refused[source]}" if source in self._refused else ""

    def snapshot(self, cameras: list[str], max_skew: float, after: float = -np.inf) -> Snapshot | None:
        """Latest frames + joint state, or None when a frame is missing, the set is inconsistent
        (frames further apart than ``max_skew``) or not every camera has a frame newer than ``after``
        (one step per complete set of new frames, not one per camera message)."""
        with self._lock:
            frames = [self._frames.get(c) for c in cameras]
            joint = self._joint
        if joint is None or any(f is None for f in frames):
            return None
        stamps = [f.stamp if all(g.stamp > 0 for g in frames) else f.received for f in frames]
        if max(stamps) - min(stamps) > max_skew:
            return None
        if min(f.received for f in frames) <= after:
            return None
        newest = max(f.received for f in frames)
        # proprioception of the frames' instant (input_sync): falls back to the newest joint state when the
        # frames or joint states are unstamped or no joint state lies within max_skew of the frames
        at_frames = self._joint_history.nearest(max(f.stamp for f in frames), max_skew) \
            if all(f.stamp > 0 for f in frames) else None
        stamp = max(f.stamp for f in frames) if all(f.stamp > 0 for f in frames) else 0.0
        return Snapshot({c: f.image for c, f in zip(cameras, frames)}, joint, newest, at_frames, stamp,
                        {c: f.received for c, f in zip(cameras, frames)})


def proprio_vector(joint: JointSample, arm_joints: list[str], gripper_joint: str) -> np.ndarray:
    """Proprioception as the episodes log it: joint positions in order, the gripper joint last."""
    names = list(arm_joints) + ([gripper_joint] if gripper_joint else [])
    missing = [n for n in names if n not in joint.positions]
    if missing:
        raise KeyError("joint state lacks " + ", ".join(missing))
    return np.array([joint.positions[n] for n in names], dtype=np.float32)


def current_positions(joint: JointSample, arm_joints: list[str], gripper_joint: str) -> tuple[np.ndarray, np.ndarray]:
    """(positions, velocities) of the commanded joints, gripper last (0 velocity when not reported)."""
    names = list(arm_joints) + ([gripper_joint] if gripper_joint else [])
    pos = np.array([joint.positions[n] for n in names], dtype=float)
    vel = np.array([joint.velocities.get(n, 0.0) for n in names], dtype=float)
    return pos, vel


def step_budget(goal_max_steps: int, goal_time_limit: float, default_steps: int, default_time: float) -> tuple[int, float]:
    """Effective step and time limits of a goal (0 in the goal means: the server default)."""
    steps = int(goal_max_steps) if goal_max_steps > 0 else int(default_steps)
    seconds = float(goal_time_limit) if goal_time_limit > 0 else float(default_time)
    return steps, seconds


def progress(step: int, max_steps: int, elapsed: float, time_limit: float) -> float:
    """Fraction of the goal's budget used: the larger of the step and time fractions, in [0, 1]."""
    return float(min(1.0, max(step / max(max_steps, 1), elapsed / max(time_limit, 1e-9))))


class ReferenceTracker:
    """Remembers the last trajectory sent to the controller, to plan the next one from its setpoint.

    A joint_trajectory_controller blends each new trajectory from its current *setpoint*. Planning
    from the measured position instead (which lags the setpoint while the arm moves) would pull
    the setpoint back at every control step and make the arm shake. The measured state is used
    when nothing was sent yet, or when the setpoint and the arm disagree by more than
    ``max_deviation`` (the arm is blocked, or another node moved it).
    """

    def __init__(self, max_deviation: float = 0.15):
        self.max_deviation = max_deviation
        self._traj = None
        self._t0 = 0.0

    def record(self, traj, sent_at: float) -> None:
        self._traj, self._t0 = traj, sent_at

    def clear(self) -> None:
        self._traj = None

    def state(self, now: float, measured_pos: np.ndarray, measured_vel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position, velocity) to plan from at ``now``."""
        traj = self._traj
        if traj is None or len(traj.times) == 0 or traj.positions.shape[1] != len(measured_pos):
            return measured_pos, measured_vel
        t = now - self._t0
        if t >= traj.times[-1]:
            pos, vel = traj.positions[-1].copy(), np.zeros_like(measured_vel)
        else:
            t = max(t, 0.0)
            pos = np.array([np.interp(t, traj.times, traj.positions[:, j]) for j in range(traj.positions.shape[1])])
            vel = np.array([np.interp(t, traj.times, traj.velocities[:, j]) for j in range(traj.velocities.shape[1])])
        if np.max(np.abs(pos - measured_pos)) > self.max_deviation:
            return measured_pos, measured_vel
        return pos, vel
