"""Motion backends: a chunk of joint or end-effector actions -> a timed, limit-respecting trajectory.

* ``JointSpaceBackend``: absolute joint targets + gripper, timed by ``timing.chunk_timing`` (the
  default) or ``timing.toppra_parameterize``;
* ``EndEffectorBackend``: position [+ quaternion] + gripper, through mink IK on the robot's MJCF
  first, then the same timing;
* ``make_backend`` picks one; MoveIt's (``MoveItBackend`` in fedvla_policy.moveit_backend)
  subclasses ``JointSpaceBackend`` and overrides ``_finish``.

Every plan ends in ``limits.enforce_limits``.
"""
from __future__ import annotations

import logging

import numpy as np

from fedvla_core.control.motion.config import MotionConfig
from fedvla_core.control.motion.limits import (LimitReport, MotionRejected, PlannedTrajectory, clip_gripper,
                                               clip_waypoints, enforce_limits)
from fedvla_core.control.motion.timing import (chunk_timing, dedupe_waypoints, fallback_parameterize,
                                               hold_trajectory, toppra_parameterize)
from fedvla_core.embodiment import GRIPPER_JOINT, PANDA_LIMITS, JointLimits

log = logging.getLogger("fedvla_core.control.motion")


class JointSpaceBackend:
    """Chunks of absolute joint targets (+ gripper in [0, 1]) -> toppra-timed trajectory."""

    kind = "joint"

    def __init__(self, limits: JointLimits = PANDA_LIMITS, config: MotionConfig | None = None,
                 gripper_joint: str | None = GRIPPER_JOINT):
        self.limits = limits
        self.config = config or MotionConfig()
        self.gripper_joint = gripper_joint

    @property
    def joint_names(self) -> list[str]:
        return list(self.limits.names) + ([self.gripper_joint] if self.gripper_joint else [])

    def plan(self, current: np.ndarray, chunk: np.ndarray,
             current_velocity: np.ndarray | None = None, observation_age_s: float = 0.0) -> PlannedTrajectory:
        """Plan from the arm's ``current`` joint positions through every row of ``chunk``.

        chunk: (H, dof [+1]) absolute joint targets, last column the gripper when gripper_joint is set.
        current: (dof [+1]) measured positions (the gripper entry, if present, is the finger in metres).
        observation_age_s: how long ago the observation the chunk was computed from was taken (camera
        latency + inference). With timing 'chunk', action k is due (k + 1) periods after the observation,
        not after now, so the arm is where the policy meant it to be when it meant it; actions already
        due, or due within ``min_lead_s``, are skipped (benchmarks/realtime_execution.py measures why).
        """
        dof = self.limits.dof
        chunk = np.atleast_2d(np.asarray(chunk, dtype=float))
        expected = dof + (1 if self.gripper_joint else 0)
        if chunk.shape[1] != expected:
            raise MotionRejected(f"chunk has {chunk.shape[1]} columns, expected {expected} "
                                 f"({dof} joints{' + gripper' if self.gripper_joint else ''})")
        current = np.asarray(current, dtype=float)
        report = LimitReport()
        targets = clip_waypoints(chunk[:, :dof], self.limits, self.config.reject_margin, report)
        start = np.asarray(current[:dof], dtype=float)
        fingers = None
        if self.gripper_joint:
            fingers = clip_gripper(chunk[:, dof], self.config, report)
        if self.config.timing == "chunk":
            return self._chunk_timed(start, targets, fingers, current, report, observation_age_s)
        waypoints = dedupe_waypoints(np.vstack([start, targets]))
        nominal = len(chunk) * self.config.nominal_step_s
        return self._finish(waypoints, fingers, current, current_velocity, nominal, report)

    def _chunk_timed(self, start, targets, fingers, current, report, observation_age_s: float = 0.0) -> PlannedTrajectory:
        """The policy's own timing (``chunk_timing``), the gripper along with the arm."""
        keep, t, q, qd, qdd = chunk_timing(start, targets, self.limits, self.config, report, observation_age_s)
        if fingers is not None:
            fingers = fingers[keep]
        finger = np.concatenate([[self._start_finger(current, fingers)], fingers]) if self.gripper_joint else None
        traj = PlannedTrajectory(self.joint_names, t, *self._with_gripper(q, qd, qdd, finger), report)
        slowed = report.slowed_down_by
        traj = enforce_limits(traj, self.limits, self.config)  # positions; velocities are within limits already
        traj.report.slowed_down_by = max(slowed, traj.report.slowed_down_by)
        return traj

    def _finish(self, waypoints, fingers, current, current_velocity, nominal, report) -> PlannedTrajectory:
        dof = self.limits.dof
        if len(waypoints) < 2:
            traj = hold_trajectory(waypoints[0], list(self.limits.names), duration=max(nominal, 0.1))
            t, q, qd, qdd, frac = traj.times, traj.positions, traj.velocities, traj.accelerations, np.array([0.0, 1.0])
        else:
            vel = None if current_velocity is None else np.asarray(current_velocity, dtype=float)[:dof]
            result = None
            try:
                result = toppra_parameterize(waypoints, self.limits, self.config, vel, nominal)
            except Exception as exc:  # noqa: BLE001 - toppra raises various numerical errors
                log.warning("toppra failed (%s); using rest-to-rest segments", exc)
            if result is None:
                result = fallback_parameterize(waypoints, self.limits, self.config, nominal)
            t, q, qd, qdd, frac = result
        finger = self._finger_along(frac, current, fingers) if self.gripper_joint else None
        traj = PlannedTrajectory(self.joint_names, np.asarray(t, float), *self._with_gripper(q, qd, qdd, finger), report)
        return enforce_limits(traj, self.limits, self.config)

    def _start_finger(self, current, fingers) -> float:
        """The finger where the plan starts: measured when ``current`` has it, else the first command."""
        dof = self.limits.dof
        return float(np.clip(current[dof], 0.0, self.config.gripper_max)) if len(current) > dof else float(fingers[0])

    def _finger_along(self, frac, current, fingers) -> np.ndarray:
        """The gripper follows the arm's progress (path fraction 0..1) through the chunk's finger commands."""
        path = np.concatenate([[self._start_finger(current, fingers)], fingers])
        return np.interp(frac, np.linspace(0.0, 1.0, len(path)), path)

    @staticmethod
    def _with_gripper(q, qd, qdd, finger):
        """(positions, velocities, accelerations) with the finger column appended (zero rates) when there is one."""
        if finger is None:
            return q, qd, qdd
        zeros = np.zeros(len(q))
        return np.column_stack([q, finger]), np.column_stack([qd, zeros]), np.column_stack([qdd, zeros])


class EndEffectorBackend(JointSpaceBackend):
    """Chunks of end-effector poses -> mink IK on the robot's MJCF -> joint-space time parameterization.

    Each chunk row is [x, y, z, (qw, qx, qy, qz,) gripper] in the model's world frame. With only a
    position, the orientation of the current end-effector pose is kept.
    """

    kind = "ee"

    def __init__(self, mj_model, site: str, limits: JointLimits = PANDA_LIMITS,
                 config: MotionConfig | None = None, gripper_joint: str | None = GRIPPER_JOINT,
                 ik_iterations: int = 100, ik_dt: float = 0.1):
        super().__init__(limits, config, gripper_joint)
        import mink
        import mujoco

        self._mink, self._mujoco = mink, mujoco
        self.model = mj_model
        self.site = site
        self.ik_iterations, self.ik_dt = ik_iterations, ik_dt
        self.configuration = mink.Configuration(mj_model)
        self.qpos_index = np.array([mj_model.jnt_qposadr[mj_model.joint(n).id] for n in limits.names])
        self.pose_task = mink.FrameTask(site, "site", position_cost=1.0, orientation_cost=0.5)
        self.position_task = mink.FrameTask(site, "site", position_cost=1.0, orientation_cost=0.0)
        self.posture_task = mink.PostureTask(mj_model, cost=1e-3)
        self.ik_limits = [mink.ConfigurationLimit(mj_model)]

    def solve_ik(self, current: np.ndarray, poses: np.ndarray) -> np.ndarray:
        """Joint targets for each pose row, each solve seeded with the previous solution."""
        mink = self._mink
        q = self.configuration.q.copy()
        q[self.qpos_index] = current[: self.limits.dof]
        self.configuration.update(q)
        self.posture_task.set_target_from_configuration(self.configuration)
        start_pose = self.configuration.get_transform_frame_to_world(self.site, "site")
        out = []
        for pose in poses:
            if pose.shape[0] >= 7:  # full pose
                task = self.pose_task
                task.set_target(mink.SE3.from_rotation_and_translation(mink.SO3(np.asarray(pose[3:7], float)), pose[:3]))
            else:  # position only: orientation is free (cost 0)
                task = self.position_task
                task.set_target(mink.SE3.from_rotation_and_translation(start_pose.rotation(), pose[:3]))
            for _ in range(self.ik_iterations):
                vel = mink.solve_ik(self.configuration, [task, self.posture_task], self.ik_dt,
                                    solver="daqp", damping=1e-3, limits=self.ik_limits)
                self.configuration.integrate_inplace(vel, self.ik_dt)
                err = task.compute_error(self.configuration)
                if np.linalg.norm(err[:3]) < 1e-3 and (task is self.position_task or np.linalg.norm(err[3:]) < 1e-2):
                    break
            out.append(self.configuration.q[self.qpos_index].copy())
        return np.array(out)

    def plan(self, current, chunk, current_velocity=None, observation_age_s: float = 0.0) -> PlannedTrajectory:
        chunk = np.atleast_2d(np.asarray(chunk, dtype=float))
        has_gripper = self.gripper_joint is not None
        pose_cols = chunk.shape[1] - (1 if has_gripper else 0)
        if pose_cols not in (3, 7):
            raise MotionRejected(f"end-effector chunk needs 3 (position) or 7 (position + wxyz quaternion) "
                                 f"pose columns, got {pose_cols}")
        joints = self.solve_ik(np.asarray(current, float), chunk[:, :pose_cols])
        joint_chunk = np.column_stack([joints, chunk[:, pose_cols]]) if has_gripper else joints
        return super().plan(current, joint_chunk, current_velocity, observation_age_s)


def make_backend(action_space: str = "joint", config: MotionConfig | None = None,
                 limits: JointLimits = PANDA_LIMITS, gripper_joint: str | None = GRIPPER_JOINT,
                 mj_model=None, ee_site: str = ""):
    """Pick the motion backend: toppra in joint space, or mink IK + toppra for end-effector actions.

    MoveIt's time parameterization (fedvla_policy.moveit_backend) is a ROS library, so the policy
    server picks it itself when moveit_py is installed; the core stays free of ROS.
    """
    if action_space == "joint":
        return JointSpaceBackend(limits, config, gripper_joint)
    if action_space == "ee":
        if mj_model is None or not ee_site:
            raise ValueError("action_space 'ee' needs the robot's MuJoCo model and an end-effector site for IK")
        return EndEffectorBackend(mj_model, ee_site, limits, config, gripper_joint)
    raise ValueError(f"action_space must be 'joint' or 'ee', got {action_space!r}")

