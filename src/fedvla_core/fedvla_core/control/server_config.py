"""The policy server's configuration: every ROS parameter, its default, help and checks (no rclpy).

One dataclass, declared as ROS parameters by fedvla_ros.params.declare_config and mirrored by
config/policy_server.yaml (a test holds the two together). The motion fields are MotionConfig's own
(``motion_field``), so a default or help text is written once.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

from fedvla_core.config_fields import check_ranges
from fedvla_core.control.chunk_scheduler import BLENDS
from fedvla_core.control.motion.config import MotionConfig
from fedvla_core.embodiment import ARM_JOINTS, GRIPPER_JOINT, PANDA_LIMITS


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
    async_inference: bool = field(default=False, metadata={
        "help": "Infer the next chunk on a worker thread while the current one executes (chunk_scheduler.py); "
                "false = one policy call per control step, its trajectory replacing the last (synchronous)."})
    chunk_size_threshold: float = field(default=0.5, metadata={
        "help": "async_inference: start the next inference when the share of the executing chunk's actions still "
                "ahead falls to this (LeRobot's chunk_size_threshold; 1 = at every step, 0 = when it has run out).",
        "range": (0.0, 1.0)})
    chunk_blend: str = field(default="rtc", metadata={
        "help": "async_inference: how a new chunk joins the executing one where they overlap: 'rtc' (keep the "
                "actions due within min_action_lead_s, then fade to the new chunk), 'ensemble' (weighted average, "
                "chunk_blend_weight) or 'replace'."})
    chunk_blend_weight: float = field(default=0.5, metadata={
        "help": "chunk_blend 'ensemble': weight of the new chunk's action in the overlap (old: 1 - this).",
        "range": (0.0, 1.0)})
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
        check_ranges(self)
        if self.chunk_blend not in BLENDS:
            raise ValueError(f"chunk_blend must be one of {BLENDS}, got {self.chunk_blend!r}")
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
