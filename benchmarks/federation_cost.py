"""Cost of a federated round on loopback: bytes per client per round and time beyond local training.

Real deployment: a SuperLink with TLS + SuperNode authentication and 2 supervised SuperNodes
(robots) on 127.0.0.1, the FedVLA Flower app, the default FedVLAConfig (2 cameras). Compared:
  eda-trunk-fp32   Expert-Driven Aggregation, trunk only, float32 weights
  eda-trunk-fp16   the same, uploading float16 deltas to the global trunk
  fedavg-full-fp32 FedAvg on the whole model (stem + trunk + head), float32 - the baseline
and two ways a robot trains:
  warm   the robot's warm local trainer (started by SuperNodeSupervisor; torch, MiniLM, policy and
         episodes stay loaded) does the round; the ClientApp only forwards arrays (the default)
  cold   the ClientApp trains in its own fresh process (node-config local-trainer="off"): imports
         torch, loads the policy and decodes the episodes every round
Overhead of a round = round wall time (server) - the slowest client's local training time
(everything that is not optimizer steps: Flower messaging, ClientApp start, hand-off, loading,
saving, aggregation). CPU load of the whole machine (all processes, /proc/stat) is sampled
during each run, since the machine may be shared.

    .venv/bin/python benchmarks/federation_cost.py [--rounds 2] [--local-steps 5] [--modes warm,cold]
        [--cold-configs eda-trunk-fp16] [--out benchmarks/results/federation_cost.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from fedvla_fed_client.episodes import EpisodeWriter
from fedvla_fed_client.local_trainer import ping
from fedvla_fed_client.supernode import SuperNodeSupervisor, free_port
from fedvla_fed_server.certs import generate_certificates
from fedvla_fed_server.superlink import SuperLinkProcess

CONFIGS = {
    "eda-trunk-fp32": {"strategy": "eda", "scope": "trunk", "upload-dtype": "float32"},
    "eda-trunk-fp16": {"strategy": "eda", "scope": "trunk", "upload-dtype": "float16"},
    "fedavg-full-fp32": {"strategy": "fedavg", "scope": "full", "upload-dtype": "float32"},
}


def make_episodes(directory: Path, seed: int, cameras, size: int, episodes: int = 2, steps: int = 10) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(episodes):
        w = EpisodeWriter(directory, metadata={"instruction": "open the drawer", "robot_id": directory.name},
                          camera_names=cameras, joint_names=[f"j{i}" for i in range(8)],
                          action_names=[f"a{i}" for i in range(8)])
        for t in range(steps):
            w.add_step(t, {c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for c in cameras},
                       rng.normal(size=8), rng.normal(size=8) * 0.1 + seed)
        w.close(True)


class CpuSampler:
    """Samples machine-wide CPU use (/proc/stat) and the 1-minute load average once a second."""

    def __init__(self, period_s: float = 1.0):
        self.period_s = period_s
        self.busy: list[float] = []
        self.load: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _times() -> tuple[int, int]:
        values = [int(v) for v in open("/proc/stat").readline().split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values) - idle, sum(values)

    def _run(self) -> None:
        busy0, total0 = self._times()
        while not self._stop.wait(self.period_s):
            busy1, total1 = self._times()
            if total1 > total0:
                self.busy.append((busy1 - busy0) / (total1 - total0))
            busy0, total0 = busy1, total1
            self.load.append(os.getloadavg()[0])

    def __enter__(self) -> "CpuSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        if not self.busy:
            return {}
        return {"cpu_busy_mean": float(np.mean(self.busy)), "cpu_busy_max": float(np.max(self.busy)),
                "loadavg1_mean": float(np.mean(self.load)), "loadavg1_max": float(np.max(self.load)),
                "cores": os.cpu_count(), "samples": len(self.busy)}


def run_config_rounds(name: str, overrides: dict, args, work: Path, certs: Path, mode: str) -> dict:
    warm = mode == "warm"
    tag = f"{name}-{mode}"
    link = SuperLinkProcess(work / tag / "server", certs_dir=certs, port=free_port())
    robots = [work / "robots" / f"robot{i}" for i in range(2)]
    sups = []
    warmup_s = None
    try:
        link.start()
        t_start = time.monotonic()
        for i in range(2):
            link.register_node(certs / f"node{i}.pub")
            shutil.rmtree(robots[i] / "policy", ignore_errors=True)  # every run starts from the same state
            node_config = {"robot-id": f"robot{i}", "episode-dir": str(robots[i])}
            if not warm:
                node_config["local-trainer"] = "off"
            sup = SuperNodeSupervisor(link.address, node_config, local_trainer=warm,
                                      root_certificates=str(certs / "ca.crt"), auth_private_key=str(certs / f"node{i}"),
                                      log_path=work / tag / f"supernode{i}.log",
                                      trainer_log_path=work / tag / f"trainer{i}.log")
            sup.start()
            sups.append(sup)
        if warm:  # a robot starts its trainer once, at boot: wait for the warm-up instead of timing it per round
            for i, sup in enumerate(sups):
                assert sup.trainer.wait_ready(120) and ping(robots[i], timeout_s=300), f"trainer {i} not ready"
            warmup_s = time.monotonic() - t_start
        ckpt = work / tag / "server" / "checkpoints"
        cfg = {"num-server-rounds": args.rounds, "min-nodes": 2, "model-config": json.dumps({}),
               "local-steps": args.local_steps, "batch-size": args.batch_size, "round-timeout": 600.0,
               "checkpoint-dir": str(ckpt), **overrides}
        with CpuSampler() as cpu:
            t0 = time.monotonic()
            run_id = link.submit(cfg)
            info = link.wait_run(run_id, timeout=1800, poll_s=0.5, on_poll=lambda _: [s.poll() for s in sups])
            wall = time.monotonic() - t0
        rounds = [json.loads((ckpt / f"round_{r:04d}.json").read_text())["metrics"] for r in range(1, args.rounds + 1)]
        trainer_restarts = sum(s.status.trainer_restarts for s in sups)
    finally:
        for s in sups:
            s.stop()
        link.stop()
    per_round = []
    for m in rounds:
        clients = max(int(m.get("num-clients", 0)), 1)
        per_round.append({
            "clients": m.get("num-clients"),
            "warm_trainer_fraction": m.get("warm-trainer", 0.0),
            "bytes_up_per_client": m["bytes-up"] / clients,
            "bytes_down_per_client": m["bytes-down-per-client"],
            "round_wall_s": m["round-wall-s"],
            "local_train_s_max": m.get("train-time-s-max"),
            "client_process_s_max": m.get("round-client-s-max"),
            "client_load_s_max": m.get("load-s-max"),
            "handoff_s_max": m.get("handoff-s-max"),
            "overhead_s": m["round-wall-s"] - m.get("train-time-s-max", 0.0),
            "flower_s": m["round-wall-s"] - m.get("round-client-s-max", 0.0),
            "train_loss": m.get("train-loss"),
        })
    mean = lambda key: float(np.mean([r[key] for r in per_round]))  # noqa: E731
    later = per_round[1:] or per_round
    return {"mode": mode, "status": info.get("status"), "run_wall_s": wall, "trainer_warmup_s": warmup_s,
            "trainer_restarts": trainer_restarts if warm else None, "cpu": cpu.summary(), "rounds": per_round,
            "bytes_up_per_client_per_round": mean("bytes_up_per_client"),
            "bytes_down_per_client_per_round": mean("bytes_down_per_client"),
            "round_wall_s_mean": mean("round_wall_s"), "overhead_s_mean": mean("overhead_s"),
            "flower_s_mean": mean("flower_s"),
            "overhead_s_after_first_round": float(np.mean([r["overhead_s"] for r in later]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="rounds per configuration")
    parser.add_argument("--local-steps", type=int, default=5, help="client optimizer steps per round")
    parser.add_argument("--batch-size", type=int, default=4, help="client batch size")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ",".join(CONFIGS))
    parser.add_argument("--modes", default="warm,cold", help="warm (warm local trainer) and/or cold (in-process)")
    parser.add_argument("--cold-configs", default="eda-trunk-fp16",
                        help="configs also run cold ('all' = every config; cold runs are slow)")
    parser.add_argument("--out", default="benchmarks/results/federation_cost.json", help="output JSON")
    args = parser.parse_args()

    from fedvla_policy.model import FedVLAConfig, FedVLAPolicy

    model_cfg = FedVLAConfig()
    policy = FedVLAPolicy(model_cfg)
    trunk = sum(v.numel() for v in policy.export_trunk().values())
    total = sum(p.numel() for p in policy.parameters())
    del policy
    work = Path(tempfile.mkdtemp(prefix="fedvla_fedcost_"))
    certs = work / "certs"
    generate_certificates(certs, num_nodes=2)
    for i in range(2):
        make_episodes(work / "robots" / f"robot{i}", i, model_cfg.camera_names, model_cfg.image_size)
    modes = [m for m in args.modes.split(",") if m]
    cold_configs = set(CONFIGS) if args.cold_configs == "all" else set(args.cold_configs.split(","))
    with CpuSampler() as idle:  # what the machine does without us (other users)
        time.sleep(5)
    results: dict[str, dict] = {}
    for mode in modes:
        for name in args.configs.split(","):
            if mode == "cold" and "warm" in modes and name not in cold_configs:
                continue
            print(f"== {name} ({mode})", flush=True)
            r = run_config_rounds(name, CONFIGS[name], args, work, certs, mode)
            results.setdefault(mode, {})[name] = r
            print(json.dumps({k: v for k, v in r.items() if k != "rounds"}, indent=1), flush=True)
    any_mode = next(iter(results.values()))
    base = any_mode.get("fedavg-full-fp32")
    summary: dict = {}
    if base:
        for name, r in any_mode.items():
            summary[f"{name}_upload_vs_fedavg_full"] = r["bytes_up_per_client_per_round"] / base["bytes_up_per_client_per_round"]
    for mode, by_name in results.items():
        for name, r in by_name.items():
            summary[f"{name}_{mode}_overhead_s_per_round"] = r["overhead_s_mean"]
    best_eda = min((r["bytes_up_per_client_per_round"], n) for n, r in any_mode.items() if n.startswith("eda"))
    out = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU only, loopback, "
                   "TLS + SuperNode auth (shared machine: see cpu_idle_before)",
        "model": {"config": "FedVLAConfig() defaults", "trunk_params": trunk, "total_params": total,
                  "trunk_fraction": trunk / total},
        "settings": vars(args),
        "cpu_idle_before": idle.summary(),
        "results": results,
        "summary": summary,
        "targets": {
            "eda_upload_le_40pct_of_fedavg_full": (best_eda[0] / base["bytes_up_per_client_per_round"] <= 0.40
                                                   if base else None),
            "eda_upload_config_meeting_it": best_eda[1],
            "overhead_le_5s_per_round": {f"{n}-{m}": r["overhead_s_mean"] <= 5.0
                                         for m, by_name in results.items() for n, r in by_name.items()},
        },
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=float))
    print(f"wrote {path}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
