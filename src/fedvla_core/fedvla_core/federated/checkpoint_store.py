"""Global-model checkpoints, one per round, so a restarted server resumes where it stopped.

Layout of the checkpoint folder::

    round_0003.safetensors   the global arrays after round 3 (safetensors, numpy)
    round_0003.json          that round's metrics and the strategy name
    latest.json              {"round": 3, "file": "round_0003.safetensors", ...}  <- the commit point

Every file is written to a temporary name, fsynced and renamed; ``latest.json`` is replaced
last, so a crash mid-save leaves the previous round as the one to resume from.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from safetensors.numpy import load_file, save_file


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


class CheckpointStore:
    """Saves and finds per-round global checkpoints in ``directory`` (keeps the last ``keep``)."""

    def __init__(self, directory, keep: int = 3):
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.directory.mkdir(parents=True, exist_ok=True)
        self.keep = keep

    def save(self, server_round: int, arrays: Mapping[str, np.ndarray], info: Mapping[str, Any] | None = None) -> Path:
        """Write round ``server_round``'s arrays and info, then commit it as the latest."""
        stem = f"round_{server_round:04d}"
        weights = self.directory / f"{stem}.safetensors"
        tensors = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
        _atomic_write(weights, lambda p: save_file(tensors, str(p)))
        record = {"round": int(server_round), "file": weights.name, **dict(info or {})}
        text = json.dumps(record, indent=1, default=float)
        _atomic_write(self.directory / f"{stem}.json", lambda p: p.write_text(text))
        _atomic_write(self.directory / "latest.json", lambda p: p.write_text(text))
        self._prune(server_round)
        return weights

    def _prune(self, latest: int) -> None:
        for path in self.directory.glob("round_*.safetensors"):
            try:
                r = int(path.stem.split("_")[1])
            except (IndexError, ValueError):
                continue
            if r <= latest - self.keep:
                path.unlink(missing_ok=True)

    def latest(self) -> tuple[int, dict[str, np.ndarray], dict[str, Any]] | None:
        """(round, arrays, info) of the last committed round, or None when there is none."""
        marker = self.directory / "latest.json"
        if not marker.is_file():
            return None
        info = json.loads(marker.read_text())
        arrays = load_file(str(self.directory / info["file"]))
        return int(info["round"]), arrays, info
