"""`sim_robot`: the simulated Panda as a ROS 2 node that looks like a real arm to the rest of the stack.

A thin shell around `fedvla_sim.sim_robot.SimRobot` (no ROS in there). All names are
relative, so the node's namespace applies (`/robot1/joint_states`, ...):

- publishes `camera/<name>/image_raw` (rgb8) and `camera/<name>/camera_info`, `joint_states`,
  `task_success` (std_msgs/Bool), `instruction` (std_msgs/String, transient local) and
  `task_info` (std_msgs/String, transient local: JSON {"task", "seed", "suite", "instruction"} of the
  current episode, which the fed client stores in the metadata of the episodes it records);
- follows trajectory_msgs/JointTrajectory on `controller_topic` with joint_trajectory_controller
  semantics, and logs a clear, bounded rejection (no motion: the arm holds its current command) for a
  bad one (unknown or repeated joints, ragged or non-finite points, times not increasing, out of limits);
- services `reset_task` (fedvla_msgs/ResetTask) and `run_expert` (fedvla_msgs/RunExpert); the
  expert publishes on the controller topic, so recorders see it exactly like teleoperation. A bad
  request (unknown task, negative seed, absurd max_steps) is answered with success=false and why;
  no callback lets an exception end the node.

Threads: the physics and the camera rendering each run in their own plain thread (the camera
thread owns the GL context); ROS callbacks run in a MultiThreadedExecutor, the services in a
reentrant group, so a running expert never blocks trajectories, timers or the physics.
Parameters: config/sim_robot.yaml (same names and defaults as `SimRobotConfig`), declared with their
help and ranges by fedvla_ros.params.declare_config.
"""
from __future__ import annotations

import json
import os
import threading
import time

from builtin_interfaces.msg import Duration
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, JointState
from std_msgs.msg import Bool, String
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from fedvla_core.episodes.input_checks import bounded
from fedvla_msgs.srv import ResetTask, RunExpert
from fedvla_ros import params
from fedvla_ros.node_main import run_node
from fedvla_sim.sim_robot import SimRobot, SimRobotConfig
from fedvla_sim.tasks import TASKS
from fedvla_sim.trajectory import TrajectoryRejected


#: Latched JSON of the current episode's task and seed (see the module docstring).
TASK_INFO_TOPIC = "task_info"
#: The suite this node simulates (episode metadata `suite`, as `fedvla-sim record` writes it).
SUITE = "panda"
#: RunExpert.max_steps above this many times the task's own step budget is refused (it would hold the
#: service, and the arm, for hours).
MAX_EXPERT_STEPS_FACTOR = 10
#: A trajectory stamped further ahead than this (wall seconds) is refused: a clock error or a typo would
#: otherwise freeze the arm's command until then.
MAX_START_DELAY_S = 10.0


def _seconds(duration) -> float:
    return float(duration.sec) + float(duration.nanosec) * 1e-9


class SimRobotNode(Node):
    """ROS 2 face of the simulated Panda."""

    def __init__(self, **kwargs):
        super().__init__("sim_robot", **kwargs)
        self.config = self._read_parameters()
        os.environ.setdefault("MUJOCO_GL", "egl")
        self.robot = SimRobot(self.config)
        cfg = self.config

        sensors = MutuallyExclusiveCallbackGroup()
        commands = MutuallyExclusiveCallbackGroup()
        services = ReentrantCallbackGroup()
        latched = QoSProfile(depth=1, durability=DurabilityPolicy.TRANSIENT_LOCAL, reliability=ReliabilityPolicy.RELIABLE)

        self.joint_pub = self.create_publisher(JointState, "joint_states", 10)
        self.success_pub = self.create_publisher(Bool, "task_success", 10)
        self.instruction_pub = self.create_publisher(String, "instruction", latched)
        self.task_info_pub = self.create_publisher(String, TASK_INFO_TOPIC, latched)
        self.image_pubs = {c: self.create_publisher(Image, f"camera/{c}/image_raw", 5) for c in cfg.camera_names}
        self.info_pubs = {c: self.create_publisher(CameraInfo, f"camera/{c}/camera_info", 5) for c in cfg.camera_names}
        # The expert publishes here like a teleoperator; our own subscription executes it.
        self.trajectory_pub = self.create_publisher(JointTrajectory, cfg.controller_topic, 10)
        self.create_subscription(JointTrajectory, cfg.controller_topic, self._on_trajectory, 10,
                                 callback_group=commands)
        self.create_service(ResetTask, "reset_task", self._on_reset, callback_group=services)
        self.create_service(RunExpert, "run_expert", self._on_run_expert, callback_group=services)
        self.create_timer(1.0 / cfg.joint_state_rate_hz, self._publish_joint_state, callback_group=sensors)
        self.create_timer(1.0 / cfg.status_rate_hz, self._publish_success, callback_group=sensors)
        self._expert_lock = threading.Lock()

        self._publish_instruction(self.robot.env.instruction)
        self._publish_task_info()
        self.robot.start()
        self._camera_stop = threading.Event()
        self._camera_thread = threading.Thread(target=self._camera_loop, name="sim_cameras", daemon=True)
        self._camera_thread.start()
        self.get_logger().info(
            f"sim robot ready: task {cfg.task!r} seed {cfg.seed}, cameras {list(cfg.camera_names)} at "
            f"{cfg.camera_size}px/{cfg.camera_rate_hz} Hz, controller '{self.trajectory_pub.topic_name}', "
            f"real-time factor {cfg.real_time_factor}")

    # --- parameters ---------------------------------------------------------------------------------
    def _read_parameters(self) -> SimRobotConfig:
        """Declare one typed, described ROS parameter per SimRobotConfig field; the validated config.

        Raises fedvla_ros.params.ParameterError (naming the parameter) for a bad value.
        """
        return params.declare_config(self, SimRobotConfig)

    # --- commands -------------------------------------------------------------------------------------
    def _on_trajectory(self, msg: JointTrajectory) -> None:
        try:
            self._follow(msg)
        except TrajectoryRejected as err:
            self.get_logger().error(bounded(
                f"rejected trajectory ({len(msg.points)} points, joints {list(msg.joint_names)}): {err}; "
                f"the arm keeps its current command", 400), throttle_duration_sec=1.0)
        except Exception as err:  # noqa: BLE001 - never let one message end the arm's node
            self.get_logger().error(bounded(f"rejected trajectory: {type(err).__name__}: {err}; the arm keeps its "
                                            f"current command", 400), throttle_duration_sec=1.0)

    def _follow(self, msg: JointTrajectory) -> None:
        times = [_seconds(p.time_from_start) for p in msg.points]
        positions = [list(p.positions) for p in msg.points]
        start_delay = None
        stamp_ns = msg.header.stamp.sec * 1_000_000_000 + msg.header.stamp.nanosec
        if stamp_ns > 0:  # like the JTC: a future-stamped trajectory starts at its stamp; zero/past = now
            wall_delay = (stamp_ns - self.get_clock().now().nanoseconds) * 1e-9
            if wall_delay > MAX_START_DELAY_S:
                raise TrajectoryRejected(f"header.stamp is {wall_delay:.1f} s in the future (at most "
                                         f"{MAX_START_DELAY_S:.0f} s)")
            if wall_delay > 0:
                rtf = self.config.real_time_factor
                start_delay = wall_delay * (rtf if rtf > 0 else 1.0)
        if any(len(p) != len(msg.joint_names) for p in positions):
            raise TrajectoryRejected(f"every point needs {len(msg.joint_names)} positions (one per joint name)")
        self.robot.command_trajectory(list(msg.joint_names), times, positions, start_delay=start_delay)

    def _on_reset(self, request: ResetTask.Request, response: ResetTask.Response) -> ResetTask.Response:
        try:
            if request.seed < 0:
                raise ValueError(f"seed must be >= 0, got {request.seed}")
            if request.task and request.task not in TASKS:  # quote the name short, so the known ones stay readable
                raise ValueError(f"unknown task {bounded(request.task, 60)!r}; known tasks: {', '.join(TASKS)}")
            instruction = self.robot.reset(task=request.task or None, seed=int(request.seed))
        except (KeyError, ValueError) as err:
            reason = bounded(err.args[0] if isinstance(err, KeyError) and err.args else err, 1000)
            response.success, response.message = False, reason
            self.get_logger().error(f"reset_task rejected: {reason}")
            return response
        except Exception as err:  # noqa: BLE001 - answer why instead of ending the node
            response.success, response.message = False, bounded(f"reset failed: {type(err).__name__}: {err}")
            self.get_logger().error(response.message)
            return response
        response.success, response.instruction = True, instruction
        response.message = f"task {self.robot.env.task.name!r} seed {request.seed}"
        self._publish_success()  # the new episode's (unsolved) state now, not at the next 5 Hz tick
        self._publish_instruction(instruction)
        self._publish_task_info()
        self.get_logger().info(f"reset to {response.message}: {instruction!r}")
        return response

    def _on_run_expert(self, request: RunExpert.Request, response: RunExpert.Response) -> RunExpert.Response:
        limit = MAX_EXPERT_STEPS_FACTOR * self.robot.env.task.max_steps
        if request.max_steps > limit:
            response.success = False
            response.message = (f"max_steps {request.max_steps} is more than {MAX_EXPERT_STEPS_FACTOR} x the task's "
                                f"{self.robot.env.task.max_steps} steps (0 = the task's own budget)")
            return response
        if not self._expert_lock.acquire(blocking=False):
            response.success, response.message = False, "the expert is already running"
            return response
        try:
            self.get_logger().info(f"running the scripted expert for {self.robot.env.task.name!r}")
            result = self.robot.run_expert(self._send_trajectory, max_steps=int(request.max_steps))
        except Exception as err:  # noqa: BLE001 - answer why instead of ending the node
            result = {"success": False, "steps": 0, "message": bounded(f"expert failed: {type(err).__name__}: {err}")}
        finally:
            self._expert_lock.release()
        response.success, response.steps, response.message = result["success"], result["steps"], result["message"]
        self.get_logger().info(f"expert done: {result}")
        return response

    def _send_trajectory(self, joint_names, times, positions) -> None:
        msg = JointTrajectory(joint_names=list(joint_names))
        for t, p in zip(times, positions):
            msg.points.append(JointTrajectoryPoint(
                positions=[float(v) for v in p],
                time_from_start=Duration(sec=int(t), nanosec=int(round((t - int(t)) * 1e9)))))
        self.trajectory_pub.publish(msg)

    # --- sensors --------------------------------------------------------------------------------------
    def _publish_joint_state(self) -> None:
        position, velocity = self.robot.joint_state()
        msg = JointState(name=list(self.robot.env.joint_names), position=position.tolist(), velocity=velocity.tolist())
        msg.header.stamp = self.get_clock().now().to_msg()
        self.joint_pub.publish(msg)

    def _publish_success(self) -> None:
        self.success_pub.publish(Bool(data=self.robot.success()))

    def _publish_instruction(self, text: str) -> None:
        self.instruction_pub.publish(String(data=text))

    def _publish_task_info(self) -> None:
        env = self.robot.env
        self.task_info_pub.publish(String(data=json.dumps(
            {"task": env.task.name, "seed": int(env.seed), "suite": SUITE, "instruction": env.instruction})))

    def _camera_info(self, camera: str, stamp) -> CameraInfo:
        size = self.config.camera_size
        k = self.robot.env.camera_intrinsics(camera)
        info = CameraInfo(height=size, width=size, distortion_model="plumb_bob", d=[0.0] * 5)
        info.k = [float(v) for v in k.reshape(-1)]
        info.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
        info.p = [k[0, 0], 0.0, k[0, 2], 0.0, 0.0, k[1, 1], k[1, 2], 0.0, 0.0, 0.0, 1.0, 0.0]
        info.p = [float(v) for v in info.p]
        info.header.stamp = stamp
        info.header.frame_id = f"{self.config.frame_prefix}{camera}_optical_frame"
        return info

    def _camera_loop(self) -> None:
        period = 1.0 / self.config.camera_rate_hz
        next_time = time.monotonic()
        try:
            while not self._camera_stop.is_set():
                stamp = self.get_clock().now().to_msg()  # the instant the scene is captured, not when rasterised
                images = self.robot.render_images()
                for cam, img in images.items():
                    h, w, _ = img.shape
                    msg = Image(height=h, width=w, encoding="rgb8", is_bigendian=0, step=w * 3)
                    msg.data = img.tobytes()
                    msg.header.stamp = stamp
                    msg.header.frame_id = f"{self.config.frame_prefix}{cam}_optical_frame"
                    self.image_pubs[cam].publish(msg)
                    self.info_pubs[cam].publish(self._camera_info(cam, stamp))
                next_time += period
                delay = next_time - time.monotonic()
                if delay < -period:  # rendering is slower than the rate: do not build up a backlog
                    next_time = time.monotonic()
                self._camera_stop.wait(max(0.0, delay))
        except Exception as err:  # noqa: BLE001 - a publisher may already be gone during shutdown
            if not self._camera_stop.is_set():
                self.get_logger().error(f"camera thread stopped: {err!r}")
        finally:
            self.robot.close_renderer()

    def shutdown(self) -> None:
        """Stop the camera thread and the physics (call before destroy_node)."""
        self._camera_stop.set()
        self._camera_thread.join(timeout=5)
        if self._camera_thread.is_alive():  # a render still in flight: say so, an exit code alone does not
            self.get_logger().warning("camera thread still rendering 5 s after stop; the process exits anyway")
        self.robot.stop()


#: GIL switch interval of the sim process (CPython's default: 5 ms). The physics thread re-takes the GIL
#: for every MuJoCo step while the camera thread and the executor's timers compete for it; at 5 ms the
#: physics fell behind real time and camera frames and joint states stopped for ~1 s at a time during
#: policy goals (single-robot probe, 2-core machine); at 0.5 ms the largest gap was 0.13 s. Same setting
#: and reason as the policy server's (fedvla_ros.gil).
GIL_SWITCH_INTERVAL_S = 0.0005


def main(args=None) -> int:
    """Run the sim robot until Ctrl-C; exit 0 (fedvla_ros.node_main); the physics and camera threads stop first."""
    import sys

    sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
    return run_node(SimRobotNode, num_threads=4, args=args, before_destroy=lambda node: node.shutdown())


if __name__ == "__main__":
    raise SystemExit(main())
