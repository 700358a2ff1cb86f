#!/usr/bin/env bash
# The README's test command: set up (idempotent) and run the whole test suite.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$ROOT/scripts/bootstrap.sh"
cd "$ROOT"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST MUJOCO_GL="${MUJOCO_GL:-egl}" HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# Test files run in parallel, one pytest-xdist worker per CPU (PYTEST_XDIST_AUTO_NUM_WORKERS=N sets another
# number; `-n 0` after the command runs serially). --dist loadfile keeps a file in one worker, so module-scoped
# fixtures (a recorded episode, a trained tiny policy) are built once; --no-loadscope-reorder hands files out in
# collection order, where tests/conftest.py puts the files of `slow` tests first. Each worker draws ROS domain ids
# from its own slice (tests/conftest.py) and every fixture writes under its own tmp_path.
exec "$ROOT/.venv/bin/python" -m pytest -n auto --dist loadfile --no-loadscope-reorder "$@"
