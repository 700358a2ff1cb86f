"""Pair each camera frame with the joint state of the same instant (by header stamp).

Cameras publish at 10 Hz and joint states at 50 Hz, unsynchronised: the newest joint state is up to
a frame period (plus rendering and transport) younger than the newest image. Training data from
`fedvla-sim record` pairs image and proprioception of the same physics step, so the policy server
(at inference) and the fed client (when it logs an episode) look the joint state up at the frames'
stamp instead of taking the newest one, like message_filters' ApproximateTime policy would, without
holding frames back. Plain Python (no rclpy) so the core stays testable.
"""
from __future__ import annotations

import bisect
import threading
from collections import deque
from typing import Any


def stamp_seconds(stamp) -> float:
    """A ROS ``builtin_interfaces/Time`` (``header.stamp``) in seconds; 0.0 when the publisher left it unset."""
    return stamp.sec + 1e-9 * stamp.nanosec


class StampedHistory:
    """The last ``maxlen`` samples of a stamped stream; ``nearest(stamp)`` finds the closest one."""

    def __init__(self, maxlen: int = 256):
        if maxlen < 1:
            raise ValueError(f"StampedHistory.maxlen must be >= 1, got {maxlen}")
        self._lock = threading.Lock()
        self._stamps: deque[float] = deque(maxlen=maxlen)
        self._values: deque[Any] = deque(maxlen=maxlen)

    def add(self, stamp: float, value: Any) -> None:
        """Append a sample; unstamped (<= 0) or out-of-order samples are ignored (stamps must rise)."""
        with self._lock:
            if stamp <= 0 or (self._stamps and stamp <= self._stamps[-1]):
                return
            self._stamps.append(float(stamp))
            self._values.append(value)

    def nearest(self, stamp: float, tolerance: float) -> Any | None:
        """The sample closest in time to ``stamp``, or None when none lies within ``tolerance`` seconds."""
        with self._lock:
            if not self._stamps or stamp <= 0:
                return None
            stamps = list(self._stamps)
            i = bisect.bisect_left(stamps, stamp)
            best = min((j for j in (i - 1, i) if 0 <= j < len(stamps)), key=lambda j: abs(stamps[j] - stamp))
            return self._values[best] if abs(stamps[best] - stamp) <= tolerance else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._stamps)
