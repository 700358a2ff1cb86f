"""A Flower deployment on loopback for benchmarks: one SuperLink + supervised SuperNodes with warm trainers.

The same processes an operator runs (``SuperLinkProcess`` with TLS + SuperNode authentication,
``SuperNodeSupervisor`` per robot, each with its warm local trainer), wrapped so a benchmark can
start a federation, submit runs and stop everything in a few lines::

    with LoopbackFederation(state_dir, certs, [{"robot-id": "r0", "episode-dir": "/d/r0"}, ...]) as fed:
        fed.wait_trainers()
        run_id = fed.submit({"num-server-rounds": 2, ...})
        while not done(): fed.poll(); time.sleep(1)

Node i authenticates with ``<certs>/node{i}`` (``generate_certificates(certs, num_nodes=N)``).
"""
from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

from fedvla_flower.local_trainer import ping
from fedvla_fed_client.supernode import SuperNodeSupervisor, free_port
from fedvla_fed_server.superlink import SuperLinkProcess


class LoopbackFederation:
    """One SuperLink and one supervised SuperNode (+ warm trainer) per node config, all on 127.0.0.1.

    Args:
        state_dir: the SuperLink's folder (database, flwr CLI config, log); SuperNode logs go to <state_dir>/logs.
        certs_dir: CA, server certificate and node keys node0..node{N-1}.
        node_configs: one --node-config per SuperNode (robot-id, episode-dir, ...).
        env: extra environment of the SuperNodes and their trainers (e.g. OMP_NUM_THREADS, CUDA_VISIBLE_DEVICES).
        warm: run warm local trainers (the deployment default) or train in the ClientApp process.
    """

    def __init__(self, state_dir, certs_dir, node_configs: Sequence[Mapping[str, object]],
                 env: Mapping[str, str] | None = None, warm: bool = True):
        self.state_dir = Path(state_dir)
        self.certs_dir = Path(certs_dir)
        self.node_configs = [dict(c) for c in node_configs]
        self.env = dict(env or {})
        self.warm = warm
        self.link = SuperLinkProcess(self.state_dir, certs_dir=self.certs_dir, port=free_port())
        self.supervisors: list[SuperNodeSupervisor] = []
        self.warmup_s: float | None = None

    def start(self) -> "LoopbackFederation":
        """Start the SuperLink, register every node key, start the SuperNodes (and trainers)."""
        self.link.start()
        logs = self.state_dir / "logs"
        for i, node_config in enumerate(self.node_configs):
            self.link.register_node(self.certs_dir / f"node{i}.pub")
            if not self.warm:
                node_config["local-trainer"] = "off"
            sup = SuperNodeSupervisor(self.link.address, node_config, local_trainer=self.warm,
                                      root_certificates=str(self.certs_dir / "ca.crt"),
                                      auth_private_key=str(self.certs_dir / f"node{i}"),
                                      log_path=logs / f"supernode{i}.log", trainer_log_path=logs / f"trainer{i}.log",
                                      env=self.env)
            sup.start()
            self.supervisors.append(sup)
        return self

    def wait_trainers(self, timeout_s: float = 600.0) -> float:
        """Wait until every warm trainer answers (a robot starts it once, at boot); returns the seconds waited."""
        t0 = time.monotonic()
        if self.warm:
            for cfg, sup in zip(self.node_configs, self.supervisors):
                left = max(1.0, timeout_s - (time.monotonic() - t0))
                if not (sup.trainer.wait_ready(left) and ping(cfg["episode-dir"], timeout_s=left)):
                    raise TimeoutError(f"warm trainer of {cfg.get('robot-id')} not ready within {timeout_s} s")
        self.warmup_s = time.monotonic() - t0
        return self.warmup_s

    def submit(self, run_config: Mapping[str, object]) -> str:
        return self.link.submit(run_config)

    def poll(self) -> None:
        """Let each supervisor restart a dead or wedged SuperNode / trainer."""
        for sup in self.supervisors:
            sup.poll()

    @property
    def trainer_restarts(self) -> int:
        return sum(s.status.trainer_restarts for s in self.supervisors)

    def stop(self) -> None:
        for sup in self.supervisors:
            sup.stop()
        self.supervisors = []
        self.link.stop()

    def __enter__(self) -> "LoopbackFederation":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def thread_env(threads: int, cpu_only: bool) -> dict[str, str]:
    """Environment for trainer processes: torch/OpenMP threads, and no GPU when cpu_only."""
    env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if cpu_only:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def cpu_model_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()} ({os.cpu_count()} cores)"
    except OSError:
        pass
    return f"{os.uname().machine} ({os.cpu_count()} cores)"
