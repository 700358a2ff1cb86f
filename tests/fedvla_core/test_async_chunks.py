"""Asynchronous chunk execution without ROS: the scheduling and blending (chunk_scheduler) and GoalRunner's
async step, with a scripted policy function and a real motion backend."""
import threading
import time
from concurrent.futures import Future

import numpy as np
import pytest

from fedvla_core.control.chunk_scheduler import TimedChunk, blend, overlap_indices, should_infer
from fedvla_core.control.goal_runner import EndReason, GoalEnd, GoalRunner
from fedvla_core.control.inputs import JointSample, ReferenceTracker, Snapshot
from fedvla_core.control.motion import JointSpaceBackend, MotionConfig, PlannedTrajectory
from fedvla_core.control.server_config import ServerConfig
from fedvla_core.embodiment import JointLimits

P = 0.1  # control period
ARM = ["j1", "j2"]
GRIPPER = "finger"
HOME = {"j1": 0.1, "j2": -0.2, "finger": 0.02}


def chunk(value: float, n: int = 10) -> TimedChunk:
    return TimedChunk(np.full((n, 2), value), 0.0)


# ------------------------------------------------------------------ scheduling
def test_remaining_counts_the_actions_still_due():
    c = TimedChunk(np.zeros((10, 2)), observed_at=1.0)  # due at 1.1 ... 2.0
    assert c.remaining(1.0, P) == 10
    assert c.remaining(1.35, P) == 7
    assert c.remaining(2.0, P) == 0


def test_should_infer_when_the_remaining_share_reaches_the_threshold():
    c = TimedChunk(np.zeros((10, 2)), observed_at=0.0)
    assert should_infer(None, 0.0, P, 0.5)  # nothing executes: infer at once
    assert not should_infer(c, 0.45, P, 0.5)  # 6 of 10 ahead
    assert should_infer(c, 0.5, P, 0.5)  # 5 of 10 ahead
    assert should_infer(c, 0.0, P, 1.0)  # threshold 1: at every step
    assert not should_infer(c, 0.95, P, 0.0)  # threshold 0: only when it has run out
    assert should_infer(c, 1.0, P, 0.0)


def test_overlap_pairs_actions_due_in_the_same_period():
    old = TimedChunk(np.zeros((10, 2)), observed_at=0.0)
    new = TimedChunk(np.zeros((10, 2)), observed_at=0.61)  # 6 periods later (jitter rounds away)
    k, j = overlap_indices(old, new, P)
    np.testing.assert_array_equal(k, np.arange(4))
    np.testing.assert_array_equal(j, np.arange(6, 10))


# ------------------------------------------------------------------ blending
def test_replace_and_no_old_chunk_give_the_new_chunk():
    new = TimedChunk(np.full((10, 2), 1.0), 0.5)
    np.testing.assert_array_equal(blend(None, new, 0.5, P, "rtc"), new.actions)
    np.testing.assert_array_equal(blend(chunk(0.0), new, 0.5, P, "replace"), new.actions)


def test_ensemble_averages_only_the_overlap():
    old, new = chunk(0.0), TimedChunk(np.full((10, 2), 1.0), 0.5)  # overlap: new[0..4] with old[5..9]
    out = blend(old, new, 0.5, P, "ensemble", weight=0.7)
    np.testing.assert_allclose(out[:5], 0.7)
    np.testing.assert_allclose(out[5:], 1.0)


def test_rtc_freezes_the_committed_actions_then_fades_to_the_new_chunk():
    old, new = chunk(0.0), TimedChunk(np.full((10, 2), 1.0), 0.5)  # new actions due at 0.6, 0.7, ...
    out = blend(old, new, now=0.55, period=P, mode="rtc", freeze_s=0.07)[:, 0]
    assert out[0] == 0.0  # due at 0.6, within 0.07 s of now: the old chunk's, unchanged
    fade = out[1:5]
    assert np.all(np.diff(fade) > 0) and 0.0 < fade[0] and fade[-1] < 1.0  # old -> new, no jump
    np.testing.assert_allclose(out[5:], 1.0)  # beyond the old chunk: the new one


def test_blend_refuses_an_unknown_mode():
    with pytest.raises(ValueError, match="chunk_blend"):
        blend(chunk(0.0), chunk(1.0), 0.0, P, "average")


def test_server_config_checks_the_async_fields():
    assert ServerConfig().async_inference is False  # off by default: synchronous, as before
    with pytest.raises(ValueError, match="chunk_size_threshold"):
        ServerConfig(chunk_size_threshold=1.5)
    with pytest.raises(ValueError, match="chunk_blend"):
        ServerConfig(chunk_blend="average")


# ------------------------------------------------------------------ GoalRunner, async
class ScriptedPolicy:
    """A policy function: each call returns a constant chunk (one more step of j1 each call), and can be
    held inside act until released, to show the runner does not wait for it."""

    def __init__(self, block: bool = False, fail: bool = False):
        self.calls = 0
        self.release = threading.Event()
        self.entered = threading.Event()
        self.block, self.fail = block, fail
        self.threads: list[str] = []

    def act(self, observation: dict) -> np.ndarray:
        self.calls += 1
        self.threads.append(threading.current_thread().name)
        self.entered.set()
        if self.block:
            self.release.wait(5.0)
        if self.fail:
            raise RuntimeError("model exploded")
        out = np.tile([HOME["j1"], HOME["j2"], 0.5], (10, 1))
        out[:, 0] += 0.01 * self.calls
        return out


class ManualExecutor:
    """Runs the function at once; its future completes when the test says so (a deterministic worker)."""

    def __init__(self):
        self.submitted: list[tuple[Future, object]] = []

    def submit(self, fn, *args):
        future = Future()
        self.submitted.append((future, lambda: fn(*args)))
        return future

    def finish(self, i: int = -1) -> None:
        future, work = self.submitted[i]
        try:
            future.set_result(work())
        except Exception as exc:  # noqa: BLE001
            future.set_exception(exc)


class Clock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def backend() -> JointSpaceBackend:
    limits = JointLimits(tuple(ARM), np.array([-2.0, -2.0]), np.array([2.0, 2.0]), np.array([2.0, 2.0]),
                         np.array([10.0, 10.0]))
    return JointSpaceBackend(limits, MotionConfig(nominal_step_s=P), gripper_joint=GRIPPER)


def snapshot(now: float) -> Snapshot:
    image = np.zeros((16, 16, 3), dtype=np.uint8)
    return Snapshot({"cam": image}, JointSample(dict(HOME), {}, now), now, frames_received={"cam": now})


def async_runner(policy, clock, executor=None, **cfg) -> GoalRunner:
    config = ServerConfig(arm_joint_names=ARM, gripper_joint=GRIPPER, joint_lower_limits=[-2.0, -2.0],
                          joint_upper_limits=[2.0, 2.0], async_inference=True, **cfg)
    return GoalRunner(policy, backend(), config, "pick up the cube", 50, 100.0, reference=ReferenceTracker(),
                      clock=clock, executor=executor,
                      observation_age=lambda snap: clock() - snap.newest_frame_received)


def test_async_steps_infer_only_when_the_executing_chunk_runs_low():
    clock, policy, worker = Clock(), ScriptedPolicy(), ManualExecutor()
    run = async_runner(policy, clock, worker, chunk_size_threshold=0.5)
    assert run.step(snapshot(clock())) is None  # nothing executes yet: inference starts, nothing to publish
    assert len(worker.submitted) == 1 and run.inference_pending
    clock.t += P
    assert run.step(snapshot(clock())) is None  # still running: no second inference
    assert len(worker.submitted) == 1
    worker.finish()
    out = run.collect()
    assert isinstance(out, PlannedTrajectory) and run.inferences == 1 and not run.inference_pending
    # the chunk was observed at 100.0 (10 actions, due 100.1 .. 101.0): 8 are ahead at 100.2; threshold at 5
    for _ in range(2):
        clock.t += P
        assert run.step(snapshot(clock())) is None
        assert len(worker.submitted) == 1  # 8, then 7 ahead: no inference
    clock.t += 3 * P  # 100.5: 5 of 10 ahead
    run.step(snapshot(clock()))
    assert len(worker.submitted) == 2
    assert run.steps == 5  # every step counts, with or without an inference


def test_a_finished_chunk_is_blended_with_the_executing_one():
    clock, policy, worker = Clock(), ScriptedPolicy(), ManualExecutor()
    run = async_runner(policy, clock, worker, chunk_size_threshold=0.5, chunk_blend="ensemble",
                       chunk_blend_weight=0.5)
    run.step(snapshot(clock()))
    worker.finish()
    run.collect()
    first = run._executing.actions.copy()
    clock.t += 5 * P
    run.step(snapshot(clock()))
    worker.finish()
    run.collect()
    second = run._executing.actions  # new[k] overlaps old[k + 5] for k < 5
    np.testing.assert_allclose(second[:5, 0], 0.5 * first[5:, 0] + 0.5 * (HOME["j1"] + 0.02))
    np.testing.assert_allclose(second[5:, 0], HOME["j1"] + 0.02)


def test_inference_runs_on_the_worker_and_never_blocks_a_step():
    clock, policy = Clock(), ScriptedPolicy(block=True)
    ready = threading.Event()
    config = dict(arm_joint_names=ARM, gripper_joint=GRIPPER, joint_lower_limits=[-2.0, -2.0],
                  joint_upper_limits=[2.0, 2.0], async_inference=True)
    run = GoalRunner(policy, backend(), ServerConfig(**config), "pick up the cube", 50, 100.0,
                     reference=ReferenceTracker(), clock=clock, on_chunk_ready=ready.set,
                     observation_age=lambda snap: 0.0)
    try:
        t0 = time.perf_counter()
        assert run.step(snapshot(clock())) is None
        assert policy.entered.wait(5.0)  # act is running (and held) ...
        clock.t += P
        assert run.step(snapshot(clock())) is None  # ... and the next step returns meanwhile
        assert run.collect() is None
        assert time.perf_counter() - t0 < 2.0
        policy.release.set()
        assert ready.wait(5.0)  # the worker tells the node to collect
        assert isinstance(run.collect(), PlannedTrajectory)
        assert policy.threads == ["policy-act_0"]
    finally:
        policy.release.set()
        run.close()


def test_a_policy_error_on_the_worker_ends_the_goal():
    clock, worker = Clock(), ManualExecutor()
    run = async_runner(ScriptedPolicy(fail=True), clock, worker)
    assert run.step(snapshot(clock())) is None
    worker.finish()
    end = run.collect()
    assert isinstance(end, GoalEnd) and end.kind is EndReason.POLICY_ERROR and "model exploded" in end.reason


def test_the_default_is_synchronous():
    clock, policy = Clock(), ScriptedPolicy()
    config = ServerConfig(arm_joint_names=ARM, gripper_joint=GRIPPER, joint_lower_limits=[-2.0, -2.0],
                          joint_upper_limits=[2.0, 2.0])
    run = GoalRunner(policy, backend(), config, "pick up the cube", 50, 100.0, reference=ReferenceTracker(),
                     clock=clock, observation_age=lambda snap: 0.0)
    assert isinstance(run.step(snapshot(clock())), PlannedTrajectory)  # inferred and planned in the step
    assert policy.threads == [threading.current_thread().name] and run.collect() is None
