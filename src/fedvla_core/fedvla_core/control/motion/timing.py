"""Timing: when the arm reaches each point of a chunk, and the hold and braking profiles.

* ``chunk_timing``: the policy's own timing (``MotionConfig.timing="chunk"``), action k reached
  (k + 1) control periods after its observation, as in the demonstrations the policy learned from;
* ``toppra_parameterize``: time-optimal along a spline through the actions, within the velocity
  and acceleration limits (``timing="time_optimal"``), and ``fallback_parameterize``, rest-to-rest
  segments for when toppra fails;
* ``hold_trajectory`` and ``stop_trajectory``: stay, or brake to a standstill, on cancel and abort.
"""
from __future__ import annotations

import numpy as np

from fedvla_core.control.motion.config import MotionConfig
from fedvla_core.control.motion.limits import LimitReport, MotionRejected, PlannedTrajectory
from fedvla_core.embodiment import JointLimits


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


def dedupe_waypoints(waypoints: np.ndarray, min_step: float = 1e-5) -> np.ndarray:
    """The waypoints without those closer than ``min_step`` to the previous one kept (a spline needs distinct points)."""
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


def toppra_parameterize(waypoints: np.ndarray, limits: JointLimits, config: MotionConfig,
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


def fallback_parameterize(waypoints: np.ndarray, limits: JointLimits, config: MotionConfig,
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



def chunk_timing(start: np.ndarray, targets: np.ndarray, limits: JointLimits, config: MotionConfig,
                 report: LimitReport, observation_age_s: float = 0.0):
    """Action k at (k + 1) * nominal_step_s after the observation, as the demonstrations were executed.

    Positions are what a joint_trajectory_controller interpolates linearly between (positions
    only) or with a smooth spline through the same points (with the velocities given here:
    central differences, zero at the end, so a stalled policy leaves the arm at rest on its last
    target). A segment that would break a joint's velocity limit is lengthened to respect it and
    the later actions shift by as much: the timing of the rest is kept. Accelerations are the
    policy's (as demonstrated), not limited here.

    Returns (keep, times, positions, velocities, accelerations) of the arm, starting at ``start``;
    ``keep`` marks the actions still ahead (those due within ``min_lead_s`` are skipped).
    """
    dt = config.nominal_step_s
    due = dt * np.arange(1, len(targets) + 1) - max(0.0, float(observation_age_s))
    keep = due > max(1e-3, config.min_lead_s)
    if not np.any(keep):
        raise MotionRejected(f"stale chunk: its observation is {observation_age_s:.2f} s old, every action "
                             f"was due ({len(targets)} x {dt:.3f} s)")
    targets = targets[keep]
    q = np.vstack([start, targets])
    durations = np.diff(np.concatenate([[0.0], due[keep]]))
    vmax = limits.max_velocity * config.velocity_scale
    shortest = (np.abs(np.diff(q, axis=0)) / vmax).max(axis=1)
    lengthened = np.maximum(durations, shortest)
    if lengthened.sum() > durations.sum() * (1 + config.tolerance):
        report.slowed_down_by = float(lengthened.sum() / durations.sum())
        report.velocity_limited = [limits.names[j] for j in np.flatnonzero(
            (np.abs(np.diff(q, axis=0)) / durations[:, None] > vmax).any(axis=0))]
    t = np.concatenate([[0.0], np.cumsum(lengthened)])
    qd = np.gradient(q, t, axis=0)
    qd[-1] = 0.0
    qdd = np.zeros_like(q)
    return keep, t, q, qd, qdd
