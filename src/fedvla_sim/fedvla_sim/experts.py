"""Scripted experts: Cartesian waypoints for the grasp site, turned into joint targets by mink IK.

A recipe is a generator of segments (goal position, yaw, gripper, duration). It is evaluated
lazily, so each segment reads the objects where they are when it starts (the second block of
a two-object task is located after the first is placed). Within a segment the site moves on a
smooth-step path; every control step one IK solve, seeded with the previous joint target,
gives the next 8-dim action. The expert only outputs actions: the same actions a policy or a
teleoperator would send.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

import numpy as np

from fedvla_sim.ik import GraspIK, top_down_rotation
from fedvla_sim.tasks import LEFT_EDGE_Y

HOVER_Z = 0.15  # grasp-site height for travel
GRASP_Z = 0.03  # grasp-site height that closes the fingers around a block on the table
SPEED = 0.3  # m/s of Cartesian travel
OPEN, CLOSED = 1.0, 0.0


@dataclass
class Segment:
    position: np.ndarray
    yaw: float
    gripper: float
    duration: float


def block_yaw(quat: np.ndarray) -> float:
    """Yaw of a block from its (w, x, y, z) quaternion, folded into [-pi/4, pi/4] (a cube has 4-fold symmetry)."""
    yaw = 2.0 * np.arctan2(quat[3], quat[0])
    return float((yaw + np.pi / 4) % (np.pi / 2) - np.pi / 4)


class ScriptedExpert:
    """Closed-loop expert for a `PandaTabletopEnv` task (any env with its state accessors)."""

    def __init__(self, env, ik: GraspIK | None = None):
        self.env = env
        self.ik = ik or GraspIK()
        self.reset()

    def reset(self) -> None:
        recipe = RECIPES[self.env.task.kind]
        self._segments = recipe(self, *self.env.task.objects)
        self._q = self.env.joint_positions()[:7]
        pos, rot = self.env.grasp_pose()
        self._pos = pos
        self._yaw = float(np.arctan2(rot[1, 0], rot[0, 0]))
        self._grip = OPEN
        self._segment: Segment | None = None
        self._start = (self._pos, self._yaw, self._grip)
        self._k = 0
        self._n = 0
        self.done = False

    # --- helpers used by recipes ------------------------------------------------------------------
    def pose_of(self, name: str) -> np.ndarray:
        return self.env.object_poses()[name]

    def travel(self, goal: np.ndarray, minimum: float = 0.5) -> float:
        """Duration of a move from the current commanded site position to `goal`."""
        return max(minimum, float(np.linalg.norm(np.asarray(goal) - self._pos)) / SPEED)

    def noise_scale(self) -> float:
        """How much execution noise the current step tolerates: 1 in free space, fading to 0 near the table,
        and 0 while carrying a block.

        Grasps, placements and pushes need centimetre accuracy at table height; noise there only
        makes the expert fail (measured: 0.03 rad everywhere breaks most grasps), while the states a
        cloned policy drifts into on its way are covered by noise during travel.
        """
        carrying = self._grip < 0.5 and self.env.task.kind != "push"  # a held block must not be shaken loose
        return 0.0 if carrying else float(np.clip((self._pos[2] - 0.10) / 0.05, 0.0, 1.0))

    def hold_action(self) -> np.ndarray:
        """The last commanded action: what to send to stay put once the recipe is finished."""
        return np.concatenate([self._q, [self._grip]])

    # --- stepping ---------------------------------------------------------------------------------
    def act(self) -> np.ndarray | None:
        """The next 8-dim action, or None when the recipe is finished."""
        while self._segment is None or self._k >= self._n:
            try:
                self._segment = next(self._segments)
            except StopIteration:
                self.done = True
                return None
            self._start = (self._pos.copy(), self._yaw, self._grip)
            self._n = max(1, int(round(self._segment.duration / self.env.config.control_dt)))
            self._k = 0
        self._k += 1
        s = self._k / self._n
        s = s * s * (3 - 2 * s)  # smooth step: zero velocity at both ends
        seg, (p0, yaw0, g0) = self._segment, self._start
        self._pos = p0 + (seg.position - p0) * s
        self._yaw = yaw0 + (seg.yaw - yaw0) * s
        self._grip = g0 + (seg.gripper - g0) * min(1.0, 2 * self._k / self._n)
        self._q = self.ik.solve(self._q, self._pos, top_down_rotation(self._yaw))
        return np.concatenate([self._q, [self._grip]])


# --- recipes ----------------------------------------------------------------------------------------
def _pick(ex: ScriptedExpert, block: str) -> Iterator[Segment]:
    pose = ex.pose_of(block)
    yaw = block_yaw(pose[3:])
    above = np.array([pose[0], pose[1], HOVER_Z])
    yield Segment(above, yaw, OPEN, ex.travel(above, 0.8))
    pose = ex.pose_of(block)  # re-read: it may have been nudged
    yield Segment(np.array([pose[0], pose[1], GRASP_Z]), yaw, OPEN, 0.9)
    yield Segment(np.array([pose[0], pose[1], GRASP_Z]), yaw, CLOSED, 0.5)
    yield Segment(np.array([pose[0], pose[1], HOVER_Z]), yaw, CLOSED, 0.8)


def _place(ex: ScriptedExpert, xy: np.ndarray, z: float) -> Iterator[Segment]:
    above = np.array([xy[0], xy[1], HOVER_Z])
    yaw = ex._yaw
    yield Segment(above, yaw, CLOSED, ex.travel(above, 0.8))
    yield Segment(np.array([xy[0], xy[1], z]), yaw, CLOSED, 0.7)
    yield Segment(np.array([xy[0], xy[1], z]), yaw, OPEN, 0.4)
    yield Segment(np.array([xy[0], xy[1], HOVER_Z + 0.03]), yaw, OPEN, 0.6)


def recipe_pick_up(ex: ScriptedExpert, block: str) -> Iterator[Segment]:
    yield from _pick(ex, block)
    p = ex._pos
    yield Segment(np.array([p[0], p[1], 0.22]), ex._yaw, CLOSED, 0.6)
    yield Segment(np.array([p[0], p[1], 0.22]), ex._yaw, CLOSED, 0.4)


def recipe_pick_place(ex: ScriptedExpert, block: str, bowl: str) -> Iterator[Segment]:
    yield from _pick(ex, block)
    yield from _place(ex, ex.pose_of(bowl)[:2], GRASP_Z + 0.02)


def recipe_stack(ex: ScriptedExpert, top: str, bottom: str) -> Iterator[Segment]:
    yield from _pick(ex, top)
    yield from _place(ex, ex.pose_of(bottom)[:2], GRASP_Z + 0.045)


def recipe_pick_place_two(ex: ScriptedExpert, first: str, second: str, bowl: str) -> Iterator[Segment]:
    yield from _pick(ex, first)
    yield from _place(ex, ex.pose_of(bowl)[:2] + np.array([-0.03, 0.0]), GRASP_Z + 0.02)
    yield from _pick(ex, second)
    yield from _place(ex, ex.pose_of(bowl)[:2] + np.array([0.03, 0.0]), GRASP_Z + 0.02)


def recipe_push(ex: ScriptedExpert, block: str) -> Iterator[Segment]:
    """Closed fingers lined up along x behind the block's +y face, then a straight push toward -y."""
    pose = ex.pose_of(block)
    yaw = np.pi / 2
    behind = np.array([pose[0], pose[1] + 0.075, HOVER_Z])
    yield Segment(ex._pos.copy(), ex._yaw, CLOSED, 0.4)
    yield Segment(behind, yaw, CLOSED, ex.travel(behind, 0.8))
    yield Segment(np.array([pose[0], pose[1] + 0.075, 0.025]), yaw, CLOSED, 0.8)
    end = np.array([pose[0], LEFT_EDGE_Y - 0.06 + 0.045, 0.025])
    yield Segment(end, yaw, CLOSED, max(1.0, (end[1] - pose[1] - 0.075) / -0.15))
    yield Segment(np.array([end[0], end[1] + 0.04, HOVER_Z]), yaw, CLOSED, 0.7)


RECIPES: dict[str, Callable[..., Iterator[Segment]]] = {
    "pick_up": recipe_pick_up,
    "pick_place": recipe_pick_place,
    "stack": recipe_stack,
    "pick_place_two": recipe_pick_place_two,
    "push": recipe_push,
}


def perturb(action: np.ndarray, noise: float, rng: np.random.Generator | None, dims: int) -> np.ndarray:
    """The action to execute: the first `dims` entries plus N(0, noise^2) (noise injection, DART-style)."""
    if noise <= 0 or rng is None:
        return action
    executed = np.array(action, dtype=float)
    executed[:dims] += rng.normal(0.0, noise, dims)
    return executed


def rollout_expert(env, max_steps: int | None = None, expert: ScriptedExpert | None = None,
                   on_step: Callable[[dict, np.ndarray], None] | None = None, settle_steps: int = 3,
                   action_noise: float = 0.0, rng: np.random.Generator | None = None) -> dict:
    """Run the expert on the env from its current state; `on_step(obs_before, action)` sees every step.

    With `action_noise` > 0 the arm joints of each *executed* action get Gaussian noise (rad) while
    `on_step` still receives the expert's clean action: the demonstrations then show how the expert
    gets back onto its plan from states slightly off it, which is what a cloned policy meets in closed
    loop (without it, a policy trained on the expert's exact path drifts off it within a few steps).
    Returns {"success", "steps"}. A few hold steps after the recipe let objects come to rest
    before the success check.
    """
    expert = expert or ScriptedExpert(env)
    max_steps = max_steps or env.task.max_steps
    obs = env.observation()
    steps = 0
    hold = None
    while steps < max_steps:
        action = expert.act()
        if action is None:
            if hold is None:
                hold = expert.hold_action()
                remaining = settle_steps
            if remaining == 0:
                break
            remaining -= 1
            action = hold
        if on_step is not None:
            on_step(obs, action)
        obs = env.step(perturb(action, action_noise * expert.noise_scale(), rng, 7))
        steps += 1
    return {"success": env.success(), "steps": steps}
