"""The robot's warm local trainer: one long-lived process that runs local rounds for the ClientApp.

Why: Flower starts a fresh ``flwr-clientapp`` process for every message. Importing torch and
transformers, loading MiniLM and the policy, and decoding the episodes cost tens of seconds per
round on a small CPU, every round. The warm trainer pays that once: it is started next to the
SuperNode (by :class:`fedvla_fed_client.supernode.SuperNodeSupervisor`, or by hand with
``python -m fedvla_flower.local_trainer --episode-dir DIR``), keeps torch, MiniLM, the robot's
policy and its decoded episodes in memory (:class:`~fedvla_core.federated.local_round.WarmState`),
and runs :func:`~fedvla_core.federated.local_round.run_local_round` on request. The ClientApp then
imports only flwr + numpy, forwards the global arrays, waits and replies.

This module is the trainer (:class:`LocalTrainer`), its child-process wrapper
(:class:`LocalTrainerProcess`, what SuperNodeSupervisor runs) and its command line. The hand-off
itself (Unix socket, discovery file, lock, the pickled request/reply dicts, and the ClientApp's
:func:`request_round` / :func:`ping`) is :mod:`fedvla_flower.trainer_ipc`; its names are re-exported
here. No torch and no rclpy at import time.
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Mapping

import numpy as np

from fedvla_core.federated.local_round import LocalRoundConfig, LocalRoundResult, WarmState, run_local_round
from fedvla_flower.trainer_ipc import (DISCOVERY_FILE, LOCK_FILE, SOCKET_FILE, TrainerEndpoint,  # noqa: F401
                                       TrainerError, TrainerUnavailable, pid_alive, ping, read_discovery,
                                       request_round, socket_path_for)

log = logging.getLogger("fedvla.trainer")


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
    """Serves local rounds for one robot over its :class:`~fedvla_flower.trainer_ipc.TrainerEndpoint`,
    one request at a time, until SIGTERM/SIGINT."""

    def __init__(self, cfg: LocalTrainerConfig):
        self.cfg = cfg
        self.warm = WarmState()
        self.rounds = 0
        self.warmed = False
        self.endpoint = TrainerEndpoint(cfg.episode_dir, robot_id=cfg.robot_id)

    @property
    def address(self) -> str:
        return self.endpoint.address

    # -- lifecycle -------------------------------------------------------------------------------
    def open(self) -> None:
        """Take the robot's trainer lock, bind the socket (0600) and advertise it."""
        self.endpoint.open()

    def close(self) -> None:
        """Stop advertising, close the socket, release the lock."""
        self.endpoint.close()

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
        self.endpoint.serve_forever(self)

    # -- what the endpoint serves (trainer_ipc.RoundHandler) ---------------------------------------
    def status(self) -> dict:
        return {"rounds": self.rounds, "warm": self.warmed, "hits": dict(self.warm.hits)}

    def run_round(self, cfg: LocalRoundConfig, global_arrays: Mapping[str, np.ndarray]) -> LocalRoundResult:
        result = run_local_round(cfg, global_arrays, warm=self.warm)
        self.rounds += 1
        return result

    def round_failed(self) -> None:
        self.warm.policy = None  # possibly half-trained: reload from disk next time


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
        while pid_alive(parent_pid):
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
