#!/usr/bin/env bash
# Source ROS 2 and the stack's install space, then run the command.
set -e
. /opt/ros/kilted/setup.bash
. /opt/fedvla/install/setup.bash
exec "$@"
