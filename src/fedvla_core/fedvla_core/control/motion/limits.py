"""The arm's limits, enforced: clip or reject joint targets, verify and slow down sampled trajectories.

Every backend ends in ``enforce_limits``: position targets slightly outside the joint range are
clipped, targets too far outside make the whole chunk rejected (``MotionRejected``), and the
sampled trajectory is checked against the velocity and acceleration limits and slowed down
uniformly if it breaks one. Which limit was hit is logged and returned in ``LimitReport``.
The limits themselves (``JointLimits``, ``PANDA_LIMITS``) are the embodiment's.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

from fedvla_core.control.motion.config import MotionConfig
from fedvla_core.embodiment import JointLimits, gripper_to_finger

log = logging.getLogger("fedvla_core.control.motion")


class MotionRejected(ValueError):
    """The chunk is too far outside the arm's limits to be clipped safely."""


@dataclass
class LimitReport:
    """Which limits shaped (or would have broken) a trajectory."""

    clipped_positions: dict[str, float] = field(default_factory=dict)  # joint -> worst overshoot (rad)
    velocity_limited: list[str] = field(default_factory=list)  # joints whose velocity limit is active
    acceleration_limited: list[str] = field(default_factory=list)
    slowed_down_by: float = 1.0  # extra uniform time scaling applied after verification
    gripper_clipped: bool = False

    @property
    def any_hit(self) -> bool:
        return bool(self.clipped_positions or self.slowed_down_by > 1.0 or self.gripper_clipped)

    def summary(self) -> str:
        parts = []
        if self.clipped_positions:
            parts.append("position limit clipped on " + ", ".join(
                f"{j} (by {d:.3f} rad)" for j, d in self.clipped_positions.items()))
        if self.slowed_down_by > 1.0:
            parts.append(f"velocity/acceleration limit: slowed down x{self.slowed_down_by:.2f}")
        if self.velocity_limited:
            parts.append("velocity limit active on " + ", ".join(self.velocity_limited))
        if self.acceleration_limited:
            parts.append("acceleration limit active on " + ", ".join(self.acceleration_limited))
        if self.gripper_clipped:
            parts.append("gripper command clipped to [0, 1]")
        return "; ".join(parts) or "within limits"


@dataclass
class PlannedTrajectory:
    """A sampled joint trajectory: points at ``times`` (s from start), arm joints then the gripper."""

    joint_names: list[str]
    times: np.ndarray  # (N,)
    positions: np.ndarray  # (N, dof)
    velocities: np.ndarray  # (N, dof)
    accelerations: np.ndarray  # (N, dof)
    report: LimitReport = field(default_factory=LimitReport)

    @property
    def duration(self) -> float:
        return float(self.times[-1]) if len(self.times) else 0.0


def clip_waypoints(waypoints: np.ndarray, limits: JointLimits, reject_margin: float,
                   report: LimitReport) -> np.ndarray:
    """Clip joint targets into [lower, upper]; raise MotionRejected beyond ``reject_margin``."""
    below = limits.lower - waypoints
    above = waypoints - limits.upper
    overshoot = np.maximum(np.maximum(below, above), 0.0)  # (H, dof)
    if not np.all(np.isfinite(waypoints)):
        raise MotionRejected("chunk contains non-finite joint targets")
    worst = overshoot.max(axis=0)
    too_far = worst > reject_margin
    if np.any(too_far):
        j = int(np.argmax(worst))
        raise MotionRejected(
            f"position limit: target for {limits.names[j]} is {worst[j]:.3f} rad outside "
            f"[{limits.lower[j]:.4f}, {limits.upper[j]:.4f}] (reject margin {reject_margin} rad)")
    for j in np.flatnonzero(worst > 0):
        report.clipped_positions[limits.names[j]] = float(worst[j])
    return np.clip(waypoints, limits.lower, limits.upper)


def clip_gripper(gripper: np.ndarray, config: MotionConfig, report: LimitReport) -> np.ndarray:
    """Map the policy's gripper output in [0, 1] to a finger position in [0, gripper_max] metres.

    The embodiment's mapping, with the opening from ``config``; a command outside [0, 1] (or NaN,
    taken as closed) is clipped and noted in ``report``.
    """
    gripper = np.asarray(gripper, dtype=float)
    if np.any(gripper < -1e-6) or np.any(gripper > 1 + 1e-6) or not np.all(np.isfinite(gripper)):
        report.gripper_clipped = True
    return gripper_to_finger(np.nan_to_num(gripper, nan=0.0), config.gripper_max)


def enforce_limits(traj: PlannedTrajectory, limits: JointLimits, config: MotionConfig) -> PlannedTrajectory:
    """Verify the sampled arm trajectory against all limits; clip positions, slow down on vel/acc.

    The last safety net of every backend: whatever the planner did, what leaves this function is
    inside [lower, upper] and within the scaled velocity and acceleration limits.
    """
    dof = limits.dof
    pos = traj.positions[:, :dof]
    outside = np.maximum(np.maximum(limits.lower - pos, pos - limits.upper), 0.0).max(axis=0)
    for j in np.flatnonzero(outside > 1e-9):
        name = limits.names[j]
        traj.report.clipped_positions[name] = max(traj.report.clipped_positions.get(name, 0.0), float(outside[j]))
    traj.positions[:, :dof] = np.clip(pos, limits.lower, limits.upper)
    vmax = limits.max_velocity * config.velocity_scale
    amax = limits.max_acceleration * config.acceleration_scale
    v_ratio = np.abs(traj.velocities[:, :dof]).max(axis=0, initial=0.0) / vmax
    a_ratio = np.abs(traj.accelerations[:, :dof]).max(axis=0, initial=0.0) / amax
    traj.report.velocity_limited = [limits.names[j] for j in np.flatnonzero(v_ratio > 0.98)]
    traj.report.acceleration_limited = [limits.names[j] for j in np.flatnonzero(a_ratio > 0.98)]
    scale = max(1.0, float(v_ratio.max(initial=0.0)), float(np.sqrt(a_ratio.max(initial=0.0))))
    if scale > 1.0 + config.tolerance:
        # Stretching time by k divides velocities by k and accelerations by k^2.
        traj.times = traj.times * scale
        traj.velocities = traj.velocities / scale
        traj.accelerations = traj.accelerations / scale ** 2
        traj.report.slowed_down_by = scale
    if traj.report.any_hit:
        log.info("motion limits hit: %s", traj.report.summary())
    return traj

