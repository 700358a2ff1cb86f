"""The fed client node in a real process under malformed input, and with rounds off.

Issue 20: one malformed message (a JointTrajectory with 2 joint names and 1 position, a feedback
episode_id that is not a file stem) used to end the node, and with it `fedvla up robot`.
"""
import json
import random
import threading
import time

import numpy as np
import pytest
import rclpy
from action_msgs.msg import GoalInfo, GoalStatus, GoalStatusArray
from builtin_interfaces.msg import Duration
from rcl_interfaces.msg import ParameterType
from rcl_interfaces.srv import DescribeParameters
from rclpy.action import ActionClient
from rclpy.executors import MultiThreadedExecutor
from rclpy.qos import DurabilityPolicy, QoSProfile, qos_profile_action_status_default, qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, String
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint
from unique_identifier_msgs.msg import UUID

from fedvla_core.episodes.recorder import ActionLayout
from fedvla_core.episodes import list_episodes, read_episode, read_metadata
from fedvla_core.episodes.input_checks import MAX_LOG_CHARS
from fedvla_msgs.action import ExecuteInstruction
from fedvla_msgs.msg import RoundStatus
from fedvla_msgs.srv import TriggerRound
from fedvla_ros.image_conversion import numpy_to_image
from conftest import wait_for

pytestmark = pytest.mark.ros
LATCHED = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL)
NAN, INF = float("nan"), float("inf")


_wait_for = wait_for


class Robot:
    """The test's side of the robot's topics, spun in a background thread."""

    def __init__(self, context, cameras=("cam",)):
        self.node = rclpy.create_node("test_robot_io", context=context)
        self.executor = MultiThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        threading.Thread(target=self.executor.spin, daemon=True).start()
        n = self.node
        self.images = {c: n.create_publisher(Image, f"camera/{c}/image_raw", qos_profile_sensor_data) for c in cameras}
        self.joints = n.create_publisher(JointState, "joint_states", 10)
        self.trajectory = n.create_publisher(JointTrajectory, "arm_controller/joint_trajectory", 10)
        self.feedback = n.create_publisher(ExecuteInstruction.Impl.FeedbackMessage,
                                           "execute_instruction/_action/feedback", 10)
        self.status = n.create_publisher(GoalStatusArray, "execute_instruction/_action/status",
                                         qos_profile_action_status_default)
        self.instruction = n.create_publisher(String, "instruction", LATCHED)
        self.task_info = n.create_publisher(String, "task_info", LATCHED)
        self.teleop_start = n.create_publisher(String, "fed_client/demonstration/start", 10)
        self.teleop_stop = n.create_publisher(Bool, "fed_client/demonstration/stop", 10)
        self.statuses: list[RoundStatus] = []
        n.create_subscription(RoundStatus, "round_status", self.statuses.append, 10)
        self.layout = ActionLayout()
        self._k = 0
        n.create_timer(1 / 30, self.publish_sensors)

    def publish_sensors(self):
        self._k += 1
        for pub in self.images.values():
            pub.publish(numpy_to_image(np.full((16, 16, 3), self._k % 255, np.uint8), "rgb8"))
        self.joints.publish(JointState(name=self.layout.joint_names, position=[0.1] * 7 + [0.04]))

    def call(self, srv_type, name, request, timeout=20.0):
        client = self.node.create_client(srv_type, name)
        assert client.wait_for_service(timeout_sec=timeout), f"no {name}"
        future = client.call_async(request)
        _wait_for(future.done, timeout, f"{name} answer")
        return future.result()

    def close(self):
        self.executor.shutdown()
        self.node.destroy_node()


def _point(positions, seconds):
    return JointTrajectoryPoint(positions=[float(v) for v in positions],
                                time_from_start=Duration(sec=int(seconds), nanosec=int(seconds % 1 * 1e9)))


def _feedback(episode_id, instruction, uuid_bytes):
    msg = ExecuteInstruction.Impl.FeedbackMessage()
    msg.goal_id = UUID(uuid=list(uuid_bytes))
    msg.feedback = ExecuteInstruction.Feedback(step=1, phase="running", episode_id=episode_id, instruction=instruction)
    return msg


def _random_bad_messages(rng: random.Random, layout: ActionLayout):
    """[(publisher, message), ...] groups, shuffled: malformed input of every kind the node subscribes to."""
    names = layout.joint_names
    weird = ["", "../escape", "a/b", ".hidden", "x" * 600, "line\nbreak", "nul\x00byte", "ünïcödé", "   "]
    out = []
    for _ in range(25):
        n = rng.randint(0, len(names))
        values = [rng.choice([NAN, INF, -INF, 0.1, 1e308]) for _ in range(rng.randint(0, 10))]
        out.append(("joints", JointState(name=rng.sample(names, n) + rng.choice([[], [names[0]], [""]]),
                                         position=values, velocity=[0.0] * rng.randint(0, 3))))
        rows = [[rng.choice([NAN, INF, 0.2, -0.1]) for _ in range(rng.randint(0, 9))] for _ in range(rng.randint(1, 4))]
        out.append(("trajectory", JointTrajectory(
            joint_names=rng.sample(names, rng.randint(0, 8)) + rng.choice([[], ["panda_joint1"], ["nope"]]),
            points=[_point(r, rng.choice([-1.0, 0.0, 0.5, 0.5, 1e9])) for r in rows])))
        enc = rng.choice(["rgb8", "bgr8", "mono8", "16UC1", "", "jpeg", "x" * 300])
        h, w = rng.choice([(16, 16), (0, 16), (100000, 1), (16, 16)])
        data = bytes(rng.randint(0, 3 * 16 * 16 + 10))
        out.append(("image", Image(height=h, width=w, encoding=enc, step=rng.choice([0, w, 3 * w]), data=data)))
        uuid = rng.randbytes(16)
        feedback = ("feedback", _feedback(rng.choice(weird), rng.choice(weird + ["push the block"]), uuid))
        # the status of that fuzzed goal (some terminal: the node asks a server that never had it for the result)
        gid = UUID(uuid=list(uuid if rng.random() < 0.5 else rng.randbytes(16)))
        out.append((feedback, ("status", GoalStatusArray(status_list=[GoalStatus(goal_info=GoalInfo(goal_id=gid), status=rng.choice(
            [GoalStatus.STATUS_SUCCEEDED, GoalStatus.STATUS_ABORTED, GoalStatus.STATUS_CANCELED, 2, -7, 99]))]))))
        out.append(("instruction", String(data=rng.choice(weird))))
        out.append(("task_info", String(data=rng.choice(["{", "[]", "null", '{"task": 3}', '{"seed": "x"}',
                                                         '{"seed": true}', "x" * 2000]))))
        out.append(("teleop_start", String(data=rng.choice(["", "\x07bell", "y" * 5000]))))
        out.append(("teleop_stop", Bool(data=rng.random() < 0.5)))
    out = [group if isinstance(group[0], tuple) else (group,) for group in out]
    rng.shuffle(out)
    return [item for group in out for item in group]


def test_malformed_input_on_every_topic_is_refused_and_the_node_keeps_recording(rclpy_context, processes, tmp_path):
    episodes = tmp_path / "episodes"
    processes.start(["tests/fedvla_msgs/minimal_execute_server.py"], "server")
    node_proc = processes.start(
        ["-m", "fedvla_fed_client.client_node", "--ros-args",
         "-p", f"episode_dir:={episodes}", "-p", "camera_names:=['cam']", "-p", "record_rate_hz:=20.0",
         "-p", "supernode_enabled:=false", "-p", "status_rate_hz:=5.0"], "fed_client")
    robot = Robot(rclpy_context)
    try:
        _wait_for(lambda: robot.node.count_subscribers("execute_instruction/_action/feedback") > 0
                  and robot.node.count_subscribers("arm_controller/joint_trajectory") > 0, 30,
                  "the fed client's subscriptions\n" + processes.log(node_proc))
        # The two defects of issue 20, first.
        robot.trajectory.publish(JointTrajectory(joint_names=["panda_joint1", "panda_joint2"],
                                                 points=[_point([0.1], 0.5)]))
        robot.feedback.publish(_feedback("../../etc/evil", "push the block", bytes(range(16))))
        _wait_for(lambda: "2 joint names" in processes.log(node_proc), 10, "the trajectory refusal\n"
                  + processes.log(node_proc))
        _wait_for(lambda: "not a plain file stem" in processes.log(node_proc), 10, "the episode id refusal")
        assert node_proc.poll() is None, processes.log(node_proc)

        # Randomized malformed messages on every subscribed topic (bounded: 225 messages, ~10 s).
        rng = random.Random(20)
        pubs = {"joints": robot.joints, "trajectory": robot.trajectory, "image": robot.images["cam"],
                "feedback": robot.feedback, "status": robot.status, "instruction": robot.instruction,
                "task_info": robot.task_info, "teleop_start": robot.teleop_start, "teleop_stop": robot.teleop_stop}
        t0 = time.monotonic()
        for topic, msg in _random_bad_messages(rng, robot.layout):
            pubs[topic].publish(msg)
            time.sleep(0.02)
            assert time.monotonic() - t0 < 30
        time.sleep(1.0)
        assert node_proc.poll() is None, processes.log(node_proc)[-3000:]

        # Still a working recorder: a real goal becomes an episode with its id, and nothing non-finite was kept.
        action = ActionClient(robot.node, ExecuteInstruction, "execute_instruction")
        assert action.wait_for_server(timeout_sec=30)
        goal = ExecuteInstruction.Goal(instruction="stack the red block on the green block", max_steps=40)
        future = action.send_goal_async(goal)
        handle = _wait_for(lambda: future.done() and future.result(), 15, "goal acceptance")
        result = handle.get_result_async()
        _wait_for(result.done, 20, "the goal's result")
        stem = result.result().result.episode_id
        path = _wait_for(lambda: [p for p in list_episodes(episodes) if p.stem == stem], 15,
                         "the goal's episode\n" + processes.log(node_proc)[-3000:])[0]
        episode = read_episode(path)
        assert episode.success and episode.num_steps >= 2
        assert np.all(np.isfinite(episode.joint_positions)) and np.all(np.isfinite(episode.actions))
        for other in list_episodes(episodes):  # episodes started by fuzzed feedback hold only finite, plain data
            meta = read_metadata(other)
            assert "/" not in other.stem and not other.stem.startswith(".")
            assert meta["instruction"].isprintable()
        assert node_proc.poll() is None
        # every log line stays bounded, however large the input was
        lines = processes.log(node_proc).splitlines()
        assert max(len(line) for line in lines) < 2 * MAX_LOG_CHARS + 200, max(lines, key=len)
        assert "Traceback" not in processes.log(node_proc)
    finally:
        robot.close()


@pytest.mark.parametrize("args, reason", [
    ([], "no SuperNode credentials"),  # the README's plain robot: no certificates, insecure not asked for
    (["-p", "federation_enabled:=false"], "federation_enabled:=false"),
])
def test_rounds_off_the_node_logs_episodes_and_says_so(rclpy_context, processes, tmp_path, args, reason):
    episodes = tmp_path / "episodes"
    processes.start(["tests/fedvla_msgs/minimal_execute_server.py"], "server")
    node_proc = processes.start(
        ["-m", "fedvla_fed_client.client_node", "--ros-args", "-p", f"episode_dir:={episodes}",
         "-p", "camera_names:=['cam']", "-p", "record_rate_hz:=20.0", "-p", "status_rate_hz:=5.0",
         "-p", "min_new_episodes:=1", "-p", "round_interval_s:=0.0", *args], "fed_client")
    robot = Robot(rclpy_context)
    try:
        robot.task_info.publish(String(data=json.dumps({"task": "pick_up_green_block", "seed": 42, "suite": "panda"})))
        status = _wait_for(lambda: robot.statuses and robot.statuses[-1], 30, "RoundStatus\n" + processes.log(node_proc))
        assert status.state == "off" and reason in status.message
        log = processes.log(node_proc)
        assert sum("rounds are off" in line for line in log.splitlines()) >= 1 and reason in log
        answer = robot.call(TriggerRound, "fed_client/trigger_round", TriggerRound.Request(ignore_min_episodes=True))
        assert not answer.accepted and "rounds are off" in answer.message
        # the switch is a typed parameter with its help text (what `ros2 param describe` shows)
        described = robot.call(DescribeParameters, "fed_client/describe_parameters",
                               DescribeParameters.Request(names=["federation_enabled"])).descriptors[0]
        assert described.type == ParameterType.PARAMETER_BOOL and "rounds are off" in described.description

        action = ActionClient(robot.node, ExecuteInstruction, "execute_instruction")
        assert action.wait_for_server(timeout_sec=30)
        _wait_for(lambda: robot.node.count_subscribers("execute_instruction/_action/feedback") > 0, 30, "subscription")
        future = action.send_goal_async(ExecuteInstruction.Goal(instruction="pick up the green block", max_steps=40))
        handle = _wait_for(lambda: future.done() and future.result(), 15, "goal acceptance")
        result = handle.get_result_async()
        _wait_for(result.done, 20, "the goal's result")
        path = _wait_for(lambda: list_episodes(episodes), 15, "the episode\n" + processes.log(node_proc))[0]
        meta = read_metadata(path)
        # episodes carry the sim's task and seed (task_info), and no round ever starts
        assert (meta["task"], meta["seed"], meta["suite"]) == ("pick_up_green_block", 42, "panda")
        time.sleep(1.0)
        assert all(s.state == "off" for s in robot.statuses)
        assert not (episodes / "supernode.log").exists() and not (episodes / ".round_report.json").exists()
        assert node_proc.poll() is None
    finally:
        robot.close()
