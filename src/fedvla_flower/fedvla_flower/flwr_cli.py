"""Flower's own command-line tools (flower-superlink, flwr) as the deployment and the simulation run them.

One place for finding the executables and for reading ``flwr ... --format json``: the SuperLink of a robot
deployment (fedvla_fed_server.superlink) and the simulation engine (fedvla_flower.simulation) both drive
Flower through its CLI, the supported way to submit runs in flwr 1.41.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Mapping


def bin_dir() -> str:
    """Folder of flower-superlink and flwr: next to the interpreter (a venv), else wherever PATH has them
    (Flower installed with ``pip --target``, e.g. the GPU machine's /tmp/site/bin)."""
    local = Path(sys.executable).parent
    if (local / "flower-superlink").exists():
        return str(local)
    found = shutil.which("flower-superlink")
    return str(Path(found).parent) if found else str(local)


def flwr_json(args: list[str], env: Mapping[str, str], cwd: str, timeout_s: float = 120.0) -> dict:
    """Run ``flwr <args> --format json`` and return its JSON answer ({"success": False, ...} when it has none)."""
    out = subprocess.run([str(Path(bin_dir()) / "flwr"), *args, "--format", "json"], capture_output=True,
                         text=True, env=dict(env), cwd=cwd, timeout=timeout_s)
    text = out.stdout.strip()
    start = text.find("{")
    try:
        return json.loads(text[start:]) if start >= 0 else {"success": False, "error-message": out.stderr}
    except json.JSONDecodeError:
        return {"success": False, "error-message": text + out.stderr}
