"""Record scripted-expert demonstrations as episode files, in parallel worker processes.

The files are written with the fed client's `EpisodeWriter`, so demonstrations and the
episodes a robot logs are one format (MCAP, ROS 2 schemas, one file per episode) and train
through the same `EpisodeDataset`. Each worker process owns one env and so one MuJoCo/EGL
context; workers are spawned, never forked, because an EGL context does not survive a fork.
Images and actions are sampled at the control rate (10 Hz) while physics and IK run faster
inside each step.
"""
from __future__ import annotations

import multiprocessing as mp
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SUITES = ("panda", "metaworld")


@dataclass
class RecordConfig:
    """What to record and where."""

    suite: str = field(default="panda", metadata={"help": "panda (MuJoCo tabletop) or metaworld."})
    task: str = field(default="put_red_block_in_bowl", metadata={"help": "Task name within the suite."})
    episodes: int = field(default=10, metadata={"help": "Number of episodes to keep."})
    out: str = field(default="demos", metadata={"help": "Output folder (one .mcap file per episode)."})
    workers: int = field(default=1, metadata={"help": "Parallel worker processes (one sim + renderer each)."})
    seed_start: int = field(default=0, metadata={"help": "First seed; episodes use consecutive seeds."})
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
    from fedvla_fed_client.episodes import EpisodeWriter

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
