"""Hot swap: the serving policy, and the one that replaces it when the running goal ends.

A checkpoint loaded while a goal runs never changes the policy under that goal (its chunks, expert
statistics and instruction grounding belong to one model); it waits and serves from the next goal
on. Loading and validating the checkpoint is checkpoint_swap.py's job; this only decides when the
swap happens. Thread-safe: the load service and the goal run on different executor threads.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ServedPolicy:
    policy: Any
    path: str
    grounder: Any = None  # instruction_grounding.InstructionGrounder of this policy (None: grounding off)


class PolicySlot:
    """The serving policy (None before the first load) and a pending replacement."""

    def __init__(self):
        self._lock = threading.Lock()
        self._serving: ServedPolicy | None = None
        self._pending: ServedPolicy | None = None
        self._goal_running = False

    @property
    def current(self) -> ServedPolicy | None:
        with self._lock:
            return self._serving

    def offer(self, served: ServedPolicy) -> bool:
        """Serve ``served`` now (True), or after the running goal (False; a later offer replaces it)."""
        with self._lock:
            if self._goal_running:
                self._pending = served
                return False
            self._serving = served
            return True

    def goal_started(self) -> ServedPolicy | None:
        """A goal starts: the policy it runs with, fixed until ``goal_ended``."""
        with self._lock:
            self._goal_running = True
            return self._serving

    def goal_ended(self) -> bool:
        """The goal ended: swap in the pending policy, if any (True when the policy changed)."""
        with self._lock:
            self._goal_running = False
            pending, self._pending = self._pending, None
            if pending is not None:
                self._serving = pending
            return pending is not None
