"""A ROS 2 user's first hour: the install layout ros2 run/launch expect, launch arguments, clean Ctrl-C.

Real processes throughout: the nodes run from the venv's lib/<pkg>/<exe> wrappers (what `ros2 run` and
launch_ros execute), `fedvla up robot` runs as its console script, and signals are real signals.
"""
from __future__ import annotations

import ast
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from fedvla_bringup.cli import build_parser
from fedvla_bringup.graph import parse_bool, robot_graph
from fedvla_bringup.paths import config_file
from conftest import wait_for

REPO = Path(__file__).resolve().parents[2]
PREFIX = Path(sys.prefix)  # the bootstrapped .venv the tests run in
PACKAGES = sorted(p.parent.name for p in (REPO / "src").glob("*/setup.py"))
LAUNCH_FILE = REPO / "src" / "fedvla_bringup" / "launch" / "robot.launch.py"


def _wait_for(predicate, timeout, what):
    return wait_for(predicate, timeout, what, poll=0.1)


def _console_scripts(package: str) -> list[str]:
    """Console script names declared in src/<package>/setup.py (read statically: the declaration, not the install)."""
    tree = ast.parse((REPO / "src" / package / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):
            for key, value in zip(node.keys, node.values):
                if isinstance(key, ast.Constant) and key.value == "console_scripts":
                    return [ast.literal_eval(e).split("=")[0].strip() for e in value.elts]
    return []


# ---- (a) install layout ------------------------------------------------------------------------------------
def test_bootstrapped_share_folders_are_real_directories_of_links():
    """ros2launch walks share/<pkg> with os.walk, which does not enter a linked folder."""
    launch = PREFIX / "share" / "fedvla_bringup" / "launch"
    assert launch.is_dir() and not launch.is_symlink()
    assert (launch / "robot.launch.py").resolve() == LAUNCH_FILE.resolve()
    found = [f for _, _, files in os.walk(PREFIX / "share" / "fedvla_bringup") for f in files]
    assert "robot.launch.py" in found and "fleet_sim.yaml" in found
    for package in PACKAGES:
        share = PREFIX / "share" / package
        assert (PREFIX / "share" / "ament_index" / "resource_index" / "packages" / package).exists()
        assert (share / "package.xml").resolve() == (REPO / "src" / package / "package.xml").resolve()
        config = share / "config"
        if (REPO / "src" / package / "config").is_dir():
            assert config.is_dir() and not config.is_symlink(), package


def test_every_console_script_is_reachable_as_lib_pkg_exe():
    """`ros2 run <pkg> <exe>` and launch_ros look in <prefix>/lib/<pkg>/; colcon gets there through setup.cfg."""
    declared = {package: _console_scripts(package) for package in PACKAGES}
    assert "sim_robot" in declared["fedvla_sim"] and "policy_server" in declared["fedvla_policy"]
    for package, scripts in declared.items():
        for exe in scripts:
            wrapper = PREFIX / "lib" / package / exe
            assert wrapper.is_file() and os.access(wrapper, os.X_OK), f"{wrapper} missing or not executable"
        cfg = (REPO / "src" / package / "setup.cfg").read_text()
        assert f"install_scripts=$base/lib/{package}" in cfg and f"script_dir=$base/lib/{package}" in cfg
    # the wrapper runs the console script, arguments passed through
    out = subprocess.run([str(PREFIX / "lib" / "fedvla_bringup" / "fedvla"), "up", "robot", "--help"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "--no-federation" in out.stdout


def test_ament_layout_is_idempotent_replaces_folder_links_and_removes_stale_ones(tmp_path):
    prefix = tmp_path / "prefix"
    old_link = prefix / "share" / "fedvla_bringup" / "launch"  # what the old bootstrap made
    old_link.parent.mkdir(parents=True)
    old_link.symlink_to(REPO / "src" / "fedvla_bringup" / "launch")
    layout = lambda: subprocess.run([sys.executable, str(REPO / "scripts" / "ament_layout.py"), "--prefix",  # noqa: E731
                                     str(prefix)], capture_output=True, text=True, timeout=60, check=True).stdout

    layout()
    assert old_link.is_dir() and not old_link.is_symlink()
    assert (old_link / "robot.launch.py").resolve() == LAUNCH_FILE.resolve()
    wrapper = prefix / "lib" / "fedvla_sim" / "sim_robot"
    assert os.access(wrapper, os.X_OK) and 'exec "$(dirname "$0")/../../bin/sim_robot" "$@"' in wrapper.read_text()
    # stale: a link to a launch file that is gone, a wrapper of a console script that is gone; not ours: kept
    (old_link / "gone.launch.py").symlink_to(tmp_path / "gone.launch.py")
    stale_wrapper = prefix / "lib" / "fedvla_sim" / "old_exe"
    stale_wrapper.write_text(wrapper.read_text().replace("sim_robot", "old_exe"))
    foreign = prefix / "lib" / "fedvla_sim" / "users_own_tool"
    foreign.write_text("#!/bin/sh\necho mine\n")
    before = {p: os.lstat(p).st_mtime_ns for p in prefix.rglob("*")  # files and links (folders change by removals)
              if (p.is_symlink() or not p.is_dir()) and p.name not in ("gone.launch.py", "old_exe")}

    second = layout()
    assert not (old_link / "gone.launch.py").is_symlink() and not stale_wrapper.exists() and foreign.exists()
    assert "removed share/fedvla_bringup/launch/gone.launch.py" in second and "removed lib/fedvla_sim/old_exe" in second
    assert {p: os.lstat(p).st_mtime_ns for p in before} == before  # the rest untouched
    assert "up to date" in layout()


# ---- (b) one SIGINT ends each node kind with exit 0 and no traceback ----------------------------------------
NODE_KINDS = {
    "sim_robot": (["fedvla_sim", "sim_robot", "-p", "camera_size:=64"], "sim robot ready"),
    "policy_server": (["fedvla_policy", "policy_server"], "policy server ready"),
    "fed_client": (["fedvla_fed_client", "fed_client", "-p", "federation_enabled:=false"], "rounds are off"),
}


@pytest.mark.ros
@pytest.mark.parametrize("sigints", [1, 2], ids=["one_sigint", "two_sigints_as_under_ros2_launch"])
@pytest.mark.parametrize("kind", list(NODE_KINDS))
def test_sigint_ends_a_node_with_exit_0_and_no_traceback(kind, sigints, processes, tmp_path):
    """Under `ros2 launch` a node gets two SIGINTs a few ms apart (the terminal's and launch's); the second one
    used to kill it (exit -2) or raise a KeyboardInterrupt out of torch's atexit hooks."""
    (package, exe, *params), ready = NODE_KINDS[kind]
    if kind == "fed_client":
        params += ["-p", f"episode_dir:={tmp_path / 'episodes'}"]
    proc = processes.start([str(PREFIX / "lib" / package / exe), "--ros-args", *params], kind)
    _wait_for(lambda: ready in processes.log(proc) or proc.poll() is not None, 45, f"{kind} to start")
    assert proc.poll() is None, processes.log(proc)
    for i in range(sigints):
        if i:
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGINT)
    assert proc.wait(timeout=20) == 0, processes.log(proc)
    assert "Traceback" not in processes.log(proc) and "KeyboardInterrupt" not in processes.log(proc)


# ---- (c) fedvla up robot --sim without certificates ---------------------------------------------------------
@pytest.mark.ros
def test_fedvla_up_robot_without_certificates_runs_with_rounds_off_and_stops_on_one_sigint(rclpy_context, tmp_path):
    import rclpy
    from rclpy.executors import SingleThreadedExecutor

    from fedvla_msgs.msg import RoundStatus

    ns = f"hour{os.environ['ROS_DOMAIN_ID']}"
    logs = tmp_path / "logs"
    proc = subprocess.Popen([str(PREFIX / "bin" / "fedvla"), "up", "robot", "--sim", "--ns", ns, "--log-dir", str(logs),
                             "--episode-dir", str(tmp_path / "episodes"), "--checkpoint-root", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(tmp_path),
                            env=dict(os.environ, PYTHONUNBUFFERED="1"), start_new_session=True)
    node = rclpy.create_node("first_hour_probe", context=rclpy_context)
    statuses: list[RoundStatus] = []
    node.create_subscription(RoundStatus, f"/{ns}/round_status", statuses.append, 10)
    executor = SingleThreadedExecutor(context=rclpy_context)
    executor.add_node(node)
    stop = threading.Event()
    spinner = threading.Thread(target=lambda: [executor.spin_once(timeout_sec=0.1) for _ in iter(stop.is_set, True)],
                               daemon=True)
    spinner.start()
    try:
        status = _wait_for(lambda: statuses[-1] if statuses else proc.poll() is not None, 50,
                           "RoundStatus from the fed client")
        assert proc.poll() is None, proc.communicate()
        assert status.state == "off" and "no SuperNode credentials" in status.message
        _wait_for(lambda: "ready" in _read(logs / f"{ns}.sim_robot.log")
                  and "ready" in _read(logs / f"{ns}.policy_server.log"), 30, "sim and policy server")
        os.kill(proc.pid, signal.SIGINT)  # one Ctrl-C
        out, err = proc.communicate(timeout=30)
    finally:
        stop.set()
        spinner.join(timeout=5)
        executor.shutdown()
        node.destroy_node()
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    node_logs = "".join(_read(f) for f in logs.glob("*.log"))
    # err first and each log's tail: pytest cuts long messages in the middle, where CI's one failure hid
    # which node exited unclean
    assert proc.returncode == 0, (err, {f.name: _read(f)[-4000:] for f in sorted(logs.glob("*.log"))})
    assert "rounds are off" in out and "stopped: every node exited cleanly" in out
    assert "Traceback" not in err + node_logs
    assert "policy server ready" in node_logs and f"checkpoint root {tmp_path}" in node_logs  # --checkpoint-root


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


# ---- (d) launch arguments and the graph they map to ---------------------------------------------------------
def _declared_launch_arguments(path: Path) -> dict[str, dict]:
    """DeclareLaunchArgument(name, default_value=..., description=...) calls of a launch file, read with ast
    (launch is not installed here; the file is parsed, not run)."""
    declared = {}
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "DeclareLaunchArgument":
            declared[ast.literal_eval(node.args[0])] = {k.arg: ast.literal_eval(k.value) for k in node.keywords}
    return declared


def test_robot_launch_declares_federation_insecure_certificates_and_checkpoint_root():
    declared = _declared_launch_arguments(LAUNCH_FILE)
    assert {"insecure", "federation", "checkpoint_root", "root_certificates", "auth_private_key",
            "superlink", "sim", "namespace"} <= set(declared)
    for name, spec in declared.items():
        assert "default_value" in spec and spec.get("description"), f"{name}: needs a default and a description"
    assert declared["insecure"]["default_value"] == "false" and declared["federation"]["default_value"] == "true"
    # every declared argument is read (insecure:=true used to be declared nowhere and silently ignored)
    used = {ast.literal_eval(n.args[0]) for n in ast.walk(ast.parse(LAUNCH_FILE.read_text()))
            if isinstance(n, ast.Call) and getattr(n.func, "id", None) in ("arg", "flag") and n.args
            and isinstance(n.args[0], ast.Constant)}
    assert set(declared) == used, set(declared) ^ used


def test_graph_maps_the_launch_and_cli_options_to_node_parameters():
    specs = {s.executable: s for s in robot_graph(
        sim=False, checkpoint="/ckpt", federation=False, insecure=True, root_certificates="/c/ca.crt",
        auth_private_key="/c/node0", superlink="10.0.0.1:9092", checkpoint_root="/runs")}
    fed, server = specs["fed_client"].parameters, specs["policy_server"].parameters
    assert fed["federation_enabled"] is False and fed["insecure"] is True
    assert (fed["root_certificates"], fed["auth_private_key"], fed["superlink_address"], fed["base_checkpoint"]) == (
        "/c/ca.crt", "/c/node0", "10.0.0.1:9092", "/ckpt")
    assert server["checkpoint_root"] == "/runs" and server["checkpoint"] == "/ckpt"
    for spec in specs.values():  # every override is a parameter the node's YAML (and node) declares
        declared = yaml.safe_load(config_file(spec.package, spec.params_file).read_text())["/**"]["ros__parameters"]
        assert set(spec.parameters) <= set(declared), set(spec.parameters) - set(declared)
    default = {s.executable: s.parameters for s in robot_graph(sim=False)}
    assert default["fed_client"]["federation_enabled"] is True and default["fed_client"]["insecure"] is False
    assert "root_certificates" not in default["fed_client"] and "checkpoint_root" not in default["policy_server"]


def test_fedvla_up_robot_options_and_bool_spellings():
    parse = lambda *a: build_parser().parse_args(["up", "robot", *a])  # noqa: E731
    args = parse("--no-federation", "--insecure", "--root-certificates", "ca.crt", "--auth-private-key", "node0",
                 "--checkpoint-root", "runs")
    assert (args.federation, args.insecure, args.root_certificates, args.auth_private_key, args.checkpoint_root) == (
        False, True, "ca.crt", "node0", "runs")
    assert parse("--federation", "false").federation is False and parse("--federation", "True").federation is True
    assert parse().federation is True and parse().insecure is False
    with pytest.raises(SystemExit):
        parse("--federation", "maybe")
    assert parse_bool("on", "x") is True and parse_bool("0", "x") is False
    with pytest.raises(ValueError, match="insecure"):
        parse_bool("ture", "insecure")
