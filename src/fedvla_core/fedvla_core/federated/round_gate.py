"""The hand-off between the robot's fed client node and its (stateless) Flower ClientApp.

Flower drives rounds from the server, and a ClientApp is a fresh process per message, so
the robot's own schedule ("only while idle, at most every N seconds, after M new episodes")
is enforced through two small JSON files in the robot's episode directory:

* ``.round_gate.json`` - written by the node: may the next train message run now? The ClientApp
  waits (up to a timeout) until the gate is open, marks it ``taken`` and trains.
* ``.round_report.json`` - written by the ClientApp after training: round, bytes, metrics and the
  new checkpoint. The node publishes it as RoundStatus and asks the policy server to load it.

Files are replaced atomically (write to a temp name, fsync, rename), so a reader never sees half
of one. No rclpy here: both the node and the ClientApp import this module.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

GATE_FILE = ".round_gate.json"
REPORT_FILE = ".round_report.json"
#: Seconds a ClientApp waits for its robot to open the gate (run-config ``gate-timeout``) by default.
DEFAULT_GATE_TIMEOUT_S = 120.0


def _write_json_atomic(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _read_json(path: Path) -> dict | None:
    """The file's JSON object; None when it is missing, not JSON or not an object (written by something else)."""
    try:
        data = json.loads(path.read_text())
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _known_fields(cls, data: dict) -> dict:
    """`data` without the keys `cls` does not have (a file from another version must not break the reader)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


@dataclass
class Gate:
    """Whether the robot lets a federated round train now."""

    open: bool = False
    reason: str = "robot has not opened the gate"
    updated: float = field(default_factory=time.time)
    taken_by_round: int = 0  # set by the ClientApp when it starts training


def write_gate(episode_dir, open_: bool, reason: str) -> None:
    """Node side: open or close the gate (keeps `taken_by_round`)."""
    path = Path(episode_dir) / GATE_FILE
    old = _read_json(path) or {}
    _write_json_atomic(path, asdict(Gate(open=open_, reason=reason, taken_by_round=int(old.get("taken_by_round", 0)))))


def read_gate(episode_dir) -> Gate:
    data = _read_json(Path(episode_dir) / GATE_FILE)
    return Gate(**_known_fields(Gate, data)) if data else Gate()


def wait_and_take_gate(episode_dir, server_round: int, timeout_s: float, poll_s: float = 0.5) -> Gate:
    """ClientApp side: wait until the gate is open (or no node manages this robot), then take it.

    When no gate file exists at all the robot runs without a fed client node (e.g. in the
    benchmark or the simulation engine): training proceeds at once. Raises TimeoutError when the
    gate stays closed for `timeout_s`, with the node's reason.
    """
    path = Path(episode_dir) / GATE_FILE
    deadline = time.monotonic() + timeout_s
    while True:
        data = _read_json(path)
        if data is None:
            return Gate(open=True, reason="no fed client node manages this robot")
        gate = Gate(**_known_fields(Gate, data))
        if gate.open:
            gate.open, gate.taken_by_round, gate.reason = False, int(server_round), "training"
            _write_json_atomic(path, asdict(gate))
            return gate
        if time.monotonic() >= deadline:
            raise TimeoutError(f"robot not ready for round {server_round}: {gate.reason}")
        time.sleep(poll_s)


@dataclass
class RoundReport:
    """What the ClientApp did in one round (the node turns it into RoundStatus)."""

    server_round: int
    state: str  # "done" or "failed"
    bytes_up: int = 0
    bytes_down: int = 0
    num_examples: int = 0
    num_episodes: int = 0
    episode_ids: list[str] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: str = ""
    message: str = ""
    finished: float = field(default_factory=time.time)


def write_report(episode_dir, report: RoundReport) -> None:
    _write_json_atomic(Path(episode_dir) / REPORT_FILE, asdict(report))


def read_report(episode_dir) -> RoundReport | None:
    data = _read_json(Path(episode_dir) / REPORT_FILE)
    if not data:
        return None
    try:
        return RoundReport(**_known_fields(RoundReport, data))
    except TypeError:  # a required field (server_round, state) is missing
        return None
