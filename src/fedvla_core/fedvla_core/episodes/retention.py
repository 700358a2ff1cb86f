"""Retention: keep a robot's episode folder under a byte and an episode-count limit.

The oldest finished episodes go first. Temporary ``.partial`` files are only removed when
they are older than ``stale_partial_s``: a young one may belong to a writer that is still running,
an old one was left by a crash.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

from . import format as fmt
from .reader import list_episodes

log = logging.getLogger(__name__)


def apply_retention(episode_dir, max_bytes: int | None = None, max_episodes: int | None = None,
                    stale_partial_s: float = 3600.0) -> list[Path]:
    """Delete the oldest episodes until both limits hold; returns the deleted paths.

    Args:
        episode_dir: the folder of one robot's episodes.
        max_bytes: the most bytes the finished episodes may take (None: no byte limit).
        max_episodes: the most finished episodes to keep (None: no count limit).
        stale_partial_s: delete ``.partial`` files not modified for this many seconds.
    """
    if max_bytes is not None and max_bytes < 0:
        raise ValueError(f"max_bytes must be >= 0, got {max_bytes}")
    if max_episodes is not None and max_episodes < 0:
        raise ValueError(f"max_episodes must be >= 0, got {max_episodes}")
    episode_dir = Path(episode_dir)
    deleted: list[Path] = []
    if not episode_dir.is_dir():
        return deleted
    now = time.time()
    for partial in episode_dir.glob(f".*{fmt.PARTIAL_SUFFIX}"):
        try:
            if now - partial.stat().st_mtime > stale_partial_s:
                partial.unlink()
                deleted.append(partial)
        except FileNotFoundError:
            pass
    episodes = list_episodes(episode_dir)  # oldest first
    sizes = [p.stat().st_size for p in episodes]
    total = sum(sizes)
    count = len(episodes)
    for path, size in zip(episodes, sizes):
        over_bytes = max_bytes is not None and total > max_bytes
        over_count = max_episodes is not None and count > max_episodes
        if not (over_bytes or over_count):
            break
        path.unlink(missing_ok=True)
        deleted.append(path)
        total -= size
        count -= 1
        log.info("retention: deleted %s (%d bytes)", path.name, size)
    return deleted
