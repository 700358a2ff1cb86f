"""The hand-off between the ClientApp and the robot's warm local trainer: socket, discovery and protocol.

Local only (no network protocol of our own): a ``multiprocessing.connection`` Listener on a Unix
socket (mode 0600) with a random authkey. The trainer advertises itself in
``<episode-dir>/.local_trainer.json`` (mode 0600: socket path, authkey, pid), written after the
socket is bound and removed at exit; ``<episode-dir>/.local_trainer.lock`` (flock) makes sure one
trainer serves a robot. A request is one pickled dict each way::

    -> {"op": "train", "config": {LocalRoundConfig fields}, "arrays": {name: ndarray}}
    <- {"ok": True, "upload": {...}, "metrics": {...}, "checkpoint": str, "episode_ids": [...], "server-s": float}
    <- {"ok": False, "error": "Type: message", "traceback": str}
    -> {"op": "ping"}   <- {"ok": True, "pid": int, "rounds": int, "warm": bool, "hits": {...}}

Client side (the ClientApp): :func:`request_round` and :func:`ping`. When no trainer runs (or it
dies mid-request), :func:`request_round` raises :class:`TrainerUnavailable` and the ClientApp trains
in-process. Trainer side: :class:`TrainerEndpoint` (lock, socket, advertisement, request loop) serving
a :class:`RoundHandler` (:class:`fedvla_flower.local_trainer.LocalTrainer`). No torch and no rclpy
at import time: the ClientApp imports this module.
"""
from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import secrets
import tempfile
import time
import traceback
from dataclasses import asdict, fields
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection, Listener
from pathlib import Path
from typing import Any, Mapping, Protocol

import numpy as np

from fedvla_core.federated.local_round import LocalRoundConfig, LocalRoundResult

log = logging.getLogger("fedvla.trainer")

DISCOVERY_FILE = ".local_trainer.json"
LOCK_FILE = ".local_trainer.lock"
SOCKET_FILE = ".local_trainer.sock"
_MAX_UNIX_PATH = 100  # sun_path holds 108 bytes; keep a margin

OP_TRAIN = "train"
OP_PING = "ping"
#: Seconds the ClientApp waits for the trainer's answer when the server's config names no round-timeout.
DEFAULT_REQUEST_TIMEOUT_S = 3600.0


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


def pid_alive(pid: int) -> bool:
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
    if not isinstance(info, dict) or not pid_alive(int(info.get("pid", 0) or 0)):
        return None
    return info


# ------------------------------------------------------------------------------------------ protocol
def train_request(cfg: LocalRoundConfig, global_arrays: Mapping[str, np.ndarray]) -> dict:
    return {"op": OP_TRAIN, "config": asdict(cfg), "arrays": {k: np.asarray(v) for k, v in global_arrays.items()}}


def config_of(request: dict) -> LocalRoundConfig:
    """The request's LocalRoundConfig (fields this version does not know are dropped)."""
    known = {f.name for f in fields(LocalRoundConfig)}
    return LocalRoundConfig(**{k: v for k, v in dict(request["config"]).items() if k in known})


def train_reply(result: LocalRoundResult, seconds: float) -> dict:
    return {"ok": True, "upload": result.upload, "metrics": result.metrics, "checkpoint": result.checkpoint,
            "episode_ids": result.episode_ids, "server-s": seconds}


def error_reply(err: BaseException, tb: str = "") -> dict:
    return {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": tb}


def result_of(reply: dict) -> tuple[LocalRoundResult, float]:
    """(result, seconds the trainer spent) of a train reply; TrainerError when the round failed there."""
    if not reply.get("ok"):
        raise TrainerError(f"{reply.get('error', 'unknown error')}\n{reply.get('traceback', '')}".strip())
    result = LocalRoundResult(upload=reply["upload"], metrics=reply["metrics"], checkpoint=reply["checkpoint"],
                              episode_ids=list(reply["episode_ids"]))
    return result, float(reply.get("server-s", 0.0))


# -------------------------------------------------------------------------------------------- client
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
        return _exchange(episode_dir, {"op": OP_PING}, timeout_s, connect_timeout_s=min(timeout_s, 2.0))
    except (TrainerUnavailable, TimeoutError):
        return None


def request_round(cfg: LocalRoundConfig, global_arrays: Mapping[str, np.ndarray],
                  timeout_s: float = DEFAULT_REQUEST_TIMEOUT_S,
                  connect_timeout_s: float = 2.0) -> tuple[LocalRoundResult, float]:
    """Run one local round in the robot's warm trainer; returns (result, seconds the trainer spent on it).

    Raises TrainerUnavailable (no trainer: train in-process instead), TrainerError (the round
    failed inside the trainer) or TimeoutError.
    """
    return result_of(_exchange(cfg.episode_dir, train_request(cfg, global_arrays), timeout_s, connect_timeout_s))


# ------------------------------------------------------------------------------------------- trainer
class RoundHandler(Protocol):
    """What the endpoint serves: the trainer's status for ping, and one local round per train request."""

    def status(self) -> dict[str, Any]: ...

    def run_round(self, cfg: LocalRoundConfig, global_arrays: Mapping[str, np.ndarray]) -> LocalRoundResult: ...

    def round_failed(self) -> None:
        """A train request failed (its config, or the round itself): forget what may be half-trained."""


class TrainerEndpoint:
    """The trainer's side of the socket for one robot: lock, 0600 socket, advertisement, one request at a time."""

    def __init__(self, episode_dir, robot_id: str = ""):
        self.episode_dir = str(episode_dir)
        self.robot_id = robot_id
        self.address = socket_path_for(episode_dir)
        self._authkey = secrets.token_bytes(32)
        self._lock_fd: int | None = None
        self._listener: Listener | None = None

    def open(self) -> None:
        """Take the robot's trainer lock, bind the socket (0600) and advertise it."""
        root = Path(self.episode_dir)
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
                "robot-id": self.robot_id}
        tmp = root / f".{DISCOVERY_FILE}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(info, f)
        os.replace(tmp, root / DISCOVERY_FILE)
        log.info("local trainer of %s listening on %s (pid %d)", self.robot_id or root.name, self.address,
                 os.getpid())

    def close(self) -> None:
        """Stop advertising, close the socket, release the lock."""
        path = Path(self.episode_dir) / DISCOVERY_FILE
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

    def serve_forever(self, handler: RoundHandler) -> None:
        assert self._listener is not None, "call open() first"
        while True:
            try:
                conn = self._listener.accept()
            except (OSError, EOFError, AuthenticationError) as err:  # a wrong key or a dropped handshake
                log.warning("refused a connection: %r", err)
                continue
            with conn:
                self._serve(conn, handler)

    def _serve(self, conn: Connection, handler: RoundHandler) -> None:
        try:
            request = conn.recv()
        except (EOFError, OSError) as err:
            log.warning("broken request: %r", err)
            return
        op = request.get("op") if isinstance(request, dict) else None
        if op == OP_PING:
            reply = {"ok": True, "pid": os.getpid(), **handler.status()}
        elif op == OP_TRAIN:
            reply = self.train(handler, request)
        else:
            reply = {"ok": False, "error": f"unknown op {op!r}"}
        try:
            conn.send(reply)
        except (BrokenPipeError, ConnectionResetError, EOFError) as err:
            # The ClientApp went away (its SuperNode was killed mid-round); the round is saved on
            # disk anyway and the next request starts from it.
            log.warning("client gone before the reply: %r", err)

    @staticmethod
    def train(handler: RoundHandler, request: dict) -> dict:
        """One train request -> its reply (a failed round is an error reply; the endpoint keeps serving)."""
        t0 = time.monotonic()
        try:
            result = handler.run_round(config_of(request), request["arrays"])
        except Exception as err:  # noqa: BLE001 - report to the ClientApp, keep serving
            log.error("local round failed: %s\n%s", err, traceback.format_exc())
            handler.round_failed()
            return error_reply(err, traceback.format_exc())
        return train_reply(result, time.monotonic() - t0)
