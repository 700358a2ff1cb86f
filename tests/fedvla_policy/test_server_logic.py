"""The policy server's ROS-free decisions: goal validation, input freshness, budgets, parameters."""
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import yaml

from fedvla_core.control.goal_arbitration import BUSY_REFUSAL, Claim, GoalArbiter
from fedvla_core.control.input_sync import StampedHistory
from fedvla_core.control.inputs import (Frame, JointSample, LatestInputs, goal_rejection_reason, instruction_problem,
                                        progress, proprio_vector, step_budget)
from fedvla_core.control.server_config import ServerConfig
from fedvla_core.control.policy_slot import PolicySlot, ServedPolicy

CONFIG = Path(__file__).resolve().parents[2] / "src/fedvla_policy/config/policy_server.yaml"


@pytest.mark.parametrize("text,expected", [
    ("", "empty"), ("   \t ", "whitespace"), ("x" * 257, "too long"), ("pick\x00up", "non-printable"),
    ("put the block\nin the bowl", "non-printable"), ("put the red block in the bowl", None),
    ("öffne die Schublade", None),
])
def test_instruction_problems(text, expected):
    problem = instruction_problem(text, 256)
    assert (problem is None) if expected is None else (expected in problem)


def test_rejection_reasons_in_order():
    ok = dict(max_length=256, model_loaded=True, missing_cameras=[], have_joint_state=True,
              goal_running=False, on_new_goal="preempt")
    assert goal_rejection_reason("go", **ok) is None
    assert "checkpoint" in goal_rejection_reason("go", **{**ok, "model_loaded": False})
    assert "wrist" in goal_rejection_reason("go", **{**ok, "missing_cameras": ["wrist"]})
    assert "joint state" in goal_rejection_reason("go", **{**ok, "have_joint_state": False})
    assert goal_rejection_reason("go", **{**ok, "goal_running": True}) is None  # preempt
    assert "running" in goal_rejection_reason("go", **{**ok, "goal_running": True, "on_new_goal": "reject"})
    assert "empty" in goal_rejection_reason("", **{**ok, "model_loaded": False})  # instruction checked first


def _frame(stamp, received):
    return Frame(np.zeros((2, 2, 3), np.uint8), stamp, received)


def test_snapshot_needs_all_cameras_in_sync_and_new():
    inputs = LatestInputs()
    cams = ["agentview", "wrist"]
    assert inputs.snapshot(cams, 0.1) is None
    inputs.put_joint(JointSample({"a": 1.0}, {}, 10.0))
    inputs.put_frame("agentview", _frame(100.0, 10.0))
    assert inputs.missing_cameras(cams) == ["wrist"]
    assert inputs.snapshot(cams, 0.1) is None
    inputs.put_frame("wrist", _frame(100.5, 10.5))  # header stamps 0.5 s apart: inconsistent
    assert inputs.snapshot(cams, 0.1) is None
    inputs.put_frame("wrist", _frame(100.05, 10.6))
    snap = inputs.snapshot(cams, 0.1)
    assert snap is not None and set(snap.images) == set(cams) and snap.newest_frame_received == 10.6
    assert inputs.snapshot(cams, 0.1, after=10.6) is None  # nothing new since the last step
    inputs.put_frame("agentview", _frame(100.1, 10.7))
    assert inputs.snapshot(cams, 0.1, after=10.6) is None  # only one camera is new: wait for the other
    assert inputs.cameras_without_frame_after(cams, 10.6) == ["wrist"]
    inputs.put_frame("wrist", _frame(100.12, 10.72))
    assert inputs.snapshot(cams, 0.1, after=10.6).newest_frame_received == 10.72


def test_snapshot_reads_proprio_at_the_frames_stamp():
    """Joint states arrive at 50 Hz, frames at 10 Hz: the policy must see the arm where the image shows it."""
    inputs = LatestInputs()
    cams = ["agentview", "wrist"]
    for k in range(10):  # joint a moves 0.1 rad every 20 ms, stamped 100.00 .. 100.18
        inputs.put_joint(JointSample({"a": 0.1 * k}, {}, 10.0 + 0.02 * k, stamp=100.0 + 0.02 * k))
    inputs.put_frame("agentview", _frame(100.08, 10.19))
    inputs.put_frame("wrist", _frame(100.081, 10.19))
    snap = inputs.snapshot(cams, 0.1)
    assert snap.joint.positions["a"] == pytest.approx(0.9)  # newest: where the trajectory must start
    assert snap.observed_joint.positions["a"] == pytest.approx(0.4)  # 100.08: what the images show
    # frames far from every joint stamp, or unstamped joint states: fall back to the newest joint state
    inputs.put_frame("agentview", _frame(101.0, 10.3))
    inputs.put_frame("wrist", _frame(101.0, 10.3))
    assert inputs.snapshot(cams, 0.1).observed_joint.positions["a"] == pytest.approx(0.9)
    unstamped = LatestInputs()
    unstamped.put_joint(JointSample({"a": 0.5}, {}, 10.0))
    unstamped.put_frame("agentview", _frame(100.0, 10.0))
    unstamped.put_frame("wrist", _frame(100.0, 10.0))
    assert unstamped.snapshot(cams, 0.1).observed_joint.positions["a"] == 0.5


def test_stamped_history_finds_the_nearest_sample_within_tolerance():
    history = StampedHistory(maxlen=3)
    for stamp, value in ((1.0, "a"), (1.1, "b"), (0.5, "late"), (0.0, "unstamped"), (1.2, "c"), (1.3, "d")):
        history.add(stamp, value)
    assert len(history) == 3  # out-of-order and unstamped samples dropped, the oldest evicted
    assert history.nearest(1.14, 0.05) == "b" and history.nearest(1.16, 0.05) == "c"
    assert history.nearest(5.0, 0.05) is None and history.nearest(1.0, 0.05) is None  # evicted
    with pytest.raises(ValueError, match="maxlen"):
        StampedHistory(maxlen=0)


def test_stale_reason_names_the_input():
    inputs = LatestInputs()
    inputs.put_frame("agentview", _frame(0.0, 10.0))
    inputs.put_joint(JointSample({}, {}, 10.0))
    assert inputs.stale_reason(["agentview"], 10.5, 1.0) is None
    assert "camera 'agentview'" in inputs.stale_reason(["agentview"], 11.5, 1.0)
    inputs.put_frame("agentview", _frame(0.0, 11.5))
    assert "joint states" in inputs.stale_reason(["agentview"], 11.6, 1.0)


def test_proprio_order_and_missing_joint():
    joint = JointSample({"j2": 2.0, "j1": 1.0, "f": 0.03}, {}, 0.0)
    np.testing.assert_array_equal(proprio_vector(joint, ["j1", "j2"], "f"), np.float32([1.0, 2.0, 0.03]))
    with pytest.raises(KeyError, match="j3"):
        proprio_vector(joint, ["j1", "j3"], "f")


def test_budget_and_progress():
    assert step_budget(0, 0.0, 200, 60.0) == (200, 60.0)
    assert step_budget(5, 2.0, 200, 60.0) == (5, 2.0)
    assert progress(5, 10, 1.0, 60.0) == pytest.approx(0.5)
    assert progress(1, 10, 30.0, 60.0) == pytest.approx(0.5)
    assert progress(20, 10, 0.0, 60.0) == 1.0


def test_observation_age_comes_from_the_capture_stamp_else_the_arrival():
    inputs = LatestInputs()
    inputs.put_joint(JointSample({"a": 0.0}, {}, 10.0, stamp=100.0))
    inputs.put_frame("agentview", _frame(100.00, 10.05))
    inputs.put_frame("wrist", _frame(100.02, 10.06))
    snap = inputs.snapshot(["agentview", "wrist"], 0.1)
    assert snap.age(clock_now=100.07, monotonic_now=10.08) == pytest.approx(0.05)  # newest capture stamp
    assert snap.age(clock_now=99.0, monotonic_now=10.08) == 0.0  # a clock behind the camera's: never negative
    unstamped = LatestInputs()
    unstamped.put_joint(JointSample({"a": 0.0}, {}, 10.0))
    unstamped.put_frame("agentview", _frame(0.0, 10.05))
    unstamped.put_frame("wrist", _frame(0.0, 10.06))
    assert unstamped.snapshot(["agentview", "wrist"], 0.1).age(100.07, 10.10) == pytest.approx(0.04)


def test_config_validation_names_the_field():
    for kwargs, name in [({"control_rate_hz": 0}, "control_rate_hz"), ({"on_new_goal": "queue"}, "on_new_goal"),
                         ({"joint_lower_limits": [0.0] * 3}, "joint_lower_limits"),
                         ({"joint_upper_limits": [-9.0] * 7}, "joint_lower_limits must be below"),
                         ({"trajectory_timing": "fast"}, "trajectory_timing"),
                         ({"camera_topic_template": "cam"}, "camera_topic_template"),
                         ({"stale_input_timeout_s": -1}, "stale_input_timeout_s")]:
        with pytest.raises(ValueError, match=name):
            ServerConfig(**kwargs)


def test_yaml_holds_every_parameter_with_its_default():
    params = yaml.safe_load(CONFIG.read_text())["/**"]["ros__parameters"]
    defaults = ServerConfig()
    assert set(params) == {f.name for f in fields(ServerConfig)}
    for f in fields(ServerConfig):
        value = params[f.name]
        if isinstance(value, list):
            value = [v for v in value if v]
        assert value == getattr(defaults, f.name), f.name


def test_the_newest_goal_preempts_every_earlier_one_and_waits_for_the_arm():
    goals = GoalArbiter("preempt")
    first = goals.admit(b"1", "handle 1", None)
    assert goals.take_refused(b"1") is None and goals.claim(b"1") is Claim.START
    second = goals.admit(b"2", "handle 2", None)
    third = goals.admit(b"3", "handle 3", None)
    assert first.preempted and second.preempted and not third.preempted
    assert goals.claim(b"2") is Claim.PREEMPTED  # superseded while it waited: forgotten
    assert goals.claim(b"3") is Claim.WAIT  # the first still stops the arm
    goals.release(b"1")
    assert goals.claim(b"3") is Claim.START and goals.run(b"3") is third


def test_a_refused_goal_preempts_nothing_and_reject_mode_refuses_as_busy():
    goals = GoalArbiter("preempt")
    running = goals.admit(b"1", "h1", None)
    refused = goals.admit(b"2", "h2", "not_ready: no joint state received yet")
    assert not running.preempted and goals.take_refused(b"2") is refused and goals.take_refused(b"2") is None
    strict = GoalArbiter("reject")
    strict.admit(b"1", "h1", None)
    busy = strict.admit(b"2", "h2", None)
    assert busy.refusal == BUSY_REFUSAL and busy.refusal.startswith("busy: ") and strict.take_refused(b"2") is busy


def test_a_checkpoint_loaded_during_a_goal_serves_from_the_next_one():
    slot = PolicySlot()
    assert slot.current is None
    assert slot.offer(ServedPolicy("a", "/ckpt/a")) is True and slot.current.policy == "a"
    assert slot.goal_started().policy == "a"
    assert slot.offer(ServedPolicy("b", "/ckpt/b")) is False  # the running goal keeps its policy
    assert slot.offer(ServedPolicy("c", "/ckpt/c")) is False  # the newest load wins
    assert slot.current.policy == "a"
    assert slot.goal_ended() is True and slot.current.policy == "c"
    assert slot.goal_ended() is False and slot.current.policy == "c"
