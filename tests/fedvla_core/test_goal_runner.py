"""GoalRunner, the policy server's control step without ROS: a tiny real policy, a real motion backend."""
import numpy as np
import pytest
import torch

from fedvla_core.control.goal_runner import ChunkRejected, EndReason, GoalEnd, GoalRunner
from fedvla_core.control.inputs import Frame, JointSample, LatestInputs, ReferenceTracker, Snapshot
from fedvla_core.control.server_config import ServerConfig
from fedvla_core.control.motion import JointSpaceBackend, MotionConfig, PlannedTrajectory, hold_trajectory
from fedvla_core.embodiment import JointLimits
from fedvla_core.model import FedVLAConfig, FedVLAPolicy

ARM = ["j1", "j2"]
GRIPPER = "finger"
NAMES = ARM + [GRIPPER]
CAM = "cam"
HOME = {"j1": 0.1, "j2": -0.2, "finger": 0.02}


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    cfg = FedVLAConfig(camera_names=[CAM], image_size=16, patch_size=4, proprio_dim=3, action_dim=3, chunk_size=4,
                       d_model=32, n_layers=2, n_heads=2, n_experts=4, expert_hidden=32, iosp_topk=4,
                       iosp_n_experts=2, iosp_expert_hidden=16)
    policy = FedVLAPolicy(cfg).eval()
    # actions near HOME (joint targets), the gripper command around 0.5
    policy.set_normalization([0.1, -0.2, 0.5], [0.05, 0.05, 0.1], np.zeros(3), np.ones(3))
    return policy


class Clock:
    def __init__(self, t: float = 100.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def config(**kw) -> ServerConfig:
    return ServerConfig(arm_joint_names=ARM, gripper_joint=GRIPPER, joint_lower_limits=[-2.0, -2.0],
                        joint_upper_limits=[2.0, 2.0], **kw)


def backend(**kw) -> JointSpaceBackend:
    limits = JointLimits(tuple(ARM), np.array([-2.0, -2.0]), np.array([2.0, 2.0]), np.array([2.0, 2.0]),
                         np.array([10.0, 10.0]))
    return JointSpaceBackend(limits, MotionConfig(nominal_step_s=0.1, **kw), gripper_joint=GRIPPER)


def snapshot(now: float, joint_received: float | None = None, frame_received: float | None = None,
             positions: dict | None = None) -> Snapshot:
    image = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)
    frame_received = now if frame_received is None else frame_received
    joint = JointSample(dict(positions or HOME), {}, now if joint_received is None else joint_received)
    return Snapshot({CAM: image}, joint, frame_received, frames_received={CAM: frame_received})


def runner(policy, clock, **kw) -> GoalRunner:
    kw.setdefault("reference", ReferenceTracker())
    return GoalRunner(policy, kw.pop("motion", backend()), kw.pop("cfg", config()), "pick up the cube",
                      kw.pop("max_steps", 0), kw.pop("time_limit_s", 0.0), clock=clock,
                      observation_age=kw.pop("observation_age", lambda snap: 0.03), **kw)


def test_a_step_plans_the_policy_chunk_from_the_reference_setpoint(policy):
    clock = Clock()
    reference = ReferenceTracker()
    run = runner(policy, clock, reference=reference)
    setpoint = np.array([0.15, -0.25, 0.03])  # the controller's setpoint, ahead of the measured HOME
    reference.record(hold_trajectory(setpoint, NAMES, duration=1.0), clock())
    snap = snapshot(clock())
    out = run.step(snap)
    assert isinstance(out, PlannedTrajectory)
    assert out.joint_names == NAMES and np.all(np.isfinite(out.positions)) and np.all(np.isfinite(out.velocities))
    np.testing.assert_allclose(out.positions[0], setpoint)  # starts at the reference, not at HOME
    chunk = policy.act({"images": snap.images, "instruction": "pick up the cube",
                        "proprio": np.array([HOME[n] for n in NAMES], np.float32)})
    expected = backend().plan(setpoint, chunk, np.zeros(3), observation_age_s=0.03)
    np.testing.assert_allclose(out.times, expected.times)
    np.testing.assert_allclose(out.positions, expected.positions, atol=1e-6)
    assert run.steps == 1 and run.latency_ms > 0 and run.last_observation_age_s == 0.03
    layers, overall = run.usage
    assert len(layers) == 2 and all(sum(counts) > 0 for counts, _ in layers)
    assert run.mean_active > 0 and overall > 0


def test_without_a_reference_the_step_starts_at_the_measured_position(policy):
    clock = Clock()
    out = runner(policy, clock).step(snapshot(clock()))
    np.testing.assert_allclose(out.positions[0], [HOME[n] for n in NAMES])


def test_a_stale_snapshot_ends_the_goal_naming_the_input(policy):
    clock = Clock()
    run = runner(policy, clock)
    out = run.step(snapshot(clock(), joint_received=clock() - 1.5))
    assert isinstance(out, GoalEnd) and out.kind is EndReason.STALE_INPUT and not out.success and out.hold
    assert out.reason.startswith("stale_input: joint states have not arrived for 1.50 s")
    out = run.step(snapshot(clock(), frame_received=clock() - 2.0))
    assert out.kind is EndReason.STALE_INPUT and "camera 'cam' has not published for 2.00 s" in out.reason
    assert run.steps == 0 and run.usage is None  # the policy never ran


def test_the_step_budget_and_the_time_limit_end_the_goal(policy):
    clock = Clock()
    run = runner(policy, clock, max_steps=2, time_limit_s=5.0)
    assert (run.max_steps, run.time_limit_s) == (2, 5.0)
    inputs = LatestInputs()
    for k in range(2):
        assert run.budget_end() is None
        clock.t += 0.1
        inputs.put_joint(JointSample(dict(HOME), {}, clock()))
        inputs.put_frame(CAM, Frame(snapshot(clock()).images[CAM], 0.0, clock()))
        snap = run.poll(inputs, [CAM])
        assert isinstance(snap, Snapshot)
        assert isinstance(run.step(snap), PlannedTrajectory)
    end = run.poll(inputs, [CAM])
    assert end == GoalEnd(EndReason.MAX_STEPS, "max_steps") and end.status == "abort" and run.progress() == 1.0
    timed = runner(policy, clock, time_limit_s=5.0)
    assert timed.max_steps == config().default_max_steps  # 0 in the goal: the server default
    clock.t += 5.0
    assert timed.budget_end().kind is EndReason.TIME_LIMIT


def test_poll_waits_for_new_frames_then_names_the_silent_camera(policy):
    clock = Clock()
    inputs = LatestInputs()
    inputs.put_joint(JointSample(dict(HOME), {}, clock()))
    inputs.put_frame(CAM, Frame(np.zeros((16, 16, 3), np.uint8), 0.0, clock()))  # from before the goal
    run = runner(policy, clock, cfg=config(startup_input_timeout_s=2.0, stale_input_timeout_s=5.0))
    assert run.poll(inputs, [CAM]) is None  # only frames that arrived after the goal began count
    clock.t += 2.5
    inputs.put_joint(JointSample(dict(HOME), {}, clock()))
    end = run.poll(inputs, [CAM])
    assert end.kind is EndReason.STALE_INPUT and end.reason == "stale_input: camera 'cam' sent no new frame for 2.50 s"


def test_success_counts_only_after_the_first_step(policy):
    clock = Clock()
    inputs = LatestInputs()
    run = runner(policy, clock)
    clock.t += 0.1
    inputs.put_joint(JointSample(dict(HOME), {}, clock()))
    inputs.put_frame(CAM, Frame(np.zeros((16, 16, 3), np.uint8), 0.0, clock()))
    snap = run.poll(inputs, [CAM], success_time=clock())  # a late True from before the goal: not a success
    assert isinstance(snap, Snapshot)
    run.step(snap)
    assert run.poll(inputs, [CAM], success_time=clock() - 1.0) is None  # stale signal, no new frames: wait
    end = run.poll(inputs, [CAM], success_time=clock())
    assert end.kind is EndReason.SUCCEEDED and end.success and end.status == "succeed" and end.reason == "success"


def test_policy_errors_end_the_goal_with_a_log_line(policy):
    class Broken:
        def __init__(self, result):
            self.result = result

        def act(self, observation):
            if isinstance(self.result, Exception):
                raise self.result
            return self.result

    clock = Clock()
    out = runner(Broken(RuntimeError("cuda gone")), clock).step(snapshot(clock()))
    assert out.kind is EndReason.POLICY_ERROR and out.reason == "policy error: cuda gone"
    assert "RuntimeError" in out.log and out.hold
    out = runner(Broken(np.full((4, 3), np.nan)), clock).step(snapshot(clock()))
    assert out.reason == "policy error: the policy returned non-finite actions"


def test_a_joint_missing_from_the_joint_state_ends_without_a_hold(policy):
    clock = Clock()
    out = runner(policy, clock).step(snapshot(clock(), positions={"j1": 0.0, "finger": 0.0}))
    assert out.kind is EndReason.JOINT_STATE and "j2" in out.reason and not out.hold


def test_a_chunk_the_motion_backend_refuses_is_a_step_not_an_end(policy):
    clock = Clock()
    run = runner(policy, clock, observation_age=lambda snap: 5.0)  # every action of the chunk is long due
    out = run.step(snapshot(clock()))
    assert isinstance(out, ChunkRejected) and "stale chunk" in out.reason
    assert run.steps == 1 and run.budget_end() is None
