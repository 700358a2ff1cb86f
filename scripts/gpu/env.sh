# Source on the lent GPU machine (Python 3.12, torch preinstalled, nothing else): installs the
# carried wheels and points the stack at the carried assets. Prepared here by scripts/gpu/prepare_carry.sh.
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD/src/fedvla_policy:$PWD/src/fedvla_sim:$PWD/src/fedvla_fed_client:$PWD/src/fedvla_fed_server:$PWD/src/fedvla_bringup
export MUJOCO_GL=egl PYOPENGL_PLATFORM=egl
[ -f /usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json ] && export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
export FEDVLA_PANDA_ASSETS=$PWD/.carry/franka_assets FEDVLA_LANGUAGE_CACHE=$PWD/.carry/lang_cache.pt
export AMENT_PREFIX_PATH=$PWD/.carry/ros HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
