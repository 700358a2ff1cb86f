"""Every ROS parameter of the fed client node: name, type, default and help, in one place (no rclpy).

config/fed_client.yaml mirrors these defaults (tests/fedvla_ros/test_params.py checks it). The node
declares each field with fedvla_ros.params.declare_config: a typed, read-only ROS parameter whose
descriptor holds the help and range below (`ros2 param describe`); the field convention is
fedvla_core.config_fields.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from fedvla_core.config_fields import check_ranges


@dataclass
class FedClientConfig:
    """Parameters of the fed client node (defaults mirrored in config/fed_client.yaml)."""

    robot_id: str = field(default="robot1", metadata={"help": "Identity in the federation and in episode metadata."})
    episode_dir: str = field(default="", metadata={"help": "Where episodes are logged; '' = runs/episodes/<robot_id>."})
    camera_names: list[str] = field(default_factory=lambda: ["agentview", "wrist"], metadata={
        "help": "Cameras recorded into each episode, in the order the policy sees them."})
    camera_topic_format: str = field(default="camera/{name}/image_raw", metadata={
        "help": "Image topic of each camera; {name} is replaced by the camera name."})
    joint_states_topic: str = field(default="joint_states", metadata={"help": "sensor_msgs/JointState input."})
    controller_topic: str = field(default="arm_controller/joint_trajectory", metadata={
        "help": "Commanded JointTrajectory topic (the recorded actions)."})
    action_name: str = field(default="execute_instruction", metadata={
        "help": "The policy server's ExecuteInstruction action (its goals are logged as episodes)."})
    record_rate_hz: float = field(default=10.0, metadata={"help": "Steps per second written to an episode."})
    retention_max_bytes: int = field(default=2_000_000_000, metadata={
        "help": "Delete the oldest episodes beyond this many bytes.", "range": (0, None)})
    retention_max_episodes: int = field(default=1000, metadata={
        "help": "... or beyond this many episodes.", "range": (0, None)})
    federation_enabled: bool = field(default=True, metadata={
        "help": "Take part in federated rounds (round gate, trigger_round, SuperNode). false: only log episodes; "
                "the node says at start and in RoundStatus (state 'off') that rounds are off. Rounds are also off, "
                "with the reason, when supernode_enabled is set but neither TLS credentials nor insecure are given."})
    round_interval_s: float = field(default=300.0, metadata={
        "help": "A round waits at least this long after the last.", "range": (0.0, None)})
    min_new_episodes: int = field(default=5, metadata={
        "help": "A round needs at least this many new finished episodes.", "range": (0, None)})
    only_while_idle: bool = field(default=True, metadata={"help": "Never train while a goal or demonstration runs."})
    status_rate_hz: float = field(default=1.0, metadata={"help": "RoundStatus publishing / schedule check rate."})
    sim_run_expert_service: str = field(default="run_expert", metadata={
        "help": "The sim's RunExpert service, recorded as a demonstration by ~/record_demonstration."})
    task_instruction_topic: str = field(default="instruction", metadata={
        "help": "std_msgs/String (latched): the sim task's instruction, used for demonstrations."})
    task_info_topic: str = field(default="task_info", metadata={
        "help": "std_msgs/String (latched JSON {task, seed, instruction, suite}) from the sim: stored in the "
                "metadata of the episodes recorded while it holds ('' = none)."})
    load_checkpoint_service: str = field(default="load_checkpoint", metadata={
        "help": "The policy server's LoadCheckpoint service, called after a successful round."})
    supernode_enabled: bool = field(default=True, metadata={
        "help": "Start and supervise this robot's Flower SuperNode (false: an external one serves the gate)."})
    superlink_address: str = field(default="127.0.0.1:9092", metadata={"help": "Federation server (SuperLink)."})
    supernode_port: int = field(default=0, metadata={"help": "ClientAppIo port; 0 = pick a free one.",
                                                      "range": (0, 65535)})
    root_certificates: str = field(default="", metadata={
        "help": "CA certificate of the SuperLink (TLS); '' only with insecure."})
    auth_private_key: str = field(default="", metadata={"help": "This robot's SuperNode key (registered with the SuperLink)."})
    insecure: bool = field(default=False, metadata={"help": "Plain-text transport; must be asked for explicitly."})
    base_checkpoint: str = field(default="", metadata={
        "help": "Policy the robot starts from before its first round (stem/head/trunk)."})
    trainer_threads: int = field(default=0, metadata={
        "help": "OpenMP/MKL threads of the local trainer; 0 = library default (all cores).", "range": (0, None)})

    def __post_init__(self):
        self.camera_names = [c for c in self.camera_names if c]
        if not self.camera_names:
            raise ValueError("FedClientConfig.camera_names: at least one camera")
        for name in ("record_rate_hz", "status_rate_hz"):
            if not getattr(self, name) > 0:
                raise ValueError(f"FedClientConfig.{name}: must be > 0 (got {getattr(self, name)})")
        check_ranges(self)

    def rounds_off_reason(self) -> str:
        """Why this robot takes part in no round ('' when it does)."""
        if not self.federation_enabled:
            return "rounds are off (federation_enabled:=false): episodes are logged only"
        if self.supernode_enabled and not self.insecure and not (self.root_certificates and self.auth_private_key):
            return ("rounds are off: no SuperNode credentials (set root_certificates and auth_private_key for TLS + "
                    "node authentication, or insecure:=true explicitly); episodes are logged only")
        return ""
