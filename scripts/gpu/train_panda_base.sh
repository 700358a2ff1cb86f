#!/usr/bin/env bash
# On the GPU machine: record Panda demonstrations for every task, train one or more variants of the
# base checkpoint at once (one process each, sharing the GPU), evaluate each in closed loop on
# held-out seeds, and return the best one (sharded, each file < 16 MB) plus every log in one tarball.
#   device run, carry [.whl, .gl, .carry, .carry_panda]: bash scripts/gpu/train_panda_base.sh
# VARIANTS: ';'-separated "name:--model k=v --model k2=v2 ..." (extra fedvla-train flags per variant).
set -euo pipefail
. scripts/gpu/env.sh
EPISODES=${EPISODES:-80}; STEPS=${STEPS:-40000}; MAX_TIME=${MAX_TIME:-270}; WORKERS=${WORKERS:-15}
EVAL_SEEDS=${EVAL_SEEDS:-10}; BATCH=${BATCH:-128}; LR=${LR:-4e-4}; ACTION_NOISE=${ACTION_NOISE:-0.015}
VARIANTS=${VARIANTS:-"rel_pd3:--model proprio_dropout=0.3"}
TASKS="put_red_block_in_bowl pick_up_green_block stack_red_on_green put_blue_block_in_bowl push_blue_block_left put_red_and_green_in_bowl"
mkdir -p data/panda_demos data/sweep "$OUT"
nvidia-smi --query-gpu=name --format=csv,noheader | tee data/sweep/device.txt
t0=$SECONDS
if [ "$(ls data/panda_demos | wc -l)" -lt $((6 * EPISODES)) ]; then
  for task in $TASKS; do
    python3 -m fedvla_sim.cli record --suite panda --task "$task" --episodes "$EPISODES" --out data/panda_demos \
      --workers "$WORKERS" --seed-start 1000 --robot-id demo --action-noise "$ACTION_NOISE" 2>&1 | grep -v "ep/s" | tail -3
  done > data/sweep/record.log 2>&1
fi
echo "recorded in $((SECONDS - t0)) s: $(ls data/panda_demos | wc -l) episodes"
IFS=';' read -ra specs <<< "$VARIANTS"
names=()
for spec in "${specs[@]}"; do
  name=${spec%%:*}; flags=${spec#*:}; names+=("$name")
  # shellcheck disable=SC2086
  python3 -m fedvla_core.train_cli --episodes data/panda_demos --output "data/sweep/$name" --device cuda \
    --max-steps "$STEPS" --max-time-s "$MAX_TIME" --batch-size "$BATCH" --lr "$LR" --num-workers 3 --no-progress \
    --model relative_action_dims=7 --model image_shift_aug=4 $flags > "data/sweep/$name.train.log" 2>&1 &
done
wait
echo "trained in $((SECONDS - t0)) s"
per=$(( WORKERS / ${#names[@]} )); [ "$per" -ge 1 ] || per=1
for name in "${names[@]}"; do
  tail -1 "data/sweep/$name.train.log"
  python3 -m fedvla_sim.cli eval --checkpoint "data/sweep/$name" --suite panda --seeds "$EVAL_SEEDS" --max-steps 150 \
    --workers "$per" --device cuda --out "data/sweep/$name.eval.json" > "data/sweep/$name.eval.log" 2>&1 &
done
wait
echo "evaluated in $((SECONDS - t0)) s"
best=$(python3 - "${names[@]}" <<'PY'
import json, sys
rows = []
for name in sys.argv[1:]:
    try:
        r = json.load(open(f"data/sweep/{name}.eval.json"))
    except FileNotFoundError:
        continue
    print(name, round(r["mean_success"], 3), {k: round(v, 2) for k, v in r["per_task_success"].items()}, file=sys.stderr)
    rows.append((r["mean_success"], name))
print(max(rows)[1])
PY
)
echo "best: $best"
python3 - "$best" <<'PY'
import os, sys
from fedvla_core.model import FedVLAPolicy
p = FedVLAPolicy.from_pretrained(f"data/sweep/{sys.argv[1]}")
p.save_pretrained(os.path.join(os.environ["OUT"], "panda_base"), max_shard_size="12MB")
PY
tar czf "$OUT/sweep_logs.tgz" -C data/sweep --exclude='*.safetensors' .
