#!/usr/bin/env bash
# Idempotent set-up of the whole stack on a fresh Debian machine with no ROS installed.
#
# Both README commands (scripts/demo.sh, scripts/test.sh) run this first. Each step
# keeps a stamp (a hash of its inputs) under .venv/.stamps, so a second run with
# nothing changed only checks stamps and finishes in seconds.
#   1. Debian packages: cmake, a C/C++ compiler, the EGL/OSMesa libraries MuJoCo renders with.
#   2. .venv (Python 3.11) with every pinned Python dependency (requirements-*.txt + constraints.txt).
#   3. The rosidl path fix: the ROS wheels were built under /opt/python/cp311-cp311 and bake
#      that include path into their CMake exports; point them at this interpreter.
#   4. src/fedvla_msgs built with ament_cmake + rosidl and installed into the venv prefix.
#   5. Every ament_python package in src/ installed editable, then laid out as colcon would
#      (scripts/ament_layout.py): ament index marker, package.xml and each launch/config file linked
#      under .venv/share/<pkg>/ (like colcon --symlink-install), console scripts reachable as
#      .venv/lib/<pkg>/<exe> for `ros2 run` and launch_ros.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
V="$ROOT/.venv"
STAMPS="$V/.stamps"
log() { printf '[bootstrap] %s\n' "$*" >&2; }
hash_of() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }
stamp_ok() { [[ -f "$STAMPS/$1" && "$(cat "$STAMPS/$1")" == "$2" ]]; }
stamp_set() { mkdir -p "$STAMPS"; echo "$2" > "$STAMPS/$1"; }

# ---- 1. Debian packages ------------------------------------------------------------
DEBS=(cmake make gcc g++ libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1 libosmesa6 python3-venv)
missing=()
for p in "${DEBS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# python3-venv is only needed when the interpreter has no venv module (pyenv builds have it).
if [[ " ${missing[*]} " == *" python3-venv "* ]] && python3.11 -c "import venv, ensurepip" 2>/dev/null; then
  missing=("${missing[@]/python3-venv}")
fi
missing=($(printf '%s\n' "${missing[@]}" | grep -v '^$' || true))
if ((${#missing[@]})); then
  if [[ $(id -u) == 0 ]]; then
    log "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    log "missing Debian packages. Run, then re-run this command:"
    echo "  sudo apt-get install -y ${missing[*]}" >&2
    exit 1
  fi
fi

# ---- 2. venv + pinned Python packages ------------------------------------------------
PY="${FEDVLA_PYTHON:-$(command -v python3.11 || true)}"
if [[ -z "$PY" ]]; then
  log "Python 3.11 not found (the ROS 2 kilted wheels are cp311 only). Install python3.11 or set FEDVLA_PYTHON."
  exit 1
fi
if [[ ! -x "$V/bin/python" ]]; then
  log "creating $V with $PY"
  "$PY" -m venv "$V"
fi
PIP=("$V/bin/python" -m pip --disable-pip-version-check -q)
# The local package mirror warns about every name it does not hold; keep the log readable.
quiet_pip() { "${PIP[@]}" "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2); }
h=$(hash_of "$ROOT"/requirements-*.txt "$ROOT/constraints.txt")
if ! stamp_ok pip "$h"; then
  log "installing pinned Python packages (first run: a few minutes)"
  quiet_pip install -r "$ROOT/requirements-ros.txt" -r "$ROOT/requirements-ml.txt" -c "$ROOT/constraints.txt"
  quiet_pip install --no-deps -r "$ROOT/requirements-nodeps.txt"
  stamp_set pip "$h"
fi

# ---- 3. rosidl path fix ---------------------------------------------------------------
if grep -lq /opt/python/cp311-cp311 "$V"/share/*/cmake/export_*__rosidl_generator_pyExport.cmake 2>/dev/null; then
  PYINC=$("$V/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['include'])")
  NPINC=$("$V/bin/python" -c "import numpy; print(numpy.get_include())")
  log "applying the rosidl include-path fix ($PYINC)"
  sed -i "s#/opt/python/cp311-cp311/include/python3.11#$PYINC#g; s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$NPINC#g" \
    "$V"/share/*/cmake/export_*__rosidl_generator_pyExport.cmake
fi

# ---- 4. fedvla_msgs --------------------------------------------------------------------
MSGS="$ROOT/src/fedvla_msgs"
h=$(cd "$MSGS" && find . -type f | sort | xargs cat | sha256sum | cut -c1-16)
if ! stamp_ok fedvla_msgs "$h" || ! "$V/bin/python" -c "import fedvla_msgs.action" 2>/dev/null; then
  log "building src/fedvla_msgs (ament_cmake + rosidl)"
  B="$ROOT/build/fedvla_msgs"; mkdir -p "$B"
  cmake -S "$MSGS" -B "$B" -DCMAKE_PREFIX_PATH="$V" -DCMAKE_INSTALL_PREFIX="$V" \
        -DPython3_EXECUTABLE="$V/bin/python" -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release >"$B.log" 2>&1 \
    || { cat "$B.log" >&2; exit 1; }
  cmake --build "$B" -j"$(nproc)" >>"$B.log" 2>&1 || { tail -50 "$B.log" >&2; exit 1; }
  cmake --install "$B" >>"$B.log" 2>&1 || { tail -50 "$B.log" >&2; exit 1; }
  stamp_set fedvla_msgs "$h"
fi

# ---- 5. ament_python packages -----------------------------------------------------------
for setup in "$ROOT"/src/*/setup.py; do
  pkgdir="$(dirname "$setup")"; pkg="$(basename "$pkgdir")"
  h=$(hash_of "$setup" "$pkgdir/setup.cfg" "$pkgdir/package.xml")
  if ! stamp_ok "$pkg" "$h"; then
    log "installing $pkg (editable)"
    quiet_pip install --no-deps --no-build-isolation -e "$pkgdir"
    stamp_set "$pkg" "$h"
  fi
done
# A console script that moved between packages (fedvla-train: fedvla_policy -> fedvla_core) is deleted from
# bin/ when the package that used to own it is reinstalled after its new owner: reinstall the owner of any
# console script that is missing.
missing_owners=$("$V/bin/python" - "$V" <<'PY'
import sys
from importlib import metadata
from pathlib import Path
for dist in metadata.distributions():
    name = dist.metadata["Name"] or ""
    if name.startswith("fedvla") and any(ep.group == "console_scripts" and not (Path(sys.argv[1]) / "bin" / ep.name).exists()
                                         for ep in dist.entry_points):
        print(name)
PY
)
for pkg in $missing_owners; do
  if [[ -f "$ROOT/src/$pkg/setup.py" ]]; then
    log "reinstalling $pkg (a console script of it is missing)"
    quiet_pip install --no-deps --no-build-isolation -e "$ROOT/src/$pkg"
  fi
done
# share/<pkg>/{launch,config} as real directories of per-file links (ros2launch's os.walk does not enter a
# linked folder), package.xml + ament index marker, and lib/<pkg>/<exe> wrappers of the console scripts
# (`ros2 run` and launch_ros look there; pip writes bin/). Idempotent; stale links are removed.
"$V/bin/python" "$ROOT/scripts/ament_layout.py" --prefix "$V" --quiet >&2
log "ready: $V"
