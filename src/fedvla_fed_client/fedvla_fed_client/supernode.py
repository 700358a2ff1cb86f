"""SuperNodeSupervisor: keeps a robot's Flower SuperNode process alive (no rclpy; the node calls it).

The robot's fed client node owns one supervisor::

    sup = SuperNodeSupervisor(superlink="10.0.0.5:9092",
                              node_config={"robot-id": "robot1", "episode-dir": "/data/episodes/robot1"},
                              root_certificates="/etc/fedvla/ca.crt", auth_private_key="/etc/fedvla/robot1")
    sup.start()
    ...  # on a timer:
    status = sup.poll()      # restarts the SuperNode if it died or wedged; returns SuperNodeStatus
    sup.restart("round timed out")   # e.g. when the robot saw a round time out
    sup.stop()

Why supervise: SuperNodes have been seen to stay "online" yet take no more work after a
ClientApp error (flower#4844; the log then says "Cannot record end time"). The supervisor
restarts the process when it exits (with exponential backoff) or when such a line appears.
A restarted SuperNode keeps its node id (it derives from the auth key), so the SuperLink sees
the same robot again. TLS + authentication are required unless ``insecure=True`` is passed.

With ``local_trainer=True`` (the default) the supervisor also runs the robot's warm local trainer
(:mod:`fedvla_flower.local_trainer`, log in ``<episode-dir>/local_trainer.log``) and restarts
it when it exits; the ClientApp hands its rounds to it, so a round does not pay for importing
torch and loading the model. A SuperNode restart leaves the trainer (and its warm state) alone.

Latency: the supervisor sets ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL`` (how often the SuperNode's
SuperExec asks for a message to start a ClientApp for; flwr's default is 1 s) to 0.25 s unless
``env`` says otherwise: ~0.4 s less per round for ~2.5% of one core while idle (measured; 0.1 s
costs ~6%). The rest of a round's Flower latency is fixed in flwr 1.41, with no flag or variable
(measured on loopback with benchmarks/federation_cost.py, 2-core CPU):

* ``flwr/supernode/start_client_internal.py:263``: ``time.sleep(3)`` after every pull that found no
  message. A SuperNode pulls right after sending its reply, finds nothing (the server still waits
  for the others and aggregates), and sleeps 3 s, so from a robot's reply to its next message is
  >= 3 s, whatever the server does meanwhile (a faster server only makes the robot wait longer).
* ``start_client_internal.py:470``: the SuperNode looks for the ClientApp's reply every 0.5 s.
* ``flwr/supernode/runtime/run_clientapp.py`` runs one message and exits (``flwr_exit``), and
  ``flwr/supercore/superexec/executor/subprocess_executor.py:76-83`` starts a fresh
  ``flwr-clientapp`` per message; importing it takes ~1 s of CPU (fastapi, sqlalchemy, alembic).
  ``--isolation process`` does not change this: the SuperNode then expects an external
  ``flower-superexec``, which launches the same one-shot process. Flower's warm executors
  (``warm_executor_pool.py:33``) cover only agent/model/connector tasks, on Kubernetes.
* Installing the FAB per message is cheap here (a ~1 kB pyproject-only FAB: a few ms).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

from fedvla_core.federated import keys

#: Log lines after which a SuperNode no longer processes messages (restart it).
WEDGE_PATTERNS = ("Cannot record end time",)

#: Environment defaults for the SuperNode (``env`` overrides them): faster ClientApp launch.
SUPERNODE_ENV_DEFAULTS = {"FLWR_SUPEREXEC_TASK_POLL_INTERVAL": "0.25"}


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free right now on ``host``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _node_config_arg(node_config: Mapping[str, object]) -> str:
    """{'robot-id': 'r1', 'steps': 3} -> 'robot-id="r1" steps=3' (TOML values, as flower-supernode parses them)."""
    parts = []
    for key, value in node_config.items():
        if isinstance(value, bool):
            parts.append(f"{key}={'true' if value else 'false'}")
        elif isinstance(value, (int, float)):
            parts.append(f"{key}={value}")
        else:
            text = str(value).replace("\\", "\\\\").replace('"', '\\"')
            parts.append(f'{key}="{text}"')
    return " ".join(parts)


def supernode_executable() -> str:
    """flower-supernode next to this interpreter (the venv), else on PATH."""
    local = Path(sys.executable).parent / "flower-supernode"
    if local.exists():
        return str(local)
    found = shutil.which("flower-supernode")
    if not found:
        raise FileNotFoundError("flower-supernode not found (install flwr)")
    return found


@dataclass
class SuperNodeStatus:
    """What the supervisor knows about its SuperNode."""

    state: str = "stopped"          # running | backoff | stopped
    pid: int = 0
    port: int = 0
    restarts: int = 0
    last_exit_code: int | None = None
    last_reason: str = ""
    started_at: float = 0.0
    log_path: str = ""
    history: list = field(default_factory=list)  # (time, reason) of each restart
    trainer_pid: int = 0            # the warm local trainer (0 = not running / not enabled)
    trainer_restarts: int = 0


class SuperNodeSupervisor:
    """Starts ``flower-supernode`` with the right flags, restarts it when it dies or wedges.

    Args:
        superlink: the SuperLink's Fleet API address, host:port.
        node_config: passed as --node-config (the ClientApp reads robot-id, episode-dir, ...).
        root_certificates: CA certificate to verify the SuperLink (TLS).
        auth_private_key: this robot's SuperNode private key (ECDSA, OpenSSH format), registered on the SuperLink.
        insecure: plain-text transport without authentication; must be asked for explicitly.
        port: the SuperNode's local ClientAppIo/runtime API port (None = a free one).
        log_path: where the SuperNode's output is appended (None = discarded).
        restart_backoff_s / max_backoff_s: delay before a restart, doubling up to the maximum while it keeps dying.
        watch_interval_s: > 0 starts a background thread that calls poll() at this period.
        extra_args: more flower-supernode arguments.
        env: extra environment of the SuperNode (and trainer) processes.
        local_trainer: also run the robot's warm local trainer (needs node_config["episode-dir"]).
        trainer_log_path: the trainer's log (None = <episode-dir>/local_trainer.log).
    """

    def __init__(self, superlink: str, node_config: Mapping[str, object] | None = None,
                 root_certificates: str | None = None, auth_private_key: str | None = None,
                 insecure: bool = False, port: int | None = None, log_path: str | os.PathLike | None = None,
                 host: str = "127.0.0.1", restart_backoff_s: float = 2.0, max_backoff_s: float = 60.0,
                 watch_interval_s: float = 0.0, extra_args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                 local_trainer: bool = True, trainer_log_path: str | os.PathLike | None = None):
        if not insecure and not (root_certificates and auth_private_key):
            raise ValueError("SuperNodeSupervisor: TLS and node authentication need root_certificates and "
                             "auth_private_key; pass insecure=True explicitly to run without them")
        if restart_backoff_s <= 0 or max_backoff_s < restart_backoff_s:
            raise ValueError("SuperNodeSupervisor: need 0 < restart_backoff_s <= max_backoff_s")
        self.superlink = superlink
        self.node_config = dict(node_config or {})
        self.root_certificates = root_certificates
        self.auth_private_key = auth_private_key
        self.insecure = insecure
        self.host = host
        self.port = port or free_port(host)
        self.log_path = Path(log_path) if log_path else None
        self.restart_backoff_s = restart_backoff_s
        self.max_backoff_s = max_backoff_s
        self.watch_interval_s = watch_interval_s
        self.extra_args = list(extra_args)
        self.env = {**SUPERNODE_ENV_DEFAULTS, **dict(env or {})}
        self.trainer = None
        episode_dir = str(self.node_config.get(keys.NODE_EPISODE_DIR, "") or "")
        if local_trainer and episode_dir and str(self.node_config.get(keys.NODE_LOCAL_TRAINER, "auto")) != "off":
            from fedvla_flower.local_trainer import LocalTrainerProcess

            self.trainer = LocalTrainerProcess(
                episode_dir, policy_dir=str(self.node_config.get(keys.NODE_POLICY_DIR, "") or ""),
                base_checkpoint=str(self.node_config.get(keys.NODE_BASE_CHECKPOINT, "") or ""),
                robot_id=str(self.node_config.get(keys.NODE_ROBOT_ID, "") or ""),
                log_path=trainer_log_path or Path(episode_dir) / "local_trainer.log", env=dict(env or {}))
        self._trainer_next_start = 0.0
        self._trainer_backoff = restart_backoff_s
        self._proc: subprocess.Popen | None = None
        self._log_file = None
        self._log_offset = 0
        self._stopping = True
        self._next_start = 0.0
        self._backoff = restart_backoff_s
        self._lock = threading.RLock()
        self._watcher: threading.Thread | None = None
        self.status = SuperNodeStatus(port=self.port, log_path=str(self.log_path or ""))

    def command(self) -> list[str]:
        """The flower-supernode command line."""
        cmd = [supernode_executable(), "--superlink", self.superlink, "--host", self.host, "--port", str(self.port)]
        if self.insecure:
            cmd.append("--insecure")
        else:
            cmd += ["--root-certificates", str(self.root_certificates),
                    "--auth-supernode-private-key", str(self.auth_private_key)]
        if self.node_config:
            cmd += ["--node-config", _node_config_arg(self.node_config)]
        return cmd + self.extra_args

    # -- lifecycle -------------------------------------------------------------------------------
    def start(self) -> SuperNodeStatus:
        """Start the SuperNode (and the watcher thread when watch_interval_s > 0)."""
        with self._lock:
            self._stopping = False
            if self.trainer is not None and not self.trainer.running:
                self.status.trainer_pid = self.trainer.start()  # first: it warms up while the SuperNode connects
            self._spawn()
        if self.watch_interval_s > 0 and self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="supernode-watch", daemon=True)
            self._watcher.start()
        return self.status

    def _spawn(self) -> None:
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.log_path, "ab")
            self._log_offset = self.log_path.stat().st_size
        out = self._log_file if self._log_file is not None else subprocess.DEVNULL
        self._proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                      env=self._environment(), start_new_session=True)
        self.status.state, self.status.pid, self.status.started_at = "running", self._proc.pid, time.time()

    def _environment(self) -> dict[str, str]:
        """os.environ + extra env, with flower-supernode's folder first on PATH (it spawns flower-superexec)."""
        env = {**os.environ, **self.env}
        bin_dir = str(Path(supernode_executable()).parent)
        env["PATH"] = bin_dir + os.pathsep + env.get("PATH", "")
        return env

    def _kill(self, timeout: float = 10.0) -> int | None:
        proc, self._proc = self._proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)  # the SuperNode and its ClientApp children
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            except ProcessLookupError:
                pass
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        return proc.returncode

    def stop(self) -> SuperNodeStatus:
        """Stop the SuperNode for good (no restart)."""
        with self._lock:
            self._stopping = True
            code = self._kill()
            if self.trainer is not None:
                self.trainer.stop()
                self.status.trainer_pid = 0
            self.status.state, self.status.pid = "stopped", 0
            if code is not None:
                self.status.last_exit_code = code
        return self.status

    def restart(self, reason: str = "requested") -> SuperNodeStatus:
        """Kill and start again now (e.g. after a round timed out on this robot)."""
        with self._lock:
            code = self._kill()
            self._record_restart(reason, code)
            if not self._stopping:
                self._spawn()
        return self.status

    def _record_restart(self, reason: str, code: int | None) -> None:
        self.status.restarts += 1
        self.status.last_reason = reason
        self.status.last_exit_code = code
        self.status.history.append((time.time(), reason))

    def _wedged(self) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        with open(self.log_path, "rb") as f:
            f.seek(self._log_offset)
            chunk = f.read()
        self._log_offset += len(chunk)
        text = chunk.decode(errors="replace")
        return next((p for p in WEDGE_PATTERNS if p in text), "")

    def poll(self) -> SuperNodeStatus:
        """Check the process: restart it (with backoff) when it exited or logged a wedge pattern."""
        with self._lock:
            if self._stopping:
                return self.status
            now = time.time()
            self._poll_trainer(now)
            if self._proc is not None:
                code = self._proc.poll()
                if code is None:
                    pattern = self._wedged()
                    if pattern:
                        self.restart(f"wedged: {pattern!r} in the log")
                    elif now - self.status.started_at > 60:
                        self._backoff = self.restart_backoff_s  # ran long enough: reset the backoff
                    return self.status
                self._kill()
                self._record_restart(f"exited with code {code}", code)
                self.status.state, self.status.pid = "backoff", 0
                self._next_start = now + self._backoff
                self._backoff = min(self._backoff * 2, self.max_backoff_s)
            if self._proc is None and now >= self._next_start:
                self._spawn()
            return self.status

    def _poll_trainer(self, now: float) -> None:
        """Restart the warm trainer when it exited (with the same backoff rule as the SuperNode)."""
        if self.trainer is None or self.trainer.running:
            if self.trainer is not None and now - self._trainer_next_start > 60:
                self._trainer_backoff = self.restart_backoff_s
            return
        if self.trainer.proc is not None:  # it died: schedule a restart
            code = self.trainer.stop()
            self.status.trainer_pid = 0
            self.status.trainer_restarts += 1
            self.status.history.append((now, f"local trainer exited with code {code}"))
            self._trainer_next_start = now + self._trainer_backoff
            self._trainer_backoff = min(self._trainer_backoff * 2, self.max_backoff_s)
        if now >= self._trainer_next_start:
            self.status.trainer_pid = self.trainer.start()

    def _watch(self) -> None:
        while not self._stopping:
            self.poll()
            time.sleep(self.watch_interval_s)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def __enter__(self) -> "SuperNodeSupervisor":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
