"""One training loop for the FedVLA policy: fedvla-train, every federated client and the benchmarks use it.

AdamW (fused), linear warmup then cosine decay, gradient clipping, seeds, a tqdm bar, periodic
evaluation hooks. Federated variants are options of the same loop:
  - FedProx: ``reference_trunk`` (the global trunk) + ``TrainConfig.prox_mu`` add mu/2 * ||w - w_global||^2;
  - FedPart: ``trainable_groups`` freezes everything except the listed groups / trunk layers.
Expert activation counts are reset at the start, so after ``train`` returns,
``policy.expert_counts()`` describes exactly this training run (what Expert-Driven Aggregation needs).

Why it is fast (the engine):
  - the dataset is read once onto the training device (fedvla_core.device_data.DeviceDataset):
    uint8 images, one language-table row per unique instruction; a batch is an index gather;
  - the step never waits for the host: the MoE dispatch has static shapes (experts.py "dense"),
    losses are logged into a device tensor, the non-finite guard is a device flag that the fused
    AdamW reads as ``found_inf`` (a bad step is never applied), and the host looks at the flag and
    the losses every ``sync_every`` steps;
  - on CUDA: bf16 autocast, channels_last convolutions, and ``torch.compile`` of forward + loss
    (mode "reduce-overhead" = CUDA graphs; possible because every shape is static);
  - on the CPU (a robot's 2 cores): eager fp32 with the sparse MoE dispatch (FLOPs cost there, host
    syncs do not), a small thread count (``cpu_threads``), a host check of the guard every step.
"""
from __future__ import annotations

import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack, nullcontext
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm
from transformers import get_cosine_schedule_with_warmup

from .device_data import DeviceDataset, IndexStream
from .model import FedVLAPolicy
from .model.experts import DISPATCH_MODES, dispatch_mode
from .model.processors import compute_normalization  # noqa: F401  (re-exported: training.compute_normalization)
from .model.threads import cpu_threads

log = logging.getLogger(__name__)

#: compile="auto" compiles on CUDA for runs of at least this many steps (compiling takes a minute or so).
COMPILE_MIN_STEPS = 300
COMPILE_CHOICES = ("auto", "on", "off")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


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


class _TimeClock:
    """Progress of a time-based schedule: 0 at the end of the first step (after compilation), 1 at max_time_s."""

    def __init__(self, duration_s: float):
        self.duration_s, self.start = duration_s, None

    def started_if_not(self) -> None:
        if self.start is None:
            self.start = time.perf_counter()

    def fraction(self) -> float:
        return 0.0 if self.start is None else min((time.perf_counter() - self.start) / self.duration_s, 1.0)

    def done(self) -> bool:
        return self.fraction() >= 1.0

    def lr_factor(self, step: int, warmup: int) -> float:
        """Linear warm-up over `warmup` steps, then a cosine over the elapsed fraction of the time budget."""
        if step < warmup:
            return (step + 1) / (warmup + 1)
        return 0.5 * (1.0 + math.cos(math.pi * self.fraction()))


@dataclass
class TrainConfig:
    """Hyper-parameters of one call to :func:`train`."""

    epochs: int = field(default=1, metadata={"help": "Passes over the dataset (used when max_steps is 0)."})
    max_steps: int = field(default=0, metadata={"help": "Optimizer steps to run; 0 = epochs * batches per epoch."})
    batch_size: int = field(default=32, metadata={"help": "Samples per optimizer step (at most the dataset's size)."})
    lr: float = field(default=3e-4, metadata={"help": "Peak AdamW learning rate."})
    weight_decay: float = field(default=1e-4, metadata={"help": "AdamW weight decay."})
    warmup: int = field(default=20, metadata={"help": "Linear warmup steps before the cosine decay."})
    grad_clip: float = field(default=1.0, metadata={"help": "Max global gradient norm; 0 disables clipping."})
    seed: int = field(default=0, metadata={"help": "Seed of python, numpy, torch and the data order."})
    amp: bool = field(default=True, metadata={"help": "bf16 autocast when training on CUDA (ignored on CPU)."})
    eval_every: int = field(default=0, metadata={"help": "Call eval_hook every this many steps (0: only at the end)."})
    device: str = field(default="auto", metadata={"help": "Torch device; 'auto' = cuda when available, else cpu."})
    prox_mu: float = field(default=0.0, metadata={"help": "FedProx proximal weight mu (needs reference_trunk)."})
    fit_normalization: bool = field(
        default=True, metadata={"help": "Set the policy's normalization from the dataset when it has none yet."})
    progress: bool = field(default=True, metadata={"help": "Show a tqdm progress bar."})
    max_time_s: float = field(default=0.0, metadata={"help": "Stop after this many seconds of training (0 = no limit); "
                                                              "a guard for time-boxed runs, the schedule is not shortened."})
    schedule_clock: str = field(default="steps", metadata={
        "help": "What the cosine learning-rate schedule runs over: steps (max_steps) | time (max_time_s, counted "
                "from the end of the first step so compilation is excluded; max_steps then only caps the run). "
                "Time lets a time-boxed run anneal fully whatever its step rate on the machine turns out to be."})
    loss_window: int = field(default=20, metadata={"help": "Steps averaged into the reported final loss."})
    compile: str = field(default="auto", metadata={
        "help": f"torch.compile forward+loss: on | off | auto (on for CUDA runs of >= {COMPILE_MIN_STEPS} steps; "
                "off on the CPU, where compiling costs more than a robot's short rounds gain)."})
    compile_mode: str = field(default="reduce-overhead", metadata={
        "help": "torch.compile mode; 'reduce-overhead' replays the step as CUDA graphs (static shapes make that "
                "possible), 'default' fuses kernels only."})
    moe_dispatch: str = field(default="auto", metadata={
        "help": "MoE expert dispatch: auto (dense on CUDA or compiled, sparse on the CPU) | dense (every expert on "
                "every token, masked: static shapes, no host sync) | sparse (gather/scatter per expert)."})
    channels_last: bool = field(default=True, metadata={
        "help": "channels_last memory format for the vision convolutions on CUDA (ignored on CPU)."})
    cpu_bf16: bool = field(default=False, metadata={
        "help": "bf16 autocast on the CPU too (needs a CPU with bf16 instructions, e.g. AVX512_BF16 or AMX; "
                "fp32 master weights as on CUDA). Off: the CPU trains in fp32."})
    cpu_threads: int = field(default=0, metadata={
        "help": "torch intra-op threads while training on the CPU (0 = leave torch's setting); restored after."})
    sync_every: int = field(default=0, metadata={
        "help": "Steps between host reads of the losses and the non-finite flag; 0 = 1 on the CPU (free there), "
                "50 on CUDA (the GPU runs ahead meanwhile; a non-finite step is still never applied)."})

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
        need(self.eval_every >= 0, "eval_every", "must be >= 0")
        need(self.prox_mu >= 0, "prox_mu", "must be >= 0")
        need(self.loss_window >= 1, "loss_window", "must be >= 1")
        need(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda", "mps"), "device",
             "must be auto, cpu, cuda[:n] or mps")
        need(self.compile in COMPILE_CHOICES, "compile", f"must be one of {COMPILE_CHOICES}")
        need(self.compile_mode in COMPILE_MODES, "compile_mode", f"must be one of {COMPILE_MODES}")
        need(self.moe_dispatch in ("auto", "dense", "sparse"), "moe_dispatch", "must be auto, dense or sparse")
        need(self.cpu_threads >= 0, "cpu_threads", "must be >= 0")
        need(self.sync_every >= 0, "sync_every", "must be >= 0")
        need(self.schedule_clock in ("steps", "time"), "schedule_clock", "must be steps or time")
        need(self.schedule_clock == "steps" or self.max_time_s > 0, "schedule_clock",
             "time needs max_time_s > 0")

    def resolved_device(self) -> torch.device:
        if self.device == "auto":
            return torch.device("cuda" if torch.cuda.is_available() else "cpu")
        return torch.device(self.device)

    def resolved_compile(self, device: torch.device, total_steps: int) -> bool:
        if self.compile == "auto":
            return device.type == "cuda" and total_steps >= COMPILE_MIN_STEPS
        return self.compile == "on"

    def resolved_sync_every(self, device: torch.device) -> int:
        return self.sync_every or (1 if device.type == "cpu" else 50)


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


class _NonFiniteGuard:
    """Device-side memory of the first non-finite step, read by the host only every few steps.

    ``found_inf`` is the tensor the fused AdamW skips its update on (the GradScaler protocol): once a
    step's loss or gradient norm is not finite it stays 1, so neither that step nor any later one is
    applied, and :meth:`check` raises NonFiniteLossError naming the first bad step. The weights are
    those of the last good step, whenever the host looks.
    """

    def __init__(self, device: torch.device):
        self.bad = torch.zeros((), dtype=torch.bool, device=device)
        self.found_inf = torch.zeros((), dtype=torch.float32, device=device)
        self.first = torch.zeros(3, dtype=torch.float32, device=device)  # step, loss, grad norm

    def update(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        loss, grad_norm = loss.detach().float(), grad_norm.detach().float()
        now_bad = ~torch.isfinite(loss + grad_norm)  # a sum is finite only when both are
        info = torch.stack([torch.full_like(loss, step), loss, grad_norm])
        self.first = torch.where(now_bad & ~self.bad, info, self.first)
        self.bad |= now_bad
        self.found_inf.copy_(self.bad)

    def check(self) -> None:
        if bool(self.bad):
            step, loss, grad_norm = self.first.tolist()
            if not math.isfinite(loss):
                raise NonFiniteLossError(int(step), "loss", loss)
            raise NonFiniteLossError(int(step), "grad_norm", grad_norm)


def _adamw(params: list[torch.nn.Parameter], cfg: TrainConfig) -> tuple[torch.optim.Optimizer, bool]:
    """(AdamW, fused?): fused (one multi-tensor kernel, and it honours found_inf) where torch has it."""
    groups = [{"params": [p for p in params if p.ndim >= 2], "weight_decay": cfg.weight_decay},
              {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0}]
    groups = [g for g in groups if g["params"]]
    try:
        return torch.optim.AdamW(groups, lr=cfg.lr, fused=True), True
    except (RuntimeError, ValueError, TypeError) as err:  # a device without the fused kernel
        log.info("fused AdamW unavailable (%s); using the foreach implementation", err)
        return torch.optim.AdamW(groups, lr=cfg.lr), False


def _grad_norm(params: list[torch.nn.Parameter], max_norm: float) -> torch.Tensor:
    """The global gradient norm, clipping to max_norm when it is > 0 (no host sync either way)."""
    if max_norm > 0:
        return torch.nn.utils.clip_grad_norm_(params, max_norm, foreach=True)
    grads = [p.grad for p in params if p.grad is not None]
    if hasattr(torch.nn.utils, "get_total_norm"):
        return torch.nn.utils.get_total_norm(grads, foreach=True)
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))


def train(policy: FedVLAPolicy, dataset: Dataset | DeviceDataset, cfg: TrainConfig | None = None, *,
          eval_hook: Callable[[FedVLAPolicy, int], dict[str, float] | None] | None = None,
          reference_trunk: dict[str, torch.Tensor] | None = None,
          trainable_groups: Iterable[str | int] | None = None) -> dict[str, Any]:
    """Train `policy` in place on a map-style dataset of single samples (or a DeviceDataset); returns metrics.

    The dataset is read once onto the training device (DeviceDataset.from_dataset); pass a
    DeviceDataset built for that device to skip the copy. The policy is moved to the configured
    device and left there, in eval mode, with every parameter's requires_grad restored.

    eval_hook(policy, step) is called every `eval_every` steps and once at the end (the policy is in
    eval mode during the call); the dicts it returns are collected under "evals".
    Raises NonFiniteLossError when a step's loss or gradient norm is not finite (that step is not applied).
    Returns: loss (mean of the last `loss_window` steps), first_loss, action_loss, aux_loss, steps,
    num_examples, samples_seen, wall_time_s, mean_active_experts, expert_counts, lr, evals, config,
    engine (what ran: compiled, dispatch, amp, data placement, ...).
    """
    cfg = cfg or TrainConfig()
    if len(dataset) == 0:
        raise ValueError("train: the dataset is empty")
    if cfg.prox_mu > 0 and reference_trunk is None:
        raise ValueError("train: TrainConfig.prox_mu > 0 needs reference_trunk (the global trunk)")
    seed_everything(cfg.seed)
    device = cfg.resolved_device()
    cudnn_benchmark, matmul_precision = torch.backends.cudnn.benchmark, torch.get_float32_matmul_precision()
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # static shapes: let cuDNN pick its fastest convolutions once
        torch.set_float32_matmul_precision("high")  # TF32 for what runs outside bf16 autocast
    try:
        with cpu_threads(cfg.cpu_threads, device):
            return _train(policy, dataset, cfg, device, eval_hook, reference_trunk, trainable_groups)
    finally:
        torch.backends.cudnn.benchmark = cudnn_benchmark
        torch.set_float32_matmul_precision(matmul_precision)


def _train(policy, dataset, cfg: TrainConfig, device: torch.device, eval_hook, reference_trunk, trainable_groups):
    policy.to(device)
    if cfg.fit_normalization and not policy.has_normalization:
        stats = compute_normalization(dataset, policy.config.relative_action_dims)
        policy.set_normalization(stats["action_mean"], stats["action_std"], stats["proprio_mean"], stats["proprio_std"])

    t_data = time.perf_counter()
    if isinstance(dataset, DeviceDataset):
        data = dataset
        if data.device != device:
            raise ValueError(f"train: the DeviceDataset is on {data.device}, training runs on {device}")
    else:
        data = DeviceDataset.from_dataset(dataset, device, policy.language_encoder)
    data_s = time.perf_counter() - t_data
    stream = IndexStream(len(data), cfg.batch_size, cfg.seed, device)
    total_steps = cfg.max_steps or cfg.epochs * math.ceil(len(data) / cfg.batch_size)
    compiled = cfg.resolved_compile(device, total_steps)
    cudagraphs = compiled and device.type == "cuda" and cfg.compile_mode in ("reduce-overhead", "max-autotune")
    use_amp = cfg.amp and (device.type == "cuda" or (device.type == "cpu" and cfg.cpu_bf16))
    channels_last = cfg.channels_last and device.type == "cuda"
    sync_every = cfg.resolved_sync_every(device)

    trainable = _trainable_names(policy, trainable_groups)
    saved_flags = {n: p.requires_grad for n, p in policy.named_parameters()}
    for n, p in policy.named_parameters():
        p.requires_grad_(n in trainable)
    if channels_last:
        policy.use_channels_last(True)  # before the optimizer: it converts the conv weights in place
    params = [p for n, p in policy.named_parameters() if n in trainable]
    optimizer, fused = _adamw(params, cfg)
    clock = _TimeClock(cfg.max_time_s) if cfg.schedule_clock == "time" else None
    if clock is None:
        scheduler = get_cosine_schedule_with_warmup(optimizer, min(cfg.warmup, max(total_steps - 1, 0)), total_steps)
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: clock.lr_factor(s, cfg.warmup))
    guard = _NonFiniteGuard(device)
    if fused:
        optimizer.found_inf = guard.found_inf  # read by the fused kernel: a non-finite step is skipped on device
    else:
        sync_every = 1  # no device-side skip: the host must look before every step

    prox_ref = prox_params = None
    if reference_trunk is not None and cfg.prox_mu > 0:
        trunk = policy.parameter_group("trunk")
        prox_ref = {n: torch.as_tensor(t).to(device, torch.float32) for n, t in reference_trunk.items() if n in trunk}
        prox_params = {n: trunk[n] for n in prox_ref}

    def forward_loss(batch: dict[str, torch.Tensor]):
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            out = policy(batch)
        loss = out["loss"]
        if prox_ref is not None:
            prox = sum(((prox_params[n].float() - ref) ** 2).sum() for n, ref in prox_ref.items())
            loss = loss + 0.5 * cfg.prox_mu * prox
        return loss, out["action_loss"], out["aux_loss"], out["expert_stats"]

    step_fn = torch.compile(forward_loss, mode=cfg.compile_mode, dynamic=False) if compiled else forward_loss
    policy.reset_expert_stats()
    policy.train()

    evals: list[dict[str, Any]] = []

    def run_eval(step: int) -> None:
        if eval_hook is None:
            return
        guard.check()
        policy.eval()
        try:
            result = eval_hook(policy, step)
        finally:
            policy.train()
        if result:
            evals.append({"step": step, **result})

    loss_log = torch.zeros(max(total_steps, 1), 3, device=device)  # loss, action loss, aux loss per step
    step, seen = 0, 0
    start = time.perf_counter()
    bar = tqdm(total=total_steps, disable=not cfg.progress, desc="train", leave=False)
    dispatch = None if cfg.moe_dispatch == "auto" else cfg.moe_dispatch
    try:
        with dispatch_mode(dispatch):
            while step < total_steps:
                if cudagraphs:
                    torch.compiler.cudagraph_mark_step_begin()
                batch = data.gather(stream.next())
                if compiled and step == 0:
                    try:
                        out = step_fn(batch)
                    except Exception as err:  # noqa: BLE001 - a compiler failure must not lose the run
                        log.warning("torch.compile failed (%s: %s); training eagerly", type(err).__name__, err)
                        compiled = cudagraphs = False
                        step_fn = forward_loss
                        out = step_fn(batch)
                else:
                    out = step_fn(batch)
                loss, action_loss, aux_loss, stats = out
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                grad_norm = _grad_norm(params, cfg.grad_clip)
                guard.update(step + 1, loss, grad_norm)
                loss_log[step] = torch.stack([loss.detach().float(), action_loss.float(), aux_loss.float()])
                if compiled:
                    policy.record_expert_stats(stats)  # the compiled graph does not touch module state
                if (step + 1) % sync_every == 0 or step + 1 == total_steps:
                    guard.check()  # raises before a non-finite step could be applied
                    if cfg.progress:
                        bar.set_postfix(loss=f"{float(loss_log[step, 0]):.4f}")
                optimizer.step()
                scheduler.step()
                step += 1
                seen += stream.batch_size
                bar.update(1)
                if clock is not None:
                    clock.started_if_not()
                    if clock.done():
                        total_steps = step  # the time schedule has annealed to its end
                        break
                if cfg.eval_every and step % cfg.eval_every == 0 and step < total_steps:
                    run_eval(step)
                if clock is None and cfg.max_time_s and time.perf_counter() - start > cfg.max_time_s:
                    total_steps = step  # time box reached: stop here
                    break
            guard.check()
            run_eval(step)
    finally:
        bar.close()
        for n, p in policy.named_parameters():
            p.requires_grad_(saved_flags[n])
        if channels_last:
            policy.use_channels_last(False)  # checkpoints hold contiguous tensors
        policy.eval()

    history = loss_log[:step].cpu()
    window = cfg.loss_window
    return {
        "loss": float(history[-window:, 0].mean()),
        "first_loss": float(history[0, 0]),
        "action_loss": float(history[-window:, 1].mean()),
        "aux_loss": float(history[-window:, 2].mean()),
        "steps": step,
        "num_examples": len(data),
        "samples_seen": seen,
        "wall_time_s": time.perf_counter() - start,
        "mean_active_experts": policy.mean_active_experts(),
        "expert_counts": policy.expert_counts(),
        "lr": cfg.lr,
        "final_lr": optimizer.param_groups[0]["lr"],
        "evals": evals,
        "config": asdict(cfg),
        "engine": {"compiled": compiled, "cuda_graphs": cudagraphs, "amp_bf16": use_amp,
                   "channels_last": channels_last, "moe_dispatch": cfg.moe_dispatch, "fused_adamw": fused,
                   "batch_size": stream.batch_size, "sync_every": sync_every,
                   "data_device": str(data.storage_device), "data_bytes": data.nbytes(), "data_build_s": data_s,
                   "threads": torch.get_num_threads() if device.type == "cpu" else None},
    }
