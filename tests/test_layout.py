"""The package layout's rules, checked on the source: dependencies point one way and package.xml declares them.

* ``fedvla_core`` imports no rclpy, no ROS message package, no flwr and no other fedvla package, at any
  depth of any module (function-level imports included), and importing all of it loads neither rclpy
  nor flwr;
* ``fedvla_flower`` (the Flower app) imports the core and Flower, never ROS;
* every fedvla package or ROS package a package imports is an ``exec_depend`` of its package.xml
  (optional imports excepted: inside ``try: ... except ImportError``, and MoveIt, which only loads when
  ``moveit_available()`` says it imports).
"""
from __future__ import annotations

import ast
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGES = sorted(p.parent.name for p in SRC.glob("*/package.xml"))
#: ROS distribution packages the stack's Python code may import (each must be declared where imported).
ROS_PACKAGES = {"rclpy", "std_msgs", "sensor_msgs", "trajectory_msgs", "action_msgs", "builtin_interfaces",
                "rcl_interfaces", "fedvla_msgs", "control_msgs", "moveit", "launch", "launch_ros"}
#: Optional on a real install, with a working fallback here: not declared as exec_depend.
OPTIONAL = {"moveit", "control_msgs"}


def _optional(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Inside a try whose handlers catch ImportError (an optional dependency with a fallback)."""
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.Try):
            for h in node.handlers:
                names = {getattr(n, "id", None) for n in ([h.type] if not isinstance(h.type, ast.Tuple) else h.type.elts)}
                if names & {"ImportError", "ModuleNotFoundError"}:
                    return True
    return False


def imports_of(package: str) -> dict[str, list[str]]:
    """{top-level module: [file:line, ...]} of every non-optional absolute import in a package's Python code."""
    found: dict[str, list[str]] = {}
    for path in (SRC / package / package).rglob("*.py"):
        tree = ast.parse(path.read_text())
        parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            if _optional(node, parents):
                continue
            for name in names:
                top = name.split(".")[0]
                if top != package:
                    found.setdefault(top, []).append(f"{path.relative_to(SRC)}:{node.lineno}")
    return found


def declared(package: str) -> set[str]:
    root = ET.parse(SRC / package / "package.xml").getroot()
    return {e.text.strip() for tag in ("depend", "exec_depend") for e in root.iter(tag)}


def test_the_core_imports_no_ros_no_flower_and_no_other_fedvla_package():
    bad = {m: where for m, where in imports_of("fedvla_core").items()
           if m in ROS_PACKAGES or m.endswith("_msgs") or m == "flwr" or m.startswith("fedvla")}
    assert not bad, f"fedvla_core must stay plain Python/PyTorch: {bad}"


def loaded_after_import(modules_code: str, watched: tuple[str, ...] = ("rclpy", "flwr")) -> list[str]:
    """Which of `watched` a fresh interpreter has in sys.modules after running `modules_code` (imports)."""
    code = f"import sys\n{modules_code}\nprint(sorted(m for m in {watched!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return ast.literal_eval(out.stdout.strip().splitlines()[-1])


def test_importing_the_whole_core_loads_neither_rclpy_nor_flwr():
    assert loaded_after_import(
        "import importlib, pkgutil, fedvla_core\n"
        "for m in pkgutil.walk_packages(fedvla_core.__path__, 'fedvla_core.'): importlib.import_module(m.name)") == []


def test_the_sim_core_runs_without_ros():
    """Tasks, env, experts, recorder, Meta-World adapter, sim robot and CLI: usable on the GPU machine, no rclpy."""
    assert loaded_after_import(
        "import fedvla_sim.env, fedvla_sim.experts, fedvla_sim.tasks, fedvla_sim.recorder, fedvla_sim.cli\n"
        "import fedvla_sim.metaworld_env, fedvla_sim.sim_robot, fedvla_sim.trajectory", ("rclpy",)) == []


def test_the_flower_app_depends_on_the_core_and_flower_only():
    mods = imports_of("fedvla_flower")
    assert "flwr" in mods and "fedvla_core" in mods
    bad = {m: w for m, w in mods.items() if m in ROS_PACKAGES or m.endswith("_msgs")
           or (m.startswith("fedvla") and m != "fedvla_core")}
    assert not bad, bad


@pytest.mark.parametrize("package", [p for p in PACKAGES if p != "fedvla_msgs"])
def test_every_imported_stack_or_ros_package_is_declared_in_package_xml(package):
    deps = declared(package)
    missing = {m: where[:3] for m, where in imports_of(package).items()
               if (m.startswith("fedvla") or m in ROS_PACKAGES or m.endswith("_msgs")) and m not in deps | OPTIONAL}
    assert not missing, f"{package}/package.xml lacks <exec_depend> for {missing}"


def test_no_package_depends_back_on_an_adapter():
    """The direction: core <- ros helpers / flower app <- nodes <- bringup; nothing below imports what is above."""
    layers = {"fedvla_core": 0, "fedvla_ros": 1, "fedvla_flower": 1, "fedvla_sim": 2, "fedvla_policy": 2,
              "fedvla_fed_client": 2, "fedvla_fed_server": 2, "fedvla_bringup": 3}
    assert set(layers) == set(PACKAGES) - {"fedvla_msgs"}, "a new package needs its layer here"
    upward = {(p, m): w[:2] for p in layers for m, w in imports_of(p).items()
              if m in layers and layers[m] >= layers[p]}
    assert not upward, f"imports that point up or sideways: {upward}"
