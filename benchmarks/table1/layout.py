"""Where a run's files live under the work folder (demos, runs, evals); JSON read and written atomically."""
from __future__ import annotations

import json
import os
from pathlib import Path

from .config import Table1Config


def read_json(path: Path, default=None):
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def write_json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1, default=float))
    os.replace(tmp, path)


def demo_files(cfg: Table1Config, task: str) -> list[Path]:
    from fedvla_core.episodes import list_episodes

    folder = cfg.work / "demos" / task
    return list_episodes(folder) if folder.is_dir() else []


def method_dir(cfg: Table1Config, method: str) -> Path:
    return cfg.work / "runs" / method


def committed_round(checkpoint_dir: Path) -> int:
    info = read_json(checkpoint_dir / "latest.json", {})
    return int(info.get("round", 0))


def eval_path(cfg: Table1Config, method: str, rnd: int) -> Path:
    return cfg.work / "eval" / method / f"round_{rnd:04d}.json"
