#!/usr/bin/env bash
# Here (CPU machine): gather what the GPU machine lacks into ignored folders that `device run` carries:
# .whl (cp312 wheels: mujoco, mink, mcap, rosbags, flwr, ...), .gl (glvnd EGL loader debs),
# .carry (Panda MJCF, ROS .msg definitions for the episode format, precomputed MiniLM instruction
# embeddings: the 90 MB MiniLM itself does not fit the 64 MiB carry limit).
set -euo pipefail
cd "$(dirname "$0")/../.."
PIP=(.venv/bin/pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp
     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
     --platform manylinux2014_x86_64 --platform manylinux_2_5_x86_64 --platform manylinux1_x86_64 -d .whl)
"${PIP[@]}" mujoco==3.10.0 mink==1.3.0 daqp==0.11.0 qpsolvers==4.13.0 toppra==0.6.10 mcap==1.6.0 \
  mcap-ros2-support==0.6.0 rosbags==0.11.9 gymnasium==1.4.0 lz4==4.4.5 ruamel.yaml==0.19.1 zstandard==0.25.0 \
  absl-py==2.5.1 etils==1.15.0 PyOpenGL==3.1.10 fsspec==2026.9.0 zipp==4.1.2 importlib_resources
# Flower and those of its dependencies the GPU image lacks (grpcio, httpx, typer, ... are there), at the venv's versions.
mkdir -p .whl_flwr
flwr_deps=(flwr cryptography cffi pycparser pycryptodome iterators tomli tomli_w prompt_toolkit wcwidth SQLAlchemy greenlet
           alembic Mako uvicorn fastapi starlette pydantic pydantic_core annotated-types typing-inspection
           grpcio-health-checking typer rich protobuf pathspec packaging markupsafe)
specs=(); for p in "${flwr_deps[@]}"; do specs+=("$p==$(.venv/bin/pip show "$p" | awk '/^Version/{print $2}')"); done
"${PIP[@]/#.whl/.whl_flwr}" --platform manylinux_2_24_x86_64 --platform manylinux_2_34_x86_64 "${specs[@]}"
# The Meta-World benchmark's set (.whl_mw): .whl without the Panda-only wheels, with Meta-World's pinned
# mujoco 3.3.0 (6.6 MB instead of 21 MB), so .whl_mw + .whl_flwr + .gl + .carry + .carry_mw fit one 64 MiB call.
rm -rf .whl_mw && mkdir -p .whl_mw
for f in .whl/*.whl; do case "$f" in *mujoco-*|*zstandard*|*toppra*) ;; *) ln -f "$f" .whl_mw/;; esac; done
"${PIP[@]/#.whl/.whl_mw}" mujoco==3.3.0 glfw==2.11.0
mkdir -p .gl /tmp/amd64/partial
o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
apt-get $o update -qq && (cd .gl && apt-get $o download libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
mkdir -p .carry/ros/share .carry_panda
cp -r "$(.venv/bin/python -c 'from fedvla_sim.scene import franka_assets_dir; print(franka_assets_dir())')" .carry_panda/
for p in sensor_msgs std_msgs geometry_msgs builtin_interfaces trajectory_msgs; do
  mkdir -p .carry/ros/share/$p && cp -r .venv/share/$p/msg .carry/ros/share/$p/
done
# Meta-World without the 35 MB of assets its four Table-1 tasks never open (found by tracing file opens).
MW=$(.venv/bin/python -c 'import metaworld, os; print(os.path.dirname(metaworld.__file__))')
rm -rf .carry_mw/mw_site && mkdir -p .carry_mw/mw_site
(cd "$(dirname "$MW")" && find metaworld -path metaworld/assets -prune -o -name '*.py' -print \
  | xargs cp --parents -t "$OLDPWD/.carry_mw/mw_site")
MUJOCO_GL=egl strace -f -e trace=openat -o /tmp/mw_open.txt .venv/bin/python -c "
from fedvla_sim.metaworld_env import METAWORLD_TASKS, MetaWorldEnv
for t in METAWORLD_TASKS: MetaWorldEnv(t, 0, 32).step([0, 0, 0, 0])" >/dev/null 2>&1 || true
grep -o '"[^"]*metaworld/assets/[^"]*"' /tmp/mw_open.txt | tr -d '"' | sort -u | sed "s|^$(dirname "$MW")/||" \
  | (cd "$(dirname "$MW")" && xargs cp --parents -t "$OLDPWD/.carry_mw/mw_site")
.venv/bin/python - <<'PY'
from fedvla_core.model.encoders import FrozenSentenceEncoder
from fedvla_sim.metaworld_env import METAWORLD_TASKS
from fedvla_sim.tasks import TASKS
texts = sorted({p for t in TASKS.values() for p in t.phrasings} | {p for ps in METAWORLD_TASKS.values() for p in ps})
FrozenSentenceEncoder("", 32).save_cache(".carry/lang_cache.pt", texts)
print(f"{len(texts)} instructions cached")
PY
du -sh .whl .whl_mw .whl_flwr .gl .carry .carry_panda .carry_mw
