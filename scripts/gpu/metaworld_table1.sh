#!/usr/bin/env bash
# On the GPU machine: one phase (or all) of the Meta-World Table 1 benchmark with the full config, then
# copy the results to $OUT. A device command runs at most 10 minutes, so run the phases one call at a
# time; each phase skips finished work and stops starting new work after phase_time_budget_s (500 s),
# so calling the same phase again resumes it (the ServerApp resumes from its last round checkpoint):
#   device run: carry [.whl_mw, .whl_flwr, .gl, .carry, .carry_mw] (59 MB; scripts/gpu/prepare_carry.sh),
#               command: FEDVLA_GIT_COMMIT=<git rev-parse HEAD here> PHASE=all bash scripts/gpu/metaworld_table1.sh
#   (the machine's copy of the repo carries the session-start .git, so the commit is passed in).
#   The 2026-11-26 run: docs/metaworld_table1_analysis.md (3 calls, 22 min held: record + train, eval, resume + eval).
#   then PHASE=train (until every method says done), PHASE=eval (until every method-round is there), PHASE=report.
# The work folder (data/metaworld_table1: demos, runs, snapshots, evals) must survive between calls:
# the machine stays warm between calls; if it was given back, carry data/metaworld_table1 or start over.
set -euo pipefail
. scripts/gpu/env.sh
PHASE=${PHASE:-all}
CONFIG=${CONFIG:-benchmarks/configs/metaworld_table1_full.yaml}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/device.txt"
python3 benchmarks/metaworld_table1.py --config "$CONFIG" --phase "$PHASE" 2>&1 \
  | grep -v -e "EGLError" -e "Exception ignored" -e "glCheckError" -e "Loading weights" | tee "$OUT/$PHASE.log"
for f in benchmarks/results/metaworld_table1.json benchmarks/results/metaworld_table1_success_vs_round.png \
         benchmarks/results/metaworld_table1_expert_usage.png docs/RESULTS.md; do
  [ -f "$f" ] && cp "$f" "$OUT/"
done
# progress of every method (rounds committed, evals written), small enough to copy every time
python3 - <<'PY' | tee "$OUT/progress.txt"
import json, os, pathlib
work = pathlib.Path("data/metaworld_table1")
for run in sorted((work / "runs").glob("*")):
    latest = run / "checkpoints" / "latest.json"
    rnd = json.loads(latest.read_text())["round"] if latest.is_file() else 0
    evals = sorted(p.stem for p in (work / "eval" / run.name).glob("round_*.json"))
    print(f"{run.name:20s} round {rnd:3d}  snapshots {len(list((run / 'snapshots').glob('round_*')))}  evals {evals}")
PY
