"""Closed-loop evaluation of a policy in simulation: success rate per task on held-out seeds.

Used for the shipped checkpoint's eval, for benchmarks and by `fedvla-sim eval`. The policy is
any callable observation -> action chunk (H, A); `FedVLAPolicy.act` is one. Each rollout executes
the first `execute_steps` actions of a chunk, then asks again (receding horizon, like the policy
server at its control rate). Success comes from the environment (Panda task check or Meta-World's
info["success"]).
"""
from __future__ import annotations

import multiprocessing as mp
import os
import time
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
    device: str = field(default="cpu", metadata={"help": "torch device of the policy."})

    def __post_init__(self):
        if self.suite not in ("panda", "metaworld"):
            raise ValueError(f"suite must be panda or metaworld, got {self.suite!r}")
        for name in ("seeds", "max_steps", "execute_steps", "workers"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.tasks:
            self.tasks = tuple(all_tasks(self.suite))


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
        for action in chunk[:execute_steps]:
            obs = env.step(action)
            steps += 1
            if env.success():
                return {"success": True, "steps": steps, "act_ms": 1000 * act_time / max(1, steps)}
            if steps >= max_steps:
                break
    return {"success": False, "steps": steps, "act_ms": 1000 * act_time / max(1, steps)}


_worker: dict = {}


def _init_worker(cfg: EvalConfig) -> None:
    import torch

    from fedvla_policy.model import FedVLAPolicy

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // cfg.workers))
    _worker["cfg"] = cfg
    _worker["policy"] = FedVLAPolicy.from_pretrained(cfg.checkpoint).to(cfg.device).eval()
    _worker["envs"] = {}


def _run(job: tuple[str, int]) -> dict:
    from fedvla_sim.recorder import make_env

    task, seed = job
    cfg: EvalConfig = _worker["cfg"]
    envs = _worker["envs"]
    if task not in envs:
        envs[task] = make_env(cfg.suite, task, seed, cfg.camera_size)
    result = rollout_policy(envs[task], _worker["policy"].act, seed, cfg.max_steps, cfg.execute_steps)
    return {"task": task, "seed": seed, **result}


def evaluate(cfg: EvalConfig, progress: bool = True) -> dict:
    """Every (task, seed) of `cfg`, in parallel workers; returns per-task and mean success."""
    from tqdm import tqdm

    jobs = [(t, s) for t in cfg.tasks for s in range(cfg.seed_start, cfg.seed_start + cfg.seeds)]
    t0 = time.monotonic()
    if cfg.workers > 1:
        with mp.get_context("spawn").Pool(cfg.workers, initializer=_init_worker, initargs=(cfg,)) as pool:
            rows = list(tqdm(pool.imap(_run, jobs), total=len(jobs), desc="eval", disable=not progress))
    else:
        _init_worker(cfg)
        rows = [_run(j) for j in tqdm(jobs, desc="eval", disable=not progress)]
    per_task = {t: float(np.mean([r["success"] for r in rows if r["task"] == t])) for t in cfg.tasks}
    return {"config": asdict(cfg), "per_task_success": per_task,
            "mean_success": float(np.mean(list(per_task.values()))), "episodes": rows,
            "wall_time_s": round(time.monotonic() - t0, 1)}
