"""The simulated fleet: every robot of config/fleet_sim.yaml (sim arm + policy server + fed client),
each in its own namespace and ROS domain, plus the federation server.

    ros2 launch fedvla_bringup fleet_sim.launch.py checkpoint:=/path/to/base_ckpt

Without launch_ros, `fedvla up fleet` runs the same fleet (and drives the demo).
"""
import os

from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription, OpaqueFunction
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from fedvla_bringup.fleet_config import load_fleet_config
from fedvla_bringup.graph import robot_graph
from fedvla_bringup.paths import config_file, share_dir


def _robots(context):
    arg = lambda name: LaunchConfiguration(name).perform(context)  # noqa: E731
    fleet = load_fleet_config(arg("fleet_config") or None)
    certs = fleet.federation.get("certs_dir", "runs/fleet/certs")
    actions = []
    for index, robot in enumerate(fleet.robots):
        for spec in robot_graph(sim=True, checkpoint=arg("checkpoint"), robot_id=robot.namespace,
                                episode_dir=os.path.join(arg("episode_root"), robot.namespace), sim_tasks=robot.tasks):
            params = [str(config_file(spec.package, spec.params_file)), dict(spec.parameters)]
            if spec.package == "fedvla_fed_client":
                params.append({"superlink_address": fleet.federation.get("superlink_address", "127.0.0.1:9092"),
                               "root_certificates": os.path.join(certs, "ca.crt"),
                               "auth_private_key": os.path.join(certs, f"node{index}")})
            actions.append(Node(package=spec.package, executable=spec.executable, name=spec.name,
                                namespace=robot.namespace, parameters=params, output="screen",
                                additional_env={"ROS_DOMAIN_ID": str(robot.domain_id)}))
    return actions


def generate_launch_description():
    return LaunchDescription([
        DeclareLaunchArgument("fleet_config", default_value="", description="fleet YAML (default: config/fleet_sim.yaml)"),
        DeclareLaunchArgument("checkpoint", default_value="", description="base policy checkpoint for every robot"),
        DeclareLaunchArgument("episode_root", default_value="runs/fleet/episodes", description="episodes/<robot>/ per robot"),
        IncludeLaunchDescription(PythonLaunchDescriptionSource(
            os.path.join(str(share_dir("fedvla_bringup")), "launch", "federation.launch.py"))),
        OpaqueFunction(function=_robots),
    ])
