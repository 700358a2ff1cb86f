"""`fedvla`: one command line for the stack on machines without launch_ros / ros2cli.

    fedvla graph                         print the node graph and what is installed
    fedvla up robot [--sim] [--ns robot1] start one robot's nodes (what launch/robot.launch.py starts)
    fedvla up fleet                      the simulated fleet demo (README's main command)
    fedvla goal "put the red block in the bowl" [--ns robot1]
"""
from __future__ import annotations

import argparse
import importlib
import sys
import time
from pathlib import Path

from fedvla_bringup.graph import robot_graph

COMPONENTS = [
    ("fedvla_msgs.action", "ROS 2 interfaces (ExecuteInstruction, ExpertUsage, RoundStatus, services)"),
    ("fedvla_policy.model", "VLA model: IOSP + Dual-Gating MoE"),
    ("fedvla_policy.training", "shared training loop"),
    ("fedvla_policy.server_node", "policy action server node"),
    ("fedvla_sim.robot_node", "simulated Panda robot node"),
    ("fedvla_fed_client.episodes", "episode log (MCAP)"),
    ("fedvla_fed_client.client_node", "fed client node (logger + round scheduler)"),
    ("fedvla_fed_client.client_app", "Flower ClientApp"),
    ("fedvla_fed_server.server_app", "Flower ServerApp (Expert-Driven Aggregation)"),
    ("fedvla_bringup.fleet_demo", "simulated fleet demo"),
]
OPTIONAL_ROS = [("launch_ros", "ros2 launch"), ("moveit.planning", "MoveIt 2 (moveit_py)"),
                ("control_msgs.action", "FollowJointTrajectory"), ("cv_bridge", "cv_bridge")]


def _available(module: str) -> bool:
    try:
        importlib.import_module(module)
        return True
    except Exception:  # noqa: BLE001 - any import failure means "not available here"
        return False


def cmd_graph(args) -> int:
    print("One robot (namespace /<robot>):")
    for spec in robot_graph(sim=True):
        print(f"  {spec.package}/{spec.executable:<14} {spec.role}")
    print("Federation: flower-superlink + ServerApp (fedvla_fed_server), one flower-supernode per robot\n")
    missing = []
    print("Components:")
    for module, what in COMPONENTS:
        ok = _available(module)
        missing += [] if ok else [what]
        print(f"  [{'x' if ok else ' '}] {what:<55} ({module})")
    print("Optional ROS 2 parts (used when installed, with a fallback here):")
    for module, what in OPTIONAL_ROS:
        print(f"  [{'x' if _available(module) else ' '}] {what}")
    if missing:
        print(f"\nStill missing: {', '.join(missing)}")
    return 0


def cmd_up_robot(args) -> int:
    from fedvla_bringup.processes import NodeProcesses

    specs = robot_graph(sim=args.sim, checkpoint=args.checkpoint, episode_dir=args.episode_dir,
                        robot_id=args.robot_id or args.ns or "robot1", with_fed_client=not args.no_fed_client)
    with NodeProcesses(Path(args.log_dir)) as group:
        for spec in specs:
            group.start(spec, namespace=args.ns, domain_id=args.domain_id)
            print(f"started {spec.package}/{spec.executable} in /{args.ns}")
        print(f"logs in {args.log_dir}; Ctrl-C stops the robot")
        try:
            while not group.dead():
                time.sleep(0.5)
            print(f"a node exited: {group.dead()}", file=sys.stderr)
            return 1
        except KeyboardInterrupt:
            return 0


def cmd_up_fleet(args) -> int:
    from fedvla_bringup.fleet_demo import main as fleet_main

    return fleet_main(args.rest)


def cmd_goal(args) -> int:
    from fedvla_policy.goal_client import main_goal

    return main_goal(args.rest)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedvla", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("graph", help="print the node graph and which components are installed").set_defaults(func=cmd_graph)
    up = sub.add_parser("up", help="start part of the stack").add_subparsers(dest="what", required=True)
    robot = up.add_parser("robot", help="one robot's nodes (same graph as launch/robot.launch.py)")
    robot.add_argument("--sim", action="store_true", help="also start the MuJoCo Panda robot node")
    robot.add_argument("--ns", default="", help="robot namespace, e.g. robot1")
    robot.add_argument("--robot-id", default="", help="identity in the federation (default: the namespace)")
    robot.add_argument("--checkpoint", default="", help="policy checkpoint directory")
    robot.add_argument("--episode-dir", default="", help="where the fed client logs episodes")
    robot.add_argument("--domain-id", type=int, default=None, help="ROS_DOMAIN_ID for this robot's nodes")
    robot.add_argument("--no-fed-client", action="store_true", help="do not start the fed client node")
    robot.add_argument("--log-dir", default="runs/logs", help="node logs go here")
    robot.set_defaults(func=cmd_up_robot)
    fleet = up.add_parser("fleet", help="the simulated fleet demo; `fedvla up fleet -- --help` for its options",
                          add_help=False)
    fleet.add_argument("rest", nargs=argparse.REMAINDER)
    fleet.set_defaults(func=cmd_up_fleet)
    goal = sub.add_parser("goal", help="send an ExecuteInstruction goal; `fedvla goal --help` for options", add_help=False)
    goal.add_argument("rest", nargs=argparse.REMAINDER)
    goal.set_defaults(func=cmd_goal)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Sub-commands with their own parsers get their arguments untouched (argparse's REMAINDER
    # would swallow or reject a leading option such as --help).
    if argv[:2] == ["up", "fleet"]:
        return cmd_up_fleet(argparse.Namespace(rest=argv[2:]))
    if argv[:1] == ["goal"]:
        return cmd_goal(argparse.Namespace(rest=argv[1:]))
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
