"""Language-conditioned tabletop tasks: instructions, seeded initial layouts and success checks.

Every task uses the same scene (red, green and blue blocks and a bowl), so only the
instruction tells the policy what to do. A task is data plus pure functions of a `SceneState`
(object poses and speeds, what the robot touches), so it can be checked without a renderer or ROS.
"Left" means the left of the table as seen from the front camera (`agentview`), which is the
world's -y side.

Success means what a user would call done (like robosuite's Stack): a placed block is released
(no robot geom touches it) and at rest, not still held above its goal; a picked-up block is held
in the closed fingers.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable

import numpy as np

from fedvla_sim.scene import BLOCK_HALF, OBJECTS

# Where objects may start (x forward from the robot base, y to the robot's left).
WORKSPACE_X = (0.38, 0.62)
WORKSPACE_Y = (-0.2, 0.2)
BOWL_INNER_HALF = 0.06
BOWL_CLEARANCE = 0.14  # block-to-bowl-centre distance at the start
BLOCK_CLEARANCE = 0.08  # block-to-block distance at the start
LEFT_EDGE_Y = -0.22  # a pushed block counts as "at the left edge" past this y
LIFT_HEIGHT = 0.1  # a block counts as "picked up" when its centre is this high

REST_SPEED = 0.03  # m/s: an object slower than this counts as at rest

Poses = dict[str, np.ndarray]  # object name -> (x, y, z, qw, qx, qy, qz)


@dataclass(frozen=True)
class SceneState:
    """What a success check reads: object poses and speeds, and the robot's contacts with each object."""

    poses: Poses = field(metadata={"help": "Object name -> (x, y, z, qw, qx, qy, qz)."})
    speeds: dict[str, float] = field(default_factory=dict, metadata={"help": "Object name -> linear speed, m/s."})
    finger_contacts: dict[str, int] = field(default_factory=dict, metadata={
        "help": "Object name -> how many fingers (0, 1, 2) touch it."})
    robot_contacts: frozenset[str] = field(default=frozenset(), metadata={
        "help": "Objects any robot geom (fingers, hand, links) touches."})


def released(state: SceneState, obj: str) -> bool:
    """No part of the robot touches `obj`."""
    return obj not in state.robot_contacts


def at_rest(state: SceneState, obj: str) -> bool:
    return state.speeds.get(obj, 0.0) < REST_SPEED


def grasped(state: SceneState, obj: str) -> bool:
    """Both fingers touch `obj`."""
    return state.finger_contacts.get(obj, 0) >= 2


def placed(state: SceneState, obj: str) -> bool:
    """`obj` is let go of and still (the part of "done" that poses alone cannot tell)."""
    return released(state, obj) and at_rest(state, obj)


def in_bowl(poses: Poses, block: str) -> bool:
    """The block rests inside the bowl's footprint, low enough to be in it rather than above it."""
    rel = poses[block][:2] - poses["bowl"][:2]
    return bool(np.all(np.abs(rel) < BOWL_INNER_HALF) and poses[block][2] < poses["bowl"][2] + 0.06)


def on_top_of(poses: Poses, top: str, bottom: str) -> bool:
    """`top` rests on `bottom`: centred within 2.5 cm and one block height above it, `bottom` on the table."""
    rel = poses[top][:3] - poses[bottom][:3]
    return bool(np.linalg.norm(rel[:2]) < 0.025 and abs(rel[2] - 2 * BLOCK_HALF) < 0.012
                and poses[bottom][2] < BLOCK_HALF + 0.01)


def lifted(poses: Poses, block: str) -> bool:
    return bool(poses[block][2] > LIFT_HEIGHT)


def at_left_edge(poses: Poses, block: str) -> bool:
    return bool(poses[block][1] < LEFT_EDGE_Y and poses[block][2] < BLOCK_HALF + 0.01)


@dataclass(frozen=True)
class Task:
    """One language-conditioned task."""

    name: str = field(metadata={"help": "Registry key, e.g. 'put_red_block_in_bowl'."})
    phrasings: tuple[str, ...] = field(metadata={"help": "Ways to say the instruction; one is drawn per episode."})
    success_fn: Callable[[SceneState], bool] = field(metadata={"help": "Success check on the scene state."})
    kind: str = field(default="pick_place", metadata={"help": "Expert recipe: pick_up | pick_place | stack | push | pick_place_two."})
    objects: tuple[str, ...] = field(default=(), metadata={"help": "Objects the expert manipulates, in order."})
    max_steps: int = field(default=120, metadata={"help": "Control steps (10 Hz) the expert and a policy get."})
    held_out_phrasings: tuple[str, ...] = field(default=(), metadata={
        "help": "Other ways to say it (synonyms, polite forms, other word orders) that training never draws: "
                "for evaluation and for measuring the policy server's instruction grounding."})

    def __post_init__(self):
        if not self.phrasings:
            raise ValueError(f"Task.phrasings: task {self.name!r} needs at least one phrasing")
        for obj in self.objects:
            if obj not in OBJECTS:
                raise ValueError(f"Task.objects: unknown object {obj!r} in task {self.name!r}")
        if self.max_steps <= 0:
            raise ValueError("Task.max_steps must be positive")

    def success(self, state: SceneState) -> bool:
        return bool(self.success_fn(state))

    def sample_layout(self, rng: np.random.Generator) -> dict[str, tuple[float, float, float]]:
        """(x, y, yaw) of every object, drawn from `rng` (deterministic for a seeded generator)."""
        for _ in range(1000):
            layout = self._draw(rng)
            if self._valid(layout):
                return layout
        raise RuntimeError(f"could not sample a layout for task {self.name!r}")

    def _draw(self, rng: np.random.Generator) -> dict[str, tuple[float, float, float]]:
        layout = {}
        for name in OBJECTS:
            x = rng.uniform(*WORKSPACE_X)
            y = rng.uniform(*WORKSPACE_Y)
            yaw = 0.0 if name == "bowl" else rng.uniform(-np.pi / 4, np.pi / 4)
            layout[name] = (float(x), float(y), float(yaw))
        return layout

    def _valid(self, layout) -> bool:
        blocks = [n for n in OBJECTS if n != "bowl"]
        bowl = np.array(layout["bowl"][:2])
        for i, a in enumerate(blocks):
            pa = np.array(layout[a][:2])
            if np.linalg.norm(pa - bowl) < BOWL_CLEARANCE:
                return False
            for b in blocks[i + 1:]:
                if np.linalg.norm(pa - np.array(layout[b][:2])) < BLOCK_CLEARANCE:
                    return False
        if self.kind == "push":
            # The pushed block starts right of the edge zone and nothing sits in its path to the left.
            px, py, _ = layout[self.objects[0]]
            if not (-0.08 < py < 0.15):
                return False
            for other in OBJECTS:
                if other == self.objects[0]:
                    continue
                ox, oy, _ = layout[other]
                reach = 0.12 if other == "bowl" else 0.085
                if abs(ox - px) < reach and oy < py + 0.1:
                    return False
        return True


def _put_in_bowl(color: str) -> Task:
    block = f"{color}_block"
    return Task(
        name=f"put_{color}_block_in_bowl",
        phrasings=(f"put the {color} block in the bowl", f"place the {color} cube into the bowl",
                   f"drop the {color} block into the bowl", f"move the {color} block to the bowl"),
        success_fn=lambda s: in_bowl(s.poses, block) and placed(s, block), kind="pick_place", objects=(block, "bowl"), max_steps=100)


TASKS: dict[str, Task] = {t.name: t for t in [
    Task(name="pick_up_green_block",
         phrasings=("pick up the green block", "lift the green cube", "grab the green block and lift it",
                    "raise the green block off the table"),
         success_fn=lambda s: lifted(s.poses, "green_block") and grasped(s, "green_block"), kind="pick_up", objects=("green_block",), max_steps=70),
    _put_in_bowl("red"),
    _put_in_bowl("blue"),
    Task(name="stack_red_on_green",
         phrasings=("stack the red block on the green block", "put the red cube on top of the green cube",
                    "place the red block onto the green one", "stack red on green"),
         success_fn=lambda s: (on_top_of(s.poses, "red_block", "green_block") and placed(s, "red_block")
                               and at_rest(s, "green_block")), kind="stack",
         objects=("red_block", "green_block"), max_steps=100),
    Task(name="push_blue_block_left",
         phrasings=("push the blue block to the left edge", "slide the blue cube to the left side of the table",
                    "push the blue block left", "shove the blue block over to the left"),
         success_fn=lambda s: at_left_edge(s.poses, "blue_block") and placed(s, "blue_block"), kind="push", objects=("blue_block",), max_steps=90),
    Task(name="put_red_and_green_in_bowl",
         phrasings=("put the red and green blocks in the bowl", "place both the red and the green cube into the bowl",
                    "put the red block and then the green block in the bowl"),
         success_fn=lambda s: all(in_bowl(s.poses, b) and placed(s, b) for b in ("red_block", "green_block")),
         kind="pick_place_two",
         objects=("red_block", "green_block", "bowl"), max_steps=190),
]}


# Held-out phrasings (never in `phrasings`, so never seen in training): filled into TASKS below.
_HELD_OUT_PHRASINGS: dict[str, tuple[str, ...]] = {
    "pick_up_green_block": ("please pick up the green block", "could you lift up the green cube",
                            "take the green block off the table", "the green block, pick it up"),
    "put_red_block_in_bowl": ("please put the red block into the bowl", "place the red block inside the bowl",
                              "the red cube goes in the bowl", "put the red cube in the bowl"),
    "put_blue_block_in_bowl": ("please put the blue block into the bowl", "place the blue block inside the bowl",
                               "the blue cube goes in the bowl", "put the blue cube in the bowl"),
    "stack_red_on_green": ("please stack the red cube on the green cube", "set the red block on top of the green block",
                           "put red on top of green", "the red block goes on the green block"),
    "push_blue_block_left": ("please push the blue cube to the left", "move the blue block to the left edge of the table",
                             "slide the blue block left", "to the left edge with the blue block"),
    "put_red_and_green_in_bowl": ("please put both the red and the green block in the bowl",
                                  "drop the red and the green cubes into the bowl",
                                  "the red and green blocks go in the bowl", "put the green and red blocks into the bowl"),
}
TASKS = {name: replace(task, held_out_phrasings=_HELD_OUT_PHRASINGS.get(name, task.held_out_phrasings))
         for name, task in TASKS.items()}
assert all(not set(t.held_out_phrasings) & set(t.phrasings) for t in TASKS.values()), "held-out phrasing in training"


def get_task(name: str) -> Task:
    """The registered task called `name` (a clear error lists the known ones)."""
    try:
        return TASKS[name]
    except KeyError:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(sorted(TASKS))}") from None
