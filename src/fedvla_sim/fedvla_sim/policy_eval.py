"""Closed-loop evaluation of policies in simulation: success rate per task on held-out seeds.

Used for the shipped checkpoint's eval, for benchmarks and by `fedvla-sim eval`. The policy is
any callable observation -> action chunk (H, A); `FedVLAPolicy.act` is one. Each rollout executes
the first `execute_steps` actions of a chunk, then asks again (receding horizon, like the policy
server at its control rate). Success comes from the environment (Panda task check or Meta-World's
info["success"]).

Two entry points share one worker pool design:
* :func:`evaluate` - one checkpoint on every (task, seed) of an :class:`EvalConfig`;
* :func:`evaluate_jobs` - a list of :class:`EvalJob` (policy source, task, seed), e.g. every
  method x client x round of a benchmark, in ONE pool, so all CPU cores stay busy. Each worker
  keeps the policies it loaded (a small LRU cache) and one env per task, and jobs are grouped by
  policy so a worker rarely loads a policy twice.

A :class:`PolicySource` can overlay global arrays (a federated server checkpoint, safetensors) on
a local policy folder: the robot's stem/head/normalization with the server's round-r trunk (or
whole model) is exactly what a robot runs after it loads round r's global model.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np


@dataclass
class EvalConfig:
    checkpoint: str = field(default="", metadata={"help": "save_pretrained folder of the policy."})
    suite: str = field(default="panda", metadata={"help": "panda or metaworld."})
    tasks: tuple[str, ...] = field(default=(), metadata={"help": "Tasks to evaluate (empty = every task of the suite)."})
    seed_start: int = field(default=0, metadata={"help": "First evaluation seed (keep them apart from the training seeds)."})
    seeds: int = field(default=10, metadata={"help": "Evaluation episodes per task."})
    max_steps: int = field(default=120, metadata={"help": "Control steps before an episode counts as failed."})
    execute_steps: int = field(default=1, metadata={"help": "Actions of each chunk executed before re-planning."})
    camera_size: int = field(default=128, metadata={"help": "Rendered image size."})
    workers: int = field(default=1, metadata={"help": "Parallel worker processes (one sim + policy each)."})
    device: str = field(default="cpu", metadata={"help": "torch device of the policy (cpu, cuda, cuda:N)."})

    def __post_init__(self):
        if self.suite not in ("panda", "metaworld"):
            raise ValueError(f"EvalConfig.suite: must be panda or metaworld, got {self.suite!r}")
        for name in ("seeds", "max_steps", "execute_steps", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"EvalConfig.{name}: must be >= 1, got {getattr(self, name)}")
        _check_device(self.device, "EvalConfig.device")
        if not self.tasks:
            self.tasks = tuple(all_tasks(self.suite))


def _check_device(device: str, name: str) -> None:
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise ValueError(f"{name}: must be cpu, cuda or cuda:N, got {device!r}")


@dataclass(frozen=True)
class PolicySource:
    """Where a policy comes from: a save_pretrained folder, optionally with global arrays loaded over it."""

    checkpoint: str = field(metadata={"help": "save_pretrained folder (e.g. a robot's policy/round_NNNN)."})
    global_arrays: str = field(default="", metadata={"help": "safetensors of a server round ('' = none)."})
    scope: str = field(default="trunk", metadata={"help": "What global_arrays holds: trunk or full (whole model)."})

    def __post_init__(self):
        if not self.checkpoint:
            raise ValueError("PolicySource.checkpoint: required")
        if self.scope not in ("trunk", "full"):
            raise ValueError(f"PolicySource.scope: must be trunk or full, got {self.scope!r}")


@dataclass(frozen=True)
class EvalJob:
    """One rollout: a policy on one task from one seed; `tag` comes back with the result."""

    policy: PolicySource = field(metadata={"help": "The policy to roll out."})
    task: str = field(metadata={"help": "Task name within the suite."})
    seed: int = field(metadata={"help": "Seed of the initial state (held out from the training seeds)."})
    tag: str = field(default="", metadata={"help": "Caller's label, returned with the result (e.g. method/round)."})


def all_tasks(suite: str) -> list[str]:
    if suite == "panda":
        from fedvla_sim.tasks import TASKS
        return list(TASKS)
    from fedvla_sim.metaworld_env import METAWORLD_TASKS
    return list(METAWORLD_TASKS)


def rollout_policy(env, act: Callable[[dict], np.ndarray], seed: int, max_steps: int, execute_steps: int = 1) -> dict:
    """One episode of `act` in `env` from `seed`; returns {"success", "steps", "act_ms"}."""
    obs = env.reset(seed)
    steps, act_time = 0, 0.0
    while steps < max_steps:
        t0 = time.perf_counter()
        chunk = np.asarray(act({"images": obs["images"], "instruction": env.instruction,
                                "proprio": obs["joint_positions"]}))
        act_time += time.perf_counter() - t0
        executed = chunk[:execute_steps]
        for i, action in enumerate(executed):
            obs = env.step(action, render=i == len(executed) - 1)  # only the frame re-planned from
            steps += 1
            if env.success():
                return {"success": True, "steps": steps, "act_ms": 1000 * act_time / max(1, steps)}
            if steps >= max_steps:
                break
    return {"success": False, "steps": steps, "act_ms": 1000 * act_time / max(1, steps)}


def load_policy(source: PolicySource, device: str = "cpu"):
    """The policy of `source` in eval mode on `device` (global arrays loaded over the folder's weights)."""
    from fedvla_core.model import FedVLAPolicy

    policy = FedVLAPolicy.from_pretrained(source.checkpoint)
    if source.global_arrays:
        from safetensors.numpy import load_file

        from fedvla_core.federated.local_round import load_global

        load_global(policy, load_file(source.global_arrays), source.scope)
    return policy.to(device).eval()


# --- worker processes ---------------------------------------------------------------------------------
_worker: dict = {}


def _init_worker(suite: str, camera_size: int, max_steps: int, execute_steps: int, device: str, threads: int,
                 cache_size: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))
    _worker.update(suite=suite, camera_size=camera_size, max_steps=max_steps, execute_steps=execute_steps,
                   device=device, cache_size=max(1, cache_size), policies=OrderedDict(), envs={}, loads=0)


def _policy(source: PolicySource):
    cache: OrderedDict = _worker["policies"]
    if source in cache:
        cache.move_to_end(source)
        return cache[source]
    policy = load_policy(source, _worker["device"])
    _worker["loads"] += 1
    cache[source] = policy
    while len(cache) > _worker["cache_size"]:
        cache.popitem(last=False)
    return policy


def _run_job(job: EvalJob) -> dict:
    from fedvla_sim.recorder import make_env

    envs = _worker["envs"]
    if job.task not in envs:
        envs[job.task] = make_env(_worker["suite"], job.task, job.seed, _worker["camera_size"])
    policy = _policy(job.policy)
    policy.reset_expert_stats()
    result = rollout_policy(envs[job.task], policy.act, job.seed, _worker["max_steps"], _worker["execute_steps"])
    return {"tag": job.tag, "task": job.task, "seed": job.seed, "checkpoint": job.policy.checkpoint,
            "global_arrays": job.policy.global_arrays, **result,
            "expert_counts": policy.expert_counts(),
            "expert_tokens": [ffn.tokens_seen() for ffn in policy.trunk_ffns()],
            "pid": os.getpid()}


def _chunksize(n_jobs: int, workers: int) -> int:
    """Consecutive jobs (same policy, same task) go to one worker, but no worker gets a long tail."""
    return max(1, min(8, n_jobs // (4 * max(1, workers))))


def evaluate_jobs(jobs: list[EvalJob], suite: str = "metaworld", workers: int = 1, device: str = "cpu",
                  camera_size: int = 128, max_steps: int = 120, execute_steps: int = 1, cache_size: int = 4,
                  progress: bool = True, on_result: Callable[[dict], None] | None = None) -> list[dict]:
    """Roll out every job in `workers` processes (spawned: EGL and CUDA contexts do not survive a fork).

    Jobs are sorted by policy and task so a worker reuses its loaded policy and env; results come
    back in the order of `jobs`. `on_result` sees each result as it arrives (e.g. to save progress).
    Each result: tag, task, seed, success, steps, act_ms, expert_counts (per trunk layer, per
    expert, during this rollout) and expert_tokens (tokens per layer).
    """
    from tqdm import tqdm

    if suite not in ("panda", "metaworld"):
        raise ValueError(f"evaluate_jobs: suite must be panda or metaworld, got {suite!r}")
    if workers < 1 or max_steps < 1 or execute_steps < 1:
        raise ValueError("evaluate_jobs: workers, max_steps and execute_steps must be >= 1")
    _check_device(device, "evaluate_jobs: device")
    order = sorted(range(len(jobs)), key=lambda i: (jobs[i].policy.checkpoint, jobs[i].policy.global_arrays,
                                                    jobs[i].task, jobs[i].seed))
    ordered = [jobs[i] for i in order]
    threads = max(1, (os.cpu_count() or 1) // workers)
    init = (suite, camera_size, max_steps, execute_steps, device, threads, cache_size)
    results: list[dict] = []
    bar = tqdm(total=len(jobs), desc="eval", disable=not progress)
    if workers > 1 and len(jobs) > 1:
        with mp.get_context("spawn").Pool(min(workers, len(jobs)), initializer=_init_worker, initargs=init) as pool:
            for row in pool.imap(_run_job, ordered, chunksize=_chunksize(len(jobs), workers)):
                results.append(row)
                bar.update(1)
                if on_result is not None:
                    on_result(row)
    else:
        _init_worker(*init)
        for job in ordered:
            row = _run_job(job)
            results.append(row)
            bar.update(1)
            if on_result is not None:
                on_result(row)
        for env in _worker["envs"].values():
            env.close()
        _worker.clear()
    bar.close()
    back = [None] * len(jobs)
    for i, row in zip(order, results):
        back[i] = row
    return back


def success_by_task(rows: list[dict]) -> dict[str, float]:
    """Fraction of successful rollouts per task (tasks in order of first appearance)."""
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    return {t: float(np.mean([bool(r["success"]) for r in rows if r["task"] == t])) for t in tasks}


def evaluate(cfg: EvalConfig, progress: bool = True) -> dict:
    """Every (task, seed) of `cfg`, in parallel workers; returns per-task and mean success."""
    source = PolicySource(cfg.checkpoint)
    jobs = [EvalJob(source, t, s) for t in cfg.tasks for s in range(cfg.seed_start, cfg.seed_start + cfg.seeds)]
    t0 = time.monotonic()
    rows = evaluate_jobs(jobs, cfg.suite, cfg.workers, cfg.device, cfg.camera_size, cfg.max_steps,
                         cfg.execute_steps, progress=progress)
    rows = [{k: r[k] for k in ("task", "seed", "success", "steps", "act_ms")} for r in rows]
    per_task = {t: float(np.mean([r["success"] for r in rows if r["task"] == t])) for t in cfg.tasks}
    return {"config": asdict(cfg), "per_task_success": per_task,
            "mean_success": float(np.mean(list(per_task.values()))), "episodes": rows,
            "wall_time_s": round(time.monotonic() - t0, 1)}
