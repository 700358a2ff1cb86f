"""The robot's warm local trainer: one long-lived process that runs local rounds for the ClientApp.

Why: Flower starts a fresh ``flwr-clientapp`` process for every message. Importing torch and
transformers, loading MiniLM and the policy, and decoding the episodes cost tens of seconds per
round on a small CPU, every round. The warm trainer pays that once: it is started next to the
SuperNode (by :class:`fedvla_fed_client.supernode.SuperNodeSupervisor`, or by hand with
``python -m fedvla_flower.local_trainer --episode-dir DIR``), keeps torch, MiniLM, the robot's
policy and its decoded episodes in memory (:class:`~fedvla_core.federated.local_round.WarmState`),
and runs :func:`~fedvla_core.federated.local_round.run_local_round` on request. The ClientApp then
imports only flwr + numpy, forwards the global arrays, waits and replies.

Hand-off, local only (no network protocol of our own): a ``multiprocessing.connection`` Listener
on a Unix socket (mode 0600) with a random authkey. The trainer advertises itself in
``<episode-dir>/.local_trainer.json`` (mode 0600: socket path, authkey, pid), written after the
socket is bound and removed at exit; ``<episode-dir>/.local_trainer.lock`` (flock) makes sure one
trainer serves a robot. A request is one pickled dict each way::

    -> {"op": "train", "config": {LocalRoundConfig fields}, "arrays": {name: ndarray}}
    <- {"ok": True, "upload": {...}, "metrics": {...}, "checkpoint": str, "episode_ids": [...], "server-s": float}
    <- {"ok": False, "error": "Type: message", "traceback": str}
    -> {"op": "ping"}   <- {"ok": True, "pid": int, "rounds": int, "warm": bool, "hits": {...}}

When no trainer runs (or it dies mid-request), :func:`request_round` raises
:class:`TrainerUnavailable` and the ClientApp trains in-process, as before. No torch and no rclpy
at import time: the ClientApp imports this module.
"""
from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import logging
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field, fields
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fedvla_core.federated.local_round import LocalRoundConfig, LocalRoundResult, WarmState, run_local_round

log = logging.getLogger("fedvla.trainer")

DISCOVERY_FILE = ".local_trainer.json"
LOCK_FILE = ".local_trainer.lock"
SOCKET_FILE = ".local_trainer.sock"
_MAX_UNIX_PATH = 100  # sun_path holds 108 bytes; keep a margin


class TrainerUnavailable(RuntimeError):
    """No warm trainer answers for this robot (not started, gone, or died mid-request): train in-process."""


class TrainerError(RuntimeError):
    """The warm trainer ran the round and it failed (the same failure an in-process round would report)."""


def socket_path_for(episode_dir) -> str:
    """``<episode-dir>/.local_trainer.sock``, or a per-robot path in the temp dir when that is too long for AF_UNIX."""
    episode_dir = Path(episode_dir).resolve()
    path = episode_dir / SOCKET_FILE
    if len(str(path).encode()) <= _MAX_UNIX_PATH:
        return str(path)
    digest = hashlib.sha1(str(episode_dir).encode()).hexdigest()[:16]
    return str(Path(tempfile.gettempdir()) / f"fedvla-trainer-{os.getuid()}-{digest}.sock")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a killed child its parent has not reaped yet is a zombie: dead for our purpose
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def read_discovery(episode_dir) -> dict | None:
    """The advertised trainer of this robot ({"address", "authkey", "pid", ...}) if its process is alive."""
    try:
        info = json.loads((Path(episode_dir) / DISCOVERY_FILE).read_text())
    except (FileNotFoundError, ValueError):
        return None
    if not isinstance(info, dict) or not _pid_alive(int(info.get("pid", 0) or 0)):
        return None
    return info


def _connect(episode_dir, connect_timeout_s: float) -> Connection:
    info = read_discovery(episode_dir)
    if info is None:
        raise TrainerUnavailable(f"no local trainer advertised in {Path(episode_dir) / DISCOVERY_FILE}")
    deadline = time.monotonic() + connect_timeout_s
    while True:
        try:
            return Client(info["address"], family="AF_UNIX", authkey=bytes.fromhex(info["authkey"]))
        except (FileNotFoundError, ConnectionRefusedError) as err:
            if time.monotonic() >= deadline:
                raise TrainerUnavailable(f"local trainer at {info['address']} does not accept: {err}") from err
            time.sleep(0.1)
        except AuthenticationError as err:
            raise TrainerUnavailable(f"local trainer at {info['address']} refused our key: {err}") from err
        except (EOFError, OSError) as err:  # handshake broken: the trainer went away
            raise TrainerUnavailable(f"local trainer at {info['address']}: {err}") from err


def _exchange(episode_dir, request: dict, timeout_s: float, connect_timeout_s: float) -> dict:
    conn = _connect(episode_dir, connect_timeout_s)
    try:
        conn.send(request)
        if not conn.poll(timeout_s):
            raise TimeoutError(f"local trainer gave no answer within {timeout_s:.0f} s")
        return conn.recv()
    except (EOFError, ConnectionResetError, BrokenPipeError) as err:
        raise TrainerUnavailable(f"local trainer closed the connection mid-request: {err!r}") from err
    finally:
        conn.close()


def ping(episode_dir, timeout_s: float = 5.0) -> dict | None:
    """The trainer's status ({"pid", "rounds", "warm", "hits"}), or None when no trainer answers.

    A trainer busy with a round answers after the round; use a timeout that fits.
    """
    try:
        return _exchange(episode_dir, {"op": "ping"}, timeout_s, connect_timeout_s=min(timeout_s, 2.0))
    except (TrainerUnavailable, TimeoutError):
        return None


def request_round(cfg: LocalRoundConfig, global_arrays: Mapping[str, np.ndarray], timeout_s: float = 3600.0,
                  connect_timeout_s: float = 2.0) -> tuple[LocalRoundResult, float]:
    """Run one local round in the robot's warm trainer; returns (result, seconds the trainer spent on it).

    Raises TrainerUnavailable (no trainer: train in-process instead), TrainerError (the round
    failed inside the trainer) or TimeoutError.
    """
    request = {"op": "train", "config": asdict(cfg), "arrays": {k: np.asarray(v) for k, v in global_arrays.items()}}
    reply = _exchange(cfg.episode_dir, request, timeout_s, connect_timeout_s)
    if not reply.get("ok"):
        raise TrainerError(f"{reply.get('error', 'unknown error')}\n{reply.get('traceback', '')}".strip())
    result = LocalRoundResult(upload=reply["upload"], metrics=reply["metrics"], checkpoint=reply["checkpoint"],
                              episode_ids=list(reply["episode_ids"]))
    return result, float(reply.get("server-s", 0.0))


# ---------------------------------------------------------------------------------------------- server
@dataclass
class LocalTrainerConfig:
    """How the warm trainer of one robot runs."""

    episode_dir: str = field(default="", metadata={"help": "The robot's episode folder (the SuperNode's episode-dir)."})
    policy_dir: str = field(default="", metadata={"help": "Local policy state ('' = <episode-dir>/policy)."})
    base_checkpoint: str = field(default="", metadata={"help": "Base policy to preload before the first local round."})
    robot_id: str = field(default="", metadata={"help": "The robot's id, for logs."})
    warm_up: bool = field(default=True, metadata={"help": "Import torch, load MiniLM, the policy and episodes at start."})
    parent_pid: int = field(default=0, metadata={"help": "Exit when this process is gone (0 = never): no orphan trainers."})

    def __post_init__(self):
        if not self.episode_dir:
            raise ValueError("LocalTrainerConfig.episode_dir: required")
        if self.parent_pid < 0:
            raise ValueError(f"LocalTrainerConfig.parent_pid: must be >= 0 (got {self.parent_pid})")
        self.episode_dir = str(Path(self.episode_dir).resolve())


class LocalTrainer:
    """Serves local rounds for one robot over a Unix socket, one request at a time, until SIGTERM/SIGINT."""

    def __init__(self, cfg: LocalTrainerConfig):
        self.cfg = cfg
        self.warm = WarmState()
        self.rounds = 0
        self.warmed = False
        self.address = socket_path_for(cfg.episode_dir)
        self._authkey = secrets.token_bytes(32)
        self._lock_fd: int | None = None
        self._listener: Listener | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    def open(self) -> None:
        """Take the robot's trainer lock, bind the socket (0600) and advertise it."""
        root = Path(self.cfg.episode_dir)
        root.mkdir(parents=True, exist_ok=True)
        self._lock_fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            os.close(self._lock_fd)
            self._lock_fd = None
            raise RuntimeError(f"another local trainer already serves {root}") from err
        if os.path.exists(self.address):
            os.unlink(self.address)  # left by a killed trainer; we hold the lock, so it is stale
        old_umask = os.umask(0o177)
        try:
            self._listener = Listener(self.address, family="AF_UNIX", authkey=self._authkey)
        finally:
            os.umask(old_umask)
        info = {"address": self.address, "authkey": self._authkey.hex(), "pid": os.getpid(), "started": time.time(),
                "robot-id": self.cfg.robot_id}
        tmp = root / f".{DISCOVERY_FILE}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
        os.replace(tmp, root / DISCOVERY_FILE)
        log.info("local trainer of %s listening on %s (pid %d)", self.cfg.robot_id or root.name, self.address,
                 os.getpid())

    def close(self) -> None:
        """Stop advertising, close the socket, release the lock."""
        path = Path(self.cfg.episode_dir) / DISCOVERY_FILE
        try:
            if json.loads(path.read_text()).get("pid") == os.getpid():
                path.unlink()
        except (FileNotFoundError, ValueError):
            pass
        if self._listener is not None:
            self._listener.close()  # also unlinks the socket file
            self._listener = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def warm_up(self) -> float:
        """Import the training stack, load MiniLM, and preload the robot's policy and episodes; returns seconds."""
        t0 = time.monotonic()
        import torch  # noqa: F401 - the point is to pay the import now

        from fedvla_core.model import FedVLAConfig
        from fedvla_core.model.encoders import FrozenSentenceEncoder
        from fedvla_core.training import train  # noqa: F401

        from fedvla_core.federated.local_round import load_dataset, load_local_policy

        default = FedVLAConfig()
        try:
            FrozenSentenceEncoder.shared(default.language_model_path, default.max_instruction_tokens)
        except FileNotFoundError as err:
            log.warning("warm-up: no MiniLM to preload: %s", err)
        try:
            cfg = LocalRoundConfig(episode_dir=self.cfg.episode_dir, policy_dir=self.cfg.policy_dir,
                                   base_checkpoint=self.cfg.base_checkpoint, robot_id=self.cfg.robot_id)
            policy, source = load_local_policy(cfg)
            if source != "model-config":
                dataset = load_dataset(cfg, policy.config, self.warm)
                if len(dataset):
                    policy.language_encoder.encode(sorted(set(dataset.instructions)))
                self.warm.policy, self.warm.policy_checkpoint = policy, source
        except ValueError:
            pass  # no local policy and no base checkpoint yet: the first round brings the model config
        except Exception as err:  # noqa: BLE001 - warm-up is an optimization; the round reloads from disk
            log.warning("warm-up: could not preload the policy: %s", err)
        self.warmed = True
        took = time.monotonic() - t0
        log.info("warm-up done in %.1f s", took)
        return took

    def serve_forever(self) -> None:
        assert self._listener is not None, "call open() first"
        while True:
            try:
                conn = self._listener.accept()
            except (OSError, EOFError, AuthenticationError) as err:  # a wrong key or a dropped handshake
                log.warning("refused a connection: %r", err)
                continue
            with conn:
                self._serve(conn)

    def _serve(self, conn: Connection) -> None:
        try:
            request = conn.recv()
        except (EOFError, OSError) as err:
            log.warning("broken request: %r", err)
            return
        op = request.get("op") if isinstance(request, dict) else None
        if op == "ping":
            reply = {"ok": True, "pid": os.getpid(), "rounds": self.rounds, "warm": self.warmed,
                     "hits": dict(self.warm.hits)}
        elif op == "train":
            reply = self.train(request)
        else:
            reply = {"ok": False, "error": f"unknown op {op!r}"}
        try:
            conn.send(reply)
        except (BrokenPipeError, ConnectionResetError, EOFError) as err:
            # The ClientApp went away (its SuperNode was killed mid-round); the round is saved on
            # disk anyway and the next request starts from it.
            log.warning("client gone before the reply: %r", err)

    def train(self, request: dict) -> dict:
        t0 = time.monotonic()
        try:
            known = {f.name for f in fields(LocalRoundConfig)}
            cfg = LocalRoundConfig(**{k: v for k, v in dict(request["config"]).items() if k in known})
            result = run_local_round(cfg, request["arrays"], warm=self.warm)
        except Exception as err:  # noqa: BLE001 - report to the ClientApp, keep serving
            log.error("local round failed: %s\n%s", err, traceback.format_exc())
            self.warm.policy = None  # possibly half-trained: reload from disk next time
            return {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}
        self.rounds += 1
        return {"ok": True, "upload": result.upload, "metrics": result.metrics, "checkpoint": result.checkpoint,
                "episode_ids": result.episode_ids, "server-s": time.monotonic() - t0}


# ------------------------------------------------------------------------------------------- process
class LocalTrainerProcess:
    """``python -m fedvla_flower.local_trainer`` as a child process (what SuperNodeSupervisor runs)."""

    def __init__(self, episode_dir, policy_dir: str = "", base_checkpoint: str = "", robot_id: str = "",
                 log_path=None, env: Mapping[str, str] | None = None):
        self.cfg = LocalTrainerConfig(episode_dir=str(episode_dir), policy_dir=policy_dir,
                                      base_checkpoint=base_checkpoint, robot_id=robot_id, parent_pid=os.getpid())
        self.log_path = Path(log_path) if log_path else None
        self.env = dict(env or {})
        self.proc: subprocess.Popen | None = None

    def command(self) -> list[str]:
        c = self.cfg
        cmd = [sys.executable, "-m", "fedvla_flower.local_trainer", "--episode-dir", c.episode_dir,
               "--parent-pid", str(c.parent_pid)]
        for flag, value in (("--policy-dir", c.policy_dir), ("--base-checkpoint", c.base_checkpoint),
                            ("--robot-id", c.robot_id)):
            if value:
                cmd += [flag, value]
        return cmd

    def start(self) -> int:
        out = subprocess.DEVNULL
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            out = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env={**os.environ, **self.env}, start_new_session=True)
        finally:
            if out is not subprocess.DEVNULL:
                out.close()
        return self.proc.pid

    @property
    def pid(self) -> int:
        return self.proc.pid if self.proc is not None else 0

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def exit_code(self) -> int | None:
        return self.proc.poll() if self.proc is not None else None

    def wait_ready(self, timeout_s: float = 60.0) -> bool:
        """Wait until the trainer advertises its socket (it may still be warming up)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self.running:
            info = read_discovery(self.cfg.episode_dir)
            if info is not None and info.get("pid") == self.pid:
                return True
            time.sleep(0.1)
        return False

    def stop(self, timeout: float = 10.0) -> int | None:
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            try:
                proc.send_signal(signal.SIGTERM)
                proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            except ProcessLookupError:
                pass
        return proc.returncode


def _terminate(signum, _frame):
    raise SystemExit(128 + signum)


def _exit_with_parent(parent_pid: int, period_s: float = 2.0) -> None:
    """Daemon thread: SIGTERM ourselves once the parent (the supervisor's process) is gone."""
    def watch() -> None:
        while _pid_alive(parent_pid):
            time.sleep(period_s)
        log.warning("parent %d is gone; stopping", parent_pid)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m fedvla_flower.local_trainer",
        description="Warm local trainer of one robot: keeps torch, MiniLM, the policy and the episodes loaded and "
                    "runs federated local rounds for the Flower ClientApp over a local Unix socket.")
    for f in fields(LocalTrainerConfig):
        flag = "--" + f.name.replace("_", "-")
        if f.type in (bool, "bool"):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=f.default, help=f.metadata["help"])
        else:
            parser.add_argument(flag, default=f.default, help=f.metadata["help"], required=f.name == "episode_dir",
                                type=int if f.type in (int, "int") else str)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    cfg = LocalTrainerConfig(**vars(args))
    trainer = LocalTrainer(cfg)
    signal.signal(signal.SIGTERM, _terminate)
    if cfg.parent_pid > 0:
        _exit_with_parent(cfg.parent_pid)
    try:
        trainer.open()
    except RuntimeError as err:
        log.error("%s", err)
        return 3
    try:
        if cfg.warm_up:
            trainer.warm_up()
        trainer.serve_forever()
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        trainer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
