"""The policy server as a real process, with the test playing the robot (camera, joint states, controller).

Playing the robot ourselves lets these tests stop the camera, watch every trajectory the
controller would get, and run without rendering. test_server_sim.py drives the real sim robot.
"""
from __future__ import annotations

import subprocess
import sys
import threading
import time

import numpy as np
import pytest
import rclpy
from rclpy.executors import SingleThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import JointState
from std_msgs.msg import String
from trajectory_msgs.msg import JointTrajectory

from fedvla_msgs.msg import ExpertUsage
from fedvla_msgs.srv import LoadCheckpoint
from fedvla_policy.goal_client import GoalClient
from fedvla_ros.image_conversion import numpy_to_image
from fedvla_core.control.motion import PANDA_LIMITS
from conftest import wait_for  # noqa: F401 - also imported from here by the other server tests

CAMERAS = ("agentview", "wrist")
HOME = np.array([0.0, -0.2656, 0.0, -2.4239, 0.0, 0.5883, 0.0])
JOINTS = [f"panda_joint{i}" for i in range(1, 8)] + ["panda_finger_joint1"]
CONFIG_FILE = "src/fedvla_policy/config/policy_server.yaml"


def make_checkpoint(path, action_mean, n_experts: int = 4, cameras=CAMERAS, chunk_size: int = 4):
    """A tiny randomly initialized policy whose actions sit at ``action_mean`` (std 1e-3)."""
    from fedvla_core.model import FedVLAConfig, FedVLAPolicy

    cfg = FedVLAConfig(camera_names=list(cameras), image_size=32, patch_size=16, iosp_topk=2, d_model=32,
                       n_layers=1, n_heads=2, n_experts=n_experts, expert_hidden=32, iosp_expert_hidden=32,
                       chunk_size=chunk_size)
    policy = FedVLAPolicy(cfg)
    policy.set_normalization(np.asarray(action_mean, np.float32), np.full(8, 1e-3, np.float32),
                             np.zeros(8, np.float32), np.ones(8, np.float32))
    policy.save_pretrained(str(path))
    return str(path)


def server_args(**params) -> list[str]:
    args = ["-m", "fedvla_policy.server_node", "--ros-args", "--params-file", CONFIG_FILE]
    for key, value in params.items():
        args += ["-p", f"{key}:={value}"]
    return args


class FakeRobot:
    """Publishes camera frames and joint states like an arm would, and records what the controller gets."""

    def __init__(self, context, rate_hz: float = 20.0, size: int = 32, publishing: bool = True):
        self.node = rclpy.create_node("fake_robot", context=context)
        self.q = np.r_[HOME, 0.04]
        self.camera_on = {c: publishing for c in CAMERAS}
        self.joints_on = publishing
        self.trajectories: list[JointTrajectory] = []
        self.usage: list[ExpertUsage] = []
        self.rejections: list[str] = []
        self._image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
        self._cam_pubs = {c: self.node.create_publisher(type(numpy_to_image(self._image)), f"camera/{c}/image_raw", 5)
                          for c in CAMERAS}
        self._joint_pub = self.node.create_publisher(JointState, "joint_states", 5)
        self.instruction_pub = self.node.create_publisher(String, "instruction_goal", 10)
        self.node.create_subscription(JointTrajectory, "arm_controller/joint_trajectory",
                                      self.trajectories.append, 50)
        self.node.create_subscription(ExpertUsage, "expert_usage", self.usage.append, 50)
        latched = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.node.create_subscription(String, "policy_server/goal_rejections",
                                      lambda m: self.rejections.append(m.data), latched)
        self.node.create_timer(1.0 / rate_hz, self._tick)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def _tick(self):
        stamp = self.node.get_clock().now().to_msg()
        for cam, pub in self._cam_pubs.items():
            if self.camera_on[cam]:
                pub.publish(numpy_to_image(self._image, "rgb8", frame_id=cam, stamp=stamp))
        if self.joints_on:
            msg = JointState(name=JOINTS, position=[float(x) for x in self.q], velocity=[0.0] * 8)
            msg.header.stamp = stamp
            self._joint_pub.publish(msg)

    def call(self, srv_type, name, request, timeout=30.0):
        client = self.node.create_client(srv_type, name)
        assert client.wait_for_service(timeout_sec=timeout), f"service {name} did not appear"
        done = threading.Event()
        future = client.call_async(request)
        future.add_done_callback(lambda _f: done.set())
        assert done.wait(timeout), f"service {name} did not answer"
        return future.result()

    def close(self):
        self.executor.shutdown(timeout_sec=1.0)
        self._thread.join(timeout=2.0)
        self.node.destroy_node()


def wait_for_server(client, proc, processes, timeout: float = 60.0) -> None:
    """Wait for the action server, failing at once (with its log) if the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.wait_for_server(0.5):
            return
        assert proc.poll() is None, processes.log(proc)
    raise AssertionError("server did not come up:\n" + processes.log(proc))


def points_within_limits(traj: JointTrajectory, eps: float = 1e-6) -> bool:
    idx = [traj.joint_names.index(n) for n in PANDA_LIMITS.names]
    for p in traj.points:
        q = np.asarray(p.positions)[idx]
        if np.any(q < PANDA_LIMITS.lower - eps) or np.any(q > PANDA_LIMITS.upper + eps):
            return False
    return True


@pytest.fixture
def robot(rclpy_context):
    fake = FakeRobot(rclpy_context)
    yield fake
    fake.close()


@pytest.fixture
def client(rclpy_context):
    goal_client = GoalClient(context=rclpy_context)
    yield goal_client
    goal_client.close()


@pytest.mark.timeout(150)
def test_rejections_reach_the_client_and_checkpoints_swap_while_running(processes, tmp_path, rclpy_context, client):
    ckpt4 = make_checkpoint(tmp_path / "ckpt4", np.r_[HOME + 0.05, 1.0], n_experts=4)
    ckpt2 = make_checkpoint(tmp_path / "ckpt2", np.r_[HOME - 0.05, 0.0], n_experts=2)
    # instructions here are not the sim's tasks: grounding off (test_server_safety.py covers it)
    server = processes.start(server_args(on_new_goal="reject", default_max_steps=400, checkpoint_root=tmp_path,
                                         min_instruction_similarity=0.0), "server")
    wait_for_server(client, server, processes)

    def rejected(instruction):
        for _ in range(3):  # an answer can be lost while discovery settles: ask again
            run = client.send(instruction)
            if run.wait(10.0):
                break
        assert run.done, "no answer\n" + processes.log(server)
        assert run.accepted is False, f"{instruction!r} was accepted"
        assert run.result.steps == 0 and run.status_name == "aborted" and run.refusal, run.result
        assert run.rejection_reason.startswith(run.refusal + ": ")
        return run.rejection_reason

    assert "no checkpoint loaded" in rejected("put the red block in the bowl")
    robot = FakeRobot(rclpy_context, publishing=False)
    try:
        bad = robot.call(LoadCheckpoint, "load_checkpoint",
                         LoadCheckpoint.Request(path=str(tmp_path / "missing")))
        assert not bad.success and "missing" in bad.message
        ok = robot.call(LoadCheckpoint, "load_checkpoint", LoadCheckpoint.Request(path=ckpt4))
        assert ok.success, ok.message
        assert "no camera frame received yet from: agentview, wrist" in rejected("pick up the block")
        robot.camera_on["agentview"] = True
        assert wait_for(lambda: "wrist" in rejected("pick up the block") and "agentview" not in
                        rejected("pick up the block"), 5.0)
        robot.camera_on["wrist"] = True
        assert wait_for(lambda: "no joint state" in rejected("pick up the block"), 5.0)
        robot.joints_on = True
        time.sleep(0.3)
        # Bad instructions, each with its reason.
        assert "empty" in rejected("")
        assert "whitespace" in rejected("   \t")
        assert "too long" in rejected("a" * 300)
        assert "non-printable" in rejected("open the\x07drawer")
        assert len(robot.rejections) >= 8  # every rejection was also published on the latched topic

        # A valid goal runs; a second one is rejected because one is running (on_new_goal = reject).
        first = client.send("put the red block in the bowl", max_steps=400)
        assert first.wait_accepted(10.0) is True
        assert wait_for(lambda: len(first.feedback) >= 2, 20.0), processes.log(server)
        assert "another goal is running" in rejected("open the drawer")
        # Swap the checkpoint while the goal runs: it answers at once, the running goal keeps its weights.
        swap = robot.call(LoadCheckpoint, "load_checkpoint", LoadCheckpoint.Request(path=ckpt2))
        assert swap.success and "next goal" in swap.message, swap.message
        n_usage = len(robot.usage)
        assert wait_for(lambda: len(robot.usage) > n_usage + 1, 10.0)
        assert all(len(layer.expert_counts) == 4 for u in robot.usage for layer in u.layers)
        assert client.cancel(first)
        assert first.wait(10.0) and first.status_name == "canceled" and first.result.reason == "canceled"
        assert first.result.episode_id and first.result.steps >= 2

        # The next goal, started from the instruction topic, runs on the new (2-expert) weights.
        n_usage, n_traj = len(robot.usage), len(robot.trajectories)
        robot.instruction_pub.publish(String(data="put the green block in the bowl"))
        assert wait_for(lambda: len(robot.usage) > n_usage + 2, 20.0), processes.log(server)
        new_usage = robot.usage[n_usage + 1:]
        assert new_usage[-1].layers and all(len(layer.expert_counts) == 2 for layer in new_usage[-1].layers)
        assert new_usage[-1].episode_id and new_usage[-1].episode_id != first.result.episode_id
        assert len(robot.trajectories) > n_traj
        # The chunk targets HOME - 0.05 now (it was HOME + 0.05): the controller sees the new weights act.
        last = robot.trajectories[-1]
        j1 = last.joint_names.index("panda_joint1")
        assert last.points[-1].positions[j1] < HOME[0]
    finally:
        robot.close()
    assert server.poll() is None, "the server died"


@pytest.mark.timeout(120)
def test_out_of_limit_chunks_are_clipped_or_rejected_and_a_dead_camera_aborts(processes, tmp_path, robot, client):
    # joint4's upper limit is -0.0698: a target 0.15 rad above it is clipped, 1.0 rad above is rejected.
    near = np.r_[HOME, 1.0]
    near[3] = PANDA_LIMITS.upper[3] + 0.15
    far = near.copy()
    far[3] = PANDA_LIMITS.upper[3] + 1.0
    ckpt_near = make_checkpoint(tmp_path / "near", near)
    ckpt_far = make_checkpoint(tmp_path / "far", far)
    server = processes.start(server_args(checkpoint=ckpt_near, stale_input_timeout_s=2.0, checkpoint_root=tmp_path,
                                         min_instruction_similarity=0.0), "server")
    wait_for_server(client, server, processes)
    probes = []
    assert wait_for(lambda: probes.append(client.send("reach up")) or probes[-1].wait_accepted(5.0), 30.0), \
        processes.log(server)
    # A new goal preempts the running one (on_new_goal = preempt, the default).
    run = client.run("reach up", max_steps=4, timeout=30.0)
    assert run.result is not None and run.result.reason == "max_steps", processes.log(server)
    assert probes[-1].wait(5.0) and probes[-1].status_name == "aborted" and probes[-1].result.reason == "preempted"
    assert run.feedback and run.feedback[-1].step == 4 and run.feedback[-1].inference_latency_ms > 0
    # observers (the fed client) name and label the episode from the feedback alone
    assert {(fb.episode_id, fb.instruction) for fb in run.feedback} == {(run.result.episode_id, "reach up")}
    arm = [t for t in robot.trajectories if len(t.points) > 2]
    assert arm, "no trajectory reached the controller"
    assert all(points_within_limits(t) for t in robot.trajectories)
    j4 = arm[-1].joint_names.index("panda_joint4")
    highest = max(p.positions[j4] for t in arm for p in t.points)
    assert highest == pytest.approx(PANDA_LIMITS.upper[3], abs=1e-6)  # the target, clipped to the limit
    assert "position limit clipped on panda_joint4" in processes.log(server)

    swap = robot.call(LoadCheckpoint, "load_checkpoint", LoadCheckpoint.Request(path=ckpt_far))
    assert swap.success, swap.message
    n_traj = len(robot.trajectories)
    run = client.run("reach way up", max_steps=3, timeout=30.0)
    assert run.result is not None and run.result.steps == 3
    assert all(points_within_limits(t) for t in robot.trajectories[n_traj:])
    assert all(len(t.points) <= 2 for t in robot.trajectories[n_traj:])  # only hold trajectories
    assert "chunk rejected by the motion backend" in processes.log(server)

    # The time limit ends a goal too.
    run = client.run("reach way up", time_limit_s=0.5, timeout=30.0)
    assert run.result is not None and run.result.reason == "time_limit" and run.status_name == "aborted"

    # Stop the wrist camera mid-goal: the goal aborts, and the reason names the camera.
    swap = robot.call(LoadCheckpoint, "load_checkpoint", LoadCheckpoint.Request(path=ckpt_near))
    run = client.send("keep going", max_steps=1000)
    assert run.wait_accepted(10.0)
    assert wait_for(lambda: len(run.feedback) >= 3, 20.0)
    robot.camera_on["wrist"] = False
    t_stop = time.monotonic()
    assert run.wait(10.0)
    assert run.status_name == "aborted"
    assert "camera 'wrist'" in run.result.reason and run.result.reason.startswith("stale_input"), run.result.reason
    assert time.monotonic() - t_stop < 4.0  # the 2 s stale-input timeout + a control tick + slack for a busy CI box

    # `fedvla goal`: live progress lines, then the result; a rejected goal prints the reason.
    robot.camera_on["wrist"] = True
    time.sleep(0.5)
    cli = [sys.executable, "-c", "import sys; from fedvla_policy.goal_client import main_goal; sys.exit(main_goal())"]
    done = subprocess.run(cli + ["reach up", "--max-steps", "3"], capture_output=True, text=True, timeout=90)
    assert done.returncode == 1, done.stdout + done.stderr  # ended, but not a task success
    assert "step    3" in done.stdout and "%" in done.stdout, done.stdout
    assert "result: aborted  success=False  steps=3  reason='max_steps'" in done.stdout, done.stdout
    done = subprocess.run(cli + ["   "], capture_output=True, text=True, timeout=90)
    assert done.returncode == 2 and "goal refused: invalid_goal: instruction is only whitespace" in done.stderr, \
        done.stderr
    assert server.poll() is None
