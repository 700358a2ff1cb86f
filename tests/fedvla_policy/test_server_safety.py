"""The policy server as a real process under bad input, refused goals and bad checkpoints.

The test plays the robot (FakeRobot from test_server_goals.py) and adds the bad messages itself.
"""
from __future__ import annotations

import math
import os
import threading
import time

import numpy as np
import pytest
import torch
from rclpy.action import ActionClient
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String

from fedvla_msgs.action import ExecuteInstruction
from fedvla_msgs.srv import LoadCheckpoint
from fedvla_core.control.goal_refusal import INVALID_GOAL, UNGROUNDED, refusal_code
from fedvla_policy.goal_client import GoalClient
from test_server_goals import (CAMERAS, HOME, JOINTS, FakeRobot, make_checkpoint, robot, server_args,  # noqa: F401
                               wait_for, wait_for_server)

TASK = "put the red block in the bowl"  # a trained phrasing (sim task table)


def finite(traj) -> bool:
    return all(math.isfinite(v) for p in traj.points for v in (*p.positions, *p.velocities, *p.accelerations))


def bad_images(rng) -> list[Image]:
    good = dict(height=32, width=32, encoding="rgb8", step=96)
    cases = [dict(good, encoding="rgba8"), dict(good, encoding="x" * 5000), dict(good, height=0, width=0, step=0),
             dict(good, step=10), dict(good, height=100000, step=96), dict(good, width=65535, step=65535 * 3)]
    msgs = []
    for case in cases:
        n = case["step"] * case["height"] if case["height"] < 1000 and case["step"] < 1000 else 3072
        msgs.append(Image(**case, data=bytes(rng.integers(0, 256, n, dtype=np.uint8))))
    msgs.append(Image(**good, data=bytes(3072 - 5)))  # ragged: data != step * height
    msgs.append(Image(**good, data=bytes(3072 + 7)))
    return msgs


def bad_joint_states() -> list[JointState]:
    q = [float(x) for x in np.r_[HOME, 0.04]]
    nan_q = list(q)
    nan_q[1] = math.nan
    return [JointState(name=JOINTS, position=nan_q),
            JointState(name=JOINTS, position=[math.inf] * 8),
            JointState(name=JOINTS, position=q, velocity=[0.0] * 7 + [math.nan]),
            JointState(name=JOINTS, position=q[:5]),  # wrong length
            JointState(name=JOINTS, position=q, velocity=[0.0] * 3),
            JointState(name=["elbow_of_another_robot"], position=[0.1]),  # unknown names only
            JointState(name=JOINTS[:6], position=q[:6]),  # missing joints
            JointState(name=JOINTS, position=[1e308] + q[1:]),
            JointState()]


@pytest.mark.timeout(240)
def test_bad_input_is_refused_the_server_keeps_serving_and_no_nan_reaches_the_controller(
        processes, tmp_path, rclpy_context):
    ckpt = make_checkpoint(tmp_path / "ckpt", np.r_[HOME + 0.05, 1.0])
    server = processes.start(server_args(checkpoint=ckpt, stale_input_timeout_s=1.5), "server")
    robot = FakeRobot(rclpy_context)
    client = GoalClient(context=rclpy_context)
    rng = np.random.default_rng(3)
    bad_cam = {c: robot.node.create_publisher(Image, f"camera/{c}/image_raw", 10) for c in CAMERAS}
    bad_joints = robot.node.create_publisher(JointState, "joint_states", 10)
    try:
        wait_for_server(client, server, processes)
        run = None
        for _ in range(20):  # until the server has every input
            run = client.send(TASK, max_steps=1000)
            if run.wait_accepted(10.0):
                break
            time.sleep(0.5)
        assert run.accepted, run.rejection_reason + processes.log(server)
        assert wait_for(lambda: len(run.feedback) >= 3, 30.0), processes.log(server)

        # Mid-goal, every joint state turns NaN: the goal ends on stale input that names the refusal,
        # and neither the chunks nor the brake/hold trajectory are built from the NaN.
        robot.joints_on = False
        stop = threading.Event()

        def publish_nan():
            while not stop.is_set():
                bad_joints.publish(bad_joint_states()[0])
                time.sleep(0.02)

        nan_thread = threading.Thread(target=publish_nan, daemon=True)
        nan_thread.start()
        assert run.wait(15.0), processes.log(server)
        stop.set()
        nan_thread.join()
        assert run.status_name == "aborted", run.result
        assert run.result.reason.startswith("stale_input") and "joint states" in run.result.reason
        assert "non-finite position of panda_joint2" in run.result.reason, run.result.reason

        # Every other kind of bad image and joint state, many times, while good frames keep coming.
        for _ in range(5):
            for msg in bad_joint_states():
                bad_joints.publish(msg)
            for cam in CAMERAS:
                for msg in bad_images(rng):
                    bad_cam[cam].publish(msg)
            time.sleep(0.05)
        robot.instruction_pub.publish(String(data="x" * 20000))  # a huge instruction on the topic
        robot.instruction_pub.publish(String(data="\x00\x01\x02"))
        time.sleep(1.0)
        assert server.poll() is None, processes.log(server)

        # The server still serves: with good input a goal runs and moves the arm again.
        robot.joints_on = True
        time.sleep(0.5)  # good joint states flow again
        n_traj = len(robot.trajectories)
        again = None
        for _ in range(10):
            again = client.send(TASK, max_steps=4)
            if again.wait(60.0) and again.result is not None and not again.result.reason.startswith("stale_input"):
                break
            time.sleep(0.5)
        assert again.result is not None and again.result.reason == "max_steps", (again.result, processes.log(server))
        assert len(robot.trajectories) > n_traj
        assert robot.trajectories and all(finite(t) for t in robot.trajectories), "a non-finite trajectory was sent"

        log = processes.log(server)
        assert "refused joint_states message: joint_states: non-finite position" in log
        for cam in CAMERAS:
            assert f"refused {cam} message: camera '{cam}': " in log, log[-3000:]
        assert "instruction is too long (20000 > 256 characters)" in log
        # the instruction topic reports the refusal too (its own log line, of another severity than the others)
        assert "instruction topic goal 'xxxxxxxx" in log and "Logger severity" not in log, log[-3000:]
        longest = max(len(line) for line in log.splitlines())
        assert longest < 1000, f"a log line of {longest} characters"
        assert log.count("refused joint_states message") < 30, "refusal log lines are not rate-limited"
    finally:
        client.close()
        robot.close()
    assert server.poll() is None


@pytest.mark.timeout(180)
def test_a_refused_goal_is_accepted_then_aborted_with_its_code_and_preempts_nothing(processes, tmp_path, robot,
                                                                                   rclpy_context):
    ckpt = make_checkpoint(tmp_path / "ckpt", np.r_[HOME + 0.05, 1.0])
    server = processes.start(server_args(checkpoint=ckpt), "server")
    client = GoalClient(context=rclpy_context)
    try:
        wait_for_server(client, server, processes)
        running = None
        for _ in range(20):
            running = client.send(TASK, max_steps=1000)
            if running.wait_accepted(10.0):
                break
            time.sleep(0.5)
        assert running.accepted, running.rejection_reason

        # What `ros2 action send_goal` sees: the goal is ACCEPTED, then its result says why it did not run.
        raw = ActionClient(client.node, ExecuteInstruction, "execute_instruction")
        assert raw.wait_for_server(timeout_sec=10.0)
        done = threading.Event()
        answer = {}

        def on_response(future):
            answer["handle"] = handle = future.result()
            handle.get_result_async().add_done_callback(lambda f: (answer.update(result=f.result()), done.set()))

        raw.send_goal_async(ExecuteInstruction.Goal(instruction="sing a song")).add_done_callback(on_response)
        assert done.wait(30.0), processes.log(server)
        assert answer["handle"].accepted
        result = answer["result"].result
        assert answer["result"].status == 6  # GoalStatus.STATUS_ABORTED
        assert refusal_code(result.reason) == UNGROUNDED and result.steps == 0 and not result.episode_id
        assert "sing a song" not in result.reason and "nearest trained one" in result.reason, result.reason

        # Through GoalClient: refused with the code, no feedback; other bad goals likewise.
        for instruction, kwargs, code in [("tell me a joke", {}, UNGROUNDED), ("", {}, INVALID_GOAL),
                                          (TASK, {"time_limit_s": math.nan}, INVALID_GOAL),
                                          (TASK, {"time_limit_s": -3.0}, INVALID_GOAL),
                                          ("a" * 300, {}, INVALID_GOAL)]:
            refused = client.send(instruction, **kwargs)
            assert refused.wait(30.0)
            assert refused.accepted is False and refused.refusal == code, (instruction, refused.rejection_reason)
            assert not refused.feedback and not refused.retryable
        # The running goal was preempted by none of them.
        n = len(running.feedback)
        assert wait_for(lambda: len(running.feedback) > n + 2, 20.0) and not running.done, running.result

        # A held-out phrasing (never in training) is grounded: it runs, and preempts the running goal.
        held_out = client.send("please put the red block into the bowl", max_steps=3)
        assert held_out.wait(60.0) and held_out.accepted, held_out.rejection_reason
        assert held_out.result.reason == "max_steps"
        assert running.wait(10.0) and running.result.reason == "preempted"
        assert server.poll() is None
    finally:
        client.close()


def _nan_weights(path):
    from fedvla_core.model import FedVLAPolicy

    policy = FedVLAPolicy.from_pretrained(path)
    with torch.no_grad():
        next(iter(policy.trunk.parameters())).view(-1)[0] = math.nan
    policy.save_pretrained(path)


def _drop_a_weight(path):
    from safetensors.torch import load_file, save_file

    file = os.path.join(path, "model.safetensors")
    state = load_file(file)
    state.pop(sorted(k for k in state if k.startswith("head."))[0])
    save_file(state, file, metadata={"format": "pt"})


@pytest.mark.timeout(240)
def test_checkpoint_swap_is_all_or_nothing(processes, tmp_path, robot, rclpy_context):
    root, outside = tmp_path / "root", tmp_path / "outside"
    serving = make_checkpoint(root / "serving", np.r_[HOME + 0.05, 1.0])
    make_checkpoint(root / "lower", np.r_[HOME - 0.05, 0.0])
    make_checkpoint(root / "other_cameras", np.r_[HOME, 1.0], cameras=("front", "side"))
    make_checkpoint(root / "nan_weights", np.r_[HOME, 1.0])
    _nan_weights(str(root / "nan_weights"))
    make_checkpoint(root / "missing_weight", np.r_[HOME, 1.0])
    _drop_a_weight(str(root / "missing_weight"))
    make_checkpoint(outside / "valid", np.r_[HOME, 1.0])
    os.symlink(outside / "valid", root / "link_out")
    server = processes.start(server_args(checkpoint=serving, checkpoint_root=root), "server")
    client = GoalClient(context=rclpy_context)
    try:
        wait_for_server(client, server, processes)
        for path, why in [(root / "other_cameras", "cameras ['front', 'side'] that this robot does not serve"),
                          (root / "nan_weights", "non-finite values"),
                          (root / "missing_weight", "missing keys"),
                          (root / "does_not_exist", "no checkpoint directory"),
                          ("some-org/some-hub-model", "no checkpoint directory"),
                          (outside / "valid", "outside the checkpoint root"),
                          ("../outside/valid", "outside the checkpoint root"),
                          (root / "link_out", "outside the checkpoint root"),
                          ("", "empty checkpoint path")]:
            answer = robot.call(LoadCheckpoint, "load_checkpoint", LoadCheckpoint.Request(path=str(path)))
            assert not answer.success and why in answer.message, (path, answer.message)
            assert "the current policy keeps serving" in answer.message
        # The old policy still serves: its chunks aim above HOME.
        n_traj = len(robot.trajectories)
        run = None
        for _ in range(20):
            run = client.send(TASK, max_steps=3)
            if run.wait(60.0) and run.accepted:
                break
            time.sleep(0.5)
        assert run.result is not None and run.result.reason == "max_steps", (run.result, processes.log(server))
        arm = [t for t in robot.trajectories[n_traj:] if len(t.points) > 2]
        j1 = arm[-1].joint_names.index("panda_joint1")
        assert arm and arm[-1].points[-1].positions[j1] > HOME[0]
        # A valid checkpoint, named relative to the root, is swapped in.
        answer = robot.call(LoadCheckpoint, "load_checkpoint", LoadCheckpoint.Request(path="lower"))
        assert answer.success and "dry act finite" in answer.message, answer.message
        n_traj = len(robot.trajectories)
        run = client.run(TASK, max_steps=3, timeout=60.0)
        assert run.result is not None and run.result.reason == "max_steps"
        arm = [t for t in robot.trajectories[n_traj:] if len(t.points) > 2]
        assert arm and arm[-1].points[-1].positions[j1] < HOME[0]
        assert server.poll() is None
    finally:
        client.close()
