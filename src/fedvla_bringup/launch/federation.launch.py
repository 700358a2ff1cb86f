"""The federation server: Flower SuperLink (TLS + SuperNode authentication) and the FedVLA ServerApp
run on a schedule, through `fedvla-federation serve`.

    fedvla-federation certs --out runs/fleet/certs --nodes 2     # once: CA, server cert, node keys
    ros2 launch fedvla_bringup federation.launch.py certs:=runs/fleet/certs rounds:=10
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, ExecuteProcess, OpaqueFunction
from launch.substitutions import LaunchConfiguration


def _server(context):
    arg = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    cmd = ["fedvla-federation", "serve", "--rounds", arg("rounds"), "--min-clients", arg("min_clients"),
           "--strategy", arg("strategy"), "--round-timeout", arg("round_timeout"), "--state-dir", arg("state_dir"),
           "--host", arg("host"), "--port", arg("port")]
    cmd += ["--insecure"] if arg("insecure").lower() == "true" else ["--certs", arg("certs")]
    return [ExecuteProcess(cmd=cmd, output="screen", name="fedvla_federation")]


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("certs", default_value="runs/fleet/certs", description="from `fedvla-federation certs`"),
        DeclareLaunchArgument("insecure", default_value="false", description="no TLS/auth (must be explicit)"),
        DeclareLaunchArgument("rounds", default_value="2"),
        DeclareLaunchArgument("min_clients", default_value="2"),
        DeclareLaunchArgument("strategy", default_value="eda", description="eda | fedavg | fedprox"),
        DeclareLaunchArgument("round_timeout", default_value="600"),
        DeclareLaunchArgument("state_dir", default_value="runs/federation"),
        DeclareLaunchArgument("host", default_value="127.0.0.1"),
        DeclareLaunchArgument("port", default_value="9092"),
        OpaqueFunction(function=_server),
    ])
