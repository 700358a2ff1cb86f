"""Where a result came from: the commit of the checkout that produced it (benchmarks record it in their JSON)."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]


def git_commit(repo: Path = REPO) -> str:
    """HEAD (+ -dirty) of the checkout, or FEDVLA_GIT_COMMIT where the caller knows better (a lent GPU machine's
    copy of the repo carries the session-start .git, not the commit whose files it runs)."""
    if os.environ.get("FEDVLA_GIT_COMMIT"):
        return os.environ["FEDVLA_GIT_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "") if out.returncode == 0 else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
