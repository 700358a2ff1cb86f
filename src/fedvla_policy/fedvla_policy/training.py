"""One training loop for the FedVLA policy: centralized training and every federated client use it.

AdamW, linear warmup then cosine decay, gradient clipping, bf16 autocast on CUDA, seeds, a tqdm bar,
periodic evaluation hooks. Federated variants are options of the same loop:
  - FedProx: ``reference_trunk`` (the global trunk) + ``TrainConfig.prox_mu`` add mu/2 * ||w - w_global||^2;
  - FedPart: ``trainable_groups`` freezes everything except the listed groups / trunk layers.
Expert activation counts are reset at the start, so after ``train`` returns,
``policy.expert_counts()`` describes exactly this training run (what Expert-Driven Aggregation needs).
"""
from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from .model import FedVLAPolicy


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm of a training step is NaN or infinite.

    Raised before the optimizer applies that step, so the policy keeps the weights of the last good
    step (a caller such as a federated round can drop the round and keep its model). ``step`` is the
    1-based optimizer step that failed, ``what`` names the quantity ("loss" or "grad_norm") and
    ``value`` is the offending number.
    """

    def __init__(self, step: int, what: str, value: float):
        super().__init__(f"training step {step}: {what} is not finite ({value}); the step was not applied")
        self.step, self.what, self.value = step, what, value


@dataclass
class TrainConfig:
    """Hyper-parameters of one call to :func:`train`."""

    epochs: int = field(default=1, metadata={"help": "Passes over the dataset (used when max_steps is 0)."})
    max_steps: int = field(default=0, metadata={"help": "Optimizer steps to run; 0 = epochs * batches per epoch."})
    batch_size: int = field(default=32, metadata={"help": "Samples per optimizer step."})
    lr: float = field(default=3e-4, metadata={"help": "Peak AdamW learning rate."})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay."})
    warmup: int = field(default=20, metadata={"help": "Linear warmup steps before the cosine decay."})
    grad_clip: float = field(default=1.0, metadata={"help": "Max global gradient norm; 0 disables clipping."})
    seed: int = field(default=0, metadata={"help": "Seed of python, numpy, torch and the data order."})
    amp: bool = field(default=True, metadata={"help": "bf16 autocast when training on CUDA (ignored on CPU)."})
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})
    eval_every: int = field(default=0, metadata={"help": "Call eval_hook every this many steps (0: only at the end)."})
    device: str = field(default="auto", metadata={"help": "Torch device; 'auto' = cuda when available, else cpu."})
    prox_mu: float = field(default=0.0, metadata={"help": "FedProx proximal weight mu (needs reference_trunk)."})
    fit_normalization: bool = field(
        default=True, metadata={"help": "Set the policy's normalization from the dataset when it has none yet."})
    progress: bool = field(default=True, metadata={"help": "Show a tqdm progress bar."})
    max_time_s: float = field(default=0.0, metadata={"help": "Stop after this many seconds of training (0 = no limit); "
                                                              "a guard for time-boxed runs, the schedule is not shortened."})
    loss_window: int = field(default=20, metadata={"help": "Steps averaged into the reported final loss."})

    def __post_init__(self):
        def need(cond: bool, name: str, why: str) -> None:
            if not cond:
                raise ValueError(f"TrainConfig.{name}: {why} (got {getattr(self, name)!r})")

        need(self.epochs >= 1, "epochs", "must be >= 1")
        need(self.max_steps >= 0, "max_steps", "must be >= 0")
        need(self.batch_size >= 1, "batch_size", "must be >= 1")
        need(self.lr > 0, "lr", "must be positive")
        need(self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(self.warmup >= 0, "warmup", "must be >= 0")
        need(self.grad_clip >= 0, "grad_clip", "must be >= 0")
        need(self.num_workers >= 0, "num_workers", "must be >= 0")
        need(self.eval_every >= 0, "eval_every", "must be >= 0")
        need(self.prox_mu >= 0, "prox_mu", "must be >= 0")
        need(self.loss_window >= 1, "loss_window", "must be >= 1")
        need(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"), "device",
             "must be auto, cpu, cuda[:n] or mps")

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)


def collate_samples(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Samples (no batch dim, instruction a str) -> a batch: tensors/arrays stacked, everything else listed."""
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [s[key] for s in samples]
        first = values[0]
        if isinstance(first, torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(first, np.ndarray):
            batch[key] = torch.from_numpy(np.stack(values))
        elif isinstance(first, (bool, int, float, np.number)) and key != "instruction":
            batch[key] = torch.as_tensor(values)
        else:
            batch[key] = list(values)
    return batch


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def compute_normalization(dataset: Dataset, relative_action_dims: int = 0) -> dict[str, torch.Tensor]:
    """Mean/std of the model's action targets (non-padded steps) and of proprioception.

    With ``relative_action_dims`` N > 0 the first N action dims are taken relative to the chunk's
    starting proprio (what the policy learns, see FedVLAConfig.relative_action_dims).
    Uses ``dataset.stats()`` when the dataset offers it (the episode dataset does, without decoding
    images); otherwise iterates the samples once.
    """
    stats = getattr(dataset, "stats", None)
    if callable(stats):
        return {k: torch.as_tensor(v, dtype=torch.float32)
                for k, v in stats(relative_action_dims=relative_action_dims).items()}
    actions, proprio = [], []
    for i in range(len(dataset)):
        sample = dataset[i]
        act = torch.as_tensor(sample["actions"], dtype=torch.float32)
        if relative_action_dims:
            base = torch.as_tensor(sample["proprio"], dtype=torch.float32).reshape(-1)[:relative_action_dims]
            act = torch.cat([act[..., :relative_action_dims] - base, act[..., relative_action_dims:]], dim=-1)
        if "action_is_pad" in sample:
            act = act[~torch.as_tensor(sample["action_is_pad"]).bool()]
        actions.append(act.reshape(-1, act.shape[-1]))
        proprio.append(torch.as_tensor(sample["proprio"], dtype=torch.float32).reshape(1, -1))
    a, p = torch.cat(actions), torch.cat(proprio)
    return {"action_mean": a.mean(0), "action_std": a.std(0, unbiased=False),
            "proprio_mean": p.mean(0), "proprio_std": p.std(0, unbiased=False)}


def _trainable_names(policy: FedVLAPolicy, groups: Iterable[str | int] | None) -> set[str]:
    """Names of the parameters to train: "stem", "head", "trunk" (all layers) or trunk layer indices."""
    names = {n for n, p in policy.named_parameters()}
    if groups is None:
        return names
    layout = policy.trunk_layout()
    chosen: set[str] = set()
    for g in groups:
        if isinstance(g, str) and not g.isdigit():
            chosen |= set(policy.parameter_group(g))  # raises on an unknown group name
            continue
        layer = int(g)
        if not 0 <= layer < policy.config.n_layers:
            raise ValueError(f"trainable_groups: trunk layer {layer} not in [0, {policy.config.n_layers})")
        chosen |= {n for n, (lay, _) in layout.items() if lay == layer}
    return chosen


def _move(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def train(policy: FedVLAPolicy, dataset: Dataset, cfg: TrainConfig | None = None, *,
          eval_hook: Callable[[FedVLAPolicy, int], dict[str, float] | None] | None = None,
          reference_trunk: dict[str, torch.Tensor] | None = None,
          trainable_groups: Iterable[str | int] | None = None) -> dict[str, Any]:
    """Train `policy` in place on a map-style dataset of single samples; returns metrics.

    The policy is moved to the configured device and left there, in eval mode, with every
    parameter's requires_grad restored.

    eval_hook(policy, step) is called every `eval_every` steps and once at the end (the policy is in
    eval mode during the call); the dicts it returns are collected under "evals".
    Returns: loss (mean of the last `loss_window` steps), first_loss, action_loss, aux_loss, steps,
    num_examples, samples_seen, wall_time_s, mean_active_experts, expert_counts, lr, evals.
    """
    cfg = cfg or TrainConfig()
    if len(dataset) == 0:
        raise ValueError("train: the dataset is empty")
    if cfg.prox_mu > 0 and reference_trunk is None:
        raise ValueError("train: TrainConfig.prox_mu > 0 needs reference_trunk (the global trunk)")
    seed_everything(cfg.seed)
    device = cfg.resolved_device()
    policy.to(device)

    if cfg.fit_normalization and not policy.has_normalization:
        stats = compute_normalization(dataset, policy.config.relative_action_dims)
        policy.set_normalization(stats["action_mean"], stats["action_std"], stats["proprio_mean"], stats["proprio_std"])

    trainable = _trainable_names(policy, trainable_groups)
    saved_flags = {n: p.requires_grad for n, p in policy.named_parameters()}
    for n, p in policy.named_parameters():
        p.requires_grad_(n in trainable)
    params = [p for n, p in policy.named_parameters() if n in trainable]
    decay = [p for p in params if p.ndim >= 2]
    no_decay = [p for p in params if p.ndim < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr,
                                  fused=device.type == "cuda")

    loader = DataLoader(dataset, batch_size=cfg.batch_size, shuffle=True, num_workers=cfg.num_workers,
                        collate_fn=collate_samples, drop_last=False, pin_memory=device.type == "cuda",
                        generator=torch.Generator().manual_seed(cfg.seed), persistent_workers=cfg.num_workers > 0)
    total_steps = cfg.max_steps or cfg.epochs * math.ceil(len(dataset) / cfg.batch_size)
    scheduler = get_cosine_schedule_with_warmup(optimizer, min(cfg.warmup, max(total_steps - 1, 0)), total_steps)

    prox_ref = None
    if reference_trunk is not None and cfg.prox_mu > 0:
        trunk = policy.parameter_group("trunk")
        prox_ref = {n: torch.as_tensor(t).to(device, torch.float32) for n, t in reference_trunk.items() if n in trunk}
        prox_params = {n: trunk[n] for n in prox_ref}

    use_amp = cfg.amp and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if use_amp else nullcontext
    policy.reset_expert_stats()
    policy.train()

    def run_eval(step: int) -> None:
        if eval_hook is None:
            return
        policy.eval()
        try:
            result = eval_hook(policy, step)
        finally:
            policy.train()
        if result:
            evals.append({"step": step, **result})

    losses: list[float] = []
    action_losses: list[float] = []
    aux_losses: list[float] = []
    evals: list[dict[str, Any]] = []
    step, seen = 0, 0
    start = time.perf_counter()
    bar = tqdm(total=total_steps, disable=not cfg.progress, desc="train", leave=False)
    try:
        while step < total_steps:
            for batch in loader:
                batch = _move(batch, device)
                with autocast():
                    out = policy(batch)
                loss = out["loss"]
                if prox_ref is not None:
                    prox = sum(((prox_params[n].float() - ref) ** 2).sum() for n, ref in prox_ref.items())
                    loss = loss + 0.5 * cfg.prox_mu * prox
                loss_value = float(loss.detach())
                if not math.isfinite(loss_value):
                    raise NonFiniteLossError(step + 1, "loss", loss_value)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                # max_norm=inf measures without clipping, so a non-finite gradient is caught either way.
                grad_norm = float(torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip or math.inf))
                if not math.isfinite(grad_norm):
                    optimizer.zero_grad(set_to_none=True)
                    raise NonFiniteLossError(step + 1, "grad_norm", grad_norm)
                optimizer.step()
                scheduler.step()
                step += 1
                seen += len(batch["instruction"])
                losses.append(loss_value)
                action_losses.append(float(out["action_loss"]))
                aux_losses.append(float(out["aux_loss"]))
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}")
                if cfg.eval_every and step % cfg.eval_every == 0 and step < total_steps:
                    run_eval(step)
                if step >= total_steps:
                    break
                if cfg.max_time_s and time.perf_counter() - start > cfg.max_time_s:
                    total_steps = step  # time box reached: stop here
                    break
        run_eval(step)
    finally:
        bar.close()
        for n, p in policy.named_parameters():
            p.requires_grad_(saved_flags[n])
        policy.eval()

    window = cfg.loss_window
    return {
        "loss": float(np.mean(losses[-window:])),
        "first_loss": losses[0],
        "action_loss": float(np.mean(action_losses[-window:])),
        "aux_loss": float(np.mean(aux_losses[-window:])),
        "steps": step,
        "num_examples": len(dataset),
        "samples_seen": seen,
        "wall_time_s": time.perf_counter() - start,
        "mean_active_experts": policy.mean_active_experts(),
        "expert_counts": policy.expert_counts(),
        "lr": cfg.lr,
        "evals": evals,
        "config": asdict(cfg),
    }
