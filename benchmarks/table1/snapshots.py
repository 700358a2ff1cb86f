"""What evaluation needs of a round, copied aside while a method's deployment runs (the apps prune old rounds)."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from .config import Table1Config
from .layout import committed_round, method_dir
from .methods import METHODS


def _local_round_dir(episode_dir: str, rnd: int) -> Path | None:
    """The client's local policy of round `rnd` (else its newest earlier one: it sat a round out)."""
    root = Path(episode_dir) / "policy"
    for r in range(rnd, 0, -1):
        path = root / f"round_{r:04d}"
        if path.is_dir():
            return path
    return None


def snapshot_rounds(cfg: Table1Config, method: str, clients: list[dict]) -> list[int]:
    """Copy aside what evaluation needs of every committed round to evaluate: the global arrays and each local policy.

    The ServerApp keeps 3 global rounds and a client 2 local rounds, so the driver copies them while
    the run goes on. Returns the rounds snapshotted by this call.
    """
    ckpt = method_dir(cfg, method) / "checkpoints"
    done = committed_round(ckpt)
    taken = []
    for rnd in cfg.eval_rounds():
        target = method_dir(cfg, method) / "snapshots" / f"round_{rnd:04d}"
        if rnd > done or (target / "snapshot.json").is_file():
            continue
        weights = ckpt / f"round_{rnd:04d}.safetensors"
        if not weights.is_file():
            continue
        tmp = target.with_name(f".{target.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        shutil.copy2(weights, tmp / "global.safetensors")
        local = {}
        for c in clients:
            src = _local_round_dir(c["episode_dir"], rnd)
            if src is None:
                continue
            shutil.copytree(src, tmp / c["id"])
            local[c["id"]] = src.name
        (tmp / "snapshot.json").write_text(json.dumps({"round": rnd, "local_rounds": local,
                                                       "scope": METHODS[method].scope}))
        shutil.rmtree(target, ignore_errors=True)
        os.replace(tmp, target)
        taken.append(rnd)
    return taken


def train_done(cfg: Table1Config, method: str) -> bool:
    ckpt = method_dir(cfg, method) / "checkpoints"
    snaps = method_dir(cfg, method) / "snapshots"
    return committed_round(ckpt) >= cfg.rounds and all(
        (snaps / f"round_{r:04d}" / "snapshot.json").is_file() for r in cfg.eval_rounds())
