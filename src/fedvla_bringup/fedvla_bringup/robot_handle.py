"""A driver's view of one running robot: its ROS domain, goals, sim resets, demonstrations, round status.

Used by the fleet demo (and usable from scripts and notebooks). Each robot lives in its own ROS
domain, so each handle owns an rclpy Context initialised with that domain id; one process can
drive the whole fleet.
"""
from __future__ import annotations

import threading
import time

import rclpy
from rclpy.context import Context

from fedvla_msgs.msg import RoundStatus
from fedvla_msgs.srv import ResetTask, RunExpert, TriggerRound
from fedvla_policy.goal_client import GoalClient


class RobotHandle:
    def __init__(self, namespace: str, domain_id: int):
        self.namespace = namespace.strip("/")
        self.context = Context()
        rclpy.init(context=self.context, domain_id=int(domain_id))
        self.goals = GoalClient(namespace=self.namespace, context=self.context)
        self.node = self.goals.node  # one node, spun by the goal client's background executor
        self._reset = self.node.create_client(ResetTask, "reset_task")
        self._demo = self.node.create_client(RunExpert, "fed_client/record_demonstration")
        self._trigger = self.node.create_client(TriggerRound, "fed_client/trigger_round")
        self.status: RoundStatus | None = None
        self.node.create_subscription(RoundStatus, "round_status", self._on_status, 10)

    def _on_status(self, msg: RoundStatus) -> None:
        self.status = msg

    def _call(self, client, request, timeout: float):
        if not client.wait_for_service(timeout_sec=min(timeout, 30.0)):
            raise TimeoutError(f"/{self.namespace}/{client.srv_name} is not available")
        done = threading.Event()
        future = client.call_async(request)
        future.add_done_callback(lambda _: done.set())
        if not done.wait(timeout):
            raise TimeoutError(f"/{self.namespace}/{client.srv_name} did not answer in {timeout:.0f} s")
        return future.result()

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until the sim, the policy server and the fed client answer."""
        deadline = time.monotonic() + timeout
        for client in (self._reset, self._demo, self._trigger):
            if not client.wait_for_service(timeout_sec=max(0.1, deadline - time.monotonic())):
                raise TimeoutError(f"/{self.namespace}/{client.srv_name} did not come up in {timeout:.0f} s")
        if not self.goals.wait_for_server(timeout=max(0.1, deadline - time.monotonic())):
            raise TimeoutError(f"/{self.namespace}/execute_instruction did not come up")

    def reset(self, task: str, seed: int) -> str:
        """Reset the sim to (task, seed); returns the instruction for this episode."""
        response = self._call(self._reset, ResetTask.Request(task=task, seed=int(seed)), 60.0)
        if not response.success:
            raise RuntimeError(f"reset_task {task} {seed} failed: {response.message}")
        return response.instruction

    def record_demonstration(self, max_steps: int = 0) -> bool:
        """Let the fed client record the sim's scripted expert as one episode; True on success."""
        return bool(self._call(self._demo, RunExpert.Request(max_steps=int(max_steps)), 300.0).success)

    def trigger_round(self) -> bool:
        return bool(self._call(self._trigger, TriggerRound.Request(ignore_min_episodes=True), 30.0).accepted)

    def close(self) -> None:
        self.goals.close()
        rclpy.try_shutdown(context=self.context)
