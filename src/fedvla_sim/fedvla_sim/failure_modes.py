"""Why a Panda episode failed, read from the sim state step by step (no images, no policy internals).

An :class:`EpisodeMonitor` watches one episode's :class:`~fedvla_sim.tasks.SceneState` and
contacts and records the first step of each failure event:

* ``wrong_object`` - a block the task does not name is grasped or moved more than 3 cm;
* ``collision``    - the arm or hand (not the fingers) touches the table or the bowl, or the robot presses
  on the table harder than `PRESS_FORCE` (the scripted experts stay under ~21 N);
* ``drop``         - a target block that was lifted in the fingers comes to rest on the table
  away from its goal (it slipped out or was let go of in the wrong place);
* ``missed_grasp`` - at the end, some target block was never grasped (for a push: never touched);
* ``timeout``      - none of the above, the task just was not done in time (e.g. still holding
  the block above the goal, placed slightly off).

The episode's failure mode is the earliest event among wrong_object, collision and drop (what
went wrong first); without one, missed_grasp if it applies, else timeout. Every event that
happened is also reported, so a count by kind can be read either way.
"""
from __future__ import annotations

import numpy as np

from fedvla_sim.scene import BLOCK_HALF, OBJECTS
from fedvla_sim.tasks import BOWL_INNER_HALF, SceneState, Task, grasped

FAILURE_KINDS = ("missed_grasp", "drop", "wrong_object", "timeout", "collision")
PRESS_FORCE = 40.0  # N
MOVED = 0.03  # m: a non-target block displaced this far was disturbed
LIFTED = BLOCK_HALF + 0.02  # centre height of a block that is off the table
ON_TABLE = BLOCK_HALF + 0.006
BLOCKS = tuple(o for o in OBJECTS if o != "bowl")


def _near_goal(task: Task, block: str, poses) -> bool:
    """`block` (x, y) is over the place the task wants it (bowl footprint, or the block it stacks on)."""
    xy = poses[block][:2]
    if "bowl" in task.objects:
        return bool(np.all(np.abs(xy - poses["bowl"][:2]) < BOWL_INNER_HALF + 0.01))
    if task.kind == "stack":
        return bool(np.linalg.norm(xy - poses[task.objects[1]][:2]) < 0.03)
    return False


class EpisodeMonitor:
    """Failure events of one Panda episode; feed every step's state with :meth:`update`."""

    def __init__(self, task: Task, first: SceneState):
        self.task = task
        if task.kind == "stack":
            self.targets = (task.objects[0],)
            self.allowed = set(task.objects)  # the bottom block may be nudged by the placement
        else:
            self.targets = tuple(o for o in task.objects if o != "bowl")
            self.allowed = set(task.objects)
        self.start = {b: first.poses[b][:3].copy() for b in BLOCKS}
        self.touched = {b: False for b in self.targets}
        self.carried = {b: False for b in self.targets}  # lifted in the fingers since it last rested
        self.events: dict[str, int] = {}
        self.step = 0

    def _event(self, kind: str) -> None:
        self.events.setdefault(kind, self.step)

    def update(self, state: SceneState, contacts: set[tuple[str, str]], table_force: float = 0.0) -> None:
        """One step: the scene state, the touching part pairs (`PandaTabletopEnv.contacts`) and the largest
        robot-table normal force (`PandaTabletopEnv.robot_table_force`)."""
        self.step += 1
        poses = state.poses
        for b in BLOCKS:
            if b in self.allowed:
                continue
            if grasped(state, b) or np.linalg.norm(poses[b][:2] - self.start[b][:2]) > MOVED:
                self._event("wrong_object")
        if ("robot", "table") in contacts or ("bowl", "robot") in contacts or table_force > PRESS_FORCE:
            self._event("collision")
        for b in self.targets:
            held = grasped(state, b)
            if self.task.kind == "push":
                self.touched[b] |= b in state.robot_contacts
                continue
            self.touched[b] |= held
            z = poses[b][2]
            if held and z > LIFTED:
                self.carried[b] = True
            elif self.carried[b] and not held and z < ON_TABLE and state.speeds.get(b, 0.0) < 0.05:
                if not _near_goal(self.task, b, poses):
                    self._event("drop")
                self.carried[b] = False

    def failure_mode(self) -> str:
        """The episode's failure kind (call for a failed episode)."""
        early = [k for k in ("wrong_object", "collision", "drop") if k in self.events]
        if early:
            return min(early, key=lambda k: self.events[k])
        if not all(self.touched.values()):
            return "missed_grasp"
        return "timeout"

    def summary(self, success: bool) -> dict:
        return {"failure_mode": None if success else self.failure_mode(),
                "events": dict(sorted(self.events.items(), key=lambda kv: kv[1])),
                "grasped": {b: bool(v) for b, v in self.touched.items()}}
