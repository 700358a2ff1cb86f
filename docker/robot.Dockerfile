# One robot: sim arm (optional), policy action server, fed client + Flower SuperNode.
# Mirrors scripts/bootstrap.sh step for step, on a real ROS 2 base image instead of PyPI ROS wheels.
#   docker build -f docker/robot.Dockerfile -t fedvla-robot .
FROM ros:kilted-ros-base

# 1. Debian packages (bootstrap step 1): compiler + cmake come with the base image; EGL/OSMesa for MuJoCo.
RUN apt-get update && apt-get install -y --no-install-recommends \
        python3-pip python3-venv python3-colcon-common-extensions \
        libegl1 libegl-mesa0 libgl1-mesa-dri libgbm1 libosmesa6 \
    && rm -rf /var/lib/apt/lists/*

# 2. Python packages (bootstrap step 2), in a venv that sees the system's rclpy. ROS itself comes from
#    the base image, so requirements-ros.txt is skipped; torch is the CPU build.
WORKDIR /opt/fedvla
COPY requirements-ml.txt requirements-nodeps.txt constraints.txt ./
RUN python3 -m venv --system-site-packages /opt/fedvla/venv \
    && /opt/fedvla/venv/bin/pip install --no-cache-dir --extra-index-url https://download.pytorch.org/whl/cpu \
        -r requirements-ml.txt -c constraints.txt \
    && /opt/fedvla/venv/bin/pip install --no-cache-dir --no-deps -r requirements-nodeps.txt
ENV PATH=/opt/fedvla/venv/bin:$PATH MUJOCO_GL=egl HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1

# 3-5. Build the interfaces and the ament_python packages with colcon (the path fix is not needed
#      with a real ROS install).
COPY src ./src
RUN . /opt/ros/kilted/setup.sh \
    && colcon build --base-paths src --merge-install --install-base /opt/fedvla/install \
        --cmake-args -DBUILD_TESTING=OFF -DPython3_EXECUTABLE=/opt/fedvla/venv/bin/python
COPY docker/entrypoint.sh /entrypoint.sh
ENTRYPOINT ["/entrypoint.sh"]
CMD ["ros2", "launch", "fedvla_bringup", "robot.launch.py", "sim:=true"]
