"""Phase record: scripted-expert demonstrations per task (fedvla_sim.recorder), skipped where already there."""
from __future__ import annotations

import shutil
import time
from pathlib import Path

from .config import Table1Config
from .layout import demo_files, write_json
from .runtime import Deadline, log


def record_command(cfg: Table1Config, task: str) -> str:
    return (f"fedvla-sim record --suite metaworld --task {task} --episodes {cfg.demos_per_task} "
            f"--out {cfg.work / 'demos' / task} --workers {cfg.record_workers} --seed-start {cfg.train_seed_start} "
            f"--camera-size {cfg.camera_size} --action-noise {cfg.record_action_noise} --robot-id {task}")


def phase_record(cfg: Table1Config, deadline: Deadline) -> None:
    from fedvla_sim.recorder import RecordConfig, record

    for task in cfg.tasks:
        folder = cfg.work / "demos" / task
        if len(demo_files(cfg, task)) >= cfg.demos_per_task and (folder / "record.json").is_file():
            log(f"record {task}: {cfg.demos_per_task} demonstrations already there")
            continue
        if deadline.passed:
            log("record: time budget spent; run the phase again")
            return
        shutil.rmtree(folder, ignore_errors=True)  # a partial set is recorded again from the first seed
        t0 = time.monotonic()
        summary = record(RecordConfig(suite="metaworld", task=task, episodes=cfg.demos_per_task, out=str(folder),
                                      workers=cfg.record_workers, seed_start=cfg.train_seed_start,
                                      camera_size=cfg.camera_size, robot_id=task,
                                      action_noise=cfg.record_action_noise), progress=False)
        if len(summary["kept"]) < cfg.demos_per_task:
            raise RuntimeError(f"record {task}: only {len(summary['kept'])} of {cfg.demos_per_task} expert demos "
                               f"succeeded ({summary['attempted']} seeds tried)")
        seeds = sorted(int(Path(p).stem.rsplit("seed", 1)[1]) for p in summary["kept"])
        write_json(folder / "record.json", {
            "command": record_command(cfg, task), "task": task, "episodes": len(summary["kept"]),
            "seeds": seeds, "failed_seeds": summary["failed_seeds"], "attempted": summary["attempted"],
            "expert_success_rate": summary["success_rate"], "wall_s": time.monotonic() - t0})
        log(f"record {task}: {len(seeds)} demos in {time.monotonic() - t0:.0f} s")
