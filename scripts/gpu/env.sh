# Source on the lent GPU machine (Python 3.12, torch preinstalled, nothing else): installs the
# carried wheels and points the stack at the carried assets. Prepared here by scripts/gpu/prepare_carry.sh.
# A call carries at most 64 MiB, so the carry is split by purpose (name what the run needs):
#   .whl (sim + episode format), .whl_flwr (Flower and what the image lacks of its dependencies),
#   .gl (EGL loader), .carry (ROS .msg definitions, instruction embeddings), .carry_panda (Panda MJCF),
#   .carry_mw (Meta-World without the assets its four Table-1 tasks never open).
# Wheels land in /tmp/site, which outlives a call while the machine stays warm: a later call may
# carry only what it adds (FEDVLA_SITE_READY=1 skips nothing, it only reports what is there).
if [ -d .gl ]; then for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig; fi
for d in .whl .whl_mw .whl_flwr; do
  [ -d "$d" ] && python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site "$d"/*.whl 2>&1 | grep -v "WARNING: Target directory" || true
done
export PYTHONPATH=/tmp/site:$PWD/.carry_mw/mw_site:$PWD/src/fedvla_core:$PWD/src/fedvla_ros:$PWD/src/fedvla_flower:$PWD/src/fedvla_policy:$PWD/src/fedvla_sim:$PWD/src/fedvla_fed_client:$PWD/src/fedvla_fed_server:$PWD/src/fedvla_bringup
export PATH=/tmp/site/bin:$PATH
export MUJOCO_GL=egl PYOPENGL_PLATFORM=egl
[ -f /usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json ] && export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
[ -d .carry_panda/franka_assets ] && export FEDVLA_PANDA_ASSETS=$PWD/.carry_panda/franka_assets
export FEDVLA_LANGUAGE_CACHE=$PWD/.carry/lang_cache.pt
export AMENT_PREFIX_PATH=$PWD/.carry/ros HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
echo "site: $(ls /tmp/site 2>/dev/null | grep -c dist-info) packages (mujoco: $(ls -d /tmp/site/mujoco 2>/dev/null | wc -l), flwr: $(ls -d /tmp/site/flwr 2>/dev/null | wc -l))"
