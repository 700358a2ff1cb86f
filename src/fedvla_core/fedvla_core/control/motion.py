"""Action chunk -> time-parameterized, limit-respecting joint trajectory.

The policy emits a chunk of H actions. This module turns a chunk into a trajectory the arm's
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
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("fedvla_core.control.motion")

PANDA_ARM_JOINTS = tuple(f"panda_joint{i}" for i in range(1, 8))
PANDA_GRIPPER_JOINT = "panda_finger_joint1"
PANDA_FINGER_MAX_M = 0.04


@dataclass(frozen=True)
class JointLimits:
    """Position, velocity and acceleration limits of a serial arm, one entry per joint."""

    names: tuple[str, ...]
    lower: np.ndarray
    upper: np.ndarray
    max_velocity: np.ndarray
    max_acceleration: np.ndarray

    def __post_init__(self):
        n = len(self.names)
        for name in ("lower", "upper", "max_velocity", "max_acceleration"):
            value = np.asarray(getattr(self, name), dtype=float)
            if value.shape != (n,):
                raise ValueError(f"JointLimits.{name} must have {n} entries, got shape {value.shape}")
            object.__setattr__(self, name, value)
        if np.any(self.lower >= self.upper):
            raise ValueError("JointLimits.lower must be below JointLimits.upper for every joint")
        if np.any(self.max_velocity <= 0) or np.any(self.max_acceleration <= 0):
            raise ValueError("JointLimits.max_velocity and max_acceleration must be positive")

    @property
    def dof(self) -> int:
        return len(self.names)


# Franka Emika Panda, from Franka's "Robot and interface specifications" (FCI documentation).
PANDA_LIMITS = JointLimits(
    names=PANDA_ARM_JOINTS,
    lower=np.array([-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973]),
    upper=np.array([2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973]),
    max_velocity=np.array([2.1750, 2.1750, 2.1750, 2.1750, 2.6100, 2.6100, 2.6100]),
    max_acceleration=np.array([15.0, 7.5, 10.0, 12.5, 15.0, 20.0, 20.0]),
)


@dataclass
class MotionConfig:
    """How chunks become trajectories. Every field has a default; see ``help`` metadata."""

    velocity_scale: float = field(default=0.5, metadata={
        "help": "Fraction of each joint's velocity limit the trajectory may use (0, 1]."})
    acceleration_scale: float = field(default=0.5, metadata={
        "help": "Fraction of each joint's acceleration limit the trajectory may use (0, 1]."})
    reject_margin: float = field(default=0.3, metadata={
        "help": "A target further than this (rad) outside a joint's range rejects the chunk; closer ones are clipped."})
    timing: str = field(default="chunk", metadata={
        "help": "'chunk': action k of a chunk is reached at (k + 1) * nominal_step_s, the timing of the "
                "demonstrations (a segment too fast for a velocity limit is lengthened); 'time_optimal': "
                "toppra (MoveIt's TOTG with moveit_py) along a spline through the actions, never faster "
                "than H * nominal_step_s."})
    min_lead_s: float = field(default=0.07, metadata={
        "help": "With timing 'chunk': an action due sooner than this after planning is skipped (the arm would have "
                "to jump to it); the next one becomes the first target. Measured (benchmarks/realtime_execution.py, "
                "12 episodes): at 40 ms of latency 50% -> 83%, at 70 ms 25% -> 58%."})
    nominal_step_s: float = field(default=0.1, metadata={
        "help": "Time the policy meant between two chunk actions (its control period); with timing "
                "'time_optimal', 0 = no lower bound on the duration."})
    sample_dt: float = field(default=0.05, metadata={
        "help": "Spacing (s) of the trajectory points sent to the controller."})
    max_points: int = field(default=100, metadata={"help": "Upper bound on trajectory points per chunk."})
    gripper_max: float = field(default=PANDA_FINGER_MAX_M, metadata={
        "help": "Finger opening (m) that a gripper action of 1.0 maps to (0.0 maps to closed)."})
    tolerance: float = field(default=1e-3, metadata={
        "help": "Relative slack when verifying velocity/acceleration limits on the sampled trajectory."})

    def __post_init__(self):
        for name in ("velocity_scale", "acceleration_scale"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"MotionConfig.{name} must be in (0, 1], got {value}")
        if self.reject_margin < 0:
            raise ValueError(f"MotionConfig.reject_margin must be >= 0, got {self.reject_margin}")
        if self.min_lead_s < 0:
            raise ValueError(f"MotionConfig.min_lead_s must be >= 0, got {self.min_lead_s}")
        if self.timing not in ("chunk", "time_optimal"):
            raise ValueError(f"MotionConfig.timing must be 'chunk' or 'time_optimal', got {self.timing!r}")
        if self.nominal_step_s < 0 or (self.timing == "chunk" and self.nominal_step_s == 0):
            raise ValueError(f"MotionConfig.nominal_step_s must be > 0 (>= 0 with timing 'time_optimal'), "
                             f"got {self.nominal_step_s}")
        if self.sample_dt <= 0:
            raise ValueError(f"MotionConfig.sample_dt must be > 0, got {self.sample_dt}")
        if self.max_points < 2:
            raise ValueError(f"MotionConfig.max_points must be >= 2, got {self.max_points}")
        if self.gripper_max <= 0:
            raise ValueError(f"MotionConfig.gripper_max must be > 0, got {self.gripper_max}")


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


# ----------------------------------------------------------------------------- limit helpers

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


def gripper_to_finger(gripper: np.ndarray, config: MotionConfig, report: LimitReport) -> np.ndarray:
    """Map the policy's gripper output in [0, 1] to a finger position in [0, gripper_max] metres."""
    gripper = np.asarray(gripper, dtype=float)
    if np.any(gripper < -1e-6) or np.any(gripper > 1 + 1e-6) or not np.all(np.isfinite(gripper)):
        report.gripper_clipped = True
    return np.clip(np.nan_to_num(gripper, nan=0.0), 0.0, 1.0) * config.gripper_max


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


def hold_trajectory(current: np.ndarray, joint_names: list[str], duration: float = 0.2) -> PlannedTrajectory:
    """A trajectory that keeps every joint where it is, with zero velocity (used on cancel)."""
    current = np.asarray(current, dtype=float)
    times = np.array([0.0, max(duration, 1e-3)])
    positions = np.vstack([current, current])
    zeros = np.zeros_like(positions)
    return PlannedTrajectory(list(joint_names), times, positions, zeros, zeros.copy())


def stop_trajectory(current: np.ndarray, velocity: np.ndarray, joint_names: list[str], limits: JointLimits,
                    config: MotionConfig, hold_s: float = 0.2, deceleration_scale: float = 0.3) -> PlannedTrajectory:
    """Brake to a standstill at the (scaled) acceleration limit, then hold (used on cancel and abort).

    An instant "hold here" from full speed jolts the arm (and makes position servos ring). This
    brakes every arm joint over one common time T along the current motion, with a smooth
    velocity profile v(t) = v0 (1 - 3u^2 + 2u^3), u = t/T (acceleration starts and ends at 0,
    peaks at 1.5 |v0| / T, so T = 1.5 max|v0| / a_max keeps it within the limit), then holds.
    Extra entries (the gripper) keep their position. ``deceleration_scale`` (fraction of the
    acceleration limits) trades stopping distance for smoothness: a gentle stop (~0.5 s from
    1 rad/s at 0.3 on the Panda's first joint) excites far less ringing in the arm's position servos.
    """
    current = np.asarray(current, dtype=float)
    dof = limits.dof
    v0 = np.zeros_like(current)
    if velocity is not None:
        v0[:dof] = np.clip(np.nan_to_num(np.asarray(velocity, dtype=float)[:dof]),
                           -limits.max_velocity, limits.max_velocity)
    amax = limits.max_acceleration * min(config.acceleration_scale, deceleration_scale)
    t_stop = float(np.max(1.5 * np.abs(v0[:dof]) / amax))
    if t_stop < 1e-3:
        return hold_trajectory(current, joint_names, hold_s)
    n = int(np.clip(np.ceil(t_stop / config.sample_dt), 2, config.max_points - 1)) + 1
    t = np.linspace(0.0, t_stop, n)
    u = t / t_stop
    q = current[None, :] + np.outer(t_stop * (u - u ** 3 + 0.5 * u ** 4), v0)
    qd = np.outer(1 - 3 * u ** 2 + 2 * u ** 3, v0)
    qdd = np.outer(-6 * u * (1 - u) / t_stop, v0)
    q[:, :dof] = np.clip(q[:, :dof], limits.lower, limits.upper)
    t = np.append(t, t_stop + hold_s)
    q = np.vstack([q, q[-1]])
    qd = np.vstack([qd, np.zeros_like(current)])
    qdd = np.vstack([qdd, np.zeros_like(current)])
    return PlannedTrajectory(list(joint_names), t, q, qd, qdd)


# ----------------------------------------------------------------------------- time parameterization

def _dedupe(waypoints: np.ndarray, min_step: float = 1e-5) -> np.ndarray:
    keep = [0]
    for i in range(1, len(waypoints)):
        if np.linalg.norm(waypoints[i] - waypoints[keep[-1]]) > min_step:
            keep.append(i)
    return waypoints[keep]


_CONSTRAINT_CACHE: dict = {}


def _toppra_constraints(limits: JointLimits, velocity_scale: float, acceleration_scale: float) -> list:
    """toppra's joint velocity/acceleration constraints, built once per limits (they do not depend
    on the path, and building them costs milliseconds)."""
    import toppra.constraint

    key = (limits.names, limits.max_velocity.tobytes(), limits.max_acceleration.tobytes(),
           velocity_scale, acceleration_scale)
    if key not in _CONSTRAINT_CACHE:
        vmax = limits.max_velocity * velocity_scale
        amax = limits.max_acceleration * acceleration_scale
        _CONSTRAINT_CACHE[key] = [
            toppra.constraint.JointVelocityConstraint(np.stack([-vmax, vmax], axis=1)),
            toppra.constraint.JointAccelerationConstraint(np.stack([-amax, amax], axis=1)),
        ]
    return _CONSTRAINT_CACHE[key]


def _time_parameterize(waypoints: np.ndarray, limits: JointLimits, config: MotionConfig,
                       start_velocity: np.ndarray | None, nominal_duration: float):
    """Time-optimal path parameterization (toppra) of a cubic spline through the waypoints.

    Returns (times, positions, velocities, accelerations, path_fraction) sampled every sample_dt;
    path_fraction (0..1 per sample) lets the caller interpolate the gripper along the same path.
    """
    import toppra
    import toppra.algorithm

    lengths = np.linalg.norm(np.diff(waypoints, axis=0), axis=1)
    ss = np.concatenate([[0.0], np.cumsum(lengths)])
    ss = ss / ss[-1]
    path = toppra.SplineInterpolator(ss, waypoints, bc_type="natural")
    constraints = _toppra_constraints(limits, config.velocity_scale, config.acceleration_scale)
    gridpoints = np.linspace(0.0, 1.0, int(np.clip(5 * len(ss), 20, 60)))
    algo = toppra.algorithm.TOPPRA(constraints, path, gridpoints=gridpoints, parametrizer="ParametrizeSpline")
    sd_start = 0.0
    if start_velocity is not None and np.any(start_velocity):
        tangent = path(0.0, 1)
        sd_start = max(0.0, float(np.dot(start_velocity, tangent) / max(np.dot(tangent, tangent), 1e-12)))
    traj = algo.compute_trajectory(sd_start, 0.0)
    if traj is None and sd_start > 0:
        traj = algo.compute_trajectory(0.0, 0.0)
    if traj is None:
        return None
    duration = float(traj.duration)
    n = int(min(config.max_points, max(2, np.ceil(duration / config.sample_dt) + 1)))
    t = np.linspace(0.0, duration, n)
    q, qd, qdd = traj(t), traj(t, 1), traj(t, 2)
    # The gripper follows the arm's progress along the path: recover s(t) from the spline.
    fraction = _path_fraction(q, path, ss)
    stretch = nominal_duration / duration if nominal_duration > duration > 0 else 1.0
    return t * stretch, q, qd / stretch, qdd / stretch ** 2, fraction


def _path_fraction(q: np.ndarray, path, ss: np.ndarray) -> np.ndarray:
    """Approximate path parameter s in [0, 1] for each sampled configuration (nearest of a fine grid)."""
    grid = np.linspace(0.0, 1.0, 200)
    samples = path(grid)
    d = np.linalg.norm(q[:, None, :] - samples[None, :, :], axis=2)
    s = grid[np.argmin(d, axis=1)]
    return np.maximum.accumulate(s)


def _fallback_parameterize(waypoints: np.ndarray, limits: JointLimits, config: MotionConfig,
                           nominal_duration: float):
    """Rest-to-rest cubic segments (used only if toppra fails): peak v = 1.5 d/T, peak a = 6 d/T^2."""
    vmax = limits.max_velocity * config.velocity_scale
    amax = limits.max_acceleration * config.acceleration_scale
    deltas = np.diff(waypoints, axis=0)
    seg_t = np.maximum((1.5 * np.abs(deltas) / vmax).max(axis=1), np.sqrt(6 * np.abs(deltas) / amax).max(axis=1))
    seg_t = np.maximum(seg_t, 1e-3)
    if nominal_duration > seg_t.sum():
        seg_t *= nominal_duration / seg_t.sum()
    ts, qs, qds, qdds, fr = [0.0], [waypoints[0]], [np.zeros(limits.dof)], [np.zeros(limits.dof)], [0.0]
    t0 = 0.0
    for i, (d, T) in enumerate(zip(deltas, seg_t)):
        for tau in np.linspace(0, 1, max(2, int(np.ceil(T / config.sample_dt)) + 1))[1:]:
            ts.append(t0 + tau * T)
            qs.append(waypoints[i] + d * (3 * tau ** 2 - 2 * tau ** 3))
            qds.append(d * (6 * tau - 6 * tau ** 2) / T)
            qdds.append(d * (6 - 12 * tau) / T ** 2)
            fr.append((i + tau) / len(deltas))
        t0 += T
    return np.array(ts), np.array(qs), np.array(qds), np.array(qdds), np.array(fr)


# ----------------------------------------------------------------------------- backends

class JointSpaceBackend:
    """Chunks of absolute joint targets (+ gripper in [0, 1]) -> toppra-timed trajectory."""

    kind = "joint"

    def __init__(self, limits: JointLimits = PANDA_LIMITS, config: MotionConfig | None = None,
                 gripper_joint: str | None = PANDA_GRIPPER_JOINT):
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
            fingers = gripper_to_finger(chunk[:, dof], self.config, report)
        if self.config.timing == "chunk":
            return self._chunk_timed(start, targets, fingers, current, report, observation_age_s)
        waypoints = _dedupe(np.vstack([start, targets]))
        nominal = len(chunk) * self.config.nominal_step_s
        return self._finish(waypoints, fingers, current, current_velocity, nominal, report)

    def _chunk_timed(self, start, targets, fingers, current, report, observation_age_s: float = 0.0) -> PlannedTrajectory:
        """Action k at (k + 1) * nominal_step_s after the observation, as the demonstrations were executed.

        Positions are what a joint_trajectory_controller interpolates linearly between (positions
        only) or with a smooth spline through the same points (with the velocities given here:
        central differences, zero at the end, so a stalled policy leaves the arm at rest on its last
        target). A segment that would break a joint's velocity limit is lengthened to respect it and
        the later actions shift by as much: the timing of the rest is kept. Accelerations are the
        policy's (as demonstrated), not limited here.
        """
        dt = self.config.nominal_step_s
        due = dt * np.arange(1, len(targets) + 1) - max(0.0, float(observation_age_s))
        keep = due > max(1e-3, self.config.min_lead_s)
        if not np.any(keep):
            raise MotionRejected(f"stale chunk: its observation is {observation_age_s:.2f} s old, every action "
                                 f"was due ({len(targets)} x {dt:.3f} s)")
        targets = targets[keep]
        if fingers is not None:
            fingers = fingers[keep]
        q = np.vstack([start, targets])
        durations = np.diff(np.concatenate([[0.0], due[keep]]))
        vmax = self.limits.max_velocity * self.config.velocity_scale
        shortest = (np.abs(np.diff(q, axis=0)) / vmax).max(axis=1)
        lengthened = np.maximum(durations, shortest)
        if lengthened.sum() > durations.sum() * (1 + self.config.tolerance):
            report.slowed_down_by = float(lengthened.sum() / durations.sum())
            report.velocity_limited = [self.limits.names[j] for j in np.flatnonzero(
                (np.abs(np.diff(q, axis=0)) / durations[:, None] > vmax).any(axis=0))]
        t = np.concatenate([[0.0], np.cumsum(lengthened)])
        qd = np.gradient(q, t, axis=0)
        qd[-1] = 0.0
        qdd = np.zeros_like(q)
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
                result = _time_parameterize(waypoints, self.limits, self.config, vel, nominal)
            except Exception as exc:  # noqa: BLE001 - toppra raises various numerical errors
                log.warning("toppra failed (%s); using rest-to-rest segments", exc)
            if result is None:
                result = _fallback_parameterize(waypoints, self.limits, self.config, nominal)
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
                 config: MotionConfig | None = None, gripper_joint: str | None = PANDA_GRIPPER_JOINT,
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
                 limits: JointLimits = PANDA_LIMITS, gripper_joint: str | None = PANDA_GRIPPER_JOINT,
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
