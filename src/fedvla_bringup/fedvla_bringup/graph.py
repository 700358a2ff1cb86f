"""The node graph of one robot, described once.

Both the ROS 2 launch files (launch/*.launch.py, for real installs with launch_ros) and the
project CLI (`fedvla up robot`, for machines without launch_ros) build the same processes
from these specs, so the two cannot drift apart.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class NodeSpec:
    """One ROS 2 node: how `ros2 run` finds it and how the CLI starts it without launch_ros."""

    package: str
    executable: str  # console script installed to lib/<package>/ (what launch_ros runs)
    module: str  # Python module whose main() runs the node (what the CLI runs here)
    name: str  # node name
    params_file: str  # YAML under share/<package>/config
    parameters: dict = field(default_factory=dict)  # overrides on top of params_file
    role: str = ""  # one line for `fedvla graph`


SIM_ROBOT = ("fedvla_sim", "sim_robot", "fedvla_sim.robot_node", "sim_robot", "sim_robot.yaml")
POLICY_SERVER = ("fedvla_policy", "policy_server", "fedvla_policy.server_node", "policy_server", "policy_server.yaml")
FED_CLIENT = ("fedvla_fed_client", "fed_client", "fedvla_fed_client.client_node", "fed_client", "fed_client.yaml")


def parse_bool(text: str | bool, name: str) -> bool:
    """A launch argument or CLI value as a bool ('true'/'false', also 1/0, yes/no, on/off).

    Why: launch arguments arrive as strings, and a typo such as `insecure:=ture` must fail with the
    argument's name instead of silently meaning false.
    """
    if isinstance(text, bool):
        return text
    value = str(text).strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise ValueError(f"{name}: expected true or false, got {text!r}")


def robot_graph(*, sim: bool, checkpoint: str = "", episode_dir: str = "", robot_id: str = "robot1",
                with_fed_client: bool = True, sim_tasks: list[str] | None = None, federation: bool = True,
                insecure: bool = False, root_certificates: str = "", auth_private_key: str = "",
                superlink: str = "", checkpoint_root: str = "") -> list[NodeSpec]:
    """The nodes of one robot: (sim arm,) policy action server, (fed client).

    federation=False sets the fed client's federation_enabled:=false (it logs episodes only and says that
    rounds are off). Without certificates and without insecure it turns rounds off by itself, with the
    reason, so a robot without a federation starts all the same. Empty strings keep the YAML's values.
    """
    nodes = []
    if sim:
        params = {"task": sim_tasks[0]} if sim_tasks else {}  # the fleet demo resets to its other tasks
        nodes.append(NodeSpec(*SIM_ROBOT, parameters=params,
                              role="MuJoCo Panda: cameras, joint_states, task_success; follows JointTrajectory"))
    policy_params = {"checkpoint": checkpoint} if checkpoint else {}
    if checkpoint_root:
        policy_params["checkpoint_root"] = checkpoint_root
    if sim:  # plan within the sim arm's own joint ranges (its MJCF's, not the datasheet's)
        from fedvla_sim.scene import arm_position_limits

        policy_params["joint_lower_limits"], policy_params["joint_upper_limits"] = arm_position_limits()
    nodes.append(NodeSpec(*POLICY_SERVER, parameters=policy_params,
                          role="ExecuteInstruction action server: VLA policy -> JointTrajectory"))
    if with_fed_client:
        fed_params = {"robot_id": robot_id, "federation_enabled": bool(federation), "insecure": bool(insecure)}
        for name, value in (("episode_dir", episode_dir), ("base_checkpoint", checkpoint),
                            ("superlink_address", superlink), ("root_certificates", root_certificates),
                            ("auth_private_key", auth_private_key)):
            if value:
                fed_params[name] = value
        nodes.append(NodeSpec(*FED_CLIENT, parameters=fed_params,
                              role="episode logger + round scheduler + Flower SuperNode supervisor"))
    return nodes
