#!/usr/bin/env bash
# On the GPU machine: demonstrations at scale, training and held-out evaluation of checkpoints/panda_base.
# Prepared here by scripts/gpu/prepare_base_carry.sh; device run, carry [.gl, .carry_base]:
#   PHASES="record_panda train_bg record_mw train_mw_bg eval_old" bash scripts/gpu/base_policy.sh   # call 1
#   PHASES="wait_train eval_new eval_mw pack" bash scripts/gpu/base_policy.sh                      # call 2
# train_bg starts the training variants in their own process session (setsid), so they outlive call 1 and
# train while the CPU records Meta-World and evaluates the old base; call 2 (the machine stays warm and
# keeps data/ while calls follow each other) waits for them. PHASES="record eval_old train eval_new" does
# the same one step after the other.
# Measured on the lent machine (2026-12-02): it is released 30 s after a call ends, so train_bg across calls only
# works when the next call follows at once; a refused start still costs ~90 s of device time. throughput_bg's
# deadline counts from its start, and its children build 4096 synthetic samples first: with recorders loading the
# CPU, THROUGHPUT_S below ~240 s timed no row at all. Safest: one self-contained call per step.
# Each phase skips what is already done (episodes on disk, trained variants, written evals), so a call
# cut off at its limit is resumed by calling the same phase again. Work lives in data/base (demos,
# variants, evals) on the machine; only small results go to $OUT (at most 8 files, each < 16 MB).
# Knobs: EPISODES (200 per task), EVAL_SEEDS (50), TRAIN_S (time guard per variant; the variants train at
# once), VARIANTS ("name:fedvla-train flags;...": give each --max-steps so its cosine schedule ends within
# TRAIN_S), WAIT_NAMES (wait_train waits only for these variants), THROUGHPUT_S (deadline of throughput_bg), WORKERS (one per core), EVAL_TASKS and PHRASINGS (default: all tasks, both phrasing sets).
set -euo pipefail
t0=$SECONDS
log() { echo "[base $(date -u +%H:%M:%S) +$((SECONDS - t0))s] $*"; }
# --- environment: carried wheels, EGL loader, assets, instruction embeddings ---------------------------------
if [ -d .gl ] && ! ldconfig -p | grep -q libEGL.so.1; then for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig; fi
if ! python3 -c "import mujoco" 2>/dev/null && [ "$(cat /tmp/site/.installed 2>/dev/null)" != "$(ls .carry_base/whl)" ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
    .carry_base/whl/*.whl 2>&1 | grep -v "WARNING: Target directory" || true
  ls .carry_base/whl > /tmp/site/.installed
fi
# The core (model, training, episodes) comes from the commit snapshot in .carry_base/head when there is one (what
# was committed when the carry was prepared), so other engineers' half-done edits never travel into a run.
HEAD_SRC=$PWD/src; [ -d .carry_base/head/src ] && HEAD_SRC=$PWD/.carry_base/head/src
export PYTHONPATH=/tmp/site:$PWD/.carry_base/mw_site:$HEAD_SRC/fedvla_core:$PWD/src/fedvla_sim:$HEAD_SRC/fedvla_ros:$HEAD_SRC/fedvla_flower
export MUJOCO_GL=egl PYOPENGL_PLATFORM=egl PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
[ -f /usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json ] && \
  export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
export FEDVLA_PANDA_ASSETS=$PWD/.carry_base/franka_assets FEDVLA_LANGUAGE_CACHE=$PWD/.carry_base/lang_cache.pt
export AMENT_PREFIX_PATH=$PWD/.carry_base/ros
OUT=${OUT:-out}; mkdir -p "$OUT"
WORK=${WORK:-data/base}; mkdir -p "$WORK"
WORKERS=${WORKERS:-$(nproc)}
EPISODES=${EPISODES:-200}; EVAL_SEEDS=${EVAL_SEEDS:-50}; TRAIN_S=${TRAIN_S:-420}
# --schedule-clock time: each variant's cosine runs over TRAIN_S (after compilation), so it anneals fully at
# whatever step rate the machine gives; --max-steps only caps the run.
CLOCK="--schedule-clock time --max-steps 200000"
VARIANTS=${VARIANTS:-"b256:--batch-size 256 --lr 6e-4 $CLOCK;b512:--batch-size 512 --lr 1e-3 $CLOCK;b256_h20:--batch-size 256 --lr 6e-4 --chunk-size 20 $CLOCK"}
BASE_FLAGS="--model relative_action_dims=7 --model image_shift_aug=4 --model vision_stem=conv \
  --model spatial_keypoints=32 --model iosp_topk=16 --model proprio_dropout=0.3 --no-progress"
MW_VARIANTS=${MW_VARIANTS:-"mw_central:--batch-size 256 --lr 6e-4 $CLOCK"}
MW_BASE_FLAGS="--model vision_stem=conv --model spatial_keypoints=32 --model iosp_topk=16 --model proprio_dropout=0.3 \
  --model image_shift_aug=4 --no-progress"
EVAL_FLAGS=""
[ -n "${EVAL_TASKS:-}" ] && EVAL_FLAGS="$EVAL_FLAGS --tasks $EVAL_TASKS"
[ -n "${PHRASINGS:-}" ] && EVAL_FLAGS="$EVAL_FLAGS --phrasings $PHRASINGS"
SIM="python3 -m fedvla_sim.cli"
# Cores left for sims while training variants run in the background (2 cores kept for each).
free_workers() { local n=$WORKERS; [ -f "$WORK/train.running" ] && n=$((WORKERS - 2 * $(wc -l < "$WORK/train.running"))); echo $((n > 0 ? n : 1)); }
filter() { grep -v -e "EGLError" -e "Exception ignored" -e "glCheckError" -e "Loading weights" -e "it/s]" -e "ep/s]" || true; }

for phase in ${PHASES:-record eval_old train eval_new pack}; do
  log "phase $phase"
  case $phase in
  record|record_panda|record_mw)
    case $phase in record_panda) sel="--tasks $(python3 -c "from fedvla_sim.tasks import TASKS; print(' '.join('panda/' + t for t in TASKS))")";;
                   record_mw) sel="--tasks $(python3 -c "from fedvla_sim.metaworld_env import METAWORLD_TASKS as T; print(' '.join('metaworld/' + t for t in T))")" \
                              ; sel="$sel --workers $(free_workers)";;
                   *) sel="";; esac
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name --format=csv,noheader > "$OUT/device.txt" || true
    # shellcheck disable=SC2086
    $SIM record-suite --episodes "$EPISODES" --workers "$WORKERS" --out "$WORK/demos" \
      --manifest "$WORK/demos/manifest_$phase.json" ${RECORD_FLAGS:-} $sel 2>&1 | filter | tee "$WORK/$phase.log"
    du -sh "$WORK"/demos/*/* | tee -a "$WORK/$phase.log"
    cp "$WORK/demos/manifest_$phase.json" "$WORK/$phase.log" "$OUT/";;
  throughput_bg)
    # benchmarks/train_throughput.py (issue 13's table) in its own session: one child per FFN kind x batch size,
    # plus the engine before the device-resident path (.carry_base/legacy); timed parts take a lock, one at a time.
    export FEDVLA_POLICY_SRC=$HEAD_SRC/fedvla_core FEDVLA_GIT_COMMIT=$(cat .carry_base/head/COMMIT 2>/dev/null || echo unknown)
    legacy=(--legacy-src .carry_base/legacy/src/fedvla_policy --legacy-commit "$(cat .carry_base/legacy/COMMIT)")
    [ "${THROUGHPUT_LEGACY:-1}" = 1 ] || legacy=()
    # shellcheck disable=SC2086
    setsid python3 benchmarks/train_throughput.py --device cuda --parallel --deadline-s "${THROUGHPUT_S:-200}" \
      --kinds ${THROUGHPUT_KINDS:-dgmoe topk dense} "${legacy[@]}" \
      --label "${THROUGHPUT_LABEL:-recording demos on the CPU cores meanwhile}" --output "$WORK/train_throughput.json" \
      > "$WORK/throughput.log" 2>&1 < /dev/null &
    echo $! > "$WORK/throughput.pid";;
  throughput_wait)
    while kill -0 "$(cat "$WORK/throughput.pid")" 2>/dev/null; do sleep 3; done
    grep -e "ms/step" -e "children exited" "$WORK/throughput.log" | tail -40 || true
    cp "$WORK/train_throughput.json" "$WORK/throughput.log" "$OUT/" 2>/dev/null || true;;
  eval_old)
    free=$(free_workers)
    [ -f "$WORK/old_base_eval.json" ] || $SIM eval-suite --checkpoint checkpoints/panda_base --seeds "$EVAL_SEEDS" $EVAL_FLAGS \
      --workers "$free" --out "$WORK/old_base_eval.json" --media-dir "$WORK/media_old" 2>&1 | filter | tee "$WORK/eval_old.log"
    cp "$WORK/old_base_eval.json" "$OUT/"
    [ -d "$WORK/media_old" ] && tar czf "$OUT/media_old.tgz" -C "$WORK" media_old;;
  train|train_bg|train_mw_bg|wait_train)
    # Panda variants train on demos/panda, Meta-World ones (MW_VARIANTS) on demos/metaworld; the names of the
    # running ones are in train.running, so wait_train (or train) waits for every variant started so far.
    if [ "$phase" = train_mw_bg ]; then specs_text=$MW_VARIANTS; suite=metaworld; flags0=$MW_BASE_FLAGS
    else specs_text=$VARIANTS; suite=panda; flags0=$BASE_FLAGS; fi
    if [ "$phase" != wait_train ]; then
      IFS=';' read -ra specs <<< "$specs_text"
      for spec in "${specs[@]}"; do
        name=${spec%%:*}; flags=${spec#*:}
        [ -f "$WORK/variants/$name/config.json" ] && continue
        echo "python3 -m fedvla_core.train_cli --episodes $WORK/demos/$suite/* --output $WORK/variants/$name \
--device ${TRAIN_DEVICE:-cuda} --max-time-s $TRAIN_S $flags0 $flags" > "$WORK/$name.train.cmd"
        setsid bash "$WORK/$name.train.cmd" > "$WORK/$name.train.log" 2>&1 < /dev/null &
        echo "$name" >> "$WORK/train.running"
      done
      log "training in the background: $specs_text"
    fi
    if [ "$phase" = train ] || [ "$phase" = wait_train ]; then
      for name in ${WAIT_NAMES:-$(cat "$WORK/train.running" 2>/dev/null)}; do
        while [ ! -f "$WORK/variants/$name/metrics.json" ] && pgrep -f -- "--output $WORK/variants/$name " >/dev/null; do
          sleep 5; done
        tail -2 "$WORK/$name.train.log"
      done
      [ -n "${WAIT_NAMES:-}" ] || rm -f "$WORK/train.running"
    fi;;
  train_peek)
    # the running variants' first log lines after PEEK_S seconds (a crash shows before the next call)
    sleep "${PEEK_S:-45}"
    for name in $(cat "$WORK/train.running" 2>/dev/null); do echo "== $name"; grep -v "Loading weights" "$WORK/$name.train.log" | tail -3; done;;
  eval_mw)
    IFS=';' read -ra specs <<< "$MW_VARIANTS"
    for spec in "${specs[@]}"; do
      name=${spec%%:*}
      [ -f "$WORK/$name.eval.json" ] || $SIM eval-suite --suite metaworld --checkpoint "$WORK/variants/$name" \
        --seeds "$EVAL_SEEDS" ${MW_PHRASINGS:+--phrasings $MW_PHRASINGS} --workers "$(free_workers)" \
        --out "$WORK/$name.eval.json" --media-dir "$WORK/media_$name" > "$WORK/$name.eval.log" 2>&1
      python3 -c "import json; r = json.load(open('$WORK/$name.eval.json')); print('$name', r['per_task_success'], r['mean_success'])"
    done;;
  eval_new)
    IFS=';' read -ra specs <<< "$VARIANTS"
    n=${#specs[@]}
    for spec in "${specs[@]}"; do
      name=${spec%%:*}
      [ -f "$WORK/$name.eval.json" ] || $SIM eval-suite --checkpoint "$WORK/variants/$name" --seeds "$EVAL_SEEDS" $EVAL_FLAGS \
        --workers $(( (WORKERS + n - 1) / n )) --out "$WORK/$name.eval.json" --media-dir "$WORK/media_$name" \
        > "$WORK/$name.eval.log" 2>&1 &
    done
    wait
    best=$(python3 - "$WORK" "${specs[@]%%:*}" <<'PY'
import json, sys
work, names = sys.argv[1], sys.argv[2:]
rows = []
for name in names:
    try:
        r = json.load(open(f"{work}/{name}.eval.json"))
    except FileNotFoundError:
        continue
    print(name, round(r["mean_success"], 3), r.get("mean_success_by_phrasing"),
          {k: round(v, 2) for k, v in r["per_task_success"].items()}, file=sys.stderr)
    rows.append((r["mean_success"], name))
print(max(rows)[1])
PY
)
    log "best: $best"
    python3 - "$WORK/variants/$best" "$OUT/panda_base" <<'PY'
import sys
from fedvla_core.model import FedVLAPolicy
FedVLAPolicy.from_pretrained(sys.argv[1]).save_pretrained(sys.argv[2], max_shard_size="12MB")
PY
    echo "$best" > "$WORK/best.txt";;
  eval_te)
    # the chosen variant once more with ACT temporal ensembling (TE = its weight m), trained phrasings only
    best=$(cat "$WORK/best.txt")
    [ -f "$WORK/${best}_te.eval.json" ] || $SIM eval-suite --checkpoint "$WORK/variants/$best" --seeds "$EVAL_SEEDS" \
      $EVAL_FLAGS --phrasings trained --temporal-ensemble "${TE:-0.1}" --workers "$(free_workers)" \
      --out "$WORK/${best}_te.eval.json" > "$WORK/${best}_te.eval.log" 2>&1
    python3 -c "import json; r = json.load(open('$WORK/${best}_te.eval.json')); print('te', r['per_task_success'], r['mean_success'])";;
  pack)
    # with eval_new's panda_base/ (4 files): one tarball of every eval, log, training command and failure GIF
    tar czf "$OUT/evals_media.tgz" -C "$WORK" $(cd "$WORK" && ls best.txt *.eval.json *.eval.log *.train.log \
      *.train.cmd variants/*/metrics.json 2>/dev/null; ls -d media_* 2>/dev/null | grep -v media_old);;
  *) echo "unknown phase $phase"; exit 2;;
  esac
done
log "done"
