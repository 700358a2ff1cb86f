#!/usr/bin/env bash
# Here (CPU machine): build .carry_base/, the one folder scripts/gpu/base_policy.sh needs on the GPU machine
# (with .gl): the sim/episode wheels minus what recording, training and evaluation never import (zstandard,
# toppra), the Panda MJCF minus its visual meshes (the "fast" meshes are the collision ones), the trimmed
# Meta-World, the ROS .msg definitions of the episode format, and MiniLM embeddings of every instruction:
# training and held-out phrasings of both suites (the 90 MB MiniLM itself does not fit a call's carry).
# Builds on scripts/gpu/prepare_carry.sh (run first when .whl is missing). About 37 MB.
set -euo pipefail
cd "$(dirname "$0")/../.."
[ -d .whl ] && [ -d .carry_mw/mw_site ] && [ -d .gl ] || bash scripts/gpu/prepare_carry.sh
rm -rf .carry_base && mkdir -p .carry_base/whl
for f in .whl/*.whl; do case "$f" in *zstandard*|*toppra*) ;; *) ln -f "$f" .carry_base/whl/;; esac; done
ln -f .whl_mw/glfw-*.whl .carry_base/whl/  # metaworld imports glfw (never opens a window: MUJOCO_GL=egl)
mkdir -p .carry_base/franka_assets
(cd .carry_panda/franka_assets && cp -r --parents $(find . -path ./meshes/visual -prune -o -type f -print) \
  "$OLDPWD/.carry_base/franka_assets/")
cp -r .carry/ros .carry_base/ros
cp -r .carry_mw/mw_site .carry_base/mw_site
# The committed core (model, training, episodes) and its helpers (base_policy.sh prefers them to the working tree's).
mkdir -p .carry_base/head && git archive HEAD src/fedvla_core src/fedvla_ros src/fedvla_flower | tar -x -C .carry_base/head
git rev-parse HEAD > .carry_base/head/COMMIT
# The policy package before the device-resident engine (a2a5739), for train_throughput.py's before/after rows.
mkdir -p .carry_base/legacy && git archive a2a5739^ src/fedvla_policy | tar -x -C .carry_base/legacy
git rev-parse a2a5739^ > .carry_base/legacy/COMMIT
.venv/bin/python - <<'PY'
from fedvla_core.model.encoders import FrozenSentenceEncoder
from fedvla_sim.batched_eval import PHRASING_SETS, phrasings_of
from fedvla_sim.policy_eval import all_tasks
texts = set()
for suite in ("panda", "metaworld"):
    for task in all_tasks(suite):
        for phrasing_set in PHRASING_SETS:
            try:
                texts |= set(phrasings_of(suite, task, phrasing_set))
            except ValueError as err:
                print(f"warning: {err}")
FrozenSentenceEncoder("", 32).save_cache(".carry_base/lang_cache.pt", sorted(texts))
print(f"{len(texts)} instructions cached")
PY
du -sh .carry_base .gl
