"""The policy server's input checks, refusal codes, checkpoint path rules and its trajectory publisher's last guard.

Plain functions are tested without ROS; the publisher guard runs in a real rclpy node (the server
node in-process, a real subscriber on the controller topic).
"""
from __future__ import annotations

import math
import os
import threading
import time

import numpy as np
import pytest
import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter
from trajectory_msgs.msg import JointTrajectory

from fedvla_core.control.checkpoint_swap import CheckpointRefused, resolve_checkpoint_dir
from fedvla_core.control.goal_refusal import BUSY, NOT_READY, REFUSAL_CODES, RETRYABLE, refusal_code, refusal_reason
from fedvla_core.control.instruction_grounding import trained_instructions
from fedvla_core.control.input_checks import (InputRejected, LogLimiter, bounded, goal_limits_problem,
                                        joint_state_values, trajectory_problem)
from fedvla_core.control.motion import PANDA_LIMITS, hold_trajectory
from fedvla_core.control.inputs import goal_rejection_reason

ARM = list(PANDA_LIMITS.names)
HOME = [0.0, -0.2656, 0.0, -2.4239, 0.0, 0.5883, 0.0]
LOWER, UPPER = PANDA_LIMITS.lower, PANDA_LIMITS.upper
TOL = np.full(7, 0.2)
VMAX = PANDA_LIMITS.max_velocity


def values(names, positions, velocities=()):
    return joint_state_values(names, positions, velocities, ARM, LOWER, UPPER, TOL, VMAX)


def test_a_good_joint_state_passes_and_other_joints_are_ignored():
    pos, vel = values(ARM + ["other_robot_elbow"], HOME + [math.nan], [0.1] * 7 + [math.inf])
    assert [pos[n] for n in ARM] == HOME and all(vel[n] == 0.1 for n in ARM)
    pos, vel = values(list(reversed(ARM)), list(reversed(HOME)))  # any order; no velocities = 0
    assert [pos[n] for n in ARM] == HOME and set(vel.values()) == {0.0}


@pytest.mark.parametrize("names,positions,velocities,expected", [
    (ARM, HOME[:6], (), "7 names but 6 positions"),
    (ARM, HOME, [0.0] * 3, "7 names but 3 velocities"),
    (ARM[:6], HOME[:6], (), "lacks panda_joint7"),
    (["elbow_of_another_robot"], [0.0], (), "lacks panda_joint1"),
    (ARM + ["panda_joint1"], HOME + [0.0], (), "appears twice"),
    (ARM, [math.nan] + HOME[1:], (), "non-finite position of panda_joint1"),
    (ARM, HOME[:3] + [-math.inf] + HOME[4:], (), "non-finite position of panda_joint4"),
    (ARM, HOME, [0.0] * 6 + [math.nan], "non-finite velocity of panda_joint7"),
    (ARM, [1e308] + HOME[1:], (), "outside its range"),
    (ARM, HOME, [50.0] + [0.0] * 6, "over 5 x its velocity limit"),
])
def test_bad_joint_states_are_refused_with_the_reason(names, positions, velocities, expected):
    with pytest.raises(InputRejected, match=expected):
        values(names, positions, velocities)


def test_goal_limits_and_refusal_codes():
    assert goal_limits_problem(0, 0.0) is None and goal_limits_problem(10, 2.5) is None
    for bad in (math.nan, math.inf, -1.0):
        assert "time_limit_s" in goal_limits_problem(0, bad)
    ok = dict(max_length=256, model_loaded=True, missing_cameras=[], have_joint_state=True,
              goal_running=False, on_new_goal="preempt")
    assert refusal_code(goal_rejection_reason("go", **ok, time_limit_s=math.nan)) == "invalid_goal"
    assert refusal_code(goal_rejection_reason("go", **{**ok, "model_loaded": False})) == NOT_READY
    notes = {"joint_states": "joint_states: non-finite position of panda_joint2 (nan)"}
    reason = goal_rejection_reason("go", **{**ok, "have_joint_state": False}, input_notes=notes)
    assert refusal_code(reason) == NOT_READY and "non-finite position of panda_joint2" in reason
    assert refusal_code(goal_rejection_reason("go", **ok, grounding=lambda t: "far away")) == "ungrounded"
    assert refusal_code(goal_rejection_reason("go", **{**ok, "goal_running": True, "on_new_goal": "reject"})) == BUSY
    # the code, not the wording, is the contract
    assert [refusal_code(refusal_reason(c, "x: y")) for c in REFUSAL_CODES] == list(REFUSAL_CODES)
    assert refusal_code("stale_input: camera 'wrist' sent no new frame") is None
    assert refusal_code("max_steps") is None and set(RETRYABLE) == {NOT_READY, BUSY}
    with pytest.raises(ValueError):
        refusal_reason("nope", "x")
    assert len(bounded("x" * 20000)) <= 300 and "\n" not in bounded("a\nb")


def test_log_limiter_keys_by_input():
    now = [0.0]
    limiter = LogLimiter(period=5.0, clock=lambda: now[0])
    assert limiter.allow("wrist") == "" and limiter.allow("agentview") == ""  # one input does not silence another
    assert limiter.allow("wrist") is None and limiter.allow("wrist") is None
    now[0] = 5.5
    assert limiter.allow("wrist") == " (+2 more like it since the last line)"


def _traj(points, names=("a", "b")):
    from trajectory_msgs.msg import JointTrajectoryPoint
    from builtin_interfaces.msg import Duration

    msg = JointTrajectory(joint_names=list(names))
    for t, q in points:
        msg.points.append(JointTrajectoryPoint(positions=q, time_from_start=Duration(sec=int(t), nanosec=int(t % 1 * 1e9))))
    return msg


def test_trajectory_problems():
    assert trajectory_problem(_traj([(0.1, [0.0, 1.0]), (0.2, [0.1, 1.0])])) is None
    assert "non-finite" in trajectory_problem(_traj([(0.1, [0.0, math.nan])]))
    assert "non-finite" in trajectory_problem(_traj([(0.1, [0.0, math.inf])]))
    assert "1 positions for 2 joints" in trajectory_problem(_traj([(0.1, [0.0])]))
    assert "does not increase" in trajectory_problem(_traj([(0.2, [0.0, 0.0]), (0.2, [0.0, 0.0])]))
    assert "no points" in trajectory_problem(_traj([]))
    assert "twice" in trajectory_problem(_traj([(0.1, [0.0, 0.0])], names=("a", "a")))


def test_checkpoint_paths_stay_below_the_root(tmp_path):
    root, outside = tmp_path / "root", tmp_path / "outside"
    for d in (root / "good", outside / "good"):
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
        (d / "model.safetensors").write_bytes(b"")
    (root / "no_weights").mkdir()
    (root / "no_weights" / "config.json").write_text("{}")
    os.symlink(outside / "good", root / "escape")
    assert resolve_checkpoint_dir(str(root / "good"), str(root)) == (root / "good").resolve()
    assert resolve_checkpoint_dir("good", str(root)) == (root / "good").resolve()  # relative to the root
    for path, expected in [(str(outside / "good"), "outside the checkpoint root"), ("../outside/good", "outside"),
                           (str(root / "escape"), "outside"), (str(root / "nope"), "no checkpoint directory"),
                           ("lerobot/some-hub-model", "no checkpoint directory"), ("", "empty"),
                           (str(root / "no_weights"), "no safetensors"), ("good\x00", "NUL")]:
        with pytest.raises(CheckpointRefused, match=expected):
            resolve_checkpoint_dir(path, str(root))


@pytest.mark.timeout(60)
def test_the_trajectory_publisher_refuses_non_finite_points(rclpy_context):
    """The last line of defence: whatever a bug upstream hands it, the server's publisher sends no NaN/inf."""
    from fedvla_policy.server_node import PolicyServer

    server = PolicyServer(context=rclpy_context, parameter_overrides=[Parameter("camera_names", value=["cam"])])
    listener = rclpy.create_node("controller", context=rclpy_context)
    got: list[JointTrajectory] = []
    listener.create_subscription(JointTrajectory, "arm_controller/joint_trajectory", got.append, 10)
    executor = MultiThreadedExecutor(context=rclpy_context)
    executor.add_node(server)
    executor.add_node(listener)
    thread = threading.Thread(target=executor.spin, daemon=True)
    thread.start()
    try:
        names = server.motion.joint_names
        good = hold_trajectory(np.r_[HOME, 0.04], names)
        deadline = time.monotonic() + 10
        while not got and time.monotonic() < deadline:  # discovery: until the listener hears a good one
            assert server._publish_trajectory(good)
            time.sleep(0.2)
        assert got, "the controller never received a finite trajectory"
        for bad_value in (math.nan, math.inf, -math.inf):
            bad = hold_trajectory(np.r_[HOME, 0.04], names)
            bad.positions[-1, 3] = bad_value
            assert server._publish_trajectory(bad) is False
            bad = hold_trajectory(np.r_[HOME, 0.04], names)
            bad.velocities[-1, 0] = bad_value
            assert server._publish_trajectory(bad) is False
        n = len(got)
        time.sleep(0.5)
        assert len(got) == n, "a refused trajectory reached the controller"
        assert all(math.isfinite(v) for t in got for p in t.points for v in (*p.positions, *p.velocities))
    finally:
        executor.shutdown(timeout_sec=1.0)
        thread.join(timeout=2.0)
        listener.destroy_node()
        server.destroy_node()


def test_trained_instructions_prefer_what_the_checkpoint_knows():
    from types import SimpleNamespace

    from fedvla_policy.server_node import sim_task_instructions
    from fedvla_sim.metaworld_env import METAWORLD_TASKS
    from fedvla_sim.tasks import TASKS

    own = SimpleNamespace(trained_instructions=["wipe the table", "wipe the table", " "], camera_names=["agentview"])
    assert trained_instructions(own, sim_task_instructions) == (["wipe the table"],
                                                                "the checkpoint config's trained_instructions")
    assert trained_instructions(SimpleNamespace(camera_names=["agentview"])) == (
        [], "no trained_instructions in the checkpoint and no task table")
    panda, source = trained_instructions(SimpleNamespace(camera_names=["agentview", "wrist"]), sim_task_instructions)
    assert "Panda" in source and set(panda) == {p for t in TASKS.values() for p in t.phrasings}
    assert not set(panda) & {p for t in TASKS.values() for p in t.held_out_phrasings}  # held out = never trained
    meta, source = trained_instructions(SimpleNamespace(camera_names=["corner", "topview"]), sim_task_instructions)
    assert "Meta-World" in source and set(meta) == {p for ps in METAWORLD_TASKS.values() for p in ps}
