"""A minimal ExecuteInstruction action server, run as its own process by the interface tests.

It exercises the generated action types over real DDS: rejects empty instructions in the goal
callback, and for accepted goals sends `steps` feedback messages before succeeding.
"""
import sys
import time

import rclpy
from rclpy.action import ActionServer, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node

from fedvla_msgs.action import ExecuteInstruction


class MinimalExecuteServer(Node):
    def __init__(self):
        super().__init__("minimal_execute_server")
        self._server = ActionServer(self, ExecuteInstruction, "execute_instruction", self._execute,
                                    goal_callback=self._on_goal, callback_group=ReentrantCallbackGroup())
        self._count = 0
        self.get_logger().info("ready")

    def _on_goal(self, goal):
        if not goal.instruction.strip():
            self.get_logger().warning("rejecting goal: empty instruction")
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _execute(self, handle):
        steps = handle.request.max_steps or 5
        self._count += 1
        episode_id = f"test-episode-{self._count}"
        for i in range(steps):
            fb = ExecuteInstruction.Feedback(step=i + 1, phase="running", progress=(i + 1) / steps,
                                             mean_active_experts=1.0, inference_latency_ms=1.0,
                                             episode_id=episode_id, instruction=handle.request.instruction)
            handle.publish_feedback(fb)
            time.sleep(0.05)  # a real server would step its control loop here
        handle.succeed()
        return ExecuteInstruction.Result(success=True, steps=steps, reason="done: " + handle.request.instruction,
                                         episode_id=episode_id)


def main():
    rclpy.init(args=sys.argv)
    node = MinimalExecuteServer()
    executor = MultiThreadedExecutor()
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
