"""What the policy server accepts from the outside world, and what it sends to a controller.

Every message a callback gets is checked here first (no rclpy import; the node only calls these):
a malformed message is refused with an ``InputRejected`` whose text says what is wrong, the node
logs it (``bounded``, rate-limited) and keeps its last good input. Why so strict: a NaN in one
joint state used to become a NaN arm command, and the brake/hold trajectory was built from it.
``trajectory_problem`` is the last line of defence in front of the controller: whatever a bug
upstream produces, a trajectory with a non-finite or inconsistent value is never published.
"""
from __future__ import annotations

import math
import threading
import time
from typing import Sequence

import numpy as np

#: Longest log line (characters) the server writes about one refused input.
MAX_LOG_CHARS = 300
#: A measured joint speed above this many times the joint's velocity limit is a sensor fault.
MAX_VELOCITY_FACTOR = 5.0


#: Seconds between two log lines about the same input (or the same kind of refusal).
LOG_PERIOD_S = 5.0


class LogLimiter:
    """At most one log line per key (an input, a refusal code) every ``period`` seconds.

    rclpy's ``throttle_duration_sec`` throttles per call site, so one bad camera would silence the
    refusals of every other input logged from the same line; this keys by what was refused.
    """

    def __init__(self, period: float = LOG_PERIOD_S, clock=time.monotonic):
        self.period, self._clock = period, clock
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}
        self._lock = threading.Lock()

    def allow(self, key: str) -> str | None:
        """None when this line must be dropped, else a suffix ('' or how many were dropped since the last)."""
        now = self._clock()
        with self._lock:
            if now - self._last.get(key, -math.inf) < self.period:
                self._suppressed[key] = self._suppressed.get(key, 0) + 1
                return None
            self._last[key] = now
            dropped = self._suppressed.pop(key, 0)
        return f" (+{dropped} more like it since the last line)" if dropped else ""


class InputRejected(ValueError):
    """A message the server refuses; the text says why (bounded in size)."""


def bounded(text, limit: int = MAX_LOG_CHARS) -> str:
    """``text`` on one line and at most ``limit`` characters (a note says how much was cut)."""
    s = " ".join(str(text).split())
    if len(s) <= limit:
        return s
    note = f"... (+{len(s) - limit} chars)"
    return s[:max(0, limit - len(note))] + note


def joint_state_values(names: Sequence[str], positions: Sequence[float], velocities: Sequence[float],
                       required: Sequence[str], lower: np.ndarray, upper: np.ndarray, tolerance: np.ndarray,
                       max_velocity: np.ndarray) -> tuple[dict[str, float], dict[str, float]]:
    """(positions, velocities) of the ``required`` joints from one sensor_msgs/JointState, or InputRejected.

    Other joints in the message (a robot publishes its whole state) are ignored. Refused: names and
    positions of different length, a velocity list that is neither empty nor one per name, repeated
    names, a required joint missing, a non-finite required value, a position further than
    ``tolerance`` outside [lower, upper], a speed above MAX_VELOCITY_FACTOR x ``max_velocity``.
    Velocities are optional (0 when the message has none).
    """
    names, positions, velocities = list(names), list(positions), list(velocities)
    if len(names) != len(positions):
        raise InputRejected(f"joint_states: {len(names)} names but {len(positions)} positions")
    if velocities and len(velocities) != len(names):
        raise InputRejected(f"joint_states: {len(names)} names but {len(velocities)} velocities")
    if len(set(names)) != len(names):
        raise InputRejected("joint_states: a joint name appears twice")
    index = {n: i for i, n in enumerate(names)}
    missing = [n for n in required if n not in index]
    if missing:
        raise InputRejected(f"joint_states: lacks {', '.join(missing)} (has {bounded(', '.join(names), 120) or 'none'})")
    pos, vel = {}, {}
    for k, name in enumerate(required):
        q = float(positions[index[name]])
        v = float(velocities[index[name]]) if velocities else 0.0
        if not (math.isfinite(q) and math.isfinite(v)):
            raise InputRejected(f"joint_states: non-finite {'position' if not math.isfinite(q) else 'velocity'} "
                                f"of {name} ({q if not math.isfinite(q) else v})")
        if q < lower[k] - tolerance[k] or q > upper[k] + tolerance[k]:
            raise InputRejected(f"joint_states: {name} at {q:.4g}, outside its range "
                                f"[{lower[k]:.4g}, {upper[k]:.4g}] by more than {tolerance[k]:.3g}")
        if abs(v) > MAX_VELOCITY_FACTOR * max_velocity[k]:
            raise InputRejected(f"joint_states: {name} moving at {v:.4g}, over {MAX_VELOCITY_FACTOR:g} x its "
                                f"velocity limit {max_velocity[k]:.3g}")
        pos[name], vel[name] = q, v
    return pos, vel


def goal_limits_problem(max_steps: int, time_limit_s: float) -> str | None:
    """Why a goal's step/time limits are unusable (0 means the server default), or None."""
    t = float(time_limit_s)
    if not math.isfinite(t) or t < 0:
        return f"time_limit_s must be a finite number >= 0 (0 = the server's default), got {t}"
    if int(max_steps) < 0:
        return f"max_steps must be >= 0 (0 = the server's default), got {max_steps}"
    return None


def _duration_s(d) -> float:
    return d.sec + 1e-9 * d.nanosec


def trajectory_problem(msg) -> str | None:
    """Why a trajectory_msgs/JointTrajectory must not reach a controller, or None when it may.

    Refused: no joint names or no points, repeated names, a point whose positions are not one per
    joint (velocities/accelerations: empty or one per joint), any non-finite value, times that do
    not increase strictly.
    """
    names = list(msg.joint_names)
    if not names or not msg.points:
        return "trajectory has no joint names or no points"
    if len(set(names)) != len(names):
        return "trajectory names a joint twice"
    last = -math.inf
    for i, p in enumerate(msg.points):
        if len(p.positions) != len(names):
            return f"point {i} has {len(p.positions)} positions for {len(names)} joints"
        for field in ("velocities", "accelerations"):
            values = getattr(p, field)
            if len(values) not in (0, len(names)):
                return f"point {i} has {len(values)} {field} for {len(names)} joints"
        values = np.asarray([*p.positions, *p.velocities, *p.accelerations], dtype=float)
        if not np.all(np.isfinite(values)):
            return f"point {i} holds a non-finite value"
        t = _duration_s(p.time_from_start)
        if t <= last:
            return f"point {i} time_from_start {t:.3f} s does not increase"
        last = t
    return None
