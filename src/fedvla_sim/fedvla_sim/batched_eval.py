"""Evaluate one checkpoint on many held-out episodes at once: sims in worker processes, ONE batched policy.

`policy_eval.evaluate` gives every worker its own policy, which on a GPU machine means 16
processes time-slicing one GPU with batch-1 forward passes (measured on the H200: ~100 ms per
action). Here the policy lives only in the main process: each worker steps a few envs (slots),
renders their cameras and sends the observations of every slot that needs an action; the main
process stacks all of them into one batch, runs one forward pass and sends the chunks back
(lockstep). A batch of a few hundred observations costs about what one costs.

Per episode the result holds success, steps and (Panda) the failure mode read from the sim
state (`failure_modes`). Episodes are (task, seed, phrasing set): "trained" uses the phrasing the
seed draws from the task's training phrasings, "held_out" a phrasing training never saw.
Seeds must be evaluation seeds (`fedvla_sim.seeds`). The summary has per-task success with
Wilson 95% intervals, the trained vs held-out gap and failure counts by kind; for tasks under
`media_target`, one failed episode is written as a small GIF.
"""
from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fedvla_sim.seeds import check_eval_seeds

PHRASING_SETS = ("trained", "held_out")
MEDIA_CAMERA = {"panda": "agentview", "metaworld": "corner"}
MEDIA_EVERY = 2  # keep every 2nd frame of an episode for its failure GIF
MEDIA_MAX_BYTES = 1_000_000


@dataclass
class SuiteEvalConfig:
    """One checkpoint on held-out seeds of a suite's tasks, with trained and held-out phrasings."""

    checkpoint: str = field(default="", metadata={"help": "save_pretrained folder of the policy."})
    suite: str = field(default="panda", metadata={"help": "panda or metaworld."})
    tasks: tuple[str, ...] = field(default=(), metadata={"help": "Tasks (empty = every task of the suite)."})
    seed_start: int = field(default=0, metadata={"help": "First evaluation seed (below fedvla_sim.seeds.DEMO_SEED_START)."})
    seeds: int = field(default=50, metadata={"help": "Episodes per task and phrasing set."})
    phrasings: tuple[str, ...] = field(default=PHRASING_SETS, metadata={
        "help": "Phrasing sets: trained (what training saw), held_out (phrasings training never saw)."})
    step_budget: float = field(default=1.5, metadata={
        "help": "Panda: control steps per episode = step_budget * the task's expert budget (Meta-World: 500)."})
    execute_steps: int = field(default=1, metadata={"help": "Actions of each chunk executed before re-planning."})
    temporal_ensemble: float = field(default=0.0, metadata={
        "help": "ACT temporal ensembling weight m (w_i = exp(-m i), i = age of the chunk); 0 = off. Needs execute_steps 1."})
    workers: int = field(default=0, metadata={"help": "Sim worker processes (0 = one per core)."})
    device: str = field(default="auto", metadata={"help": "Torch device of the policy (auto = cuda when there)."})
    camera_size: int = field(default=128, metadata={"help": "Rendered image size."})
    max_batch: int = field(default=512, metadata={"help": "Largest batch of one forward pass."})
    out: str = field(default="eval.json", metadata={"help": "Result JSON (summary + every episode)."})
    media_dir: str = field(default="", metadata={"help": "Folder for failure GIFs ('' = none)."})
    media_target: float = field(default=0.9, metadata={"help": "Write a failure GIF for tasks below this success."})

    def __post_init__(self):
        from fedvla_sim.policy_eval import all_tasks

        if self.suite not in ("panda", "metaworld"):
            raise ValueError(f"SuiteEvalConfig.suite: must be panda or metaworld, got {self.suite!r}")
        known = all_tasks(self.suite)
        self.tasks = tuple(self.tasks) or tuple(known)
        for t in self.tasks:
            if t not in known:
                raise ValueError(f"SuiteEvalConfig.tasks: unknown {self.suite} task {t!r}; known: {', '.join(known)}")
        self.phrasings = tuple(self.phrasings)
        for p in self.phrasings:
            if p not in PHRASING_SETS:
                raise ValueError(f"SuiteEvalConfig.phrasings: {p!r} is not one of {PHRASING_SETS}")
        check_eval_seeds(self.seed_start, self.seeds, "SuiteEvalConfig seeds")
        for name in ("execute_steps", "max_batch", "camera_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"SuiteEvalConfig.{name}: must be >= 1, got {getattr(self, name)}")
        if self.workers < 0 or self.step_budget <= 0 or self.temporal_ensemble < 0:
            raise ValueError("SuiteEvalConfig: workers >= 0, step_budget > 0 and temporal_ensemble >= 0 required")
        if self.temporal_ensemble and self.execute_steps != 1:
            raise ValueError("SuiteEvalConfig.temporal_ensemble needs execute_steps 1 (one action per prediction)")
        self.workers = self.workers or os.cpu_count() or 1


def phrasings_of(suite: str, task: str, phrasing_set: str) -> tuple[str, ...]:
    """The instructions of `task` in one phrasing set (held_out: the ones training never sees)."""
    if suite == "panda":
        from fedvla_sim.tasks import get_task

        t = get_task(task)
        phrasings = t.phrasings if phrasing_set == "trained" else getattr(t, "held_out_phrasings", ())
    else:
        from fedvla_sim import metaworld_env

        if phrasing_set == "trained":
            phrasings = metaworld_env.METAWORLD_TASKS[task]
        else:
            phrasings = metaworld_env.METAWORLD_HELD_OUT_PHRASINGS.get(task, ()) \
                if hasattr(metaworld_env, "METAWORLD_HELD_OUT_PHRASINGS") else ()
    if not phrasings:
        raise ValueError(f"{suite} task {task!r} has no {phrasing_set} phrasings")
    return tuple(phrasings)


def episode_instruction(env, suite: str, task: str, seed: int, phrasing_set: str) -> str:
    """The instruction of an evaluation episode: the seed's own draw (trained) or a held-out phrasing by seed."""
    if phrasing_set == "trained":
        return env.instruction
    held_out = phrasings_of(suite, task, "held_out")
    return held_out[seed % len(held_out)]


def step_limit(suite: str, task: str, budget: float) -> int:
    if suite == "metaworld":
        from fedvla_sim.metaworld_env import MetaWorldEnv

        return MetaWorldEnv.max_steps
    from fedvla_sim.tasks import get_task

    return int(math.ceil(budget * get_task(task).max_steps))


def wilson_interval(successes: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of a success fraction (scipy's binomtest)."""
    from scipy.stats import binomtest

    if n == 0:
        return (0.0, 1.0)
    ci = binomtest(int(successes), int(n)).proportion_ci(confidence_level=0.95, method="wilson")
    return (float(ci.low), float(ci.high))


# --- worker side ------------------------------------------------------------------------------------------
class _Slot:
    """One env running one episode at a time."""

    def __init__(self):
        self.envs: dict = {}
        self.job = None

    def env_for(self, suite: str, task: str, seed: int, camera_size: int):
        from fedvla_sim.recorder import make_env

        key = task if suite == "metaworld" else "panda"  # one Panda env serves every Panda task
        if key not in self.envs:
            self.envs[key] = make_env(suite, task, seed, camera_size)
        return self.envs[key]


def _observation(env, cameras, obs: dict, instruction: str) -> tuple[np.ndarray, np.ndarray, str]:
    images = np.stack([obs["images"][c] for c in cameras])  # (n_cams, H, W, 3) uint8
    return images, np.asarray(obs["joint_positions"], dtype=np.float32), instruction


def _worker_main(conn, suite: str, cameras: list[str], camera_size: int, jobs: list[dict], n_slots: int,
                 execute_steps: int, ensemble_m: float, want_media: bool) -> None:
    """Run `jobs` on `n_slots` envs in lockstep with the main process (see module docstring)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from fedvla_sim.failure_modes import EpisodeMonitor

    queue = list(jobs)
    slots = [_Slot() for _ in range(n_slots)]
    media_sent: set[str] = set()
    media_cam = MEDIA_CAMERA[suite]

    def start(slot: _Slot):
        """Reset `slot` to its next job; returns its first request or None when no job is left."""
        if not queue:
            slot.job = None
            return None
        job = queue.pop(0)
        env = slot.env_for(suite, job["task"], job["seed"], camera_size)
        if suite == "panda":
            obs = env.reset(job["seed"], task=job["task"])
        else:
            obs = env.reset(job["seed"])
        instruction = episode_instruction(env, suite, job["task"], job["seed"], job["phrasing"])
        slot.job = dict(job, instruction=instruction, steps=0, env=env, obs=obs, history=[],
                        monitor=EpisodeMonitor(env.task, env.scene_state()) if suite == "panda" else None,
                        frames=[obs["images"][media_cam]] if want_media and job["task"] not in media_sent else None)
        return slot

    def request(slot: _Slot):
        j = slot.job
        return (j["id"], *_observation(j["env"], cameras, j["obs"], j["instruction"]))

    def finish(slot: _Slot, success: bool) -> dict:
        j = slot.job
        row = {"id": j["id"], "task": j["task"], "seed": j["seed"], "phrasing": j["phrasing"],
               "instruction": j["instruction"], "success": bool(success), "steps": j["steps"]}
        if j["monitor"] is not None:
            row.update(j["monitor"].summary(success))
        elif not success:
            row.update(failure_mode="timeout", events={}, grasped={})
        if not success and j["frames"] is not None and j["task"] not in media_sent:
            media_sent.add(j["task"])
            row["frames"] = np.stack(j["frames"])
        return row

    for slot in slots:
        start(slot)
    done: list[dict] = []
    while True:
        active = [s for s in slots if s.job is not None]
        conn.send({"requests": [request(s) for s in active], "done": done})
        done = []
        if not active:
            break
        chunks = conn.recv()  # job id -> (H, A) chunk
        for slot in active:
            j = slot.job
            chunk = np.asarray(chunks[j["id"]])
            if ensemble_m > 0:
                j["history"].append(chunk)
                j["history"] = j["history"][-len(chunk):]
                ages = range(len(j["history"]) - 1, -1, -1)  # newest chunk has age 0
                preds = [c[a] for c, a in zip(j["history"], ages)]
                weights = np.exp(-ensemble_m * np.arange(len(preds)))  # ACT: w_0 (the oldest) weighs most
                executed = [np.average(np.stack(preds), axis=0, weights=weights)]
            else:
                executed = chunk[:execute_steps]
            env = j["env"]
            ok, over = False, False
            for i, action in enumerate(executed):
                last = i == len(executed) - 1
                j["obs"] = env.step(action, render=last or j["frames"] is not None)
                j["steps"] += 1
                if j["monitor"] is not None:
                    j["monitor"].update(env.scene_state(), env.contacts(), env.robot_table_force())
                if j["frames"] is not None and j["steps"] % MEDIA_EVERY == 0:
                    j["frames"].append(j["obs"]["images"][media_cam])
                ok = env.success()
                over = j["steps"] >= j["limit"]
                if ok or over:
                    break
            if ok or over:
                done.append(finish(slot, ok))
                start(slot)
    for slot in slots:
        for env in slot.envs.values():
            env.close()
    conn.close()


# --- main side --------------------------------------------------------------------------------------------
def _load_policy(checkpoint: str, device: str):
    import torch

    from fedvla_core.model import FedVLAPolicy

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return FedVLAPolicy.from_pretrained(checkpoint).to(device).eval()


def _predict(policy, requests: list[tuple], max_batch: int) -> dict:
    """Action chunks for every request (id, images (n_cams, H, W, 3), proprio, instruction), batched."""
    import torch

    out = {}
    for k in range(0, len(requests), max_batch):
        part = requests[k:k + max_batch]
        images = torch.from_numpy(np.stack([r[1] for r in part])).permute(0, 1, 4, 2, 3)  # (B, n, 3, H, W)
        batch = {"images": images.to(policy.device, non_blocking=True),
                 "instruction": [r[3] for r in part],
                 "proprio": torch.from_numpy(np.stack([r[2] for r in part]))}
        with torch.inference_mode():
            chunks = policy.predict_action_chunk(batch).float().cpu().numpy()
        out.update({r[0]: c for r, c in zip(part, chunks)})
    return out


def _jobs(cfg: SuiteEvalConfig) -> list[dict]:
    jobs = []
    for task in cfg.tasks:
        for phrasing in cfg.phrasings:
            phrasings_of(cfg.suite, task, phrasing)  # fail now, not in a worker, when a set is missing
            for seed in range(cfg.seed_start, cfg.seed_start + cfg.seeds):
                jobs.append({"id": len(jobs), "task": task, "seed": seed, "phrasing": phrasing,
                             "limit": step_limit(cfg.suite, task, cfg.step_budget)})
    return jobs


def run_episodes(cfg: SuiteEvalConfig, policy=None, progress: bool = True) -> tuple[list[dict], dict]:
    """Every episode of `cfg` (rows without frames) and one failed episode's frames per task."""
    from tqdm import tqdm

    policy = policy if policy is not None else _load_policy(cfg.checkpoint, cfg.device)
    cameras = list(policy.config.camera_names)
    jobs = _jobs(cfg)
    # Spread each task over all workers (round robin), so no worker ends with a long tail of one task.
    workers = max(1, min(cfg.workers, len(jobs)))
    shares = [jobs[w::workers] for w in range(workers)]
    per_worker_slots = max(1, math.ceil(len(jobs) / workers / 2))  # half a share at once: reuse slots twice
    ctx = mp.get_context("spawn")
    conns, procs = [], []
    for share in shares:
        parent, child = ctx.Pipe()
        p = ctx.Process(target=_worker_main, daemon=True,
                        args=(child, cfg.suite, cameras, cfg.camera_size, share, min(per_worker_slots, len(share)),
                              cfg.execute_steps, cfg.temporal_ensemble, bool(cfg.media_dir)))
        p.start()
        child.close()
        conns.append(parent)
        procs.append(p)
    rows: list[dict] = []
    frames: dict[str, np.ndarray] = {}
    bar = tqdm(total=len(jobs), desc=f"eval {cfg.suite}", disable=not progress)
    live = list(range(len(conns)))
    try:
        while live:
            requests, owner = [], {}
            still = []
            for w in live:
                msg = conns[w].recv()
                for row in msg["done"]:
                    f = row.pop("frames", None)
                    if f is not None and row["task"] not in frames:
                        frames[row["task"]] = f
                    rows.append(row)
                    bar.update(1)
                if msg["requests"]:
                    still.append(w)
                    for r in msg["requests"]:
                        owner[r[0]] = w
                    requests.extend(msg["requests"])
            live = still
            if not requests:
                continue
            chunks = _predict(policy, requests, cfg.max_batch)
            for w in live:
                conns[w].send({i: c for i, c in chunks.items() if owner[i] == w})
    finally:
        bar.close()
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.terminate()
    rows.sort(key=lambda r: r["id"])
    return rows, frames


def summarize(rows: list[dict], cfg: SuiteEvalConfig) -> dict:
    """per_task_success / mean_success (trained phrasings), intervals, held-out gap and failure counts."""
    from fedvla_sim.failure_modes import FAILURE_KINDS

    def rate(selected):
        n, k = len(selected), sum(r["success"] for r in selected)
        lo, hi = wilson_interval(k, n)
        return {"success": k / n if n else 0.0, "n": n, "ci95": [round(lo, 4), round(hi, 4)]}

    by_set = {}
    for p in cfg.phrasings:
        by_set[p] = {t: rate([r for r in rows if r["task"] == t and r["phrasing"] == p]) for t in cfg.tasks}
    main = cfg.phrasings[0]
    per_task = {t: by_set[main][t]["success"] for t in cfg.tasks}
    failures = {t: {k: 0 for k in FAILURE_KINDS} for t in cfg.tasks}
    events = {t: {k: 0 for k in FAILURE_KINDS} for t in cfg.tasks}
    for r in rows:
        if not r["success"]:
            failures[r["task"]][r["failure_mode"]] += 1
            for k in r.get("events", {}):
                events[r["task"]][k] += 1
    result = {
        "checkpoint": cfg.checkpoint, "suite": cfg.suite,
        "per_task_success": per_task, "mean_success": float(np.mean(list(per_task.values()))),
        "seeds": [cfg.seed_start, cfg.seed_start + cfg.seeds - 1], "success_phrasings": main,
        "per_task": {p: by_set[p] for p in cfg.phrasings},
        "mean_success_by_phrasing": {p: float(np.mean([v["success"] for v in by_set[p].values()]))
                                     for p in cfg.phrasings},
        "failure_modes": failures, "failure_events": events,
        "failure_modes_note": ("failure_modes: one kind per failed episode (earliest of wrong_object/collision/drop, "
                               "else missed_grasp, else timeout), both phrasing sets; failure_events: failed episodes "
                               "in which each event happened at all. Meta-World failures are all counted as timeout."),
    }
    if {"trained", "held_out"} <= set(cfg.phrasings):
        result["held_out_gap"] = {t: round(by_set["trained"][t]["success"] - by_set["held_out"][t]["success"], 4)
                                  for t in cfg.tasks}
        result["held_out_gap_mean"] = round(result["mean_success_by_phrasing"]["trained"]
                                            - result["mean_success_by_phrasing"]["held_out"], 4)
    return result


def write_gif(frames: np.ndarray, path: Path, max_bytes: int = MEDIA_MAX_BYTES) -> Path:
    """Frames (T, H, W, 3) uint8 -> an animated GIF under `max_bytes` (halving size/frames until it fits)."""
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    clip = frames
    for _ in range(4):
        imageio.mimsave(path, list(clip), duration=0.2, loop=0)
        if path.stat().st_size <= max_bytes:
            break
        clip = clip[::2, ::2, ::2] if clip.shape[1] > 64 else clip[::2]
    return path


def evaluate_suite(cfg: SuiteEvalConfig, command: str = "", progress: bool = True) -> dict:
    """Run, summarize, write `cfg.out` (and failure GIFs); returns the result."""
    t0 = time.monotonic()
    rows, frames = run_episodes(cfg, progress=progress)
    result = summarize(rows, cfg)
    media = {}
    if cfg.media_dir:
        name = Path(cfg.checkpoint.rstrip("/")).name or "policy"
        for task, success in result["per_task_success"].items():
            if success < cfg.media_target and task in frames:
                path = write_gif(frames[task], Path(cfg.media_dir) / f"{name}_{cfg.suite}_{task}_failed.gif")
                media[task] = str(path)
    result.update(media=media, config=asdict(cfg), command=command, wall_time_s=round(time.monotonic() - t0, 1),
                  episodes=rows)
    out = Path(cfg.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1, default=lambda o: o.tolist() if hasattr(o, "tolist") else str(o)))
    return result
