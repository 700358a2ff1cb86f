"""The ROS 2 ExecuteInstruction action server around the FedVLA policy (a thin shell).

Graph (names relative to the node's namespace, all parameters in config/policy_server.yaml):

  in   camera/<name>/image_raw (sensor_msgs/Image), joint_states, task_success (std_msgs/Bool),
       instruction_goal (std_msgs/String: starts a goal as if an action client sent it)
  out  arm_controller/joint_trajectory (trajectory_msgs/JointTrajectory), expert_usage
       (fedvla_msgs/ExpertUsage), ~/goal_rejections (std_msgs/String, JSON, transient local)
  srv  load_checkpoint (fedvla_msgs/LoadCheckpoint: swaps the model between goals)
  act  execute_instruction (fedvla_msgs/ExecuteInstruction)

Refused goals (goal_refusal.py). A plain REJECT reaches ``ros2 action send_goal`` as "Goal was
rejected." and nothing more, so every goal request is accepted, and one the server will not run
(invalid, not ready, ungrounded instruction, busy) is aborted at once with 0 steps, no feedback and
no episode id, its result's reason ``"<code>: <why>"``; it neither moves the arm nor preempts a
running goal. The refusal is also published on the latched topic ``~/goal_rejections`` as JSON
``{"instruction": ..., "reason": ..., "stamp": <unix s>}`` for observers, and logged.

Bad input (input_checks.py). Every callback checks its message first and is guarded: a malformed
image, joint state, instruction or service request is refused with a bounded, rate-limited log line
and the node keeps its last good input (a goal whose input stays bad ends as stale_input, naming
the refusal). The trajectory publisher refuses any non-finite or inconsistent trajectory as the
last line of defence. load_checkpoint is all-or-nothing (checkpoint_swap.py).

A goal's control loop (one step per new, consistent set of camera frames, at most
control_rate_hz): frames + joint state -> policy.act -> motion backend (limits enforced) ->
JointTrajectory, then feedback and ExpertUsage. The step and the decision when a goal ends are
fedvla_core's GoalRunner (goal_runner.py); this node waits for frames, publishes what a step returns
and holds the arm. Which goal drives the arm is goal_arbitration.py's, when a loaded checkpoint
starts serving policy_slot.py's. Each trajectory is planned from the setpoint the
controller is following (inputs.ReferenceTracker), not from the lagging measured position, and
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
import os
import threading
import time
import uuid

import numpy as np
from builtin_interfaces.msg import Duration
from rclpy.action import ActionClient, ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, String
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from fedvla_msgs.action import ExecuteInstruction
from fedvla_msgs.msg import ExpertUsage, LayerExpertUsage
from fedvla_msgs.srv import LoadCheckpoint
from fedvla_core.control.checkpoint_swap import CheckpointRefused, RobotSpec, load_validated
from fedvla_core.control.goal_arbitration import Claim, GoalArbiter
from fedvla_core.control.goal_refusal import NOT_READY, refusal_reason
from fedvla_core.control.goal_runner import ChunkRejected, EndReason, GoalEnd, GoalRunner
from fedvla_core.control.input_checks import InputRejected, LogLimiter, bounded, joint_state_values, trajectory_problem
from fedvla_core.control.input_sync import stamp_seconds
from fedvla_core.control.inputs import (Frame, JointSample, LatestInputs, ReferenceTracker, current_positions,
                                        goal_rejection_reason)
from fedvla_core.control.server_config import ServerConfig
from fedvla_core.control.instruction_grounding import InstructionGrounder, trained_instructions
from fedvla_core.control.motion import MotionRejected, hold_trajectory, make_backend, stop_trajectory
from fedvla_core.control.policy_slot import PolicySlot, ServedPolicy
from fedvla_core.embodiment import PANDA_LIMITS, JointLimits
from fedvla_ros.gil import use_short_gil_switch_interval
from fedvla_ros.image_conversion import image_to_numpy, to_rgb
from fedvla_ros.node_main import run_node
from fedvla_ros.params import declare_config
from fedvla_policy.moveit_backend import MoveItBackend, moveit_available

try:  # optional: a real ros2_control install ships control_msgs
    from control_msgs.action import FollowJointTrajectory  # type: ignore
except ImportError:  # pragma: no cover - not installed here
    FollowJointTrajectory = None

REJECTIONS_TOPIC = "~/goal_rejections"


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


def sim_task_instructions(cameras: list[str]) -> tuple[list[str], str]:
    """The sim's task phrasings that match a checkpoint's cameras (Meta-World or the Panda tabletop).

    The fallback for checkpoints that do not list their trained instructions. Optional: a robot without
    the fedvla_sim package gets no instructions (and every goal is then refused as not grounded).
    """
    try:
        from fedvla_sim.metaworld_env import DEFAULT_CAMERAS, METAWORLD_TASKS
        from fedvla_sim.tasks import TASKS
    except ImportError as exc:
        return [], f"no trained_instructions in the checkpoint and no sim task table ({exc})"

    if cameras and all(c in DEFAULT_CAMERAS for c in cameras):
        return sorted({p for phrasings in METAWORLD_TASKS.values() for p in phrasings}), "the Meta-World task table"
    return sorted({p for task in TASKS.values() for p in task.phrasings}), "the Panda tabletop task table"


class PolicyServer(Node):
    """ExecuteInstruction action server: camera + joint state + instruction -> policy -> trajectory."""

    def __init__(self, node_name: str = "policy_server", **kwargs):
        super().__init__(node_name, **kwargs)
        self.cfg = self._declare_parameters()
        self._sensor_group = ReentrantCallbackGroup()
        self._action_group = ReentrantCallbackGroup()
        self._service_group = MutuallyExclusiveCallbackGroup()

        self.inputs = LatestInputs()
        self._policy_slot = PolicySlot()  # hot swap: a checkpoint loaded during a goal serves from the next one
        self._checkpoint_root = os.path.abspath(self.cfg.checkpoint_root or os.getcwd())
        self._goals = GoalArbiter(self.cfg.on_new_goal)  # which accepted goal drives the arm
        self._success_time = -np.inf
        self._frame_waiters: list[threading.Event] = []
        self._waiters_lock = threading.Lock()
        self._camera_subs: dict[str, object] = {}
        self.reference = ReferenceTracker()
        self._log_limiter = LogLimiter()  # refusals: one line per input / code every few seconds

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
            try:  # the operator's own parameter: any local directory, but every other check applies
                policy, directory, summary = load_validated(self.cfg.checkpoint, None, self._robot_spec(),
                                                            self.cfg.device)
                self._serve(ServedPolicy(policy, str(directory), self._make_grounder(policy)))
                self.get_logger().info(f"checkpoint {directory}: {summary}")
            except Exception as exc:  # noqa: BLE001 - keep serving; goals are refused until a load works
                self.get_logger().error(bounded(f"could not load checkpoint {self.cfg.checkpoint!r}: {exc}", 600))
        self._ensure_camera_subscriptions()
        self.get_logger().info(
            f"policy server ready: action '{self.cfg.action_name}', cameras {self.camera_names}, "
            f"checkpoint {self._served_path() or '(none)'}, checkpoint root {self._checkpoint_root}, "
            f"motion backend {self.motion.kind}")

    # ------------------------------------------------------------------ parameters
    def _declare_parameters(self) -> ServerConfig:
        """One typed, described, read-only ROS parameter per ServerConfig field (fedvla_ros.params)."""
        return declare_config(self, ServerConfig)

    def _make_motion_backend(self):
        """moveit_py when asked for (or 'auto' and importable), else toppra; mink IK for 'ee' chunks."""
        cfg = self.cfg
        if list(cfg.arm_joint_names) != list(PANDA_LIMITS.names):
            self.get_logger().warning("arm_joint_names differ from the Panda's: using Panda velocity and "
                                      "acceleration limits by position")
        limits = JointLimits(tuple(cfg.arm_joint_names), np.array(cfg.joint_lower_limits, dtype=float),
                             np.array(cfg.joint_upper_limits, dtype=float),
                             PANDA_LIMITS.max_velocity, PANDA_LIMITS.max_acceleration)
        motion_cfg = cfg.motion_config()
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
        if moveit_robot is not None and cfg.motion_backend != "toppra":
            return MoveItBackend(moveit_robot, limits=limits, config=motion_cfg, gripper_joint=cfg.gripper_joint or None)
        return make_backend(cfg.action_space, motion_cfg, limits=limits, gripper_joint=cfg.gripper_joint or None,
                            mj_model=mj_model, ee_site=cfg.ik_site)

    # ------------------------------------------------------------------ model
    @property
    def camera_names(self) -> list[str]:
        if self.cfg.camera_names:
            return list(self.cfg.camera_names)
        served = self._policy_slot.current
        return list(served.policy.config.camera_names) if served is not None else []

    def _served_path(self) -> str:
        served = self._policy_slot.current
        return served.path if served is not None else ""

    def _serve(self, served: ServedPolicy) -> bool:
        """Serve ``served`` now, or from the next goal when one runs (policy_slot); True when it serves now."""
        now = self._policy_slot.offer(served)
        if now:
            self._ensure_camera_subscriptions()
        return now

    def _robot_spec(self) -> RobotSpec:
        """What a checkpoint must fit: the cameras served (configured, else the serving policy's; none
        known before the first policy), the motion backend's action columns and the proprio length."""
        cfg = self.cfg
        served = self._policy_slot.current
        cameras = tuple(cfg.camera_names) if cfg.camera_names else (
            tuple(served.policy.config.camera_names) if served is not None else None)
        n = len(cfg.arm_joint_names) + (1 if cfg.gripper_joint else 0)
        return RobotSpec(camera_names=cameras, action_dim=n if cfg.action_space == "joint" else None, proprio_dim=n)

    def _make_grounder(self, policy) -> InstructionGrounder | None:
        """The instruction-grounding check for ``policy`` (None: off, and the log says why)."""
        threshold = self.cfg.min_instruction_similarity
        if threshold <= 0:
            self.get_logger().info("instruction grounding off (min_instruction_similarity <= 0)")
            return None
        instructions, source = trained_instructions(policy.config, sim_task_instructions)
        if not instructions:
            self.get_logger().warning(f"instruction grounding off: {source}")
            return None
        grounder = InstructionGrounder(policy.language_encoder, instructions, threshold, source)
        self.get_logger().info(f"instruction grounding: {len(instructions)} trained instructions from {source}, "
                               f"min_instruction_similarity {threshold:.3f}")
        return grounder

    def _ensure_camera_subscriptions(self) -> None:
        for cam in self.camera_names:
            if cam not in self._camera_subs:
                topic = self.cfg.camera_topic_template.format(name=cam)
                self._camera_subs[cam] = self.create_subscription(
                    Image, topic, lambda msg, cam=cam: self._on_image(cam, msg), qos_profile_sensor_data,
                    callback_group=self._sensor_group)

    def _on_load_checkpoint(self, request, response):
        """All-or-nothing (checkpoint_swap.load_validated): on any failure the serving policy stays."""
        try:
            policy, directory, summary = load_validated(request.path, self._checkpoint_root, self._robot_spec(),
                                                        self.cfg.device)
            grounder = self._make_grounder(policy)
        except CheckpointRefused as exc:
            response.success, response.message = False, f"refused, the current policy keeps serving: {exc}"
            self.get_logger().error(bounded(f"load_checkpoint: {response.message}", 600))
            return response
        except Exception as exc:  # noqa: BLE001 - any other failure is reported too, and changes nothing
            response.success = False
            response.message = bounded(f"refused, the current policy keeps serving: could not load "
                                       f"{request.path!r}: {exc!r}", 600)
            self.get_logger().error(f"load_checkpoint: {response.message}")
            return response
        running = not self._serve(ServedPolicy(policy, str(directory), grounder))
        response.success = True
        response.message = f"loaded {directory}: {summary}" + (" (serves the next goal)" if running else "")
        self.get_logger().info(response.message)
        return response

    # ------------------------------------------------------------------ inputs
    def _refuse_input(self, source: str, reason: str) -> None:
        """Log (bounded, rate-limited) and remember why a message of ``source`` was refused."""
        reason = bounded(reason)
        self.inputs.note_refused(source, reason)
        self._log_limited("warning", f"input:{source}", f"refused {source} message: {reason}")

    def _log_limited(self, level: str, key: str, text: str) -> None:
        """One bounded log line per ``key`` every few seconds (input_checks.LogLimiter)."""
        suffix = self._log_limiter.allow(key)
        if suffix is None:
            return
        line = bounded(text) + suffix
        # one call site per severity: rclpy refuses a call site whose severity changes between calls
        if level == "error":
            self.get_logger().error(line)
        elif level == "warning":
            self.get_logger().warning(line)
        else:
            self.get_logger().info(line)

    def _on_image(self, camera: str, msg: Image) -> None:
        try:
            image = to_rgb(image_to_numpy(msg), msg.encoding)
        except Exception as exc:  # noqa: BLE001 - ValueError from the checks; anything else must not end the node
            self._refuse_input(camera, f"camera '{camera}': {exc}")
            return
        stamp = stamp_seconds(msg.header.stamp)
        self.inputs.put_frame(camera, Frame(image, stamp, time.monotonic()))
        with self._waiters_lock:
            waiters, self._frame_waiters = self._frame_waiters, []
        for event in waiters:
            event.set()

    def _on_joint_state(self, msg: JointState) -> None:
        """Only a message with every commanded joint, finite and within range, replaces the last good one."""
        cfg = self.cfg
        limits = self.motion.limits
        try:
            names = list(cfg.arm_joint_names) + ([cfg.gripper_joint] if cfg.gripper_joint else [])
            lower, upper = list(limits.lower), list(limits.upper)
            tolerance = [cfg.joint_state_tolerance] * len(limits.lower)
            max_velocity = list(limits.max_velocity)
            if cfg.gripper_joint:  # the finger: metres, [0, gripper_max], tolerance one full opening
                lower, upper = lower + [0.0], upper + [cfg.gripper_max]
                tolerance, max_velocity = tolerance + [cfg.gripper_max], max_velocity + [10 * cfg.gripper_max]
            pos, vel = joint_state_values(msg.name, msg.position, msg.velocity, names, np.asarray(lower),
                                          np.asarray(upper), np.asarray(tolerance), np.asarray(max_velocity))
            stamp = stamp_seconds(msg.header.stamp)
        except InputRejected as exc:
            self._refuse_input("joint_states", str(exc))
            return
        except Exception as exc:  # noqa: BLE001 - never let a message end the node
            self._refuse_input("joint_states", f"joint_states: {exc!r}")
            return
        self.inputs.put_joint(JointSample(pos, vel, time.monotonic(), stamp))

    def _on_task_success(self, msg: Bool) -> None:
        if msg.data:
            self._success_time = time.monotonic()

    def _on_instruction_goal(self, msg: String) -> None:
        """Start a goal through our own action server, exactly as an external client would (the same
        checks apply; a refusal is logged here with its reason)."""
        shown = bounded(repr(msg.data), 100)
        if not self._self_client.server_is_ready():
            self.get_logger().warning("instruction topic: action server not ready yet")

        def on_result(future) -> None:
            try:
                result = future.result().result
                self._log_limited("info", "instruction_topic", f"instruction topic goal {shown}: {result.reason}")
            except Exception as exc:  # noqa: BLE001 - a log line must never end the node
                self.get_logger().warning(bounded(f"instruction topic goal {shown}: {exc!r}"))

        def on_response(future) -> None:
            try:
                handle = future.result()
                if handle.accepted:
                    handle.get_result_async().add_done_callback(on_result)
            except Exception as exc:  # noqa: BLE001
                self.get_logger().warning(bounded(f"instruction topic goal {shown}: {exc!r}"))

        try:
            self._self_client.send_goal_async(ExecuteInstruction.Goal(instruction=msg.data)).add_done_callback(on_response)
        except Exception as exc:  # noqa: BLE001
            self._log_limited("warning", "instruction_topic_error", f"instruction topic goal {shown}: {exc!r}")

    # ------------------------------------------------------------------ goal lifecycle
    def _publish_refusal(self, instruction: str, reason: str) -> None:
        """The refusal for observers (latched topic) and the log, both bounded in size."""
        self._reject_pub.publish(String(data=json.dumps(
            {"instruction": bounded(instruction, 1000), "reason": reason, "stamp": time.time()})))
        self._log_limited("warning", "goal:" + reason.partition(":")[0],
                          f"refused goal {bounded(repr(instruction), 100)}: {reason}")

    def _on_goal(self, goal) -> GoalResponse:
        """Every request is accepted: one that will not run is aborted at once with its reason (see the module doc)."""
        return GoalResponse.ACCEPT

    def _refusal(self, goal) -> str | None:
        """Why ``goal`` must not run ("<code>: <why>"), or None; the busy check is the caller's (under the lock)."""
        served = self._policy_slot.current
        loaded, grounder = served is not None, served.grounder if served is not None else None
        cameras = self.camera_names
        reason = goal_rejection_reason(
            goal.instruction, max_length=self.cfg.max_instruction_length, model_loaded=loaded,
            missing_cameras=self.inputs.missing_cameras(cameras), have_joint_state=self.inputs.has_joint_state(),
            goal_running=False, on_new_goal=self.cfg.on_new_goal, max_steps=goal.max_steps,
            time_limit_s=goal.time_limit_s, grounding=grounder.problem if grounder is not None else None,
            input_notes=self.inputs.refusal_notes())
        if reason is None and not cameras:
            reason = refusal_reason(NOT_READY, "no camera configured (camera_names empty and the model names none)")
        return reason

    def _on_accepted(self, goal_handle) -> None:
        """The newest goal that will run wins: every earlier one, running or still waiting, is preempted.
        A refused goal preempts nothing."""
        try:
            reason = self._refusal(goal_handle.request)
        except Exception as exc:  # noqa: BLE001 - a failing check refuses the goal, it does not end the node
            reason = refusal_reason(NOT_READY, bounded(f"could not check the goal: {exc!r}"))
        self._goals.admit(bytes(goal_handle.goal_id.uuid), goal_handle, reason)
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
        refused = self._goals.take_refused(key)
        if refused is not None:
            self._publish_refusal(goal_handle.request.instruction, refused.refusal)
            goal_handle.abort()
            return ExecuteInstruction.Result(success=False, steps=0, reason=refused.refusal)
        run = self._goals.run(key)
        while True:  # a preempted goal is still finishing: wait for it
            claim = self._goals.claim(key)
            if claim is Claim.PREEMPTED:  # an even newer goal came while this one waited
                goal_handle.abort()
                return ExecuteInstruction.Result(success=False, steps=0, reason=EndReason.PREEMPTED.value)
            if claim is Claim.START:
                break
            self._sleep(0.01)
        try:
            served = self._policy_slot.goal_started()  # the policy stays fixed until the goal ends
            return self._run_goal(goal_handle, run, served.policy)
        except Exception as exc:  # noqa: BLE001 - a bug in one goal ends that goal with its reason, not the node
            reason = bounded(f"server error: {exc!r}")
            self.get_logger().error(f"goal failed: {reason}")
            try:
                self._hold()
            except Exception as hold_exc:  # noqa: BLE001
                self.get_logger().error(bounded(f"could not hold the arm: {hold_exc!r}"))
            if goal_handle.is_active:
                goal_handle.abort()
            return ExecuteInstruction.Result(success=False, steps=0, reason=reason)
        finally:
            self._goals.release(key)
            if self._policy_slot.goal_ended():  # a checkpoint loaded during the goal serves from now on
                self._ensure_camera_subscriptions()

    def _publish_trajectory(self, traj) -> bool:
        """Send ``traj`` to the controller (topic, or FollowJointTrajectory when present); False when refused.

        The last line of defence: a trajectory with a non-finite or inconsistent value never leaves
        the server, whatever produced it (input_checks.trajectory_problem).
        """
        try:
            msg = to_joint_trajectory(traj)
            problem = trajectory_problem(msg)
        except Exception as exc:  # noqa: BLE001 - a trajectory that cannot even be converted is refused too
            problem = f"could not convert: {exc!r}"
        if problem:
            self._log_limited("error", "trajectory", f"trajectory NOT sent to the controller: {problem}")
            return False
        self.reference.record(traj, time.monotonic())
        if self._fjt_client is not None and self._fjt_client.server_is_ready():
            self._fjt_client.send_goal_async(FollowJointTrajectory.Goal(trajectory=msg))
        else:
            self._traj_pub.publish(msg)
        return True

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
        if not (np.all(np.isfinite(pos)) and np.all(np.isfinite(vel))):  # cannot happen with checked inputs
            self._log_limited("error", "hold", "hold skipped: the arm's state is not finite")
            return
        if self.cfg.gripper_joint:  # measured finger may sit a hair outside its range
            pos[-1] = float(np.clip(pos[-1], 0.0, self.cfg.gripper_max))
        if brake:
            traj = stop_trajectory(pos, vel, self.motion.joint_names, self.motion.limits, self.motion.config,
                                   self.cfg.hold_duration_s, self.cfg.stop_deceleration_scale)
        else:
            traj = hold_trajectory(pos, self.motion.joint_names, self.cfg.hold_duration_s)
        self._publish_trajectory(traj)

    def _publish_usage(self, runner: GoalRunner, episode_id: str) -> None:
        """ExpertUsage of the goal so far (expert counts per trunk layer since it started)."""
        if runner.usage is None:
            self.get_logger().warning(f"expert usage unavailable: {runner.usage_error}", throttle_duration_sec=10.0)
            return
        layers, overall = runner.usage
        msg = ExpertUsage(episode_id=episode_id, mean_active_experts=overall)
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.layers = [LayerExpertUsage(layer=i, expert_counts=c, mean_active_experts=m)
                      for i, (c, m) in enumerate(layers)]
        self._usage_pub.publish(msg)

    def _run_goal(self, goal_handle, run, policy):
        """Drive one goal (goal_runner.GoalRunner): wait for frames, step, publish, until it ends."""
        cfg = self.cfg
        goal = goal_handle.request
        episode_id = f"{cfg.episode_id_prefix}{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
        runner = GoalRunner(policy, self.motion, cfg, goal.instruction, goal.max_steps, goal.time_limit_s,
                            reference=self.reference, clock=time.monotonic,
                            observation_age=lambda snap: snap.age(self.get_clock().now().nanoseconds * 1e-9,
                                                                  time.monotonic()),
                            on_chunk_ready=self._wake_waiters)
        try:
            return self._drive_goal(goal_handle, runner, run, episode_id)
        finally:
            runner.close()  # async_inference: waits for a policy.act still running (after the hold is out)

    def _wake_waiters(self) -> None:
        """Wake every goal loop waiting in _sleep (a new frame, or an async chunk is ready)."""
        with self._waiters_lock:
            waiters, self._frame_waiters = self._frame_waiters, []
        for event in waiters:
            event.set()

    def _drive_goal(self, goal_handle, runner: GoalRunner, run, episode_id: str):
        """The goal's loop: wait for frames, step (or collect an async chunk), publish, until it ends."""
        goal = goal_handle.request
        cameras = self.camera_names
        period = runner.period
        self.get_logger().info(f"goal {episode_id}: {goal.instruction!r} "
                               f"(<= {runner.max_steps} steps, {runner.time_limit_s:.1f} s)")

        def finish(end: GoalEnd):
            if end.log:
                self.get_logger().error(end.log)
            if end.hold:
                self._hold()
            getattr(goal_handle, end.status)()
            self.get_logger().info(f"goal {episode_id} ended after {runner.steps} steps: {end.reason}")
            return ExecuteInstruction.Result(success=end.success, steps=runner.steps, reason=end.reason,
                                             episode_id=episode_id)

        def feedback(phase: str) -> None:
            goal_handle.publish_feedback(ExecuteInstruction.Feedback(
                step=runner.steps, phase=phase, progress=runner.progress(),
                mean_active_experts=runner.mean_active, inference_latency_ms=runner.latency_ms,
                episode_id=episode_id, instruction=goal.instruction))

        def publish(outcome) -> None:
            """A step's trajectory to the controller, or the hold on a refused chunk; then the expert usage."""
            if isinstance(outcome, ChunkRejected):
                self.get_logger().warning(f"chunk rejected by the motion backend: {outcome.reason}")
                self._hold()
            else:
                if outcome.report.any_hit:
                    self.get_logger().info(f"motion limits: {outcome.report.summary()}", throttle_duration_sec=2.0)
                self._publish_trajectory(outcome)
            self._publish_usage(runner, episode_id)

        feedback("waiting_for_input")  # at once: tells the client this goal runs (a refused one gets none)
        while True:
            now = time.monotonic()
            if goal_handle.is_cancel_requested:
                feedback("holding")
                return finish(GoalEnd(EndReason.CANCELED, EndReason.CANCELED.value))
            if run.preempted:
                return finish(GoalEnd(EndReason.PREEMPTED, EndReason.PREEMPTED.value))
            collected = runner.collect()  # async_inference: a chunk finished between frames is published at once
            if collected is not None:
                if isinstance(collected, GoalEnd):
                    return finish(collected)
                publish(collected)
                continue
            polled = runner.poll(self.inputs, cameras, now, success_time=self._success_time)
            if isinstance(polled, GoalEnd):
                if polled.success:
                    feedback("finishing")
                return finish(polled)
            if polled is None:  # no new, consistent set of frames yet
                if runner.steps == 0:
                    feedback("waiting_for_input")
                self._sleep(min(period, 0.05), wake_on_frame=True)
                continue
            snap = polled
            outcome = runner.step(snap)
            if isinstance(outcome, GoalEnd):
                return finish(outcome)
            if outcome is not None:  # None: async, no new chunk yet (the published trajectory goes on)
                publish(outcome)
            self.get_logger().debug(
                f"step {runner.steps}: frame age at start {1e3 * (now - snap.newest_frame_received):.1f} ms, "
                f"observation age at planning {1e3 * runner.last_observation_age_s:.1f} ms, "
                f"act {runner.latency_ms:.1f} ms, plan {runner.plan_ms:.1f} ms")
            feedback("running")


def main(args=None) -> int:
    """Run the policy server until Ctrl-C; exit 0 (fedvla_ros.node_main)."""
    use_short_gil_switch_interval()
    return run_node(PolicyServer, num_threads=6, args=args)


if __name__ == "__main__":
    raise SystemExit(main())
