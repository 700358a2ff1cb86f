"""`fedvla`: one command line for the stack on machines without launch_ros / ros2cli.

    fedvla graph                         print the node graph and what is installed
    fedvla up robot [--sim] [--ns robot1] start one robot's nodes (what launch/robot.launch.py starts);
                                         without --root-certificates/--auth-private-key or --insecure the
                                         fed client logs episodes only (rounds are off); Ctrl-C stops it
    fedvla up fleet                      the simulated fleet demo (README's main command)
    fedvla goal "put the red block in the bowl" [--ns robot1]
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import time
from pathlib import Path

from fedvla_bringup.graph import parse_bool, robot_graph

COMPONENTS = [
    ("fedvla_msgs.action", "ROS 2 interfaces (ExecuteInstruction, ExpertUsage, RoundStatus, services)"),
    ("fedvla_core.model", "VLA model: IOSP + Dual-Gating MoE"),
    ("fedvla_core.training", "shared training loop"),
    ("fedvla_policy.server_node", "policy action server node"),
    ("fedvla_sim.robot_node", "simulated Panda robot node"),
    ("fedvla_core.episodes", "episode log (MCAP)"),
    ("fedvla_fed_client.client_node", "fed client node (logger + round scheduler)"),
    ("fedvla_flower.client_app", "Flower ClientApp"),
    ("fedvla_flower.server_app", "Flower ServerApp (Expert-Driven Aggregation)"),
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


class _StopRequested(Exception):
    """Raised (once) by the SIGINT/SIGTERM handler of `fedvla up robot`: stop the nodes, then exit."""


def cmd_up_robot(args) -> int:
    """Start the robot's nodes; on one Ctrl-C (or SIGTERM) pass SIGINT on, wait for them, exit 0 if they exit 0.

    The nodes run in their own sessions (a terminal's Ctrl-C does not reach them directly), so this
    process forwards exactly one SIGINT to each: a node that got two used to die of the second one.
    """
    from fedvla_bringup.processes import NodeProcesses

    specs = robot_graph(sim=args.sim, checkpoint=args.checkpoint, episode_dir=args.episode_dir,
                        robot_id=args.robot_id or args.ns or "robot1", with_fed_client=not args.no_fed_client,
                        federation=args.federation, insecure=args.insecure, root_certificates=args.root_certificates,
                        auth_private_key=args.auth_private_key, superlink=args.superlink,
                        checkpoint_root=args.checkpoint_root)
    requested: list[int] = []

    def on_signal(signum, frame):  # noqa: ARG001 - signal handler signature
        if not requested:  # a second Ctrl-C while the nodes stop changes nothing (they are killed after 20 s)
            requested.append(signum)
            raise _StopRequested()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    group = NodeProcesses(Path(args.log_dir))
    died: dict[str, int] = {}
    try:
        for spec in specs:
            group.start(spec, namespace=args.ns, domain_id=args.domain_id)
            print(f"started {spec.package}/{spec.executable} in /{args.ns}", flush=True)
        if not args.no_fed_client and not args.federation:
            print("federation off: the fed client logs episodes only (rounds are off)", flush=True)
        elif not args.no_fed_client and not args.insecure and not (args.root_certificates and args.auth_private_key):
            print("no SuperNode credentials: the fed client logs episodes only (rounds are off); pass "
                  "--root-certificates and --auth-private-key, or --insecure", flush=True)
        print(f"logs in {args.log_dir}; Ctrl-C stops the robot", flush=True)
        while not died:
            time.sleep(0.5)
            died = group.dead()
    except _StopRequested:
        pass
    finally:
        try:
            codes = group.stop()
        except _StopRequested:  # the first signal came while stopping (a node had died): finish stopping
            codes = group.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if died:
        print(f"a node exited: {died}; stopped the others", file=sys.stderr)
        return 1
    unclean = {name: code for name, code in codes.items() if code != 0}
    if unclean:
        print(f"stopped; nodes that did not exit cleanly (exit codes): {unclean}", file=sys.stderr)
        return 1
    print("stopped: every node exited cleanly", flush=True)
    return 0


def cmd_up_fleet(args) -> int:
    from fedvla_bringup.fleet_demo import main as fleet_main

    return fleet_main(args.rest)


def cmd_goal(args) -> int:
    from fedvla_policy.goal_client import main_goal

    return main_goal(args.rest)


def _true_or_false(text: str) -> bool:
    """argparse type for --federation: the same spellings as the launch file's bool arguments."""
    try:
        return parse_bool(text, "value")
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}") from None


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
    robot.add_argument("--federation", type=_true_or_false, default=True,
                       metavar="{true,false}",
                       help="take part in federated rounds (default true); false: the fed client only logs episodes "
                            "and says that rounds are off (its federation_enabled parameter)")
    robot.add_argument("--no-federation", dest="federation", action="store_false", help="same as --federation false")
    robot.add_argument("--superlink", default="", help="federation server address (default: the fed client's YAML, "
                                                        "127.0.0.1:9092)")
    robot.add_argument("--root-certificates", default="",
                       help="CA certificate of the SuperLink (TLS); without it and --auth-private-key, and without "
                            "--insecure, rounds are off")
    robot.add_argument("--auth-private-key", default="", help="this robot's SuperNode key, registered with the SuperLink")
    robot.add_argument("--insecure", action="store_true",
                       help="run the SuperNode without TLS and node authentication (explicit opt-in)")
    robot.add_argument("--checkpoint-root", default="",
                       help="the policy server's load_checkpoint loads only directories below this one "
                            "(default: the working directory)")
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
