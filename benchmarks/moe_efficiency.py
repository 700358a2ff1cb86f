"""MoE efficiency of the FedVLA trunk: dgmoe vs adamoe vs top-2 vs dense at equal total parameters.

For each FFN kind, one run records: parameters, mean activated experts per token, trunk FFN FLOPs
per token, and the trunk's forward+backward and inference latency (median over timed iterations),
with the device name. Rows are merged into benchmarks/results/moe_efficiency.json (a rerun on the
same device / kind / batch size replaces its rows), and the dgmoe/top-2 ratios are recomputed.

Routing only means something after training, so by default every kind is first trained for
--train-steps on the same data: the project's episodes with --episodes (needs the episode reader's
dependencies: mcap, rosbags), otherwise a built-in synthetic reaching task (coloured blocks, the
instruction names the target, actions move towards it). The trunk is then timed on the token
sequences the trained stem produces for held-out batches.

Plain torch + transformers: runs on a CUDA box without ROS.
    python benchmarks/moe_efficiency.py --device cpu
    python benchmarks/moe_efficiency.py --device cuda --batch-sizes 64 512
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src" / "fedvla_policy"))  # runnable from a bare checkout (GPU box)

from fedvla_policy.model import FedVLAConfig, FedVLAPolicy  # noqa: E402
from fedvla_policy.training import TrainConfig, collate_samples, train  # noqa: E402

KINDS = ("dgmoe", "adamoe", "topk", "dense")
RESULTS = REPO / "benchmarks" / "results" / "moe_efficiency.json"
COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220)}


class ReachingTask(Dataset):
    """Synthetic stand-in for episodes: three coloured blocks; act = chunk of steps towards the named one."""

    def __init__(self, n: int, cfg: FedVLAConfig, seed: int = 0):
        rng = np.random.default_rng(seed)
        s, cams = cfg.image_size, cfg.n_cameras
        self.images = np.full((n, cams, 3, s, s), 90, dtype=np.uint8)
        self.instructions, self.proprio, self.actions = [], [], []
        block = max(4, s // 10)
        for i in range(n):
            positions = {c: rng.uniform(0.1, 0.9, size=2) for c in COLORS}
            for c, rgb in COLORS.items():
                for cam in range(cams):
                    shift = 0.0 if cam == 0 else 0.05 * cam  # a second view, slightly shifted
                    y, x = (np.clip(positions[c] + shift, 0, 0.95) * (s - block)).astype(int)
                    self.images[i, cam, :, y:y + block, x:x + block] = np.array(rgb, np.uint8)[:, None, None]
            target = list(COLORS)[rng.integers(len(COLORS))]
            hand = rng.uniform(0.0, 1.0, size=cfg.proprio_dim).astype(np.float32)
            goal = np.zeros(cfg.action_dim, np.float32)
            goal[:2] = positions[target]
            steps = np.linspace(0.2, 1.0, cfg.chunk_size, dtype=np.float32)[:, None]
            start = np.resize(hand, cfg.action_dim)
            self.actions.append(start + steps * (goal - start))
            self.proprio.append(hand)
            self.instructions.append(f"move the gripper to the {target} block")

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"images": torch.from_numpy(self.images[i]), "instruction": self.instructions[i],
                "proprio": torch.from_numpy(self.proprio[i]), "actions": torch.from_numpy(self.actions[i]),
                "action_is_pad": torch.zeros(self.actions[i].shape[0], dtype=torch.bool)}


def config_for(kind: str, args, base: dict) -> FedVLAConfig:
    """Equal total trunk parameters: dense = K * h; AdaMoE's K routed + 1 shared expert get K*h/(K+1) each."""
    k, h = args.n_experts, args.expert_hidden
    kw = dict(base, ffn_kind=kind, d_model=args.d_model, n_layers=args.n_layers, n_heads=args.n_heads,
              n_experts=k, expert_hidden=h, top_k=2, use_iosp=not args.no_iosp)
    if kind == "adamoe":
        kw["expert_hidden"] = kw["shared_expert_hidden"] = round(k * h / (k + 1))
    if kind == "dense":
        kw["dense_hidden"] = k * h
    return FedVLAConfig(**kw)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, iters: int, warmup: int) -> dict:
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
    return {"p50_ms": statistics.median(times), "p90_ms": float(np.percentile(times, 90)), "iters": iters}


def measure_kind(kind: str, args, device: torch.device, base: dict, train_data: Dataset, eval_data: Dataset) -> list[dict]:
    torch.manual_seed(args.seed)
    cfg = config_for(kind, args, base)
    policy = FedVLAPolicy(cfg)
    train_metrics = None
    if args.train_steps > 0:
        train_metrics = train(policy, train_data, TrainConfig(
            max_steps=args.train_steps, batch_size=args.train_batch_size, lr=args.lr, warmup=min(50, args.train_steps // 10),
            device=str(device), seed=args.seed, progress=False, amp=args.dtype == "bf16"))
    policy.to(device).eval()
    amp = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if (device.type == "cuda" and args.dtype == "bf16") \
        else (lambda: torch.autocast("cpu", enabled=False))

    rows = []
    for bs in args.batch_sizes:
        idx = [i % len(eval_data) for i in range(bs)]
        batch = collate_samples([eval_data[i] for i in idx])
        with torch.no_grad(), amp():
            seq, _ = policy.encode(batch)
        seq = seq.detach()

        # Mean activated experts on held-out data (the whole eval set, in batches of bs).
        policy.reset_expert_stats()
        with torch.no_grad(), amp():
            for start in range(0, len(eval_data), bs):
                sub = collate_samples([eval_data[i] for i in range(start, min(start + bs, len(eval_data)))])
                policy.trunk(policy.encode(sub)[0])
        active = policy.mean_active_experts()
        per_layer = [f.mean_active_experts() for f in policy.trunk_ffns()]
        iosp_active = policy.iosp_mean_active_experts()
        flops = policy.trunk_ffn_flops_per_token()

        def infer():
            with torch.no_grad(), amp():
                policy.trunk(seq)

        def fwd_bwd():
            x = seq.clone().requires_grad_(True)
            with amp():
                out, aux = policy.trunk(x)
                loss = out.float().pow(2).mean() + aux
            loss.backward()
            policy.zero_grad(set_to_none=True)

        policy.eval()
        inference = timed(infer, device, args.iters, args.warmup)
        policy.train()
        training = timed(fwd_bwd, device, args.iters, args.warmup)
        policy.eval()

        trunk_params = sum(p.numel() for p in policy.parameter_group("trunk").values())
        ffn_params = sum(p.numel() for n, p in policy.parameter_group("trunk").items() if ".ffn." in n)
        rows.append({
            "device": device.type,
            "device_name": device_name(device),
            "threads": torch.get_num_threads() if device.type == "cpu" else None,
            "dtype": args.dtype,
            "kind": kind,
            "top_k": cfg.top_k if kind in ("topk", "adamoe") else None,
            "batch_size": bs,
            "tokens_per_sample": seq.shape[1],
            "d_model": cfg.d_model, "n_layers": cfg.n_layers, "n_experts": cfg.n_experts,
            "expert_hidden": cfg.expert_hidden, "dense_hidden": cfg.resolved_dense_hidden if kind == "dense" else None,
            "use_iosp": cfg.use_iosp,
            "params_total": sum(p.numel() for p in policy.parameters()),
            "params_trunk": trunk_params,
            "params_trunk_ffn": ffn_params,
            "mean_active_experts": active,
            "mean_active_experts_per_layer": per_layer,
            "iosp_mean_active_experts": iosp_active,
            "ffn_flops_per_token": flops,
            "trunk_inference_ms": inference["p50_ms"],
            "trunk_inference_p90_ms": inference["p90_ms"],
            "trunk_fwd_bwd_ms": training["p50_ms"],
            "trunk_fwd_bwd_p90_ms": training["p90_ms"],
            "timed_iters": args.iters,
            "train_steps": args.train_steps,
            "train_data": args.data_label,
            "train_final_loss": None if train_metrics is None else train_metrics["action_loss"],
            "train_first_loss": None if train_metrics is None else train_metrics["first_loss"],
            "torch": torch.__version__,
            "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        })
        print(f"{kind:7s} bs={bs:4d} active={active:.3f} flops/tok={flops / 1e6:.2f}M "
              f"infer={inference['p50_ms']:.2f}ms fwd+bwd={training['p50_ms']:.2f}ms", flush=True)
    return rows


def measure_act(args, device: torch.device, base: dict) -> dict:
    """act() latency of the default-size policy (dgmoe, IOSP on), everything included, instruction cached."""
    torch.manual_seed(0)
    policy = FedVLAPolicy(FedVLAConfig(**base)).to(device)
    rng = np.random.default_rng(0)
    obs = {"images": {c: rng.integers(0, 256, (policy.config.image_size,) * 2 + (3,), dtype=np.uint8)
                      for c in policy.config.camera_names},
           "instruction": "put the red block in the bowl", "proprio": rng.normal(size=policy.config.proprio_dim)}
    res = timed(lambda: policy.act(obs), device, max(args.iters, 30), 3)
    return {"device": device.type, "device_name": device_name(device), "config": "default (dgmoe, IOSP on)",
            "act_p50_ms": res["p50_ms"], "act_p90_ms": res["p90_ms"], "calls": res["iters"],
            "torch": torch.__version__, "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def ratios(rows: list[dict]) -> list[dict]:
    out = []
    keys = {(r["device"], r["device_name"], r["batch_size"]) for r in rows}
    for key in sorted(keys, key=str):
        by_kind = {r["kind"]: r for r in rows if (r["device"], r["device_name"], r["batch_size"]) == key}
        if "dgmoe" in by_kind and "topk" in by_kind:
            d, t = by_kind["dgmoe"], by_kind["topk"]
            out.append({"device": key[0], "device_name": key[1], "batch_size": key[2],
                        "dgmoe_mean_active_experts": d["mean_active_experts"],
                        "dgmoe_over_top2_inference": d["trunk_inference_ms"] / t["trunk_inference_ms"],
                        "dgmoe_over_top2_fwd_bwd": d["trunk_fwd_bwd_ms"] / t["trunk_fwd_bwd_ms"],
                        "dgmoe_over_top2_ffn_flops": d["ffn_flops_per_token"] / t["ffn_flops_per_token"],
                        "targets": {"active_experts_max": 1.5, "h100_latency_ratio_max": 0.75}})
    return out


def merge(path: Path, new_rows: list[dict], act: dict | None) -> dict:
    data = json.loads(path.read_text()) if path.exists() else {}
    same = lambda r, n: all(r.get(k) == n.get(k) for k in ("device", "device_name", "kind", "batch_size", "dtype"))
    rows = [r for r in data.get("rows", []) if not any(same(r, n) for n in new_rows)] + new_rows
    acts = data.get("act_latency", [])
    if act is not None:
        acts = [a for a in acts if (a["device"], a["device_name"]) != (act["device"], act["device_name"])] + [act]
    return {"description": "FedVLA trunk MoE efficiency at equal total parameters; written by benchmarks/moe_efficiency.py",
            "rows": rows, "ratios": ratios(rows), "act_latency": acts}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="Where to measure (default: cpu).")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, help="FFN kinds to compare.")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=None,
                   help="Batch sizes to time (default: 8 on cpu; 64, 512 and 2048 on cuda).")
    p.add_argument("--d-model", type=int, default=None, help="Width (default: 192 cpu, 512 cuda).")
    p.add_argument("--n-layers", type=int, default=None, help="Trunk blocks (default: 4 cpu, 6 cuda).")
    p.add_argument("--n-heads", type=int, default=None, help="Attention heads (default: 4 cpu, 8 cuda).")
    p.add_argument("--n-experts", type=int, default=4, help="Routed experts per layer (default: 4).")
    p.add_argument("--expert-hidden", type=int, default=None, help="Hidden width of one expert (default: 2*d_model).")
    p.add_argument("--no-iosp", action="store_true", help="Feed all image tokens instead of the IOSP groups.")
    p.add_argument("--train-steps", type=int, default=None, help="Training steps before measuring (default: 150 cpu, 800 cuda).")
    p.add_argument("--train-batch-size", type=int, default=None, help="Training batch size (default: 16 cpu, 64 cuda).")
    p.add_argument("--lr", type=float, default=1e-3, help="Training learning rate (default: 1e-3).")
    p.add_argument("--episodes", nargs="+", default=None, help="Train/measure on these episode folders (else synthetic).")
    p.add_argument("--samples", type=int, default=256, help="Synthetic samples for training (default: 256).")
    p.add_argument("--iters", type=int, default=None, help="Timed iterations (default: 20 cpu, 100 cuda).")
    p.add_argument("--warmup", type=int, default=5, help="Untimed warm-up iterations (default: 5).")
    p.add_argument("--threads", type=int, default=1, help="CPU intra-op threads (default: 1; stable on a shared box).")
    p.add_argument("--dtype", default=None, choices=["fp32", "bf16"], help="Autocast dtype (default: fp32 cpu, bf16 cuda).")
    p.add_argument("--seed", type=int, default=0, help="Seed of the models and the data.")
    p.add_argument("--output", default=str(RESULTS), help="JSON file to merge the rows into.")
    args = p.parse_args(argv)

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        p.error("--device cuda: no CUDA device")
    device = torch.device(args.device)
    if not cuda:
        torch.set_num_threads(args.threads)
    else:
        torch.backends.cuda.matmul.allow_tf32 = True
    args.batch_sizes = args.batch_sizes or ([64, 512, 2048] if cuda else [8])
    args.d_model = args.d_model or (512 if cuda else 192)
    args.n_layers = args.n_layers or (6 if cuda else 4)
    args.n_heads = args.n_heads or (8 if cuda else 4)
    args.expert_hidden = args.expert_hidden or 2 * args.d_model
    args.train_steps = (800 if cuda else 150) if args.train_steps is None else args.train_steps
    args.train_batch_size = args.train_batch_size or (64 if cuda else 16)
    args.iters = args.iters or (100 if cuda else 20)
    args.dtype = args.dtype or ("bf16" if cuda else "fp32")

    base = {}
    if args.episodes:
        sys.path.insert(0, str(REPO / "src" / "fedvla_fed_client"))
        from fedvla_fed_client.episodes import EpisodeDataset

        data = EpisodeDataset(args.episodes, chunk_size=10, image_size=128)
        base = dict(camera_names=data.camera_names, proprio_dim=data.proprio_dim, action_dim=data.action_dim)
        n_eval = max(1, len(data) // 10)
        split = torch.randperm(len(data), generator=torch.Generator().manual_seed(args.seed)).tolist()
        train_data = torch.utils.data.Subset(data, split[n_eval:])
        eval_data = torch.utils.data.Subset(data, split[:n_eval])
        args.data_label = f"episodes ({data.num_episodes} episodes, {len(data)} samples)"
    else:
        probe = FedVLAConfig()
        train_data = ReachingTask(args.samples, probe, seed=args.seed)
        eval_data = ReachingTask(max(args.batch_sizes[0], 64), probe, seed=args.seed + 1)
        args.data_label = f"synthetic reaching task ({args.samples} samples)"

    rows = []
    for kind in args.kinds:
        rows += measure_kind(kind, args, device, base, train_data, eval_data)
    act = measure_act(args, device, base)
    print(f"act() p50 {act['act_p50_ms']:.1f} ms on {act['device_name']}")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = merge(out, rows, act)
    out.write_text(json.dumps(result, indent=2))
    for r in result["ratios"]:
        if r["device"] == args.device:
            print(f"{r['device_name']} bs={r['batch_size']}: dgmoe {r['dgmoe_mean_active_experts']:.2f} experts/token, "
                  f"latency vs top-2: inference {r['dgmoe_over_top2_inference']:.2f}x, "
                  f"fwd+bwd {r['dgmoe_over_top2_fwd_bwd']:.2f}x, FLOPs {r['dgmoe_over_top2_ffn_flops']:.2f}x")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
