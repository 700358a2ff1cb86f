"""MoveIt 2's time parameterization (moveit_py, TOTG) as a motion backend, on a real ROS 2 + MoveIt install.

It lives in the ROS adapter, not in fedvla_core.control.motion, because moveit_py is a ROS library
(rclpy underneath). Optional: ``moveit_available()`` is False here (MoveIt is not installable from PyPI),
and the server then uses the core's toppra backend. Limits are enforced the same way as toppra's.
"""
from __future__ import annotations

import logging

import numpy as np

from fedvla_core.control.motion import JointSpaceBackend, MotionConfig, PlannedTrajectory, enforce_limits
from fedvla_core.embodiment import GRIPPER_JOINT, PANDA_LIMITS, JointLimits

log = logging.getLogger(__name__)


class MoveItBackend(JointSpaceBackend):
    """Time parameterization by moveit_py (TOTG) when MoveIt 2 is installed; same limit enforcement."""

    kind = "moveit"

    def __init__(self, moveit_robot, group: str = "panda_arm", limits: JointLimits = PANDA_LIMITS,
                 config: MotionConfig | None = None, gripper_joint: str | None = GRIPPER_JOINT):
        super().__init__(limits, config, gripper_joint)
        from moveit.core.robot_state import RobotState  # type: ignore
        from moveit.core.robot_trajectory import RobotTrajectory  # type: ignore

        self._RobotState, self._RobotTrajectory = RobotState, RobotTrajectory
        self.robot_model = moveit_robot.get_robot_model()
        self.group = group

    def _finish(self, waypoints, fingers, current, current_velocity, nominal, report) -> PlannedTrajectory:
        try:
            trajectory = self._RobotTrajectory(self.robot_model)
            for q in waypoints:
                state = self._RobotState(self.robot_model)
                state.set_joint_group_positions(self.group, q)
                trajectory.add_suffix_waypoint(state, 0.0)
            trajectory.apply_totg_time_parameterization(self.config.velocity_scale, self.config.acceleration_scale)
            msg = trajectory.get_robot_trajectory_msg().joint_trajectory
            t = np.array([p.time_from_start.sec + 1e-9 * p.time_from_start.nanosec for p in msg.points])
            q = np.array([p.positions for p in msg.points])
            qd = np.array([p.velocities or [0.0] * self.limits.dof for p in msg.points])
            qdd = np.array([p.accelerations or [0.0] * self.limits.dof for p in msg.points])
        except Exception as exc:  # noqa: BLE001 - fall back to toppra on any MoveIt failure
            log.warning("moveit_py time parameterization failed (%s); using toppra", exc)
            return super()._finish(waypoints, fingers, current, current_velocity, nominal, report)
        if nominal > t[-1] > 0:
            s = nominal / t[-1]
            t, qd, qdd = t * s, qd / s, qdd / s ** 2
        finger = self._finger_along(np.linspace(0.0, 1.0, len(t)), current, fingers) if self.gripper_joint else None
        traj = PlannedTrajectory(self.joint_names, t, *self._with_gripper(q, qd, qdd, finger), report)
        return enforce_limits(traj, self.limits, self.config)


def moveit_available() -> bool:
    """True when moveit_py imports (a real MoveIt 2 install)."""
    try:
        import moveit.core  # type: ignore  # noqa: F401
    except Exception:  # noqa: BLE001
        return False
    return True
