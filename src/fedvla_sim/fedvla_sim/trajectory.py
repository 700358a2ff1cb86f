"""Joint trajectory following with ros2_control joint_trajectory_controller semantics, without ROS.

- A trajectory is a list of points, each reached at its `time_from_start` after the start.
- Between points the setpoint is interpolated linearly (what the JTC does when a trajectory
  carries positions only); before the first point, from the setpoint at the moment of receipt.
- A newer trajectory replaces whatever is left of the older one, starting from the current
  setpoint, so there is never a jump.
- A trajectory with no points stops motion: the arm holds its current setpoint.
- Joints the trajectory does not name keep their current setpoint.
- A bad trajectory (unknown or repeated joint names, wrong lengths, times not strictly
  increasing, positions outside the joint limits, non-finite numbers) raises
  `TrajectoryRejected` with the reason, and the follower's state is left untouched.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


class TrajectoryRejected(ValueError):
    """A trajectory that must not be executed; the message says why."""


class TrajectoryFollower:
    """Turns accepted trajectories into a position setpoint at any time `now` (seconds)."""

    def __init__(self, joint_names: Sequence[str], position_limits: np.ndarray, initial: np.ndarray,
                 limit_tolerance: float = 1e-6):
        self.joint_names = tuple(joint_names)
        self.position_limits = np.asarray(position_limits, dtype=float)
        if self.position_limits.shape != (len(self.joint_names), 2):
            raise ValueError("position_limits must be (n_joints, 2)")
        self.limit_tolerance = limit_tolerance
        self._index = {n: i for i, n in enumerate(self.joint_names)}
        self.hold(initial)

    def hold(self, setpoint: np.ndarray) -> None:
        """Forget any trajectory and hold `setpoint`."""
        self._setpoint = np.asarray(setpoint, dtype=float).copy()
        self._times: np.ndarray | None = None
        self._knots: np.ndarray | None = None

    @property
    def active(self) -> bool:
        """True while a trajectory is still moving the setpoint."""
        return self._times is not None

    @property
    def goal(self) -> np.ndarray:
        """Where the current trajectory ends (the held setpoint when idle)."""
        return self._knots[-1].copy() if self._knots is not None else self._setpoint.copy()

    def validate(self, joint_names: Sequence[str], times: Sequence[float], positions) -> np.ndarray:
        """Check a trajectory; returns positions as an (N, len(joint_names)) array or raises TrajectoryRejected."""
        names = list(joint_names)
        unknown = [n for n in names if n not in self._index]
        if unknown:
            raise TrajectoryRejected(f"unknown joint names {unknown}; this arm has {list(self.joint_names)}")
        if len(set(names)) != len(names):
            raise TrajectoryRejected(f"repeated joint names in {names}")
        times = np.asarray(times, dtype=float).reshape(-1)
        if len(times) == 0:
            return np.zeros((0, len(names)))
        if not names:
            raise TrajectoryRejected("trajectory has points but no joint names")
        try:
            pos = np.asarray(positions, dtype=float).reshape(len(times), -1)
        except ValueError:
            raise TrajectoryRejected("every point must have one position per joint name") from None
        if pos.shape[1] != len(names):
            raise TrajectoryRejected(f"points have {pos.shape[1]} positions for {len(names)} joint names")
        if not (np.all(np.isfinite(times)) and np.all(np.isfinite(pos))):
            raise TrajectoryRejected("time_from_start and positions must be finite numbers")
        if times[0] < 0:
            raise TrajectoryRejected(f"time_from_start must be >= 0, got {times[0]:.3f} s at point 0")
        bad = np.nonzero(np.diff(times) <= 0)[0]
        if len(bad):
            k = int(bad[0]) + 1
            raise TrajectoryRejected(f"time_from_start must increase strictly: point {k} at {times[k]:.3f} s "
                                     f"follows {times[k - 1]:.3f} s")
        idx = [self._index[n] for n in names]
        lo = self.position_limits[idx, 0] - self.limit_tolerance
        hi = self.position_limits[idx, 1] + self.limit_tolerance
        outside = np.argwhere((pos < lo) | (pos > hi))
        if len(outside):
            k, j = (int(v) for v in outside[0])
            raise TrajectoryRejected(f"point {k}: {names[j]} = {pos[k, j]:.4f} is outside its limits "
                                     f"[{lo[j] + self.limit_tolerance:.4f}, {hi[j] - self.limit_tolerance:.4f}]")
        return pos

    def command(self, now: float, joint_names: Sequence[str], times: Sequence[float], positions,
                start_time: float | None = None) -> None:
        """Accept a trajectory starting at `start_time` (default: now); raises TrajectoryRejected if bad."""
        pos = self.validate(joint_names, times, positions)
        current = self.sample(now)
        if len(pos) == 0:  # empty trajectory: stop where the setpoint is now
            self.hold(current)
            return
        times = np.asarray(times, dtype=float).reshape(-1)
        start = now if start_time is None else max(float(start_time), now)
        idx = [self._index[n] for n in joint_names]
        knots = np.repeat(current[None], len(times) + 1, axis=0)
        knots[1:, idx] = pos
        knot_times = np.concatenate([[now], start + times])
        if knot_times[1] <= now:  # first point due now (or in the past): jump-free only if it equals current
            knot_times[1] = now + 1e-9
        self._knots, self._times, self._setpoint = knots, knot_times, current

    def sample(self, now: float) -> np.ndarray:
        """Setpoint at time `now`; ends the trajectory once its last point is reached."""
        if self._times is None:
            return self._setpoint.copy()
        if now >= self._times[-1]:
            self.hold(self._knots[-1])
            return self._setpoint.copy()
        k = int(np.searchsorted(self._times, now, side="right")) - 1
        k = max(0, min(k, len(self._times) - 2))
        t0, t1 = self._times[k], self._times[k + 1]
        a = 0.0 if t1 <= t0 else (now - t0) / (t1 - t0)
        return self._knots[k] + (self._knots[k + 1] - self._knots[k]) * min(max(a, 0.0), 1.0)
