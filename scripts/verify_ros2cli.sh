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
# Env:    MIRRORS  folder holding ros2+<name>/repo bare git mirrors (default /work/.mirror)
#         REF      branch or commit of every mirror (default rolling; no kilted branch in the snapshots)
#         PREFIX   where the CLI goes (default /tmp/ros2cli_venv)
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

case "${1:-}" in
  build) build ;;
  env) print_env ;;
  *) sed -n '2,20p' "$0"; exit 2 ;;
esac
