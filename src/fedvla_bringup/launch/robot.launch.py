"""One robot: the policy action server (and fed client) for a real arm, or with the MuJoCo arm (sim:=true).

    ros2 launch fedvla_bringup robot.launch.py sim:=true namespace:=robot1                  # no federation needed
    ros2 launch fedvla_bringup robot.launch.py sim:=true namespace:=robot1 federation:=false
    ros2 launch fedvla_bringup robot.launch.py checkpoint:=/path/to/ckpt controller_topic:=/arm_controller/joint_trajectory \
        root_certificates:=certs/ca.crt auth_private_key:=certs/node0
    ros2 launch fedvla_bringup robot.launch.py --show-args                                   # every argument

Without SuperNode credentials and without insecure:=true the fed client logs episodes and says that
rounds are off; it does not stop the robot. Without launch_ros (this repo's pip-only environment),
`fedvla up robot [--sim]` starts the same graph with the same options: both build it from
fedvla_bringup.graph.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from fedvla_bringup.graph import parse_bool, robot_graph
from fedvla_bringup.paths import config_file


def _nodes(context):
    arg = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    flag = lambda name: parse_bool(arg(name), name)  # noqa: E731
    specs = robot_graph(sim=flag("sim"), checkpoint=arg("checkpoint"), episode_dir=arg("episode_dir"),
                        robot_id=arg("robot_id"), with_fed_client=flag("fed_client"), federation=flag("federation"),
                        insecure=flag("insecure"), root_certificates=arg("root_certificates"),
                        auth_private_key=arg("auth_private_key"), superlink=arg("superlink"),
                        checkpoint_root=arg("checkpoint_root"))
    actions = []
    for spec in specs:
        params = [str(config_file(spec.package, spec.params_file)), dict(spec.parameters)]
        if spec.package == "fedvla_policy" and arg("controller_topic"):
            params.append({"controller_topic": arg("controller_topic")})
        actions.append(Node(package=spec.package, executable=spec.executable, name=spec.name,
                            namespace=arg("namespace"), parameters=params, output="screen"))
    return actions


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("sim", default_value="false", description="start the MuJoCo Panda instead of a real arm"),
        DeclareLaunchArgument("namespace", default_value="", description="robot namespace, e.g. robot1"),
        DeclareLaunchArgument("robot_id", default_value="robot1", description="identity in the federation"),
        DeclareLaunchArgument("checkpoint", default_value="", description="policy checkpoint (save_pretrained dir)"),
        DeclareLaunchArgument("checkpoint_root", default_value="",
                              description="the policy server's load_checkpoint loads only directories below this one "
                                          "(policy server parameter checkpoint_root; '' = the working directory)"),
        DeclareLaunchArgument("episode_dir", default_value="", description="where the fed client logs episodes"),
        DeclareLaunchArgument("fed_client", default_value="true", description="also start the fed client node"),
        DeclareLaunchArgument("federation", default_value="true",
                              description="take part in federated rounds; false: the fed client only logs episodes "
                                          "and says that rounds are off (fed client parameter federation_enabled)"),
        DeclareLaunchArgument("superlink", default_value="127.0.0.1:9092", description="federation server (SuperLink)"),
        DeclareLaunchArgument("root_certificates", default_value="",
                              description="CA certificate of the SuperLink (TLS); without it and auth_private_key, "
                                          "and without insecure:=true, rounds are off"),
        DeclareLaunchArgument("auth_private_key", default_value="",
                              description="this robot's SuperNode key, registered with the SuperLink"),
        DeclareLaunchArgument("insecure", default_value="false",
                              description="run the SuperNode without TLS and node authentication (explicit opt-in)"),
        DeclareLaunchArgument("controller_topic", default_value="",
                              description="JointTrajectory topic of the arm's controller (empty: the YAML default)"),
        OpaqueFunction(function=_nodes),
    ])
