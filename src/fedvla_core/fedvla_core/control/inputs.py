"""The policy server's decisions, without ROS: goal validation, input freshness, observations.

server_node.py is a thin shell that feeds ROS messages into these functions and classes and
turns their answers into ROS messages; everything here is unit-tested without a ROS graph.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field, fields
from typing import Callable

import numpy as np

from fedvla_core.embodiment import ARM_JOINTS, GRIPPER_JOINT, PANDA_LIMITS
from fedvla_core.control.goal_arbitration import BUSY_REFUSAL
from fedvla_core.control.goal_refusal import INVALID_GOAL, NOT_READY, UNGROUNDED, refusal_reason
from fedvla_core.control.input_checks import goal_limits_problem
from fedvla_core.control.input_sync import StampedHistory
from fedvla_core.control.motion.config import MotionConfig


#: Server parameter -> MotionConfig field, for the fields the server passes through to the motion backend.
MOTION_PARAMETERS = {"velocity_scale": "velocity_scale", "acceleration_scale": "acceleration_scale",
                     "reject_margin": "reject_margin", "trajectory_timing": "timing", "min_action_lead_s": "min_lead_s",
                     "sample_dt": "sample_dt", "gripper_max": "gripper_max"}


def motion_field(name: str):
    """A ServerConfig field with MotionConfig's default and help for `name` (so neither is written twice)."""
    source = next(f for f in fields(MotionConfig) if f.name == name)
    return field(default=source.default, metadata=dict(source.metadata))


@dataclass
class ServerConfig:
    """Every ROS parameter of the policy server (defaults mirrored in config/policy_server.yaml)."""

    checkpoint: str = field(default="", metadata={"help": "save_pretrained directory loaded at start ('' = none yet)."})
    checkpoint_root: str = field(default="", metadata={
        "help": "load_checkpoint loads only local directories below this one (symlinks resolved, relative paths taken "
                "relative to it, never a Hub lookup); '' = the directory the node was started in."})
    min_instruction_similarity: float = field(default=0.644, metadata={
        "help": "Refuse a goal (code 'ungrounded') whose instruction's sentence embedding (the policy's MiniLM) has a "
                "cosine similarity below this to every instruction the policy was trained on (the checkpoint config's "
                "trained_instructions, else the sim task table that matches its cameras). Measured on held-out "
                "phrasings vs off-task sentences by benchmarks/instruction_grounding.py; <= 0 turns the check off."})
    device: str = field(default="cpu", metadata={"help": "torch device for the policy (cpu, cuda, cuda:0, ...)."})
    action_name: str = field(default="execute_instruction", metadata={"help": "Name of the ExecuteInstruction action."})
    camera_names: list[str] = field(default_factory=list, metadata={
        "help": "Cameras to feed the policy; empty = the model config's camera_names."})
    camera_topic_template: str = field(default="camera/{name}/image_raw", metadata={
        "help": "Image topic of each camera; {name} is replaced by the camera name."})
    joint_states_topic: str = field(default="joint_states", metadata={"help": "sensor_msgs/JointState input."})
    task_success_topic: str = field(default="task_success", metadata={"help": "std_msgs/Bool: true ends a goal as a success."})
    instruction_goal_topic: str = field(default="instruction_goal", metadata={
        "help": "std_msgs/String: each message starts a goal as if an action client had sent it."})
    controller_topic: str = field(default="arm_controller/joint_trajectory", metadata={
        "help": "trajectory_msgs/JointTrajectory topic of the arm's controller."})
    controller_action: str = field(default="arm_controller/follow_joint_trajectory", metadata={
        "help": "FollowJointTrajectory action of the controller (used only when control_msgs imports)."})
    use_follow_joint_trajectory: bool = field(default=False, metadata={
        "help": "Send trajectories through the FollowJointTrajectory action instead of the topic "
                "(ignored when control_msgs is not installed)."})
    load_checkpoint_service: str = field(default="load_checkpoint", metadata={
        "help": "fedvla_msgs/LoadCheckpoint service that swaps the model between goals."})
    expert_usage_topic: str = field(default="expert_usage", metadata={"help": "fedvla_msgs/ExpertUsage output."})
    arm_joint_names: list[str] = field(default_factory=lambda: list(ARM_JOINTS), metadata={
        "help": "Arm joints, in the order of the policy's action vector."})
    joint_lower_limits: list[float] = field(default_factory=lambda: PANDA_LIMITS.lower.tolist(), metadata={
        "help": "Lowest position (rad) of each arm joint, in arm_joint_names order: the robot's own range (default: "
                "the Panda datasheet; the sim's MJCF differs, and its controller rejects points outside it)."})
    joint_upper_limits: list[float] = field(default_factory=lambda: PANDA_LIMITS.upper.tolist(), metadata={
        "help": "Highest position (rad) of each arm joint, in arm_joint_names order."})
    gripper_joint: str = field(default=GRIPPER_JOINT, metadata={
        "help": "Gripper joint commanded by the last action entry ('' = no gripper)."})
    gripper_max: float = motion_field("gripper_max")
    joint_state_tolerance: float = field(default=0.2, metadata={
        "help": "A joint_states message with an arm joint further than this (rad) outside joint_lower/upper_limits "
                "(the gripper: further than gripper_max outside [0, gripper_max]) is refused as a sensor fault."})
    action_space: str = field(default="joint", metadata={"help": "'joint' (absolute joint targets) or 'ee' (IK)."})
    motion_backend: str = field(default="auto", metadata={
        "help": "'auto' (moveit_py when importable, else toppra), 'moveit' or 'toppra'."})
    ik_model_path: str = field(default="", metadata={
        "help": "MJCF of the arm for mink IK (needed only when action_space is 'ee')."})
    ik_site: str = field(default="", metadata={"help": "End-effector site of ik_model_path that 'ee' chunks command."})
    control_rate_hz: float = field(default=10.0, metadata={"help": "Policy steps per second."})
    max_frame_skew_s: float = field(default=0.25, metadata={
        "help": "Newest and oldest camera frame of one step may be at most this far apart."})
    stale_input_timeout_s: float = field(default=1.0, metadata={
        "help": "Abort a goal when a camera or the joint states have not arrived for this long."})
    startup_input_timeout_s: float = field(default=2.0, metadata={
        "help": "How long a new goal may wait for a fresh, consistent set of inputs before aborting."})
    max_instruction_length: int = field(default=256, metadata={"help": "Longest accepted instruction (characters)."})
    default_max_steps: int = field(default=200, metadata={"help": "Step limit of a goal that sets max_steps = 0."})
    default_time_limit_s: float = field(default=60.0, metadata={"help": "Time limit of a goal that sets time_limit_s = 0."})
    on_new_goal: str = field(default="preempt", metadata={
        "help": "What a new goal does while one is running: 'preempt' it or be 'reject'ed."})
    hold_duration_s: float = field(default=0.2, metadata={"help": "Length of the hold trajectory sent on cancel/abort."})
    stop_deceleration_scale: float = field(default=0.3, metadata={
        "help": "Fraction of the acceleration limits used to brake on cancel/abort (gentler = less ringing)."})
    # The motion fields: MotionConfig's own defaults and help (one definition), under the server's parameter
    # names (MOTION_PARAMETERS: two of them carry their older, user-facing names).
    velocity_scale: float = motion_field("velocity_scale")
    acceleration_scale: float = motion_field("acceleration_scale")
    reject_margin: float = motion_field("reject_margin")
    trajectory_timing: str = motion_field("timing")
    min_action_lead_s: float = motion_field("min_lead_s")
    sample_dt: float = motion_field("sample_dt")
    execute_horizon: int = field(default=0, metadata={
        "help": "Chunk actions turned into each trajectory (0 = the whole chunk)."})
    episode_id_prefix: str = field(default="", metadata={"help": "Prefix of episode ids (e.g. the robot id)."})

    def __post_init__(self):
        if self.control_rate_hz <= 0:
            raise ValueError(f"control_rate_hz must be > 0, got {self.control_rate_hz}")
        for name in ("max_frame_skew_s", "stale_input_timeout_s", "startup_input_timeout_s",
                     "default_time_limit_s", "hold_duration_s", "joint_state_tolerance"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        if not 0.0 < self.stop_deceleration_scale <= 1.0:
            raise ValueError(f"stop_deceleration_scale must be in (0, 1], got {self.stop_deceleration_scale}")
        if not self.min_instruction_similarity <= 1.0:
            raise ValueError(f"min_instruction_similarity must be <= 1 (cosine similarity; <= 0 = off), "
                             f"got {self.min_instruction_similarity}")
        if self.max_instruction_length < 1:
            raise ValueError(f"max_instruction_length must be >= 1, got {self.max_instruction_length}")
        if self.default_max_steps < 1:
            raise ValueError(f"default_max_steps must be >= 1, got {self.default_max_steps}")
        if self.on_new_goal not in ("preempt", "reject"):
            raise ValueError(f"on_new_goal must be 'preempt' or 'reject', got {self.on_new_goal!r}")
        if self.action_space not in ("joint", "ee"):
            raise ValueError(f"action_space must be 'joint' or 'ee', got {self.action_space!r}")
        if self.motion_backend not in ("auto", "moveit", "toppra"):
            raise ValueError(f"motion_backend must be 'auto', 'moveit' or 'toppra', got {self.motion_backend!r}")
        if self.action_space == "ee" and not (self.ik_model_path and self.ik_site):
            raise ValueError("action_space 'ee' needs ik_model_path and ik_site")
        if "{name}" not in self.camera_topic_template:
            raise ValueError("camera_topic_template must contain '{name}'")
        if not self.arm_joint_names:
            raise ValueError("arm_joint_names must not be empty")
        for name in ("joint_lower_limits", "joint_upper_limits"):
            if len(getattr(self, name)) != len(self.arm_joint_names):
                raise ValueError(f"{name} needs one entry per arm joint ({len(self.arm_joint_names)}), "
                                 f"got {len(getattr(self, name))}")
        bad = [n for n, lo, hi in zip(self.arm_joint_names, self.joint_lower_limits, self.joint_upper_limits) if lo >= hi]
        if bad:
            raise ValueError(f"joint_lower_limits must be below joint_upper_limits; not for {bad}")
        if self.execute_horizon < 0:
            raise ValueError(f"execute_horizon must be >= 0, got {self.execute_horizon}")
        try:
            self.motion_config()
        except ValueError as exc:  # MotionConfig's own checks, said in the server's parameter names
            text = str(exc)
            for server_name, motion_name in MOTION_PARAMETERS.items():
                text = text.replace(f"MotionConfig.{motion_name} ", f"{server_name} ")
            raise ValueError(text) from None

    def motion_config(self) -> MotionConfig:
        """The MotionConfig these parameters describe (one control period between chunk actions)."""
        return MotionConfig(nominal_step_s=1.0 / self.control_rate_hz,
                            **{motion: getattr(self, server) for server, motion in MOTION_PARAMETERS.items()})

    @classmethod
    def help(cls) -> dict[str, str]:
        return {f.name: f.metadata.get("help", "") for f in fields(cls)}


# ----------------------------------------------------------------------------- goal acceptance

def instruction_problem(instruction: str, max_length: int) -> str | None:
    """Why an instruction is unusable, or None when it is fine."""
    if not instruction or not instruction.strip():
        return "instruction is empty" if not instruction else "instruction is only whitespace"
    if len(instruction) > max_length:
        return f"instruction is too long ({len(instruction)} > {max_length} characters)"
    if not instruction.isprintable():
        bad = next(c for c in instruction if not c.isprintable())
        return f"instruction contains a non-printable character ({bad!r})"
    return None


def goal_rejection_reason(instruction: str, *, max_length: int, model_loaded: bool,
                          missing_cameras: list[str], have_joint_state: bool,
                          goal_running: bool, on_new_goal: str, max_steps: int = 0, time_limit_s: float = 0.0,
                          grounding: Callable[[str], str | None] | None = None,
                          input_notes: dict[str, str] | None = None) -> str | None:
    """The reason (``"<code>: <detail>"``, goal_refusal) a new goal must be refused, or None to run it.

    Checks in a fixed order: the goal itself (invalid_goal), the server's readiness (not_ready), the
    instruction against what the policy was trained on (``grounding``: instruction -> problem or None;
    ungrounded), another goal running (busy). ``input_notes`` (input name -> why its last message was
    refused) explain a missing input.
    """
    notes = input_notes or {}

    def note(key: str) -> str:
        return f" (its last message was refused: {notes[key]})" if key in notes else ""

    problem = instruction_problem(instruction, max_length) or goal_limits_problem(max_steps, time_limit_s)
    if problem:
        return refusal_reason(INVALID_GOAL, problem)
    if not model_loaded:
        return refusal_reason(NOT_READY, "no checkpoint loaded (set the 'checkpoint' parameter or call load_checkpoint)")
    if missing_cameras:
        return refusal_reason(NOT_READY, "no camera frame received yet from: "
                              + ", ".join(c + note(c) for c in missing_cameras))
    if not have_joint_state:
        return refusal_reason(NOT_READY, "no joint state received yet" + note("joint_states"))
    problem = grounding(instruction) if grounding is not None else None
    if problem:
        return refusal_reason(UNGROUNDED, problem)
    if goal_running and on_new_goal == "reject":
        return BUSY_REFUSAL
    return None


# ----------------------------------------------------------------------------- latest inputs

def stale_camera(camera: str, age: float, timeout: float) -> str:
    """The stale_input reason of a camera whose newest frame is ``age`` s old."""
    return f"stale_input: camera '{camera}' has not published for {age:.2f} s (timeout {timeout:.2f} s)"


def stale_joint_states(age: float, timeout: float) -> str:
    """The stale_input reason of joint states whose newest message is ``age`` s old."""
    return f"stale_input: joint states have not arrived for {age:.2f} s (timeout {timeout:.2f} s)"


@dataclass
class Frame:
    image: np.ndarray  # HxWx3 RGB uint8
    stamp: float  # header stamp in seconds (0 when the publisher left it unset)
    received: float  # time.monotonic() at arrival


@dataclass
class JointSample:
    positions: dict[str, float]
    velocities: dict[str, float]
    received: float
    stamp: float = 0.0  # header stamp in seconds (0 when the publisher left it unset)


@dataclass
class Snapshot:
    """One consistent set of inputs for a policy step."""

    images: dict[str, np.ndarray]
    joint: JointSample  # the newest joint state: where the arm is now (trajectories start here)
    newest_frame_received: float
    proprio_joint: JointSample | None = None  # the joint state at the frames' stamp: what the policy reads
    frame_stamp: float = 0.0  # header stamp (s) of the newest frame; 0 when a frame is unstamped
    frames_received: dict[str, float] = field(default_factory=dict)  # camera -> arrival (time.monotonic())

    @property
    def observed_joint(self) -> JointSample:
        return self.proprio_joint if self.proprio_joint is not None else self.joint

    def stale_reason(self, now: float, timeout: float) -> str | None:
        """Which of this snapshot's inputs is older than ``timeout`` at ``now`` (a camera, or the joint state)."""
        for cam, received in self.frames_received.items():
            if now - received > timeout:
                return stale_camera(cam, now - received, timeout)
        if now - self.joint.received > timeout:
            return stale_joint_states(now - self.joint.received, timeout)
        return None

    def age(self, clock_now: float, monotonic_now: float) -> float:
        """Seconds since the observation: from the header stamps (capture time, same clock as
        ``clock_now``) when the frames carry them, else from their arrival; never negative."""
        age = clock_now - self.frame_stamp if self.frame_stamp > 0 else monotonic_now - self.newest_frame_received
        return max(0.0, age)


class LatestInputs:
    """Thread-safe store of the newest camera frames and joint state (written by subscriptions)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._frames: dict[str, Frame] = {}
        self._joint: JointSample | None = None
        self._joint_history = StampedHistory()
        self._refused: dict[str, str] = {}  # input (camera name or "joint_states") -> why its last message was refused

    def note_refused(self, source: str, reason: str) -> None:
        """Remember why the last message of ``source`` was refused (named when that input goes missing)."""
        with self._lock:
            self._refused[source] = reason

    def refusal_notes(self) -> dict[str, str]:
        with self._lock:
            return dict(self._refused)

    def put_frame(self, camera: str, frame: Frame) -> None:
        with self._lock:
            self._frames[camera] = frame
            self._refused.pop(camera, None)

    def put_joint(self, sample: JointSample) -> None:
        with self._lock:
            self._joint = sample
            self._refused.pop("joint_states", None)
        self._joint_history.add(sample.stamp, sample)

    def missing_cameras(self, cameras: list[str]) -> list[str]:
        with self._lock:
            return [c for c in cameras if c not in self._frames]

    def cameras_without_frame_after(self, cameras: list[str], after: float) -> list[str]:
        """Cameras whose newest frame arrived at or before ``after`` (time.monotonic()): the ones holding a step up."""
        with self._lock:
            return [c for c in cameras if c not in self._frames or self._frames[c].received <= after]

    def has_joint_state(self) -> bool:
        with self._lock:
            return self._joint is not None

    def joint(self) -> JointSample | None:
        with self._lock:
            return self._joint

    def stale_reason(self, cameras: list[str], now: float, timeout: float) -> str | None:
        """Which input went quiet for longer than ``timeout`` (a camera, or the joint states)."""
        with self._lock:
            for cam in cameras:
                frame = self._frames.get(cam)
                if frame is None:
                    return f"stale_input: no frame from camera '{cam}'"
                if now - frame.received > timeout:
                    return stale_camera(cam, now - frame.received, timeout) + self._note(cam)
            if self._joint is None:
                return "stale_input: no joint state" + self._note("joint_states")
            if now - self._joint.received > timeout:
                return stale_joint_states(now - self._joint.received, timeout) + self._note("joint_states")
        return None

    def _note(self, source: str) -> str:
        """(lock held) why the last message of ``source`` was refused, when it was."""
        return f"; its last message was refused: {self._refused[source]}" if source in self._refused else ""

    def snapshot(self, cameras: list[str], max_skew: float, after: float = -np.inf) -> Snapshot | None:
        """Latest frames + joint state, or None when a frame is missing, the set is inconsistent
        (frames further apart than ``max_skew``) or not every camera has a frame newer than ``after``
        (one step per complete set of new frames, not one per camera message)."""
        with self._lock:
            frames = [self._frames.get(c) for c in cameras]
            joint = self._joint
        if joint is None or any(f is None for f in frames):
            return None
        stamps = [f.stamp if all(g.stamp > 0 for g in frames) else f.received for f in frames]
        if max(stamps) - min(stamps) > max_skew:
            return None
        if min(f.received for f in frames) <= after:
            return None
        newest = max(f.received for f in frames)
        # proprioception of the frames' instant (input_sync): falls back to the newest joint state when the
        # frames or joint states are unstamped or no joint state lies within max_skew of the frames
        at_frames = self._joint_history.nearest(max(f.stamp for f in frames), max_skew) \
            if all(f.stamp > 0 for f in frames) else None
        stamp = max(f.stamp for f in frames) if all(f.stamp > 0 for f in frames) else 0.0
        return Snapshot({c: f.image for c, f in zip(cameras, frames)}, joint, newest, at_frames, stamp,
                        {c: f.received for c, f in zip(cameras, frames)})


def proprio_vector(joint: JointSample, arm_joints: list[str], gripper_joint: str) -> np.ndarray:
    """Proprioception as the episodes log it: joint positions in order, the gripper joint last."""
    names = list(arm_joints) + ([gripper_joint] if gripper_joint else [])
    missing = [n for n in names if n not in joint.positions]
    if missing:
        raise KeyError("joint state lacks " + ", ".join(missing))
    return np.array([joint.positions[n] for n in names], dtype=np.float32)


def current_positions(joint: JointSample, arm_joints: list[str], gripper_joint: str) -> tuple[np.ndarray, np.ndarray]:
    """(positions, velocities) of the commanded joints, gripper last (0 velocity when not reported)."""
    names = list(arm_joints) + ([gripper_joint] if gripper_joint else [])
    pos = np.array([joint.positions[n] for n in names], dtype=float)
    vel = np.array([joint.velocities.get(n, 0.0) for n in names], dtype=float)
    return pos, vel


def step_budget(goal_max_steps: int, goal_time_limit: float, default_steps: int, default_time: float) -> tuple[int, float]:
    """Effective step and time limits of a goal (0 in the goal means: the server default)."""
    steps = int(goal_max_steps) if goal_max_steps > 0 else int(default_steps)
    seconds = float(goal_time_limit) if goal_time_limit > 0 else float(default_time)
    return steps, seconds


def progress(step: int, max_steps: int, elapsed: float, time_limit: float) -> float:
    """Fraction of the goal's budget used: the larger of the step and time fractions, in [0, 1]."""
    return float(min(1.0, max(step / max(max_steps, 1), elapsed / max(time_limit, 1e-9))))


class ReferenceTracker:
    """Remembers the last trajectory sent to the controller, to plan the next one from its setpoint.

    A joint_trajectory_controller blends each new trajectory from its current *setpoint*. Planning
    from the measured position instead (which lags the setpoint while the arm moves) would pull
    the setpoint back at every control step and make the arm shake. The measured state is used
    when nothing was sent yet, or when the setpoint and the arm disagree by more than
    ``max_deviation`` (the arm is blocked, or another node moved it).
    """

    def __init__(self, max_deviation: float = 0.15):
        self.max_deviation = max_deviation
        self._traj = None
        self._t0 = 0.0

    def record(self, traj, sent_at: float) -> None:
        self._traj, self._t0 = traj, sent_at

    def clear(self) -> None:
        self._traj = None

    def state(self, now: float, measured_pos: np.ndarray, measured_vel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position, velocity) to plan from at ``now``."""
        traj = self._traj
        if traj is None or len(traj.times) == 0 or traj.positions.shape[1] != len(measured_pos):
            return measured_pos, measured_vel
        t = now - self._t0
        if t >= traj.times[-1]:
            pos, vel = traj.positions[-1].copy(), np.zeros_like(measured_vel)
        else:
            t = max(t, 0.0)
            pos = np.array([np.interp(t, traj.times, traj.positions[:, j]) for j in range(traj.positions.shape[1])])
            vel = np.array([np.interp(t, traj.times, traj.velocities[:, j]) for j in range(traj.velocities.shape[1])])
        if np.max(np.abs(pos - measured_pos)) > self.max_deviation:
            return measured_pos, measured_vel
        return pos, vel
