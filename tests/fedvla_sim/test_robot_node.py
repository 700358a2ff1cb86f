"""The sim robot node, as a real process over real DDS: trajectories, images, rejections, services."""
import json
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from builtin_interfaces.msg import Duration
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Bool, String
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from fedvla_msgs.srv import ResetTask, RunExpert
from fedvla_sim import scene

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "src" / "fedvla_sim" / "config" / "sim_robot.yaml"
NS = "/sim_test"


class Probe:
    """A test-side node that records what the robot publishes."""

    def __init__(self, context):
        self.node = Node("probe", context=context)
        self.executor = rclpy.executors.SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        self.joints: JointState | None = None
        self.images: list[Image] = []
        self.infos: list[CameraInfo] = []
        self.success: list[bool] = []
        self.instruction: str | None = None
        self.commands: list[JointTrajectory] = []
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE)
        n = self.node
        n.create_subscription(JointState, f"{NS}/joint_states", lambda m: setattr(self, "joints", m), 10)
        n.create_subscription(Image, f"{NS}/camera/agentview/image_raw", self.images.append, 10)
        n.create_subscription(CameraInfo, f"{NS}/camera/agentview/camera_info", self.infos.append, 10)
        n.create_subscription(Bool, f"{NS}/task_success", lambda m: self.success.append(m.data), 10)
        n.create_subscription(String, f"{NS}/instruction", lambda m: setattr(self, "instruction", m.data), latched)
        n.create_subscription(JointTrajectory, f"{NS}/arm_controller/joint_trajectory", self.commands.append, 50)
        self.trajectory_pub = n.create_publisher(JointTrajectory, f"{NS}/arm_controller/joint_trajectory", 10)

    def spin_until(self, predicate, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.executor.spin_once(timeout_sec=0.05)
            if predicate():
                return True
        return False

    def spin_for(self, seconds: float) -> None:
        self.spin_until(lambda: False, seconds)

    def arm(self) -> np.ndarray:
        return np.array(self.joints.position)

    def send(self, names, positions, seconds: float) -> None:
        msg = JointTrajectory(joint_names=list(names))
        msg.points.append(JointTrajectoryPoint(positions=[float(p) for p in positions],
                                               time_from_start=Duration(sec=int(seconds), nanosec=int(seconds % 1 * 1e9))))
        self.trajectory_pub.publish(msg)

    def call(self, srv_type, name, request, timeout: float):
        client = self.node.create_client(srv_type, f"{NS}/{name}")
        assert client.wait_for_service(timeout_sec=20), f"service {name} not available"
        future = client.call_async(request)
        assert self.spin_until(future.done, timeout), f"{name} did not answer in {timeout} s"
        return future.result()


@pytest.fixture
def robot(processes):
    proc = processes.start(
        ["-m", "fedvla_sim.robot_node", "--ros-args", "-r", f"__ns:={NS}", "--params-file", str(CONFIG),
         "-p", "camera_size:=64", "-p", "task:=pick_up_green_block", "-p", "seed:=1"], name="sim_robot")
    return proc


def test_node_follows_trajectories_publishes_images_and_rejects_bad_input(robot, processes, rclpy_context):
    probe = Probe(rclpy_context)
    assert probe.spin_until(lambda: probe.joints is not None and len(probe.images) >= 2, 40), processes.log(robot)

    # Images: declared encoding and size, with a matching camera_info.
    img = probe.images[-1]
    assert (img.encoding, img.height, img.width, img.step) == ("rgb8", 64, 64, 192)
    assert len(img.data) == 64 * 64 * 3 and np.frombuffer(bytes(img.data), np.uint8).std() > 5
    assert probe.spin_until(lambda: probe.infos, 5)
    assert probe.infos[-1].k[2] == 32.0 and probe.infos[-1].width == 64
    assert list(probe.joints.name) == list(scene.ROS_JOINT_NAMES)
    assert probe.spin_until(lambda: probe.instruction is not None, 5)
    assert "green" in probe.instruction

    # A trajectory naming an unknown joint: logged rejection, no motion.
    start = probe.arm()
    bad_names = list(scene.ARM_JOINTS[:6]) + ["panda_joint9"]
    probe.send(bad_names, start[:7] + 0.4, 0.5)
    probe.spin_for(1.5)
    np.testing.assert_allclose(probe.arm()[:7], start[:7], atol=2e-3)
    assert probe.spin_until(lambda: "unknown joint names" in processes.log(robot), 5), processes.log(robot)
    assert "rejected trajectory" in processes.log(robot)

    # A good trajectory (arm + gripper in one message) brings the arm within 0.02 rad of its goal.
    goal = start.copy()
    goal[:7] += np.array([0.3, 0.2, -0.2, 0.25, 0.2, -0.2, 0.4])
    goal[7] = 0.01
    probe.send(scene.ROS_JOINT_NAMES, goal, 1.0)
    reached = probe.spin_until(lambda: np.max(np.abs(probe.arm()[:7] - goal[:7])) < 0.02
                               and abs(probe.arm()[7] - goal[7]) < 0.005, 15)
    assert reached, f"arm at {probe.arm()}, goal {goal}"
    probe.node.destroy_node()


def test_node_reset_and_expert_services(robot, processes, rclpy_context):
    probe = Probe(rclpy_context)
    assert probe.spin_until(lambda: probe.joints is not None, 40), processes.log(robot)

    bad = probe.call(ResetTask, "reset_task", ResetTask.Request(task="no_such_task", seed=0), 20)
    assert not bad.success and "known tasks" in bad.message
    reply = probe.call(ResetTask, "reset_task", ResetTask.Request(task="push_blue_block_left", seed=2), 20)
    assert reply.success and "blue" in reply.instruction
    assert probe.spin_until(lambda: probe.instruction == reply.instruction, 5)

    result = probe.call(RunExpert, "run_expert", RunExpert.Request(max_steps=0), 60)
    assert result.success, (result.message, processes.log(robot))
    # The expert drove the arm through the controller topic, like a teleoperator.
    assert len(probe.commands) >= result.steps * 0.9
    assert list(probe.commands[-1].joint_names) == list(scene.ROS_JOINT_NAMES)
    assert probe.spin_until(lambda: probe.success and probe.success[-1], 5)
    probe.node.destroy_node()


def test_node_refuses_non_finite_and_ragged_trajectories_and_bad_service_requests(robot, processes, rclpy_context):
    probe = Probe(rclpy_context)
    assert probe.spin_until(lambda: probe.joints is not None, 40), processes.log(robot)
    start = probe.arm()
    names = list(scene.ROS_JOINT_NAMES)
    bad = []
    nan_goal = start.copy()
    nan_goal[2] = float("nan")
    bad.append(("must be finite", names, [nan_goal], [0.5]))
    bad.append(("needs 2 positions", names[:2], [start[:1]], [0.5]))  # 2 joint names, 1 position (issue 20)
    bad.append(("needs 8 positions", names, [start, start[:3]], [0.5, 1.0]))  # ragged points
    bad.append(("increase strictly", names, [start + 0.01, start + 0.02], [0.5, 0.5]))
    bad.append(("must be finite", names, [np.full(len(names), np.inf)], [0.5]))
    for _, joint_names, rows, times in bad:
        msg = JointTrajectory(joint_names=joint_names)
        for row, t in zip(rows, times):
            msg.points.append(JointTrajectoryPoint(positions=[float(v) for v in row],
                                                   time_from_start=Duration(sec=int(t), nanosec=int(t % 1 * 1e9))))
        probe.trajectory_pub.publish(msg)
        probe.spin_for(1.1)  # rejections are logged at most once a second
    future = JointTrajectory(joint_names=names)
    future.header.stamp.sec = 4_000_000_000 // 2  # year 2033: would freeze the arm's command until then
    future.points.append(JointTrajectoryPoint(positions=[float(v) for v in start + 0.05], time_from_start=Duration(sec=1)))
    probe.trajectory_pub.publish(future)
    bad.append(("in the future",))
    probe.spin_for(1.1)
    np.testing.assert_allclose(probe.arm(), start, atol=2e-3)  # the arm held
    log = processes.log(robot)
    for why, *_ in bad:
        assert why in log, log[-3000:]
    assert robot.poll() is None and "Traceback" not in log

    # Randomized malformed trajectories (bounded: 60 messages): the node lives, the joint states stay finite.
    rng = np.random.default_rng(20)
    for _ in range(60):
        msg = JointTrajectory(joint_names=list(rng.choice(names + ["nope", ""], size=rng.integers(0, 10))))
        for _ in range(rng.integers(0, 4)):
            row = rng.choice([np.nan, np.inf, -np.inf, 0.0, 0.1, 5.0], size=rng.integers(0, 10))
            msg.points.append(JointTrajectoryPoint(positions=[float(v) for v in row],
                                                   time_from_start=Duration(sec=int(rng.integers(-2, 3)))))
        probe.trajectory_pub.publish(msg)
        probe.spin_for(0.02)
    probe.spin_for(1.0)
    assert robot.poll() is None and np.all(np.isfinite(probe.arm())), processes.log(robot)[-3000:]

    reply = probe.call(ResetTask, "reset_task", ResetTask.Request(task="", seed=-3), 20)
    assert not reply.success and "seed must be >= 0" in reply.message
    reply = probe.call(ResetTask, "reset_task", ResetTask.Request(task="x" * 5000, seed=0), 20)
    assert not reply.success and len(reply.message) < 1000 and "known tasks: " in reply.message
    reply = probe.call(RunExpert, "run_expert", RunExpert.Request(max_steps=4_000_000_000), 20)
    assert not reply.success and "max_steps" in reply.message
    assert robot.poll() is None

    # the current task and seed, latched, for the fed client's episode metadata
    infos = []
    latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE)
    probe.node.create_subscription(String, f"{NS}/task_info", lambda m: infos.append(json.loads(m.data)), latched)
    assert probe.spin_until(lambda: infos, 10)
    assert (infos[-1]["task"], infos[-1]["seed"]) == ("pick_up_green_block", 1)
    reply = probe.call(ResetTask, "reset_task", ResetTask.Request(task="push_blue_block_left", seed=7), 20)
    assert reply.success
    assert probe.spin_until(lambda: infos[-1]["task"] == "push_blue_block_left", 10)
    assert infos[-1]["seed"] == 7 and infos[-1]["instruction"] == reply.instruction and infos[-1]["suite"] == "panda"
    probe.node.destroy_node()


def test_demonstration_recorded_through_ros_carries_the_sims_task_and_seed(robot, processes, rclpy_context, tmp_path):
    from fedvla_core.episodes import list_episodes, read_episode

    episodes = tmp_path / "episodes"
    fed = processes.start(
        ["-m", "fedvla_fed_client.client_node", "--ros-args", "-r", f"__ns:={NS}", "-p", f"episode_dir:={episodes}",
         "-p", "camera_names:=['agentview']", "-p", "federation_enabled:=false"], name="fed_client")
    probe = Probe(rclpy_context)
    assert probe.spin_until(lambda: probe.joints is not None, 40), processes.log(robot)
    reply = probe.call(ResetTask, "reset_task", ResetTask.Request(task="pick_up_green_block", seed=5), 20)
    assert reply.success
    probe.spin_for(1.0)  # the fed client takes the new task_info
    result = probe.call(RunExpert, "fed_client/record_demonstration", RunExpert.Request(max_steps=0), 90)
    assert result.success, (result.message, processes.log(fed)[-2000:])
    episode = read_episode(list_episodes(episodes)[0])
    meta = episode.metadata
    assert (meta["task"], meta["seed"], meta["suite"], meta["source"]) == ("pick_up_green_block", 5, "panda",
                                                                          "scripted_expert")
    assert meta["instruction"] == reply.instruction and episode.success and episode.num_steps > 10
    assert fed.poll() is None
    probe.node.destroy_node()
