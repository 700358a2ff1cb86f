"""Action chunk -> time-parameterized, limit-respecting joint trajectory.

The policy emits a chunk of H actions. This package turns a chunk into a trajectory the arm's
controller can follow, and is the one place that guarantees the arm's limits:

* joint-space chunks (absolute joint targets + gripper) keep the policy's own timing by default
  (``timing="chunk"``: action k is reached (k + 1) control periods after the plan starts, as in the
  demonstrations the policy learned from), or are time-parameterized with toppra (velocity and
  acceleration limits, ``timing="time_optimal"``) - ``JointSpaceBackend``;
* end-effector chunks (position [+ quaternion] + gripper) go through mink IK on the robot's
  MJCF first, then the same time parameterization - ``EndEffectorBackend``;
* moveit_py, when it imports, does the time parameterization (TOTG) instead - ``MoveItBackend`` in
  fedvla_policy.moveit_backend (a ROS library, so outside the core).

Every backend then runs ``enforce_limits``: position targets slightly outside the joint range
are clipped, targets too far outside make the whole chunk rejected (``MotionRejected``), and
the sampled trajectory is checked against the velocity and acceleration limits and slowed down
uniformly if it breaks one. Which limit was hit is logged and returned in ``LimitReport``.
Nothing here imports rclpy: the node converts ``PlannedTrajectory`` to a ROS message.

Modules: ``config`` (MotionConfig), ``limits`` (clipping, enforcement, the report), ``timing``
(chunk timing, toppra and its fallback, hold and stop profiles), ``backends`` (the backends and
their factory). The robot's joints and limits are ``fedvla_core.embodiment``'s.
"""
from fedvla_core.control.motion.backends import EndEffectorBackend, JointSpaceBackend, make_backend
from fedvla_core.control.motion.config import MotionConfig
from fedvla_core.control.motion.limits import (LimitReport, MotionRejected, PlannedTrajectory, clip_gripper,
                                               clip_waypoints, enforce_limits)
from fedvla_core.control.motion.timing import (chunk_timing, fallback_parameterize, hold_trajectory,
                                               stop_trajectory, toppra_parameterize)
# Defined in the embodiment; here too because every plan takes them (``limits=PANDA_LIMITS``).
from fedvla_core.embodiment import PANDA_LIMITS, JointLimits

__all__ = [
    "EndEffectorBackend", "JointLimits", "JointSpaceBackend", "LimitReport", "MotionConfig", "MotionRejected",
    "PANDA_LIMITS", "PlannedTrajectory", "chunk_timing", "clip_gripper", "clip_waypoints", "enforce_limits",
    "fallback_parameterize", "hold_trajectory", "make_backend", "stop_trajectory", "toppra_parameterize",
]
