"""Record scripted-expert demonstrations as episode files, in parallel worker processes.

The files are written with the fed client's `EpisodeWriter`, so demonstrations and the
episodes a robot logs are one format (MCAP, ROS 2 schemas, one file per episode) and train
through the same `EpisodeDataset`. Each worker process owns one env and so one MuJoCo/EGL
context; workers are spawned, never forked, because an EGL context does not survive a fork.
Images and actions are sampled at the control rate (10 Hz) while physics and IK run faster
inside each step.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from fedvla_sim.seeds import DEMO_SEED_START, check_demo_seeds

SUITES = ("panda", "metaworld")


@dataclass
class RecordConfig:
    """What to record and where."""

    suite: str = field(default="panda", metadata={"help": "panda (MuJoCo tabletop) or metaworld."})
    task: str = field(default="put_red_block_in_bowl", metadata={"help": "Task name within the suite."})
    episodes: int = field(default=10, metadata={"help": "Number of episodes to keep."})
    out: str = field(default="demos", metadata={"help": "Output folder (one .mcap file per episode)."})
    workers: int = field(default=1, metadata={"help": "Parallel worker processes (one sim + renderer each)."})
    seed_start: int = field(default=DEMO_SEED_START, metadata={"help": (
        "First seed; episodes use consecutive seeds (evaluation seeds lie below fedvla_sim.seeds.DEMO_SEED_START).")})
    keep_failed: bool = field(default=False, metadata={"help": "Also keep episodes where the expert failed."})
    camera_size: int = field(default=128, metadata={"help": "Image height and width, pixels."})
    robot_id: str = field(default="sim", metadata={"help": "robot_id stored in every episode's metadata."})
    max_attempts: int = field(default=0, metadata={"help": "Give up after this many seeds (0 = 2 * episodes + 10)."})
    action_noise: float = field(default=0.0, metadata={"help": (
        "Std of Gaussian noise added to each executed action's arm part (Panda: joint targets, rad; Meta-World: "
        "hand motion) while the clean expert action is recorded: demonstrations of recovering (0 = off).")})

    def __post_init__(self):
        if self.suite not in SUITES:
            raise ValueError(f"RecordConfig.suite must be one of {SUITES}, got {self.suite!r}")
        if self.suite == "panda":
            from fedvla_sim.tasks import TASKS
            known = TASKS
        else:
            from fedvla_sim.metaworld_env import METAWORLD_TASKS
            known = METAWORLD_TASKS
        if self.task not in known:
            raise ValueError(f"RecordConfig.task: unknown {self.suite} task {self.task!r}; known: {', '.join(known)}")
        if self.episodes < 1:
            raise ValueError(f"RecordConfig.episodes must be >= 1, got {self.episodes}")
        if self.workers < 1:
            raise ValueError(f"RecordConfig.workers must be >= 1, got {self.workers}")
        if self.seed_start < 0:
            raise ValueError(f"RecordConfig.seed_start must be >= 0, got {self.seed_start}")
        if not 16 <= self.camera_size <= 1024:
            raise ValueError(f"RecordConfig.camera_size must be in [16, 1024], got {self.camera_size}")
        if self.action_noise < 0:
            raise ValueError(f"RecordConfig.action_noise must be >= 0, got {self.action_noise}")
        if self.max_attempts < 0:
            raise ValueError("RecordConfig.max_attempts must be >= 0")
        if self.max_attempts == 0:
            self.max_attempts = 2 * self.episodes + 10


def make_env(suite: str, task: str, seed: int = 0, camera_size: int = 128):
    """The env of a suite (Panda tabletop or Meta-World) with its recording cameras."""
    if suite == "panda":
        from fedvla_sim.env import PandaTabletopEnv
        return PandaTabletopEnv(task, seed, camera_size=camera_size)
    from fedvla_sim.metaworld_env import MetaWorldEnv
    return MetaWorldEnv(task, seed, camera_size=camera_size)


def record_episode(env, suite: str, seed: int, out_dir: Path, keep_failed: bool = False,
                   robot_id: str = "sim", action_noise: float = 0.0) -> dict:
    """Reset `env` to `seed`, run its expert and write the episode; returns {"seed", "success", "steps", "path"}.

    The episode is written step by step and dropped (`abort`) when the expert fails and
    `keep_failed` is off, so no failed demonstration ever appears under its final name.
    """
    from fedvla_core.episodes import EpisodeWriter

    env.reset(seed)
    if suite == "panda":
        from fedvla_sim.env import action_to_joint_targets
        from fedvla_sim.experts import rollout_expert as rollout
        camera_names, task_name, control_dt = env.config.camera_names, env.task.name, env.config.control_dt
    else:
        from fedvla_sim.metaworld_env import rollout_metaworld_expert as rollout
        camera_names, task_name, control_dt = env.camera_names, env.task_name, env.control_dt
    metadata = {"task": task_name, "instruction": env.instruction, "seed": int(seed), "suite": suite,
                "robot_id": robot_id, "control_hz": round(1.0 / control_dt, 3), "source": "scripted_expert",
                "action_noise": float(action_noise)}
    writer = EpisodeWriter(out_dir, episode_id=f"{suite}_{task_name}_seed{seed:06d}", metadata=metadata,
                           camera_names=list(camera_names), joint_names=list(env.joint_names),
                           action_names=list(env.action_names))
    step = {"k": 0}

    def on_step(obs: dict, action: np.ndarray) -> None:
        trajectory = None
        if suite == "panda":  # what a JointTrajectory to the arm would carry for this action (ROS units)
            trajectory = {"joint_names": list(env.joint_names), "positions": action_to_joint_targets(action)[None],
                          "time_from_start": np.array([control_dt])}
        writer.add_step(int(round(step["k"] * control_dt * 1e9)), images=obs["images"],
                        joint_positions=obs["joint_positions"], action=action, trajectory=trajectory)
        step["k"] += 1

    try:
        result = rollout(env, on_step=on_step, action_noise=action_noise, rng=np.random.default_rng(seed))
    except BaseException:
        writer.abort()
        raise
    path = None
    if result["success"] or keep_failed:
        path = str(writer.close(success=result["success"], extra_metadata={"expert_steps": result["steps"]}))
    else:
        writer.abort()
    return {"seed": int(seed), "success": bool(result["success"]), "steps": int(result["steps"]), "path": path}


# --- worker processes ---------------------------------------------------------------------------------
_worker_env = None
_worker_cfg: RecordConfig | None = None


def _init_worker(cfg: RecordConfig) -> None:
    global _worker_env, _worker_cfg
    _worker_cfg = cfg
    _worker_env = make_env(cfg.suite, cfg.task, cfg.seed_start, cfg.camera_size)


def _work(seed: int) -> dict:
    assert _worker_env is not None and _worker_cfg is not None
    return record_episode(_worker_env, _worker_cfg.suite, seed, Path(_worker_cfg.out),
                          _worker_cfg.keep_failed, _worker_cfg.robot_id, _worker_cfg.action_noise)


def record(cfg: RecordConfig, progress: bool = True) -> dict:
    """Record until `cfg.episodes` episodes are kept (or `cfg.max_attempts` seeds are tried).

    Seeds are consecutive from `seed_start` and tried in batches, so the result is the same
    for any number of workers. Returns a summary with the kept paths and the success rate.
    """
    from tqdm import tqdm

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []
    kept: list[str] = []
    next_seed = cfg.seed_start
    bar = tqdm(total=cfg.episodes, desc=f"{cfg.suite}/{cfg.task}", unit="ep", disable=not progress)
    ctx = mp.get_context("spawn")
    if cfg.workers > 1:
        # A failing Pool initializer is retried forever by multiprocessing: make the env here first so a
        # missing simulator or asset fails once, with its own error.
        make_env(cfg.suite, cfg.task, cfg.seed_start, cfg.camera_size)
    pool = ctx.Pool(cfg.workers, initializer=_init_worker, initargs=(cfg,)) if cfg.workers > 1 else None
    if pool is None:
        _init_worker(cfg)
    try:
        while len(kept) < cfg.episodes and len(results) < cfg.max_attempts:
            batch = min(cfg.episodes - len(kept), cfg.max_attempts - len(results))
            seeds = list(range(next_seed, next_seed + batch))
            next_seed += batch
            iterator = pool.imap(_work, seeds) if pool is not None else map(_work, seeds)
            for res in iterator:
                results.append(res)
                if res["path"] is not None:
                    kept.append(res["path"])
                    bar.update(1)
                bar.set_postfix(success=f"{sum(r['success'] for r in results)}/{len(results)}")
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
    successes = sum(r["success"] for r in results)
    return {"suite": cfg.suite, "task": cfg.task, "attempted": len(results), "successes": successes,
            "success_rate": successes / max(1, len(results)), "kept": kept,
            "failed_seeds": [r["seed"] for r in results if not r["success"]]}


# --- every task of both suites in one pool ---------------------------------------------------------------
def all_suite_tasks() -> tuple[str, ...]:
    """"suite/task" of the 6 Panda tasks and the 4 Table-1 Meta-World tasks."""
    from fedvla_sim.metaworld_env import METAWORLD_TASKS
    from fedvla_sim.tasks import TASKS

    return tuple(f"panda/{t}" for t in TASKS) + tuple(f"metaworld/{t}" for t in METAWORLD_TASKS)


@dataclass
class SuiteRecordConfig:
    """Demonstrations at scale: N successful noise-injected expert episodes for each of many tasks."""

    tasks: tuple[str, ...] = field(default=(), metadata={"help": "suite/task names (empty = all 10 tasks)."})
    episodes: int = field(default=200, metadata={"help": "Successful episodes to keep per task."})
    out: str = field(default="data/demos", metadata={"help": "Output root: episodes go to OUT/<suite>/<task>/."})
    workers: int = field(default=0, metadata={"help": "Worker processes, one sim + EGL renderer each (0 = one per core)."})
    seed_start: int = field(default=DEMO_SEED_START, metadata={"help": "First seed of every task (>= DEMO_SEED_START)."})
    panda_action_noise: float = field(default=0.015, metadata={"help": "Panda executed-joint-target noise std, rad."})
    metaworld_action_noise: float = field(default=0.3, metadata={"help": "Meta-World executed hand-motion noise std."})
    camera_size: int = field(default=128, metadata={"help": "Image height and width, pixels."})
    attempts_factor: float = field(default=2.0, metadata={
        "help": "Give up on a task after attempts_factor * episodes + 10 seeds."})
    manifest: str = field(default="", metadata={"help": "Manifest JSON path ('' = OUT/manifest.json)."})

    def __post_init__(self):
        known = all_suite_tasks()
        self.tasks = tuple(self.tasks) or known
        for name in self.tasks:
            if name not in known:
                raise ValueError(f"SuiteRecordConfig.tasks: unknown {name!r}; known: {', '.join(known)}")
        if self.episodes < 1:
            raise ValueError(f"SuiteRecordConfig.episodes must be >= 1, got {self.episodes}")
        if self.workers < 0:
            raise ValueError(f"SuiteRecordConfig.workers must be >= 0, got {self.workers}")
        self.workers = self.workers or os.cpu_count() or 1
        check_demo_seeds(self.seed_start, "SuiteRecordConfig.seed_start")
        if min(self.panda_action_noise, self.metaworld_action_noise) < 0:
            raise ValueError("SuiteRecordConfig: action noise must be >= 0")
        if not 16 <= self.camera_size <= 1024:
            raise ValueError(f"SuiteRecordConfig.camera_size must be in [16, 1024], got {self.camera_size}")
        if self.attempts_factor < 1:
            raise ValueError("SuiteRecordConfig.attempts_factor must be >= 1")
        self.manifest = self.manifest or str(Path(self.out) / "manifest.json")

    def max_attempts(self) -> int:
        return int(self.attempts_factor * self.episodes) + 10

    def noise(self, suite: str) -> float:
        return self.panda_action_noise if suite == "panda" else self.metaworld_action_noise


def episode_path(out: str | Path, suite: str, task: str, seed: int) -> Path:
    """Where the suite recorder puts (suite, task, seed): OUT/<suite>/<task>/<episode_id>.mcap."""
    return Path(out) / suite / task / f"{suite}_{task}_seed{seed:06d}.mcap"


_suite_envs: dict = {}
_suite_cfg: SuiteRecordConfig | None = None


def _init_suite_worker(cfg: SuiteRecordConfig) -> None:
    global _suite_cfg
    _suite_cfg = cfg
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # one core per worker: IK and numpy stay single-threaded


def _suite_work(job: tuple[str, str, int]) -> dict:
    """Record one (suite, task, seed); an episode already on disk is kept as it is (resuming)."""
    suite, task, seed = job
    cfg = _suite_cfg
    assert cfg is not None
    path = episode_path(cfg.out, suite, task, seed)
    if path.exists():
        return {"suite": suite, "task": task, "seed": seed, "success": True, "steps": None, "path": str(path),
                "resumed": True}
    if (suite, task) not in _suite_envs:
        _suite_envs[(suite, task)] = make_env(suite, task, seed, cfg.camera_size)
    res = record_episode(_suite_envs[(suite, task)], suite, seed, path.parent, robot_id="demo",
                         action_noise=cfg.noise(suite))
    return {"suite": suite, "task": task, **res, "resumed": False}


def record_suite(cfg: SuiteRecordConfig, command: str | None = None, progress: bool = True) -> dict:
    """Record until every task of `cfg` has `episodes` successful demonstrations; writes the manifest.

    Seeds are consecutive per task from `seed_start`, tried in rounds (as many as are still
    missing), so the kept set is the same for any number of workers. All tasks share one pool
    of spawned workers (EGL contexts do not survive a fork); each worker keeps one env per task.
    The manifest holds the command, the config, the seed contract and per task the kept and
    failed seeds; it is rewritten after every round, so an interrupted run leaves a valid one.
    """
    from tqdm import tqdm

    t0 = time.monotonic()
    state = {name: {"next": cfg.seed_start, "kept": [], "failed": [], "expert_steps": []} for name in cfg.tasks}
    manifest = {"command": command or " ".join(sys.argv), "config": asdict(cfg),
                "seed_contract": {"demo_seed_start": DEMO_SEED_START, "eval_seeds": [0, DEMO_SEED_START - 1]},
                "tasks": {}}

    def write_manifest() -> None:
        for name, st in state.items():
            tried = len(st["kept"]) + len(st["failed"])
            manifest["tasks"][name] = {
                "episodes": len(st["kept"]), "attempted": tried,
                "expert_success_rate": round(len(st["kept"]) / max(1, tried), 4),
                "seeds_tried": [cfg.seed_start, st["next"] - 1],
                "kept_seeds": sorted(st["kept"]), "failed_seeds": sorted(st["failed"]),
                "folder": str(Path(cfg.out) / name), "action_noise": cfg.noise(name.split("/")[0]),
                "mean_expert_steps": round(float(np.mean(st["expert_steps"])), 1) if st["expert_steps"] else None}
        manifest["wall_s"] = round(time.monotonic() - t0, 1)
        path = Path(cfg.manifest)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.partial")
        tmp.write_text(json.dumps(manifest, indent=1))
        tmp.replace(path)

    def jobs_for_round() -> list[tuple[str, str, int]]:
        jobs = []
        for name, st in state.items():
            missing = cfg.episodes - len(st["kept"])
            budget = cfg.max_attempts() - (st["next"] - cfg.seed_start)
            n = max(0, min(missing, budget))
            suite, task = name.split("/", 1)
            jobs += [(suite, task, seed) for seed in range(st["next"], st["next"] + n)]
            st["next"] += n
        # Interleave tasks so long (Meta-World) and short episodes spread over the workers.
        return sorted(jobs, key=lambda j: (j[2], j[0], j[1]))

    Path(cfg.out).mkdir(parents=True, exist_ok=True)
    bar = tqdm(total=cfg.episodes * len(cfg.tasks), desc="record", unit="ep", disable=not progress)
    # A failing Pool initializer is retried forever: make each suite's env here first so a missing
    # simulator or asset fails once, with its own error.
    for suite in dict.fromkeys(n.split("/")[0] for n in cfg.tasks):
        make_env(suite, next(n for n in cfg.tasks if n.startswith(suite + "/")).split("/", 1)[1], cfg.seed_start,
                 cfg.camera_size).close()
    pool = mp.get_context("spawn").Pool(cfg.workers, initializer=_init_suite_worker, initargs=(cfg,)) \
        if cfg.workers > 1 else None
    if pool is None:
        _init_suite_worker(cfg)
    try:
        while jobs := jobs_for_round():
            it = pool.imap_unordered(_suite_work, jobs) if pool is not None else map(_suite_work, jobs)
            for res in it:
                st = state[f"{res['suite']}/{res['task']}"]
                if res["path"] is not None:
                    st["kept"].append(res["seed"])
                    bar.update(1)
                    if res["steps"] is not None:
                        st["expert_steps"].append(res["steps"])
                else:
                    st["failed"].append(res["seed"])
            write_manifest()
    finally:
        bar.close()
        if pool is not None:
            pool.close()
            pool.join()
        else:
            for env in _suite_envs.values():
                env.close()
            _suite_envs.clear()
    write_manifest()
    return manifest
