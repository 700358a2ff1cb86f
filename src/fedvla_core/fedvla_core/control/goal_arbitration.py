"""Which accepted goal drives the arm: the newest one that will run preempts every earlier one.

The policy server accepts every goal request (goal_refusal.py says why). A goal that will not run
is kept as refused and aborted at once without touching anyone else; a goal that runs marks every
earlier goal, running or still waiting, as preempted, and waits until the running one has stopped
(``claim``). With on_new_goal 'reject', a goal that comes while another is accepted is refused as
busy instead. Thread-safe: the node's action callbacks call it from several executor threads.
"""
from __future__ import annotations

import threading
from enum import Enum

from fedvla_core.control.goal_refusal import BUSY, refusal_reason

#: The refusal of a goal that comes while another runs and on_new_goal is 'reject'.
BUSY_REFUSAL = refusal_reason(BUSY, "another goal is running (on_new_goal = reject)")


class GoalRun:
    """Book-keeping of an accepted goal (running, or waiting for the one it preempts to stop)."""

    def __init__(self, goal_handle, refusal: str = ""):
        self.goal_handle = goal_handle
        self.preempted = False
        self.refusal = refusal  # "<code>: <why>" when the goal is refused (aborted at once, never runs)


class Claim(Enum):
    START = "start"  # this goal drives the arm now
    WAIT = "wait"  # the goal it preempted is still stopping: claim again shortly
    PREEMPTED = "preempted"  # an even newer goal came while this one waited: abort it


class GoalArbiter:
    """Accepted goals by key (the goal id's bytes): the refused ones, the waiting ones and the active one."""

    def __init__(self, on_new_goal: str = "preempt"):
        self.on_new_goal = on_new_goal
        self._lock = threading.Lock()
        self._active: GoalRun | None = None  # the goal driving the arm
        self._refused: dict[bytes, GoalRun] = {}  # accepted requests that are aborted at once
        self._runs: dict[bytes, GoalRun] = {}  # every accepted goal not finished yet

    def admit(self, key: bytes, goal_handle, refusal: str | None) -> GoalRun:
        """Record an accepted goal; ``refusal`` (or busy) makes it a refused one, which preempts nothing."""
        with self._lock:
            if refusal is None and self._runs and self.on_new_goal == "reject":
                refusal = BUSY_REFUSAL
            run = GoalRun(goal_handle, refusal=refusal or "")
            if refusal is None:
                for other in self._runs.values():
                    other.preempted = True
                self._runs[key] = run
            else:
                self._refused[key] = run
            return run

    def take_refused(self, key: bytes) -> GoalRun | None:
        """The refused run of ``key`` (removed), or None when the goal is to run."""
        with self._lock:
            return self._refused.pop(key, None)

    def claim(self, key: bytes) -> Claim:
        """Try to make ``key``'s goal the active one (a preempted goal is forgotten)."""
        with self._lock:
            run = self._runs[key]
            if run.preempted:
                del self._runs[key]
                return Claim.PREEMPTED
            if self._active is None:
                self._active = run
                return Claim.START
            return Claim.WAIT

    def run(self, key: bytes) -> GoalRun | None:
        with self._lock:
            return self._runs.get(key)

    def release(self, key: bytes) -> None:
        """The active goal of ``key`` ended: the next one may claim the arm."""
        with self._lock:
            self._active = None
            self._runs.pop(key, None)
