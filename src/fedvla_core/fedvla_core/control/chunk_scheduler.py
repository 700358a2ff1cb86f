"""Asynchronous chunk execution: when to infer the next chunk, and how it joins the executing one (no ROS).

With ``async_inference`` on, GoalRunner keeps executing the last chunk while the policy computes the
next one on a worker, as LeRobot's async inference does: the next inference starts when the share of
the executing chunk's actions still ahead falls to ``chunk_size_threshold`` (LeRobot's parameter of
the same name, a fraction of the chunk), so it can finish before the arm runs out of actions.

Every chunk is timed from its observation: action k is due (k + 1) control periods after the frame
it was inferred from (trajectory_timing 'chunk', motion.py). Two chunks thus overlap on the times
both have an action for, and ``blend`` joins them there (``chunk_blend``):

* ``rtc``: real-time-chunking style. The actions due before the new trajectory can take effect (within
  ``freeze_s`` of now: the controller is already on its way to them) keep the executing chunk's values,
  and the rest of the overlap fades linearly from the old chunk to the new one (RTC's soft mask, without
  its guided inpainting, which would need the model). No jump where the chunks meet.
* ``ensemble``: temporal ensembling (ACT; LeRobot's ``weighted_average`` aggregate): every overlapping
  action is ``(1 - w) * old + w * new`` with ``w = chunk_blend_weight``.
* ``replace``: the new chunk as it is.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: chunk_blend values.
BLENDS = ("rtc", "ensemble", "replace")


@dataclass(frozen=True)
class TimedChunk:
    """A chunk and the clock time of its observation: ``actions[k]`` is due at ``observed_at + (k + 1) * period``."""

    actions: np.ndarray  # (H, action_dim)
    observed_at: float

    def due(self, period: float) -> np.ndarray:
        return self.observed_at + period * np.arange(1, len(self.actions) + 1)

    def remaining(self, now: float, period: float) -> int:
        """Actions still ahead at ``now`` (due later than now)."""
        return int(np.count_nonzero(self.due(period) > now + 1e-9))


def should_infer(executing: TimedChunk | None, now: float, period: float, threshold: float) -> bool:
    """Whether the next inference starts now: no chunk executes, or the share of its actions still ahead
    is at most ``threshold`` (LeRobot's chunk_size_threshold)."""
    if executing is None or len(executing.actions) == 0:
        return True
    return executing.remaining(now, period) / len(executing.actions) <= threshold


def overlap_indices(old: TimedChunk, new: TimedChunk, period: float) -> tuple[np.ndarray, np.ndarray]:
    """(new indices, old indices) of the actions both chunks have for the same control period (the
    observations' times rounded to whole periods apart)."""
    shift = int(round((new.observed_at - old.observed_at) / period))  # new[k] is due with old[k + shift]
    k = np.arange(len(new.actions))
    j = k + shift
    keep = (j >= 0) & (j < len(old.actions))
    return k[keep], j[keep]


def blend(old: TimedChunk | None, new: TimedChunk, now: float, period: float, mode: str = "rtc",
          weight: float = 0.5, freeze_s: float = 0.0) -> np.ndarray:
    """The actions to execute from ``new`` on (indexed and timed as ``new``), joined with ``old`` where they overlap."""
    if mode not in BLENDS:
        raise ValueError(f"chunk_blend must be one of {BLENDS}, got {mode!r}")
    actions = np.array(new.actions, dtype=float, copy=True)
    if old is None or mode == "replace":
        return actions
    k, j = overlap_indices(old, new, period)
    if len(k) == 0:
        return actions
    old_actions = np.asarray(old.actions, dtype=float)
    if mode == "ensemble":
        actions[k] = (1.0 - weight) * old_actions[j] + weight * actions[k]
        return actions
    # rtc: weight of the old chunk: 1 on the frozen actions, then a linear fade to 0 over the rest of the overlap
    frozen = new.due(period)[k] <= now + freeze_s + 1e-9
    fading = np.flatnonzero(~frozen)
    w_old = np.ones(len(k))
    w_old[fading] = 1.0 - (np.arange(len(fading)) + 1.0) / (len(fading) + 1.0)
    actions[k] = w_old[:, None] * old_actions[j] + (1.0 - w_old[:, None]) * actions[k]
    return actions
