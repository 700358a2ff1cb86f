"""ExecuteInstruction between two real processes over DDS on loopback."""
import time

import pytest
import rclpy
from rclpy.action import ActionClient

from fedvla_msgs.action import ExecuteInstruction

pytestmark = pytest.mark.ros


def _wait(executor, future, timeout):
    deadline = time.monotonic() + timeout
    while not future.done() and time.monotonic() < deadline:
        executor.spin_once(timeout_sec=0.05)
    assert future.done(), "timed out waiting for the action server"
    return future.result()


@pytest.fixture
def client(rclpy_context, processes):
    server = processes.start(["tests/fedvla_msgs/minimal_execute_server.py"], "server")
    node = rclpy.create_node("test_execute_client", context=rclpy_context)
    executor = rclpy.executors.SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    action = ActionClient(node, ExecuteInstruction, "execute_instruction")
    assert action.wait_for_server(timeout_sec=30), processes.log(server)
    yield action, executor
    action.destroy()
    node.destroy_node()


def test_goal_gets_feedback_and_result(client):
    action, executor = client
    feedback = []
    goal = ExecuteInstruction.Goal(instruction="put the red block in the bowl", max_steps=5)
    handle = _wait(executor, action.send_goal_async(goal, feedback_callback=lambda m: feedback.append(m.feedback)), 20)
    assert handle.accepted
    result = _wait(executor, handle.get_result_async(), 20).result
    assert result.success and result.steps == 5
    assert result.reason == "done: put the red block in the bowl"
    assert len(feedback) >= 3
    assert [f.step for f in feedback] == sorted(f.step for f in feedback)
    assert feedback[-1].progress == pytest.approx(1.0)


def test_empty_instruction_is_rejected(client):
    action, executor = client
    handle = _wait(executor, action.send_goal_async(ExecuteInstruction.Goal(instruction="   ")), 20)
    assert not handle.accepted
