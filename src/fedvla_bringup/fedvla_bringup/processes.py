"""Start NodeSpecs as real OS processes, the way `ros2 launch` would, for machines without launch_ros.

Each node runs `python -c 'from <module> import main; main()' --ros-args ...` with the node's
YAML parameter file plus an overrides file, a namespace remap, and its own ROS_DOMAIN_ID when
asked. The group is stopped with SIGINT first (nodes shut down cleanly), then SIGKILL.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from fedvla_bringup.graph import NodeSpec
from fedvla_bringup.paths import config_file


def node_command(spec: NodeSpec, namespace: str, overrides_dir: Path) -> list[str]:
    """The argv that runs `spec` in `namespace` with its YAML defaults and overrides."""
    args = [sys.executable, "-c", f"import sys; from {spec.module} import main; sys.exit(main())",
            "--ros-args", "-r", f"__node:={spec.name}",
            "--params-file", str(config_file(spec.package, spec.params_file))]
    if namespace:
        args += ["-r", f"__ns:=/{namespace.strip('/')}"]
    if spec.parameters:
        path = overrides_dir / f"{namespace.strip('/') or 'root'}_{spec.name}.yaml"
        path.write_text(yaml.safe_dump({"/**": {"ros__parameters": dict(spec.parameters)}}))
        args += ["--params-file", str(path)]
    return args


class NodeProcesses:
    """A group of node processes with logs in `log_dir`; a context manager that stops them on exit."""

    def __init__(self, log_dir: Path):
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._tmp = tempfile.TemporaryDirectory(prefix="fedvla_params_")
        self.procs: dict[str, subprocess.Popen] = {}

    def start(self, spec: NodeSpec, namespace: str = "", domain_id: int | None = None,
              env: dict | None = None) -> subprocess.Popen:
        key = f"{namespace.strip('/') or 'root'}.{spec.name}"
        full_env = dict(os.environ, PYTHONUNBUFFERED="1", **(env or {}))
        if domain_id is not None:
            full_env["ROS_DOMAIN_ID"] = str(domain_id)
        log = open(self.log_dir / f"{key}.log", "ab")
        proc = subprocess.Popen(node_command(spec, namespace, Path(self._tmp.name)), stdout=log,
                                stderr=subprocess.STDOUT, env=full_env, start_new_session=True)
        self.procs[key] = proc
        return proc

    def dead(self) -> dict[str, int]:
        """Processes that exited, with their exit codes."""
        return {k: p.returncode for k, p in self.procs.items() if p.poll() is not None}

    def stop(self, timeout: float = 20.0) -> dict[str, int]:
        """SIGINT to every node still running, SIGKILL to those not gone after `timeout`; the exit codes.

        Safe to call twice (the context manager's exit calls it again): the second call finds every
        process gone and returns the same codes. 20 s, not less: a sim robot under a loaded 2-core CI machine
        finishes its last camera render and physics step first, and a SIGKILL reads as an unclean exit.
        """
        for p in self.procs.values():
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGINT)
        deadline = time.monotonic() + timeout
        for p in self.procs.values():
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        self._tmp.cleanup()
        return {k: p.returncode for k, p in self.procs.items()}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
