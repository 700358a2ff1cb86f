#!/usr/bin/env bash
# Build the real ROS 2 CLI (ros2 launch / run / action / node / topic ...) from public sources,
# OUTSIDE the repo, layered on the repo's .venv, to check the stack as a ROS 2 user would.
#
# MANUAL CHECK ONLY: not part of CI, not part of bootstrap, and nothing in the project depends on it.
# launch, launch_ros and ros2cli are on no package registry here, so their sources come from git
# mirrors (ros2/launch, ros2/launch_ros, ros2/ros2cli, ros2/rosidl_runtime_py, ros2/rcl_interfaces)
# that you point this script at; nothing is written into the repo or into .venv.
#
# Usage:  scripts/verify_ros2cli.sh build            # -> $PREFIX (default /tmp/ros2cli_venv)
#         source <(scripts/verify_ros2cli.sh env)    # puts `ros2` on PATH for this shell
#         scripts/verify_ros2cli.sh check            # every check; logs + summary.tsv in $PREFIX/logs
# Env:    MIRRORS  folder holding ros2+<name>/repo bare git mirrors (default /work/.mirror)
#         REF      branch or commit of every mirror (default rolling; no kilted branch in the snapshots)
#         PREFIX   where the CLI goes (default /tmp/ros2cli_venv)
#         check:   ROS_DOMAIN_ID (77), LOGS ($PREFIX/logs), CKPT (checkpoints/panda_base), ACCEPTED (goal text),
#                  MAX_STEPS (30; 0 = the server's default). Results: docs/ros2cli_check.md.
#
# Layering: the CLI is pip-installed with .venv's own interpreter under --prefix $PREFIX, so its
# scripts run .venv/bin/python (rclpy, the ROS wheels' bootstrapper and the fedvla packages come from
# .venv) and PYTHONPATH adds $PREFIX's site-packages. composition_interfaces (imported by
# launch_ros.actions, shipped by no wheel) is built with cmake against .venv into $PREFIX, so
# LD_LIBRARY_PATH gets $PREFIX/lib. AMENT_PREFIX_PATH lists $PREFIX and .venv.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
V="$ROOT/.venv"
MIRRORS="${MIRRORS:-/work/.mirror}"
REF="${REF:-rolling}"
PREFIX="${PREFIX:-/tmp/ros2cli_venv}"
SRC="${PREFIX}_src"
SP="$PREFIX/lib/python3.11/site-packages"

print_env() {
  cat <<EOF
export PATH="$PREFIX/bin:$V/bin:\$PATH"
export PYTHONPATH="$SP\${PYTHONPATH:+:\$PYTHONPATH}"
export LD_LIBRARY_PATH="$PREFIX/lib\${LD_LIBRARY_PATH:+:\$LD_LIBRARY_PATH}"
export AMENT_PREFIX_PATH="$PREFIX:$V"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
EOF
}

build() {
  [[ -x "$V/bin/python" ]] || { echo "run scripts/bootstrap.sh first ($V missing)" >&2; exit 1; }
  rm -rf "$SRC" && mkdir -p "$SRC" "$PREFIX"
  # repo : folders taken from it
  local -A parts=(
    [launch]="launch launch_xml launch_yaml"
    [launch_ros]="launch_ros ros2launch"
    [ros2cli]="ros2cli ros2pkg ros2run ros2topic ros2action ros2interface ros2node ros2service ros2param"
    [rosidl_runtime_py]="."
    [rcl_interfaces]="composition_interfaces"
  )
  : > "$SRC/COMMITS"
  for repo in "${!parts[@]}"; do
    local gd="$MIRRORS/ros2+$repo/repo"
    [[ -d "$gd" ]] || { echo "missing mirror $gd (fetch github:ros2/$repo)" >&2; exit 1; }
    echo "ros2/$repo $(git --git-dir="$gd" rev-parse "$REF") $(git --git-dir="$gd" log -1 --format=%ci "$REF")" >> "$SRC/COMMITS"
    mkdir -p "$SRC/$repo"
    # shellcheck disable=SC2086
    git --git-dir="$gd" archive "$REF" ${parts[$repo]} | tar -x -C "$SRC/$repo"
  done
  cat "$SRC/COMMITS"

  # composition_interfaces: rosidl package, built against the ROS wheels in .venv.
  # ament_index_get_resources (typesupport lookup) reads AMENT_PREFIX_PATH; the wheels live in .venv.
  AMENT_PREFIX_PATH="$V" cmake -S "$SRC/rcl_interfaces/composition_interfaces" -B "$SRC/build_ci" -DCMAKE_PREFIX_PATH="$V" \
        -DCMAKE_INSTALL_PREFIX="$PREFIX" -DPython3_EXECUTABLE="$V/bin/python" -DBUILD_TESTING=OFF \
        -DCMAKE_BUILD_TYPE=Release > "$SRC/build_ci.log" 2>&1 || { tail -40 "$SRC/build_ci.log"; exit 1; }
  cmake --build "$SRC/build_ci" -j"$(nproc)" >> "$SRC/build_ci.log" 2>&1 || { tail -40 "$SRC/build_ci.log"; exit 1; }
  cmake --install "$SRC/build_ci" >> "$SRC/build_ci.log" 2>&1 || { tail -40 "$SRC/build_ci.log"; exit 1; }

  local pip=("$V/bin/python" -m pip --disable-pip-version-check -q install --prefix "$PREFIX" --no-warn-script-location)
  "${pip[@]}" osrf-pycommon argcomplete psutil
  local l="$SRC/launch" lr="$SRC/launch_ros" c="$SRC/ros2cli"
  "${pip[@]}" --no-deps --no-build-isolation "$SRC/rosidl_runtime_py" "$l/launch" "$l/launch_xml" "$l/launch_yaml" \
    "$lr/launch_ros" "$lr/ros2launch" "$c/ros2cli" "$c/ros2pkg" "$c/ros2run" "$c/ros2topic" "$c/ros2action" \
    "$c/ros2interface" "$c/ros2node" "$c/ros2service" "$c/ros2param"
  print_env > "$PREFIX/env.sh"
  echo "built: $PREFIX   (source $PREFIX/env.sh)"
}

# ---- check: every verification, logs in $LOGS, one line per check in $LOGS/summary.tsv ------------
LOGS="${LOGS:-$PREFIX/logs}"
ACCEPTED="${ACCEPTED:-put the red block in the bowl}"   # fedvla_sim TASKS['put_red_block_in_bowl'].phrasings[0]
CKPT="${CKPT:-$ROOT/checkpoints/panda_base}"

row() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" | tee -a "$LOGS/summary.tsv"; }  # name, pass|FAIL, observed
wait_for() {  # wait_for SECONDS CMD...: until CMD succeeds
  local end=$((SECONDS + $1)); shift
  until "$@" >/dev/null 2>&1; do ((SECONDS < end)) || return 1; sleep 1; done
}
has_nodes() { local l; l=$(timeout --foreground 20 ros2 node list 2>/dev/null); for n in "$@"; do grep -qx "$n" <<<"$l" || return 1; done; }
has_action() { timeout --foreground 20 ros2 action list 2>/dev/null | grep -qx "$1"; }

# check_launch NAME ARGS...  (GOAL=instruction in the environment: also send one goal before the SIGINT): start `ros2 launch ARGS`, wait for its nodes and action, one SIGINT to
# the launch process only, then exit code 0 and no Traceback/KeyboardInterrupt in its output.
check_launch() {
  local name=$1; shift
  local log="$LOGS/$name.log"
  env --default-signal=INT ros2 launch "$@" > "$log" 2>&1 &
  local pid=$!
  local want=(/policy_server /fed_client); [[ " $* " == *" sim:=true "* ]] && want+=(/sim_robot)
  if wait_for 120 has_nodes "${want[@]}" && wait_for 120 has_action /execute_instruction; then
    { timeout --foreground 20 ros2 node list; timeout --foreground 20 ros2 action list -t; } > "$LOGS/$name.graph" 2>&1
    row "$name: nodes up" pass "$(tr '\n' ' ' < "$LOGS/$name.graph")"
  else
    row "$name: nodes up" FAIL "nodes/action not seen in 240 s; log tail: $(tail -3 "$log" | tr '\n' ' ')"
  fi
  if [[ -n "${GOAL:-}" ]]; then
    sleep 5
    send_goal "$name.goal" "$GOAL" "${MAX_STEPS:-30}"
    grep -q "Goal finished with status" "$LOGS/$name.goal.log" \
      && row "$name: send_goal" pass "$(grep -E 'steps|reason|status' "$LOGS/$name.goal.log" | tr -s ' \n' ' ')" \
      || row "$name: send_goal" FAIL "$(tail -6 "$LOGS/$name.goal.log" | tr '\n' ' ')"
  fi
  sleep 2
  kill -INT "$pid" 2>/dev/null || true
  local rc=0; wait "$pid" || rc=$?
  local tb; tb=$(grep -cE 'Traceback|KeyboardInterrupt' "$log" || true)
  if [[ $rc == 0 && $tb == 0 ]]; then row "$name: one SIGINT" pass "rc=0, no Traceback/KeyboardInterrupt"
  else row "$name: one SIGINT" FAIL "rc=$rc, Traceback/KeyboardInterrupt lines: $tb; $(grep -E 'died|exit code' "$log" | tr '\n' ' ')"; fi
  local nr; nr=$(grep -c 'never retrieved' "$log" || true)
  ((nr == 0)) || row "$name: shutdown noise" note "$nr line(s): $(grep -m1 'never retrieved' "$log")"
}

# stop_run PID NAME: one SIGINT to the `ros2 run` process; if it is still there after 20 s, SIGINT its
# whole process group (what a terminal's Ctrl-C does). Records which one it took and the exit code.
stop_run() {
  local pid=$1 name=$2 log="$LOGS/$2.log" how="SIGINT to ros2 run"
  kill -INT "$pid" 2>/dev/null || true
  local end=$((SECONDS + 20))
  while kill -0 "$pid" 2>/dev/null && ((SECONDS < end)); do sleep 1; done
  if kill -0 "$pid" 2>/dev/null; then how="ros2 run waited on its child (upstream: it expects the terminal to signal the group), so SIGINT to the process group as a terminal Ctrl-C does"; kill -INT -- "-$pid"; fi
  local rc=0; wait "$pid" || rc=$?
  local tb; tb=$(grep -cE 'Traceback|KeyboardInterrupt' "$log" || true)
  local nr; nr=$(grep -c 'never retrieved' "$log" || true)
  how="$how; 'exception was never retrieved' lines: $nr"
  if [[ $rc == 0 && $tb == 0 ]]; then row "$name: Ctrl-C" pass "$how: rc=0, no traceback"
  else row "$name: Ctrl-C" FAIL "$how: rc=$rc, Traceback/KeyboardInterrupt lines: $tb"; fi
}

# send_goal NAME INSTRUCTION MAX_STEPS: one goal through `ros2 action send_goal`, its whole output kept.
send_goal() {
  local out="$LOGS/$1.log"
  local t0=$SECONDS
  timeout --foreground 300 ros2 action send_goal /execute_instruction fedvla_msgs/action/ExecuteInstruction \
    "{instruction: '$2', max_steps: $3}" > "$out" 2>&1 || true
  echo "$((SECONDS - t0))" > "$out.secs"
}

check() {
  # shellcheck disable=SC1091
  source "$PREFIX/env.sh"
  export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-77}" MUJOCO_GL=egl HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
  export ROS_LOG_DIR="$LOGS/roslog"
  rm -rf "$LOGS" && mkdir -p "$LOGS"
  # Background jobs in their own process group (set -m), and SIGINT back to default for them: a shell
  # started in the background (nohup, cron, a CI step) passes SIG_IGN for SIGINT on, and then neither
  # launch nor the nodes ever see the Ctrl-C this check sends (env --default-signal, coreutils >= 8.31).
  set -m
  cd "$ROOT"
  {
    echo "date: $(date -u +%FT%TZ)"; echo "repo: $(git -C "$ROOT" rev-parse HEAD)"; "$V/bin/python" --version
    echo "ROS_DOMAIN_ID=$ROS_DOMAIN_ID ROS_AUTOMATIC_DISCOVERY_RANGE=$ROS_AUTOMATIC_DISCOVERY_RANGE"
    cat "${PREFIX}_src/COMMITS"
  } > "$LOGS/env.txt"
  for verb in "" launch run action; do
    if timeout --foreground 60 ros2 $verb --help > "$LOGS/help_${verb:-ros2}.log" 2>&1; then
      row "ros2 $verb --help" pass "$(head -1 "$LOGS/help_${verb:-ros2}.log")"
    else row "ros2 $verb --help" FAIL "$(tail -2 "$LOGS/help_${verb:-ros2}.log" | tr '\n' ' ')"; fi
  done
  timeout --foreground 60 ros2 launch fedvla_bringup robot.launch.py --show-args > "$LOGS/show_args.log" 2>&1 \
    && row "launch --show-args" pass "$(grep -cE "^    '" "$LOGS/show_args.log") arguments" \
    || row "launch --show-args" FAIL "$(tail -3 "$LOGS/show_args.log" | tr '\n' ' ')"
  check_launch launch_by_package fedvla_bringup robot.launch.py federation:=false
  check_launch launch_by_path "$ROOT/launch/robot.launch.py" federation:=false
  GOAL="$ACCEPTED" check_launch launch_sim_goal fedvla_bringup robot.launch.py sim:=true federation:=false checkpoint:="$CKPT"
  timeout --foreground 20 ros2 daemon stop >/dev/null 2>&1 || true

  env --default-signal=INT ros2 run fedvla_sim sim_robot > "$LOGS/run_sim_robot.log" 2>&1 &
  local sim=$!
  env --default-signal=INT ros2 run fedvla_policy policy_server --ros-args -p checkpoint:="$CKPT" > "$LOGS/run_policy_server.log" 2>&1 &
  local pol=$!
  wait_for 90 has_nodes /sim_robot && row "ros2 run fedvla_sim sim_robot" pass "/sim_robot in ros2 node list" \
    || row "ros2 run fedvla_sim sim_robot" FAIL "$(tail -3 "$LOGS/run_sim_robot.log" | tr '\n' ' ')"
  if wait_for 180 has_action /execute_instruction; then
    timeout --foreground 20 ros2 action list -t > "$LOGS/action_list.log" 2>&1
    row "ros2 run fedvla_policy policy_server" pass "$(tr '\n' ' ' < "$LOGS/action_list.log")"
  else row "ros2 run fedvla_policy policy_server" FAIL "$(tail -3 "$LOGS/run_policy_server.log" | tr '\n' ' ')"; fi
  sleep 5   # first camera frames and joint states reach the server
  send_goal goal_accepted "$ACCEPTED" "${MAX_STEPS:-30}"
  if grep -q "Goal accepted" "$LOGS/goal_accepted.log" && grep -q "Goal finished with status" "$LOGS/goal_accepted.log"; then
    row "send_goal accepted instruction" pass "$(grep -E 'steps|reason|status' "$LOGS/goal_accepted.log" | tr -s ' \n' ' ') ($(cat "$LOGS/goal_accepted.log.secs") s)"
  else row "send_goal accepted instruction" FAIL "$(tail -6 "$LOGS/goal_accepted.log" | tr '\n' ' ')"; fi
  send_goal goal_ungrounded "sing a song" 30
  if grep -q "status: ABORTED" "$LOGS/goal_ungrounded.log" && grep -q "reason: .*ungrounded" "$LOGS/goal_ungrounded.log"; then
    row "send_goal 'sing a song'" pass "$(grep -E 'reason|status' "$LOGS/goal_ungrounded.log" | tr -s ' \n' ' ')"
  else row "send_goal 'sing a song'" FAIL "$(tail -6 "$LOGS/goal_ungrounded.log" | tr '\n' ' ')"; fi
  stop_run "$pol" run_policy_server
  stop_run "$sim" run_sim_robot
  timeout --foreground 20 ros2 daemon stop >/dev/null 2>&1 || true
  echo "logs: $LOGS"
}

case "${1:-}" in
  build) build ;;
  env) print_env ;;
  check) check ;;
  *) sed -n '2,17p' "$0"; exit 2 ;;
esac
