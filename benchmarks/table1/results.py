"""The result JSON: each method's row from its round checkpoints and eval files, expert usage and targets."""
from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from fedvla_bringup.loopback_federation import cpu_model_name
from fedvla_bringup.provenance import git_commit

from .config import Table1Config
from .layout import eval_path, method_dir, read_json
from .methods import METHODS, clients_of, model_config, run_config
from .paper import PAPER, PAPER_SOURCE, TARGETS
from .recording import record_command


def local_epochs(local_steps: int, batch_size: int, client_samples: float) -> float:
    """Passes over a client's training samples in one round: local_steps x batch_size / samples."""
    if client_samples <= 0:
        raise ValueError(f"local_epochs: client_samples must be > 0, got {client_samples}")
    return local_steps * batch_size / client_samples


def device_name(device: str) -> str:
    if device.startswith("cuda"):
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    return cpu_model_name()


def _round_metrics(cfg: Table1Config, method: str) -> list[dict]:
    ckpt = method_dir(cfg, method) / "checkpoints"
    out = []
    for r in range(1, cfg.rounds + 1):
        info = read_json(ckpt / f"round_{r:04d}.json")
        if info is not None:
            out.append({"round": r, **info.get("metrics", {})})
    return out


def method_result(cfg: Table1Config, method: str) -> dict:
    """One method's row of the result JSON (from the round checkpoints' metrics and the eval files)."""
    spec = METHODS[method]
    clients = clients_of(cfg, method)
    metrics = _round_metrics(cfg, method)
    final = read_json(eval_path(cfg, method, cfg.rounds))
    from fedvla_sim.policy_eval import success_by_task

    per_task = {}
    episodes = {}
    if final:
        by_task = success_by_task(final["episodes"])
        per_task = {t: by_task[t] for t in cfg.tasks if t in by_task}
        episodes = {t: sum(1 for e in final["episodes"] if e["task"] == t) for t in per_task}
    curve = []
    for r in cfg.eval_rounds():
        data = read_json(eval_path(cfg, method, r))
        if data:
            curve.append({"round": r, "mean_success": float(np.mean(list(success_by_task(data["episodes"]).values()))),
                          "episodes_per_task": cfg.episodes_for_round(r)})
    n_clients = len(clients)
    upload = [m["bytes-up"] / max(1, int(m.get("num-clients", n_clients))) for m in metrics if "bytes-up" in m]
    samples = [m["num-examples"] / max(1, int(m.get("num-clients", n_clients))) for m in metrics if m.get("num-examples")]
    steps = run_config(cfg, method, Path("."))["local-steps"]
    epochs_round = local_epochs(steps, cfg.batch_size, float(np.mean(samples))) if samples else None
    active = [m["mean-active-experts"] for m in metrics if "mean-active-experts" in m]
    state = read_json(method_dir(cfg, method) / "train_state.json", {"sessions": []})
    return {
        "label": spec.label, "strategy": spec.strategy, "scope": spec.scope, "model_overrides": spec.model,
        "fedpart_layers": cfg.fedpart_layers if spec.fedpart else 0, "clients": [c["id"] for c in clients],
        "per_task_success": per_task, "eval_episodes_per_task": episodes,
        "mean_success": float(np.mean(list(per_task.values()))) if per_task else None,
        "rounds": len(metrics), "local_steps_per_round": steps, "batch_size": cfg.batch_size,
        "client_samples": float(np.mean(samples)) if samples else None,
        "local_epochs_per_round": epochs_round,
        "local_epochs_total": epochs_round * len(metrics) if epochs_round is not None else None,
        "upload_bytes_per_round_per_client": float(np.mean(upload)) if upload else None,
        "upload_bytes_per_round_per_client_by_round": upload,
        "activated_experts_per_token": float(active[-1]) if active else None,
        "activated_experts_per_token_by_round": active,
        "train_loss_by_round": [m.get("train-loss") for m in metrics],
        "train_wall_s": float(sum(s.get("wall_s", 0.0) for s in state["sessions"])),
        "round_wall_s_total": float(sum(m.get("round-wall-s", 0.0) for m in metrics)),
        "eval_wall_s": float(final["wall_s"]) if final else None,
        "train_sessions": len(state["sessions"]),
        "success_by_round": curve,
    }


def expert_usage(cfg: Table1Config, method: str = "fedvla") -> dict:
    """Per task: per trunk layer, the fraction of tokens each expert took during the final round's evaluation."""
    data = read_json(eval_path(cfg, method, cfg.rounds))
    if not data:
        return {}
    usage = {}
    for task in cfg.tasks:
        rows = [e for e in data["episodes"] if e["task"] == task]
        if not rows:
            continue
        counts = np.sum([np.asarray(e["expert_counts"], float) for e in rows], axis=0)
        tokens = np.sum([np.asarray(e["expert_tokens"], float) for e in rows], axis=0)
        usage[task] = (counts / np.maximum(tokens, 1)[:, None]).tolist()
    return usage


def targets(result: dict) -> dict:
    m = result["methods"]
    get = lambda name: (m.get(name) or {}).get("mean_success")  # noqa: E731
    fedvla, central, fedavg = get("fedvla"), get("centralized"), get("fedavg")
    experts = (m.get("fedvla") or {}).get("activated_experts_per_token")
    return {
        "fedvla_mean_at_least_80pct": None if fedvla is None else fedvla >= TARGETS["fedvla_mean_min"],
        "fedvla_at_least_0.97x_centralized": None if None in (fedvla, central) else
        fedvla >= TARGETS["fedvla_vs_centralized_min"] * central,
        "fedvla_5_points_above_fedavg": None if None in (fedvla, fedavg) else
        fedvla - fedavg >= TARGETS["fedvla_minus_fedavg_min"],
        "dgmoe_at_most_1.5_experts_per_token": None if experts is None else experts <= TARGETS["active_experts_max"],
    }


def build_result(cfg: Table1Config) -> dict:
    from fedvla_core.model import FedVLAConfig, FedVLAPolicy

    records = {t: read_json(cfg.work / "demos" / t / "record.json", {}) for t in cfg.tasks}
    policy = FedVLAPolicy(FedVLAConfig(**model_config(cfg, "fedvla")))
    trunk = sum(v.numel() for v in policy.export_trunk().values())
    total = sum(p.numel() for p in policy.parameters())
    result = {
        "benchmark": "Meta-World Table 1 (FedVLA, ICCV 2025) through the deployment ServerApp/ClientApp",
        "device": device_name(cfg.device), "training_device": cfg.device, "eval_device": cfg.eval_device,
        "eval_device_name": device_name(cfg.eval_device), "cpu": cpu_model_name(),
        "git_commit": git_commit(), "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "config": asdict(cfg), "model": {"config": model_config(cfg, "fedvla"), "trunk_params": trunk,
                                          "total_params": total},
        "data": {"record_commands": {t: r.get("command", record_command(cfg, t)) for t, r in records.items()},
                 "train_seeds": {t: r.get("seeds", []) for t, r in records.items()},
                 "expert_success_rate": {t: r.get("expert_success_rate") for t, r in records.items()},
                 "eval_seeds": [cfg.eval_seed_start, cfg.eval_seed_start + cfg.eval_episodes - 1],
                 "eval_round_seeds": [cfg.eval_seed_start, cfg.eval_seed_start + cfg.eval_round_episodes - 1]},
        "paper": {"source": PAPER_SOURCE, **{k: v for k, v in PAPER.items()}},
        "methods": {m: method_result(cfg, m) for m in cfg.methods},
        "expert_usage": expert_usage(cfg) if "fedvla" in cfg.methods else {},
        "expert_usage_note": "fraction of trunk tokens routed to each expert, per layer, during the final "
                             "round's evaluation rollouts of each FedVLA client on its own task",
    }
    result["targets"] = targets(result)
    return result
