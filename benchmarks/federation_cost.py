"""Cost of a federated round on loopback: bytes per client per round and time beyond local training.

Real deployment: a SuperLink with TLS + SuperNode authentication and 2 supervised SuperNodes
(robots) on 127.0.0.1, the FedVLA Flower app, the default FedVLAConfig (2 cameras). Compared:
  eda-trunk-fp32   Expert-Driven Aggregation, trunk only, float32 weights
  eda-trunk-fp16   the same, uploading float16 deltas to the global trunk
  fedavg-full-fp32 FedAvg on the whole model (stem + trunk + head), float32 - the baseline
Overhead of a round = round wall time (server) - the slowest client's local training time.

    .venv/bin/python benchmarks/federation_cost.py [--rounds 2] [--local-steps 5] [--out benchmarks/results/federation_cost.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from fedvla_fed_client.episodes import EpisodeWriter
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


def run_config_rounds(name: str, overrides: dict, args, work: Path, certs: Path) -> dict:
    link = SuperLinkProcess(work / name / "server", certs_dir=certs, port=free_port())
    robots = [work / "robots" / f"robot{i}" for i in range(2)]
    sups = []
    try:
        link.start()
        for i in range(2):
            link.register_node(certs / f"node{i}.pub")
            shutil.rmtree(robots[i] / "policy", ignore_errors=True)  # every config starts from the same state
            sup = SuperNodeSupervisor(link.address, {"robot-id": f"robot{i}", "episode-dir": str(robots[i])},
                                      root_certificates=str(certs / "ca.crt"), auth_private_key=str(certs / f"node{i}"),
                                      log_path=work / name / f"supernode{i}.log")
            sup.start()
            sups.append(sup)
        ckpt = work / name / "server" / "checkpoints"
        cfg = {"num-server-rounds": args.rounds, "min-nodes": 2, "model-config": json.dumps({}),
               "local-steps": args.local_steps, "batch-size": args.batch_size, "round-timeout": 600.0,
               "checkpoint-dir": str(ckpt), **overrides}
        t0 = time.monotonic()
        run_id = link.submit(cfg)
        info = link.wait_run(run_id, timeout=1800, on_poll=lambda _: [s.poll() for s in sups])
        wall = time.monotonic() - t0
        rounds = [json.loads((ckpt / f"round_{r:04d}.json").read_text())["metrics"] for r in range(1, args.rounds + 1)]
    finally:
        for s in sups:
            s.stop()
        link.stop()
    per_round = []
    for m in rounds:
        clients = max(int(m.get("num-clients", 0)), 1)
        per_round.append({
            "clients": m.get("num-clients"),
            "bytes_up_per_client": m["bytes-up"] / clients,
            "bytes_down_per_client": m["bytes-down-per-client"],
            "round_wall_s": m["round-wall-s"],
            "local_train_s_max": m.get("train-time-s-max"),
            "client_process_s_max": m.get("round-client-s-max"),
            "client_load_s_max": m.get("load-s-max"),
            "overhead_s": m["round-wall-s"] - m.get("train-time-s-max", 0.0),
            "train_loss": m.get("train-loss"),
        })
    mean = lambda key: float(np.mean([r[key] for r in per_round]))  # noqa: E731
    return {"status": info.get("status"), "run_wall_s": wall, "rounds": per_round,
            "bytes_up_per_client_per_round": mean("bytes_up_per_client"),
            "bytes_down_per_client_per_round": mean("bytes_down_per_client"),
            "round_wall_s_mean": mean("round_wall_s"), "overhead_s_mean": mean("overhead_s"),
            "overhead_s_warm": float(np.mean([r["overhead_s"] for r in per_round[1:]] or [per_round[0]["overhead_s"]]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="rounds per configuration")
    parser.add_argument("--local-steps", type=int, default=5, help="client optimizer steps per round")
    parser.add_argument("--batch-size", type=int, default=4, help="client batch size")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ",".join(CONFIGS))
    parser.add_argument("--out", default="benchmarks/results/federation_cost.json", help="output JSON")
    args = parser.parse_args()

    from fedvla_policy.model import FedVLAConfig, FedVLAPolicy

    model_cfg = FedVLAConfig()
    policy = FedVLAPolicy(model_cfg)
    trunk = sum(v.numel() for v in policy.export_trunk().values())
    total = sum(p.numel() for p in policy.parameters())
    work = Path(tempfile.mkdtemp(prefix="fedvla_fedcost_"))
    certs = work / "certs"
    generate_certificates(certs, num_nodes=2)
    for i in range(2):
        make_episodes(work / "robots" / f"robot{i}", i, model_cfg.camera_names, model_cfg.image_size)
    results = {}
    for name in args.configs.split(","):
        print(f"== {name}", flush=True)
        results[name] = run_config_rounds(name, CONFIGS[name], args, work, certs)
        print(json.dumps({k: v for k, v in results[name].items() if k != "rounds"}, indent=1), flush=True)
    base = results.get("fedavg-full-fp32")
    summary = {}
    if base:
        for name, r in results.items():
            summary[f"{name}_upload_vs_fedavg_full"] = r["bytes_up_per_client_per_round"] / base["bytes_up_per_client_per_round"]
    best_eda = min((r["bytes_up_per_client_per_round"], n) for n, r in results.items() if n.startswith("eda"))
    out = {
        "machine": f"{platform.processor() or platform.machine()}, CPU only, loopback, TLS + SuperNode auth",
        "model": {"config": "FedVLAConfig() defaults", "trunk_params": trunk, "total_params": total,
                  "trunk_fraction": trunk / total},
        "settings": vars(args),
        "results": results,
        "summary": summary,
        "targets": {
            "eda_upload_le_40pct_of_fedavg_full": (best_eda[0] / base["bytes_up_per_client_per_round"] <= 0.40
                                                   if base else None),
            "eda_upload_config_meeting_it": best_eda[1],
            "overhead_le_5s_per_round_warm": {n: r["overhead_s_warm"] <= 5.0 for n, r in results.items()},
        },
    }
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1, default=float))
    print(f"wrote {path}")
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
