"""Fuzz one whole simulated robot with malformed messages on every topic its nodes subscribe to.

A real sim robot, policy server (shipped base checkpoint) and fed client (rounds off) run as
separate processes. A fuzzer node publishes randomized bad input (non-finite, ragged, mis-sized,
unknown names, garbage text) on every subscribed topic and calls every service with bad requests,
while goals run. Bounded in count and time (fixed seed). Afterwards every node is still alive and
answers, and no trajectory that a node published (the fuzzer's own are tagged) holds a non-finite value.
"""
from __future__ import annotations

import math
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rclpy
from action_msgs.msg import GoalStatus, GoalStatusArray
from builtin_interfaces.msg import Duration
from rclpy.executors import MultiThreadedExecutor
from rclpy.qos import (DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_action_status_default,
                       qos_profile_sensor_data)
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, String
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint
from unique_identifier_msgs.msg import UUID

from fedvla_msgs.action import ExecuteInstruction
from fedvla_msgs.srv import LoadCheckpoint, ResetTask, RunExpert, TriggerRound
from fedvla_policy.goal_client import GoalClient

REPO = Path(__file__).resolve().parents[1]
BASE_CHECKPOINT = REPO / "checkpoints" / "panda_base"
FUZZ_TAG = "fuzz"  # header.frame_id of the fuzzer's own trajectories
CAMERAS = ("agentview", "wrist")  # the sim's and the base checkpoint's; fuzzed topics also include an unknown camera
JOINTS = [f"panda_joint{i}" for i in range(1, 8)] + ["panda_finger_joint1"]
BAD_FLOATS = [math.nan, math.inf, -math.inf, 1e308, -1e308, 0.0]
ROUNDS = 25  # fuzz rounds; each publishes once on every topic and calls one service


def _bad_float(rng) -> float:
    return BAD_FLOATS[rng.integers(len(BAD_FLOATS))] if rng.random() < 0.6 else float(rng.normal(0, 3))


def _floats(rng, n) -> list[float]:
    return [_bad_float(rng) for _ in range(n)]


def _text(rng) -> str:
    kinds = ["", " \t\n", "\x00\x01\x02", "sing a song", "é" * 300, "x" * 20000, "{not json",
             '{"task": 3, "seed": "nine"}', "../../../etc/passwd", "a/b/c", "put the red block in the bowl" * 50]
    return kinds[rng.integers(len(kinds))]


def _image(rng) -> Image:
    msg = Image()
    msg.height, msg.width = int(rng.choice([0, 1, 32, 64, 100000])), int(rng.choice([0, 1, 32, 65535]))
    msg.encoding = str(rng.choice(["rgb8", "bgr8", "mono8", "rgba8", "16UC1", "bogus", ""]))
    msg.step = int(rng.integers(0, 400))
    msg.data = bytes(rng.integers(0, 256, int(rng.choice([0, 1, 17, 3072, 12288])), dtype=np.uint8))
    return msg


def _joint_state(rng) -> JointState:
    msg = JointState()
    names = list(rng.permutation(JOINTS + ["elbow_of_another_robot"]))[: int(rng.integers(0, 10))]
    msg.name = [str(n) for n in names]
    msg.position = _floats(rng, int(rng.integers(0, 12)))
    msg.velocity = _floats(rng, int(rng.integers(0, 12)))
    msg.effort = _floats(rng, int(rng.integers(0, 3)))
    return msg


def _trajectory(rng) -> JointTrajectory:
    msg = JointTrajectory()
    msg.header.frame_id = FUZZ_TAG
    msg.joint_names = [str(n) for n in list(rng.permutation(JOINTS + ["unknown_joint"]))[: int(rng.integers(0, 10))]]
    for _ in range(int(rng.integers(0, 4))):
        point = JointTrajectoryPoint()
        point.positions = _floats(rng, int(rng.integers(0, 10)))
        point.velocities = _floats(rng, int(rng.integers(0, 10)))
        point.time_from_start = Duration(sec=int(rng.integers(0, 3)), nanosec=int(rng.integers(0, 10**9)))
        msg.points.append(point)
    return msg


def _feedback(rng) -> ExecuteInstruction.Impl.FeedbackMessage:
    msg = ExecuteInstruction.Impl.FeedbackMessage()
    msg.goal_id = UUID(uuid=[int(b) for b in rng.integers(0, 256, 16)])
    fb = msg.feedback
    fb.step = int(rng.integers(0, 2**32))
    fb.phase, fb.episode_id, fb.instruction = _text(rng), _text(rng), _text(rng)
    fb.progress, fb.mean_active_experts, fb.inference_latency_ms = (_bad_float(rng) for _ in range(3))
    return msg


def _status(rng) -> GoalStatusArray:
    msg = GoalStatusArray()
    for _ in range(int(rng.integers(0, 4))):
        status = GoalStatus()
        status.goal_info.goal_id = UUID(uuid=[int(b) for b in rng.integers(0, 256, 16)])
        status.status = int(rng.integers(-128, 128))
        msg.status_list.append(status)
    return msg


class Fuzzer:
    """Publishes bad input on every topic the robot's nodes subscribe to, and records the trajectories they publish."""

    def __init__(self, context, seed: int = 7):
        self.rng = np.random.default_rng(seed)
        self.node = rclpy.create_node("fuzzer", context=context)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        n = self.node
        self.publishers = {
            "image": [n.create_publisher(Image, f"camera/{c}/image_raw", qos_profile_sensor_data)
                      for c in (*CAMERAS, "unknown")],
            "joint_states": n.create_publisher(JointState, "joint_states", 10),
            "trajectory": n.create_publisher(JointTrajectory, "arm_controller/joint_trajectory", 10),
            "instruction_goal": n.create_publisher(String, "instruction_goal", 10),
            "instruction": n.create_publisher(String, "instruction", latched),
            "task_info": n.create_publisher(String, "task_info", latched),
            "task_success": n.create_publisher(Bool, "task_success", 10),
            "feedback": n.create_publisher(ExecuteInstruction.Impl.FeedbackMessage,
                                           "execute_instruction/_action/feedback", 10),
            "status": n.create_publisher(GoalStatusArray, "execute_instruction/_action/status",
                                         qos_profile_action_status_default),
            "demo_start": n.create_publisher(String, "fed_client/demonstration/start", 10),
            "demo_stop": n.create_publisher(Bool, "fed_client/demonstration/stop", 10),
        }
        self.services = [
            (n.create_client(LoadCheckpoint, "load_checkpoint"), LoadCheckpoint.Request, "path"),
            (n.create_client(ResetTask, "reset_task"), ResetTask.Request, None),
            (n.create_client(RunExpert, "run_expert"), RunExpert.Request, None),
            (n.create_client(RunExpert, "fed_client/record_demonstration"), RunExpert.Request, None),
            (n.create_client(TriggerRound, "fed_client/trigger_round"), TriggerRound.Request, None),
        ]
        self.bad_trajectories: list[JointTrajectory] = []
        self.node_trajectories = 0
        self._lock = threading.Lock()
        n.create_subscription(JointTrajectory, "arm_controller/joint_trajectory", self._on_trajectory, 100)
        self.executor = MultiThreadedExecutor(context=context)
        self.executor.add_node(n)
        self._thread = threading.Thread(target=self.executor.spin, daemon=True)
        self._thread.start()

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        if msg.header.frame_id == FUZZ_TAG:
            return
        values = [v for p in msg.points for v in (*p.positions, *p.velocities, *p.accelerations)]
        with self._lock:
            self.node_trajectories += 1
            if not all(math.isfinite(v) for v in values):
                self.bad_trajectories.append(msg)

    def _fill_request(self, request) -> object:
        """Every string field gets garbage, every number an out-of-range value."""
        for name, kind in request.get_fields_and_field_types().items():
            if kind == "string":
                setattr(request, name, _text(self.rng))
            elif kind in ("uint32", "int32", "uint64", "int64"):
                setattr(request, name, int(self.rng.choice([0, 2**31 - 1, 123456])))
            elif kind in ("float", "double"):
                setattr(request, name, float(self.rng.choice([0.0, -1.0, 1e30])))
        return request

    def fuzz_round(self) -> list:
        rng, pubs = self.rng, self.publishers
        for pub in pubs["image"]:
            pub.publish(_image(rng))
        pubs["joint_states"].publish(_joint_state(rng))
        pubs["trajectory"].publish(_trajectory(rng))
        for key in ("instruction_goal", "instruction", "task_info", "demo_start"):
            pubs[key].publish(String(data=_text(rng)))
        pubs["task_success"].publish(Bool(data=bool(rng.random() < 0.5)))
        pubs["demo_stop"].publish(Bool(data=bool(rng.random() < 0.5)))
        pubs["feedback"].publish(_feedback(rng))
        pubs["status"].publish(_status(rng))
        client, request_type, _ = self.services[int(rng.integers(len(self.services)))]
        return [client.call_async(self._fill_request(request_type()))] if client.service_is_ready() else []

    def close(self) -> None:
        self.executor.shutdown(timeout_sec=1.0)
        self._thread.join(timeout=2.0)
        self.node.destroy_node()


@pytest.mark.timeout(420)
def test_randomized_malformed_input_keeps_every_node_alive_and_no_non_finite_command(processes, tmp_path,
                                                                                   rclpy_context):
    sim = processes.start(["-m", "fedvla_sim.robot_node", "--ros-args", "--params-file",
                           "src/fedvla_sim/config/sim_robot.yaml", "-p", "camera_size:=64"], "sim")
    server = processes.start(["-m", "fedvla_policy.server_node", "--ros-args", "--params-file",
                              "src/fedvla_policy/config/policy_server.yaml", "-p", f"checkpoint:={BASE_CHECKPOINT}",
                              "-p", "control_rate_hz:=5.0",
                              "-p", "stale_input_timeout_s:=3.0"], "server")
    fed = processes.start(["-m", "fedvla_fed_client.client_node", "--ros-args", "--params-file",
                           "src/fedvla_fed_client/config/fed_client.yaml", "-p", "federation_enabled:=false",
                           "-p", f"episode_dir:={tmp_path / 'episodes'}"], "fed_client")
    nodes = {"sim": sim, "server": server, "fed_client": fed}
    client = GoalClient(context=rclpy_context)
    fuzzer = Fuzzer(rclpy_context)
    try:
        assert client.wait_for_server(120.0), processes.log(server)
        assert _wait(lambda: all(c.service_is_ready() for c, _, _ in fuzzer.services), 60.0), \
            {name: _tail(processes.log(p)) for name, p in nodes.items()}
        runs = [client.send("put the red block in the bowl", max_steps=40)]
        futures = []
        deadline = time.monotonic() + 90.0  # bounded in time as well as in count
        for i in range(ROUNDS):
            if time.monotonic() > deadline:
                break
            futures += fuzzer.fuzz_round()
            if i == ROUNDS // 2:  # a second goal starts while the sensors are still being fuzzed
                runs.append(client.send("pick up the green block", max_steps=40))
            time.sleep(0.2)
        for run in runs:
            run.wait(120.0)
        dead = {name: p.returncode for name, p in nodes.items() if p.poll() is not None}
        assert not dead, {name: _tail(processes.log(nodes[name])) for name in dead}
        assert _wait(lambda: all(f.done() for f in futures), 60.0), "a service left a bad request unanswered"
        # Still answering after the storm: a plain goal gets a result with a reason.
        after = client.send("put the red block in the bowl", max_steps=5)
        assert after.wait(120.0) and (after.result is not None or after.rejection_reason), _tail(processes.log(server))
        assert fuzzer.node_trajectories > 0, "no node published a trajectory: the fuzz never reached the controller path"
        assert not fuzzer.bad_trajectories, fuzzer.bad_trajectories[:1]
        assert all(p.poll() is None for p in nodes.values())
    finally:
        fuzzer.close()
        client.close()


def _tail(log: str, lines: int = 25, width: int = 300) -> str:
    """The end of a node's log, each line cut to ``width`` (fuzzed text can make lines huge)."""
    return "\n".join(line[:width] for line in log.splitlines()[-lines:])


def _wait(predicate, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return predicate()
