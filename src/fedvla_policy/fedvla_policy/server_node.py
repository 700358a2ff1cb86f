"""The ROS 2 ExecuteInstruction action server around the FedVLA policy (a thin shell).

Graph (names relative to the node's namespace, all parameters in config/policy_server.yaml):

  in   camera/<name>/image_raw (sensor_msgs/Image), joint_states, task_success (std_msgs/Bool),
       instruction_goal (std_msgs/String: starts a goal as if an action client sent it)
  out  arm_controller/joint_trajectory (trajectory_msgs/JointTrajectory), expert_usage
       (fedvla_msgs/ExpertUsage), ~/goal_rejections (std_msgs/String, JSON, transient local)
  srv  load_checkpoint (fedvla_msgs/LoadCheckpoint: swaps the model between goals)
  act  execute_instruction (fedvla_msgs/ExecuteInstruction)

Rejected goals. rclpy's goal callback can only say ACCEPT or REJECT, so an invalid goal is
REJECTED (it never becomes an episode the fed client would log) and the reason is published,
before the rejection is sent, on the latched topic ``~/goal_rejections`` as JSON
``{"instruction": ..., "reason": ..., "stamp": <unix s>}`` and logged. ``goal_client.GoalClient``
subscribes to that topic before sending and reports the reason together with the rejection.

A goal's control loop (one step per new, consistent set of camera frames, at most
control_rate_hz): frames + joint state -> policy.act -> motion backend (limits enforced) ->
JointTrajectory, then feedback and ExpertUsage. Each trajectory is planned from the setpoint the
controller is following (server_logic.ReferenceTracker), not from the lagging measured position, and
by default keeps the chunk's own timing counted from the observation's capture stamp
(trajectory_timing 'chunk', see motion.py), within the arm's joint_lower/upper_limits.
A goal ends on task_success (succeeded), on its step or time limit, on a stale camera or joint
state (aborted, the reason names the input), on preemption (aborted, "preempted"), or on cancel
(canceled); except on preemption the arm then brakes smoothly and holds where it stopped.

Threading: the execute callback blocks its own executor thread (waits on a threading.Event that the
next camera frame or a timeout sets) and never spins; the action server and the instruction client
live in a ReentrantCallbackGroup, the sensor
subscriptions in their own group, the checkpoint service in a third, all on a
MultiThreadedExecutor, so frames keep arriving while a goal runs and a checkpoint loads.
"""
from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import fields

import numpy as np
import rclpy
from builtin_interfaces.msg import Duration
from rclpy.action import ActionClient, ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rcl_interfaces.msg import ParameterDescriptor
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, String
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from fedvla_msgs.action import ExecuteInstruction
from fedvla_msgs.msg import ExpertUsage, LayerExpertUsage
from fedvla_msgs.srv import LoadCheckpoint
from fedvla_policy.image_conversion import image_to_numpy, to_rgb
from fedvla_policy.gil import use_short_gil_switch_interval
from fedvla_policy.motion import (PANDA_LIMITS, JointLimits, MotionConfig, MotionRejected, hold_trajectory,
                                  make_backend, moveit_available, stop_trajectory)
from fedvla_policy.input_sync import stamp_seconds
from fedvla_policy.server_logic import (Frame, JointSample, LatestInputs, ReferenceTracker, ServerConfig,
                                        current_positions,
                                        goal_rejection_reason, progress, proprio_vector, step_budget)

try:  # optional: a real ros2_control install ships control_msgs
    from control_msgs.action import FollowJointTrajectory  # type: ignore
except ImportError:  # pragma: no cover - not installed here
    FollowJointTrajectory = None

REJECTIONS_TOPIC = "~/goal_rejections"


def load_policy(path: str, device: str = "cpu"):
    """Load a save_pretrained checkpoint of FedVLAPolicy for inference (eval mode on ``device``)."""
    from fedvla_policy.model import FedVLAPolicy

    policy = FedVLAPolicy.from_pretrained(path)
    policy.to(device)
    policy.eval()
    return policy


def expert_usage_layers(policy) -> tuple[list[tuple[list[int], float]], float]:
    """Per trunk layer (expert counts, mean active experts per token) and the overall mean, since the
    last reset_expert_stats() (the start of the goal)."""
    counts = [np.asarray(c, dtype=np.int64).ravel().tolist() for c in policy.expert_counts()]
    overall = float(policy.mean_active_experts())
    ffns = policy.trunk_ffns() if hasattr(policy, "trunk_ffns") else []
    per_layer = [float(f.mean_active_experts()) for f in ffns] if len(ffns) == len(counts) else [overall] * len(counts)
    return list(zip(counts, per_layer)), overall


def routed_and_tokens(policy) -> tuple[int, int] | None:
    """(expert activations, tokens) of the trunk since the last reset, to get one step's mean by difference."""
    if not hasattr(policy, "trunk_ffns"):
        return None
    ffns = policy.trunk_ffns()
    return sum(sum(f.expert_counts()) for f in ffns), sum(int(f.tokens_seen()) for f in ffns)


def to_joint_trajectory(traj) -> JointTrajectory:
    """motion.PlannedTrajectory -> trajectory_msgs/JointTrajectory (stamp 0 = start on arrival).

    The point at t = 0 (the measured state the plan started from) is left out: a
    joint_trajectory_controller blends from its own current setpoint to the first point, and a
    t = 0 point at the measured position - which lags the setpoint while moving - would make the
    setpoint jump back at every control step.
    """
    msg = JointTrajectory()
    msg.joint_names = list(traj.joint_names)
    keep = slice(1, None) if len(traj.times) > 1 and traj.times[0] <= 0.0 else slice(None)
    for t, q, qd, qdd in zip(traj.times[keep].tolist(), traj.positions[keep].tolist(),
                             traj.velocities[keep].tolist(), traj.accelerations[keep].tolist()):
        nanos = int(round(t * 1e9))
        msg.points.append(JointTrajectoryPoint(
            positions=q, velocities=qd, accelerations=qdd,
            time_from_start=Duration(sec=nanos // 1_000_000_000, nanosec=nanos % 1_000_000_000)))
    return msg


#: The next step needs frames received at least this many control periods after the last step's.
STEP_SPACING = 0.7


class _GoalRun:
    """Book-keeping of an accepted goal (running, or waiting for the one it preempts to stop)."""

    def __init__(self, goal_handle):
        self.goal_handle = goal_handle
        self.preempted = False


class PolicyServer(Node):
    """ExecuteInstruction action server: camera + joint state + instruction -> policy -> trajectory."""

    def __init__(self, node_name: str = "policy_server", **kwargs):
        super().__init__(node_name, **kwargs)
        self.cfg = self._declare_parameters()
        self._sensor_group = ReentrantCallbackGroup()
        self._action_group = ReentrantCallbackGroup()
        self._service_group = MutuallyExclusiveCallbackGroup()

        self.inputs = LatestInputs()
        self._policy = None
        self._policy_path = ""
        self._pending_policy = None  # (policy, path) waiting for the running goal to end
        self._policy_lock = threading.Lock()
        self._active: _GoalRun | None = None  # the goal driving the arm
        self._runs: dict[bytes, _GoalRun] = {}  # every accepted goal not finished yet
        self._active_lock = threading.Lock()
        self._success_time = -np.inf
        self._frame_waiters: list[threading.Event] = []
        self._waiters_lock = threading.Lock()
        self._camera_subs: dict[str, object] = {}
        self.reference = ReferenceTracker()

        self.motion = self._make_motion_backend()

        latched = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self._traj_pub = self.create_publisher(JointTrajectory, self.cfg.controller_topic, 10)
        self._usage_pub = self.create_publisher(ExpertUsage, self.cfg.expert_usage_topic, 10)
        self._reject_pub = self.create_publisher(String, REJECTIONS_TOPIC, latched)
        self._fjt_client = None
        if self.cfg.use_follow_joint_trajectory and FollowJointTrajectory is not None:
            self._fjt_client = ActionClient(self, FollowJointTrajectory, self.cfg.controller_action,
                                            callback_group=self._action_group)

        self.create_subscription(JointState, self.cfg.joint_states_topic, self._on_joint_state,
                                 qos_profile_sensor_data, callback_group=self._sensor_group)
        self.create_subscription(Bool, self.cfg.task_success_topic, self._on_task_success,
                                 qos_profile_sensor_data, callback_group=self._sensor_group)
        self.create_subscription(String, self.cfg.instruction_goal_topic, self._on_instruction_goal,
                                 10, callback_group=self._action_group)

        self._action_server = ActionServer(
            self, ExecuteInstruction, self.cfg.action_name, execute_callback=self._execute,
            goal_callback=self._on_goal, handle_accepted_callback=self._on_accepted,
            cancel_callback=lambda _req: CancelResponse.ACCEPT, callback_group=self._action_group)
        self._self_client = ActionClient(self, ExecuteInstruction, self.cfg.action_name,
                                         callback_group=self._action_group)
        self.create_service(LoadCheckpoint, self.cfg.load_checkpoint_service, self._on_load_checkpoint,
                            callback_group=self._service_group)

        if self.cfg.checkpoint:
            try:
                self._set_policy(load_policy(self.cfg.checkpoint, self.cfg.device), self.cfg.checkpoint)
            except Exception as exc:  # noqa: BLE001 - keep serving; goals are rejected until a load works
                self.get_logger().error(f"could not load checkpoint {self.cfg.checkpoint!r}: {exc}")
        self._ensure_camera_subscriptions()
        self.get_logger().info(
            f"policy server ready: action '{self.cfg.action_name}', cameras {self.camera_names}, "
            f"checkpoint {self._policy_path or '(none)'}, motion backend {self.motion.kind}")

    # ------------------------------------------------------------------ parameters
    def _declare_parameters(self) -> ServerConfig:
        defaults = ServerConfig()
        values = {}
        for f in fields(ServerConfig):
            default = getattr(defaults, f.name)
            descriptor = ParameterDescriptor(description=f.metadata.get("help", ""))
            if isinstance(default, list) and not default:
                param = self.declare_parameter(f.name, Parameter.Type.STRING_ARRAY, descriptor)
                value = param.value if param.value is not None else []
                value = [v for v in value if v]  # [""] in YAML also means "empty"
            else:
                value = self.declare_parameter(f.name, default, descriptor).value
            values[f.name] = list(value) if isinstance(default, list) else value
        return ServerConfig(**values)

    def _make_motion_backend(self):
        """moveit_py when asked for (or 'auto' and importable), else toppra; mink IK for 'ee' chunks."""
        cfg = self.cfg
        if list(cfg.arm_joint_names) != list(PANDA_LIMITS.names):
            self.get_logger().warning("arm_joint_names differ from the Panda's: using Panda velocity and "
                                      "acceleration limits by position")
        limits = JointLimits(tuple(cfg.arm_joint_names), np.array(cfg.joint_lower_limits, dtype=float),
                             np.array(cfg.joint_upper_limits, dtype=float),
                             PANDA_LIMITS.max_velocity, PANDA_LIMITS.max_acceleration)
        motion_cfg = MotionConfig(
            velocity_scale=cfg.velocity_scale, acceleration_scale=cfg.acceleration_scale,
            reject_margin=cfg.reject_margin, nominal_step_s=1.0 / cfg.control_rate_hz, timing=cfg.trajectory_timing,
            min_lead_s=cfg.min_action_lead_s,
            sample_dt=cfg.sample_dt, gripper_max=cfg.gripper_max)
        moveit_robot = None
        if cfg.motion_backend in ("auto", "moveit") and cfg.action_space == "joint" and moveit_available():
            try:
                from moveit.planning import MoveItPy  # type: ignore

                moveit_robot = MoveItPy(node_name=f"{self.get_name()}_moveit")
            except Exception as exc:  # noqa: BLE001 - MoveIt needs its robot description parameters
                self.get_logger().warning(f"moveit_py imports but could not start ({exc}); using toppra")
        elif cfg.motion_backend == "moveit":
            self.get_logger().warning("motion_backend 'moveit' asked for, but moveit_py is not installed; using toppra")
        mj_model = None
        if cfg.action_space == "ee":
            import mujoco

            mj_model = mujoco.MjModel.from_xml_path(cfg.ik_model_path)
        return make_backend(cfg.action_space, motion_cfg, limits=limits, gripper_joint=cfg.gripper_joint or None,
                            prefer_moveit=cfg.motion_backend != "toppra", moveit_robot=moveit_robot,
                            mj_model=mj_model, ee_site=cfg.ik_site)

    # ------------------------------------------------------------------ model
    @property
    def camera_names(self) -> list[str]:
        if self.cfg.camera_names:
            return list(self.cfg.camera_names)
        with self._policy_lock:
            policy = self._policy
        return list(policy.config.camera_names) if policy is not None else []

    def _set_policy(self, policy, path: str) -> None:
        with self._policy_lock:
            self._policy, self._policy_path = policy, path
        self._ensure_camera_subscriptions()

    def _ensure_camera_subscriptions(self) -> None:
        for cam in self.camera_names:
            if cam not in self._camera_subs:
                topic = self.cfg.camera_topic_template.format(name=cam)
                self._camera_subs[cam] = self.create_subscription(
                    Image, topic, lambda msg, cam=cam: self._on_image(cam, msg), qos_profile_sensor_data,
                    callback_group=self._sensor_group)

    def _on_load_checkpoint(self, request, response):
        try:
            policy = load_policy(request.path, self.cfg.device)
        except Exception as exc:  # noqa: BLE001 - report any failure to the caller
            response.success, response.message = False, f"could not load {request.path!r}: {exc}"
            self.get_logger().error(response.message)
            return response
        with self._active_lock:
            running = self._active is not None
            if running:
                self._pending_policy = (policy, request.path)
        if not running:
            self._set_policy(policy, request.path)
        response.success = True
        response.message = (f"loaded {request.path}" + (" (serves the next goal)" if running else ""))
        self.get_logger().info(response.message)
        return response

    # ------------------------------------------------------------------ inputs
    def _on_image(self, camera: str, msg: Image) -> None:
        try:
            image = to_rgb(image_to_numpy(msg), msg.encoding)
        except ValueError as exc:
            self.get_logger().error(f"camera '{camera}': {exc}", throttle_duration_sec=5.0)
            return
        stamp = stamp_seconds(msg.header.stamp)
        self.inputs.put_frame(camera, Frame(image, stamp, time.monotonic()))
        with self._waiters_lock:
            waiters, self._frame_waiters = self._frame_waiters, []
        for event in waiters:
            event.set()

    def _on_joint_state(self, msg: JointState) -> None:
        pos = dict(zip(msg.name, msg.position))
        vel = dict(zip(msg.name, msg.velocity)) if len(msg.velocity) == len(msg.name) else {}
        stamp = stamp_seconds(msg.header.stamp)
        self.inputs.put_joint(JointSample(pos, vel, time.monotonic(), stamp))

    def _on_task_success(self, msg: Bool) -> None:
        if msg.data:
            self._success_time = time.monotonic()

    def _on_instruction_goal(self, msg: String) -> None:
        """Start a goal through our own action server, exactly as an external client would."""
        if not self._self_client.server_is_ready():
            self.get_logger().warning("instruction topic: action server not ready yet")
        goal = ExecuteInstruction.Goal(instruction=msg.data)
        future = self._self_client.send_goal_async(goal)
        future.add_done_callback(lambda f: self.get_logger().info(
            f"instruction topic goal {msg.data!r}: {'accepted' if f.result().accepted else 'rejected'}"))

    # ------------------------------------------------------------------ goal lifecycle
    def _reject(self, instruction: str, reason: str) -> GoalResponse:
        self._reject_pub.publish(String(data=json.dumps(
            {"instruction": instruction, "reason": reason, "stamp": time.time()})))
        self.get_logger().warning(f"rejected goal {instruction[:80]!r}: {reason}")
        return GoalResponse.REJECT

    def _on_goal(self, goal) -> GoalResponse:
        with self._policy_lock:
            loaded = self._policy is not None
        with self._active_lock:
            running = bool(self._runs)
        cameras = self.camera_names
        reason = goal_rejection_reason(
            goal.instruction, max_length=self.cfg.max_instruction_length, model_loaded=loaded,
            missing_cameras=self.inputs.missing_cameras(cameras), have_joint_state=self.inputs.has_joint_state(),
            goal_running=running, on_new_goal=self.cfg.on_new_goal)
        if reason is None and not cameras:
            reason = "no camera configured (camera_names empty and the model names none)"
        if reason is not None:
            return self._reject(goal.instruction, reason)
        return GoalResponse.ACCEPT

    def _on_accepted(self, goal_handle) -> None:
        """The newest accepted goal wins: every earlier one, running or still waiting, is preempted."""
        with self._active_lock:
            for other in self._runs.values():
                other.preempted = True
            self._runs[bytes(goal_handle.goal_id.uuid)] = _GoalRun(goal_handle)
        goal_handle.execute()

    def _sleep(self, seconds: float, wake_on_frame: bool = False) -> None:
        """Block this goal's executor thread for ``seconds``, or until the next camera frame.

        Goals run as plain blocking callbacks in the Reentrant action group (the MultiThreadedExecutor
        has threads to spare). An earlier coroutine version created and destroyed an rclpy timer on every
        wait, and on a loaded 2-core machine steps then stalled for seconds while frames kept arriving.
        """
        event = threading.Event()
        if wake_on_frame:
            with self._waiters_lock:
                self._frame_waiters.append(event)
        try:
            event.wait(max(seconds, 0.0))
        finally:
            if wake_on_frame:
                with self._waiters_lock:
                    if event in self._frame_waiters:
                        self._frame_waiters.remove(event)

    def _execute(self, goal_handle):
        key = bytes(goal_handle.goal_id.uuid)
        with self._active_lock:
            run = self._runs[key]
        while True:  # a preempted goal is still finishing: wait for it
            with self._active_lock:
                if run.preempted:  # an even newer goal came while this one waited
                    del self._runs[key]
                    goal_handle.abort()
                    return ExecuteInstruction.Result(success=False, steps=0, reason="preempted")
                if self._active is None:
                    self._active = run
                    break
            self._sleep(0.01)
        try:
            return self._run_goal(goal_handle, run)
        finally:
            with self._active_lock:
                self._active = None
                self._runs.pop(key, None)
                pending, self._pending_policy = self._pending_policy, None
            if pending is not None:
                self._set_policy(*pending)

    def _publish_trajectory(self, traj) -> None:
        self.reference.record(traj, time.monotonic())
        msg = to_joint_trajectory(traj)
        if self._fjt_client is not None and self._fjt_client.server_is_ready():
            self._fjt_client.send_goal_async(FollowJointTrajectory.Goal(trajectory=msg))
        else:
            self._traj_pub.publish(msg)

    def _hold(self, brake: bool = True) -> None:
        """Stop the arm where it is: brake at the acceleration limit along the current motion, then hold."""
        joint = self.inputs.joint()
        if joint is None:
            return
        try:
            pos, vel = current_positions(joint, self.cfg.arm_joint_names, self.cfg.gripper_joint)
        except KeyError:
            return
        pos, vel = self.reference.state(time.monotonic(), pos, vel)
        if self.cfg.gripper_joint:  # measured finger may sit a hair outside its range
            pos[-1] = float(np.clip(pos[-1], 0.0, self.cfg.gripper_max))
        if brake:
            traj = stop_trajectory(pos, vel, self.motion.joint_names, self.motion.limits, self.motion.config,
                                   self.cfg.hold_duration_s, self.cfg.stop_deceleration_scale)
        else:
            traj = hold_trajectory(pos, self.motion.joint_names, self.cfg.hold_duration_s)
        self._publish_trajectory(traj)

    def _publish_usage(self, policy, episode_id: str) -> float:
        try:
            layers, overall = expert_usage_layers(policy)
        except Exception as exc:  # noqa: BLE001 - usage stats must never stop the arm
            self.get_logger().warning(f"expert usage unavailable: {exc}", throttle_duration_sec=10.0)
            return 0.0
        msg = ExpertUsage(episode_id=episode_id, mean_active_experts=overall)
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.layers = [LayerExpertUsage(layer=i, expert_counts=c, mean_active_experts=m)
                      for i, (c, m) in enumerate(layers)]
        self._usage_pub.publish(msg)
        return overall

    def _run_goal(self, goal_handle, run: _GoalRun):
        cfg = self.cfg
        goal = goal_handle.request
        max_steps, time_limit = step_budget(goal.max_steps, goal.time_limit_s,
                                            cfg.default_max_steps, cfg.default_time_limit_s)
        episode_id = f"{cfg.episode_id_prefix}{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        with self._policy_lock:
            policy = self._policy
        cameras = self.camera_names
        period = 1.0 / cfg.control_rate_hz
        horizon = cfg.execute_horizon or None
        if hasattr(policy, "reset"):
            policy.reset()
        self.reference.clear()
        policy.reset_expert_stats()
        self.get_logger().info(f"goal {episode_id}: {goal.instruction!r} (<= {max_steps} steps, {time_limit:.1f} s)")

        start = time.monotonic()
        last_frame = -np.inf
        last_step_time = start
        first_step_time = np.inf
        step = 0
        mean_active = 0.0
        latency_ms = 0.0

        def finish(status: str, reason: str, success: bool = False, hold: bool = True):
            if hold:
                self._hold()
            getattr(goal_handle, status)()
            self.get_logger().info(f"goal {episode_id} ended after {step} steps: {reason}")
            return ExecuteInstruction.Result(success=success, steps=step, reason=reason, episode_id=episode_id)

        def feedback(phase: str) -> None:
            goal_handle.publish_feedback(ExecuteInstruction.Feedback(
                step=step, phase=phase, progress=progress(step, max_steps, time.monotonic() - start, time_limit),
                mean_active_experts=mean_active, inference_latency_ms=latency_ms,
                episode_id=episode_id, instruction=goal.instruction))

        while True:
            now = time.monotonic()
            if goal_handle.is_cancel_requested:
                feedback("holding")
                return finish("canceled", "canceled")
            if run.preempted:
                return finish("abort", "preempted", hold=False)
            # Only a success signal that arrived after the first step counts: std_msgs/Bool has no stamp,
            # and a True from before a reset can be delivered late (seen: "success" 5 steps into a goal).
            if step > 0 and self._success_time >= first_step_time:
                feedback("finishing")
                return finish("succeed", "success", success=True)
            if step >= max_steps:
                return finish("abort", "max_steps")
            if now - start >= time_limit:
                return finish("abort", "time_limit")
            stale = self.inputs.stale_reason(cameras, now, cfg.stale_input_timeout_s)
            if stale:
                return finish("abort", stale)
            # A step runs as soon as a complete set of new frames is in (the observation is as fresh as it
            # gets), at most once per ~control period: frames must be at least STEP_SPACING periods newer
            # than the last step's (a faster camera does not step faster; a 10 Hz camera with jitter never
            # skips a frame). The first step takes only frames that arrived after the goal began.
            frames_after = start if step == 0 else last_frame + STEP_SPACING * period
            snap = self.inputs.snapshot(cameras, cfg.max_frame_skew_s, after=frames_after)
            if snap is None:
                waited = now - last_step_time
                limit = cfg.startup_input_timeout_s if step == 0 else cfg.stale_input_timeout_s
                if waited > limit:
                    silent = self.inputs.cameras_without_frame_after(cameras, frames_after)
                    if silent:
                        return finish("abort", "stale_input: " + ", ".join(f"camera '{c}'" for c in silent)
                                      + f" sent no new frame for {waited:.2f} s")
                    return finish("abort", f"stale_input: no new, consistent set of camera frames for {waited:.2f} s "
                                           f"(cameras {cameras}, max_frame_skew_s {cfg.max_frame_skew_s})")
                if step == 0:
                    feedback("waiting_for_input")
                self._sleep(min(period, 0.05), wake_on_frame=True)
                continue
            last_frame = snap.newest_frame_received
            try:
                proprio = proprio_vector(snap.observed_joint, cfg.arm_joint_names, cfg.gripper_joint)
                current, velocity = current_positions(snap.joint, cfg.arm_joint_names, cfg.gripper_joint)
            except KeyError as exc:
                return finish("abort", f"joint state: {exc.args[0]}", hold=False)
            before = routed_and_tokens(policy)
            t0 = time.perf_counter()
            try:
                chunk = np.asarray(policy.act({"images": snap.images, "instruction": goal.instruction,
                                               "proprio": proprio}))
            except Exception as exc:  # noqa: BLE001 - a model error ends the goal, the server lives on
                self.get_logger().error(f"policy.act failed: {exc!r}")
                return finish("abort", f"policy error: {exc}")
            t_act = time.perf_counter()
            latency_ms = (t_act - t0) * 1e3
            after = routed_and_tokens(policy)
            current, velocity = self.reference.state(time.monotonic(), current, velocity)
            observation_age = snap.age(self.get_clock().now().nanoseconds * 1e-9, time.monotonic())
            try:
                traj = self.motion.plan(current, chunk[:horizon], velocity, observation_age_s=observation_age)
            except MotionRejected as exc:
                self.get_logger().warning(f"chunk rejected by the motion backend: {exc}")
                self._hold()
            else:
                if traj.report.any_hit:
                    self.get_logger().info(f"motion limits: {traj.report.summary()}", throttle_duration_sec=2.0)
                self._publish_trajectory(traj)
            self.get_logger().debug(
                f"step {step + 1}: frame age at start {1e3 * (now - snap.newest_frame_received):.1f} ms, "
                f"observation age at planning {1e3 * observation_age:.1f} ms, "
                f"act {latency_ms:.1f} ms, plan+publish {1e3 * (time.perf_counter() - t_act):.1f} ms")
            step += 1
            last_step_time = time.monotonic()
            first_step_time = min(first_step_time, last_step_time)
            mean_active = self._publish_usage(policy, episode_id)  # since the goal started
            if before is not None and after is not None and after[1] > before[1]:
                mean_active = (after[0] - before[0]) / (after[1] - before[1])  # this step's forward pass
            feedback("running")


def main(args=None) -> int:
    use_short_gil_switch_interval()
    rclpy.init(args=args)
    node = PolicyServer()
    executor = MultiThreadedExecutor(num_threads=6)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        executor.shutdown()
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
