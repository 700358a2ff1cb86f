"""The node graph shared by the launch files and the CLI, and the files they reference."""
import ast
from pathlib import Path

import yaml

from fedvla_bringup.fleet_config import load_fleet_config
from fedvla_bringup.graph import robot_graph
from fedvla_bringup.paths import config_file
from fedvla_bringup.processes import node_command

REPO = Path(__file__).resolve().parents[2]


def test_every_node_of_the_graph_has_its_yaml_and_entry_point(tmp_path):
    specs = robot_graph(sim=True, checkpoint="/ckpt", episode_dir="/eps", robot_id="r7", sim_tasks=["stack_red_on_green"])
    assert [s.executable for s in specs] == ["sim_robot", "policy_server", "fed_client"]
    for spec in specs:
        params = yaml.safe_load(config_file(spec.package, spec.params_file).read_text())
        declared = params["/**"]["ros__parameters"]
        assert set(spec.parameters) <= set(declared), f"{spec.name}: {set(spec.parameters) - set(declared)} not in YAML"
        cmd = node_command(spec, "robot7", tmp_path)
        assert cmd[cmd.index("-c") + 1].startswith(f"import sys; from {spec.module} import main")
        assert "__ns:=/robot7" in cmd
        setup = (REPO / "src" / spec.package / "setup.py").read_text()
        assert f'"{spec.executable} = {spec.module}:main"' in setup


def test_the_sim_policy_server_plans_within_the_sim_arms_own_joint_ranges():
    """The sim Panda's MJCF ranges differ from the datasheet (joint 6 tops out at 2.11 rad, not 3.75); its
    trajectory follower rejects points outside them, so the server of a sim robot must plan within them."""
    from fedvla_sim.sim_robot import SimRobot, SimRobotConfig

    server = next(s for s in robot_graph(sim=True, sim_tasks=["pick_up_green_block"]) if s.executable == "policy_server")
    lower, upper = server.parameters["joint_lower_limits"], server.parameters["joint_upper_limits"]
    sim = SimRobot(SimRobotConfig(task="pick_up_green_block"))
    assert lower == sim.env.position_limits[:7, 0].tolist() and upper == sim.env.position_limits[:7, 1].tolist()
    assert upper[5] < 3.0  # not the datasheet's 3.7525
    real = next(s for s in robot_graph(sim=False) if s.executable == "policy_server")
    assert "joint_lower_limits" not in real.parameters  # a real arm keeps the YAML's (datasheet) limits


def test_fleet_config_gives_distinct_namespaces_and_domains():
    fleet = load_fleet_config()
    assert len(fleet.robots) >= 2
    assert len({r.namespace for r in fleet.robots}) == len(fleet.robots)
    assert len({r.domain_id for r in fleet.robots}) == len(fleet.robots)
    assert {tuple(r.tasks) for r in fleet.robots} != {tuple(fleet.robots[0].tasks)}  # different task mixes


def test_launch_files_are_valid_python_with_generate_launch_description():
    for name in ("robot", "fleet_sim", "federation"):
        tree = ast.parse((REPO / "launch" / f"{name}.launch.py").read_text())
        assert "generate_launch_description" in {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
