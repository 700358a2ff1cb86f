"""The fed client node in a real process: a goal becomes an episode; the round gate and status follow."""
import threading
import time

import numpy as np
import pytest
import rclpy
from rclpy.action import ActionClient
from rclpy.executors import MultiThreadedExecutor
from sensor_msgs.msg import JointState

from fedvla_core.episodes.recorder import ActionLayout
from fedvla_core.episodes import list_episodes, read_episode
from fedvla_core.federated.round_gate import RoundReport, read_gate, write_report
from fedvla_msgs.action import ExecuteInstruction
from fedvla_msgs.msg import RoundStatus
from fedvla_ros.image_conversion import numpy_to_image
from conftest import wait_for

pytestmark = pytest.mark.ros


_wait_for = wait_for


def test_goal_is_logged_as_episode_and_round_report_is_published(rclpy_context, processes, tmp_path):
    episodes = tmp_path / "episodes"
    processes.start(["tests/fedvla_msgs/minimal_execute_server.py"], "server")
    node_proc = processes.start(
        ["-m", "fedvla_fed_client.client_node", "--ros-args",
         "-p", f"episode_dir:={episodes}", "-p", "camera_names:=['cam']", "-p", "record_rate_hz:=20.0",
         "-p", "supernode_enabled:=false", "-p", "min_new_episodes:=1", "-p", "round_interval_s:=0.0",
         "-p", "status_rate_hz:=5.0", "-p", "robot_id:=robotX"], "fed_client")

    node = rclpy.create_node("test_robot_io", context=rclpy_context)
    executor = MultiThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    layout = ActionLayout()
    image_pub = node.create_publisher(type(numpy_to_image(np.zeros((2, 2, 3), np.uint8))), "camera/cam/image_raw", 10)
    joints_pub = node.create_publisher(JointState, "joint_states", 10)
    statuses = []
    node.create_subscription(RoundStatus, "round_status", statuses.append, 10)
    frame = {"k": 0}

    def publish_sensors():
        frame["k"] += 1
        image_pub.publish(numpy_to_image(np.full((16, 16, 3), frame["k"] % 255, np.uint8), "rgb8"))
        joints_pub.publish(JointState(name=layout.joint_names, position=[0.1] * 7 + [0.04]))

    node.create_timer(1 / 30, publish_sensors)
    try:
        action = ActionClient(node, ExecuteInstruction, "execute_instruction")
        assert action.wait_for_server(timeout_sec=30)
        _wait_for(lambda: node.count_subscribers("execute_instruction/_action/feedback") > 0, 30,
                  "the fed client to subscribe to the action feedback\n" + processes.log(node_proc))
        _wait_for(lambda: read_gate(episodes).reason.startswith("waiting_for_episodes"), 20, "the node's first gate")
        goal = ExecuteInstruction.Goal(instruction="stack the red block on the green block", max_steps=100)
        handle = _wait_for(lambda: (f := action.send_goal_async(goal)) and _wait_for(f.done, 10, "goal") and f.result(),
                           15, "goal acceptance")
        assert handle.accepted
        # while the goal (100 steps x 50 ms) runs the robot is busy: the gate is closed
        gate = _wait_for(lambda: (g := read_gate(episodes)) and "idle" in g.reason and g, 4.0, "a closed gate")
        assert not gate.open
        result_future = handle.get_result_async()
        _wait_for(result_future.done, 20, "the goal's result")
        files = _wait_for(lambda: list_episodes(episodes), 15, "the episode file\n" + processes.log(node_proc))
        episode = read_episode(files[0])
        assert files[0].stem == result_future.result().result.episode_id
        assert episode.success and episode.instruction == goal.instruction
        # 5 s of goal at 20 Hz would be 100 steps; discovery and a busy CI machine can eat most of it, but a
        # goal-long episode must still hold several steps (measured: 6 under full CI load).
        assert episode.num_steps >= 4
        # one new episode >= min_new_episodes and the robot is idle: the gate opens
        _wait_for(lambda: read_gate(episodes).open, 10, "the gate to open")
        write_report(episodes, RoundReport(server_round=7, state="done", bytes_up=1234, bytes_down=5678,
                                           metrics={"train_loss": 0.25}))
        status = _wait_for(lambda: [s for s in statuses if s.round == 7], 10, "RoundStatus of round 7")[-1]
        assert status.robot_id == "robotX" and status.bytes_up == 1234 and status.bytes_down == 5678
        assert {m.name: m.value for m in status.metrics}["train_loss"] == pytest.approx(0.25)
    finally:
        executor.shutdown()
        node.destroy_node()
