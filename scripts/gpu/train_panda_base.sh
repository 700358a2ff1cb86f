#!/usr/bin/env bash
# On the GPU machine: record Panda demonstrations for every task, train the base checkpoint that
# the fleet demo starts from, and write it (sharded, each file < 16 MB) plus logs to $OUT.
#   device run: carry [.whl, .gl, .carry], command: bash scripts/gpu/train_panda_base.sh
set -euo pipefail
. scripts/gpu/env.sh
EPISODES=${EPISODES:-60}; STEPS=${STEPS:-6000}; WORKERS=${WORKERS:-14}
mkdir -p data/panda_demos "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader | tee "$OUT/device.txt"
[ "$(ls data/panda_demos | wc -l)" -ge $((6 * EPISODES)) ] && SKIP_RECORD=1
for task in put_red_block_in_bowl pick_up_green_block stack_red_on_green put_blue_block_in_bowl \
            push_blue_block_left put_red_and_green_in_bowl; do
  [ -n "${SKIP_RECORD:-}" ] && break
  python3 -m fedvla_sim.cli record --suite panda --task "$task" --episodes "$EPISODES" --out data/panda_demos \
    --workers "$WORKERS" --seed-start 1000 --robot-id demo 2>&1 | grep -v "ep/s" | tail -3
done 2>&1 | tee "$OUT/record.log"
python3 -m fedvla_policy.train_cli --episodes data/panda_demos --output data/panda_base --device cuda \
  --max-steps "$STEPS" --max-time-s "${MAX_TIME:-330}" --batch-size 64 --lr 3e-4 --num-workers 4 --no-progress \
  --model proprio_dropout=0.5 --model image_shift_aug=4 2>&1 | tee "$OUT/train.log"
python3 - <<'PY'
import os
from fedvla_policy.model import FedVLAPolicy
p = FedVLAPolicy.from_pretrained("data/panda_base")
p.save_pretrained(os.path.join(os.environ["OUT"], "panda_base"), max_shard_size="12MB")
PY
cp data/panda_base/metrics.json "$OUT/panda_base/metrics.json"
