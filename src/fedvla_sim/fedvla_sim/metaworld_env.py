"""Meta-World v3 adapter for the paper's Table 1 tasks, with the same shape of API as `PandaTabletopEnv`.

A seed picks the task variation (object and goal placement) through `metaworld.MT1(name, seed)`,
so the same seed gives the same initial state. Images come from our own `mujoco.Renderer` on
the env's model with shadows and reflections off (3-4x faster on llvmpipe than the stock
renderer). The `corner` cameras render upside down in Meta-World, so they are rotated 180 deg.
Meta-World pins mujoco 3.3.0, but these four tasks and their experts run on mujoco 3.10
(measured), so one venv serves both sims.

Action: Meta-World's native 4-dim (hand dx, dy, dz in [-1, 1], gripper effort in [-1, 1]).
Proprio: obs[:4] (hand xyz + gripper opening).
"""
from __future__ import annotations

import numpy as np

METAWORLD_TASKS = {
    "door-lock": ("lock the door", "turn the door lock", "lock the safe door by turning the knob"),
    "drawer-close": ("close the drawer", "push the drawer shut", "slide the drawer closed"),
    "sweep-into": ("sweep the puck into the hole", "push the puck into the goal hole", "sweep the block into the hole"),
    "window-open": ("open the window", "slide the window open", "push the window to open it"),
}
# Other ways to say each task that training never draws (it draws from METAWORLD_TASKS only): for evaluation
# and for measuring the policy server's instruction grounding.
METAWORLD_HELD_OUT_PHRASINGS = {
    "door-lock": ("please lock the door", "turn the knob to lock the door", "the door, lock it"),
    "drawer-close": ("please close the drawer", "shut the drawer", "push the drawer closed"),
    "sweep-into": ("please sweep the puck into the hole", "push the puck into the hole", "move the puck into the hole"),
    "window-open": ("please open the window", "slide the window to open it", "open up the window"),
}
_POLICIES = {
    "door-lock": "SawyerDoorLockV3Policy",
    "drawer-close": "SawyerDrawerCloseV3Policy",
    "sweep-into": "SawyerSweepIntoV3Policy",
    "window-open": "SawyerWindowOpenV3Policy",
}
DEFAULT_CAMERAS = ("corner", "topview", "gripperPOV")


class MetaWorldEnv:
    """One Meta-World v3 task: reset(seed), step(action), render(camera), success()."""

    action_names = ("hand_dx", "hand_dy", "hand_dz", "gripper_effort")
    joint_names = ("hand_x", "hand_y", "hand_z", "gripper")  # names of the 4 proprio values
    max_steps = 500  # Meta-World's max_path_length

    def __init__(self, task: str = "door-lock", seed: int = 0, camera_size: int = 128,
                 camera_names=DEFAULT_CAMERAS, render: bool = True):
        import metaworld  # imported here: importing it is slow and only this adapter needs it

        if task not in METAWORLD_TASKS:
            raise KeyError(f"unknown Meta-World task {task!r}; known: {', '.join(METAWORLD_TASKS)}")
        if not 16 <= camera_size <= 1024:
            raise ValueError(f"camera_size must be in [16, 1024], got {camera_size}")
        self._metaworld = metaworld
        self.task_name = task
        self.env_name = f"{task}-v3"
        self.camera_size = camera_size
        self.camera_names = tuple(camera_names)
        self._want_render = render
        self._renderer = None
        self.env = None
        self.seed = seed
        self.instruction = ""
        self.reset(seed)

    def reset(self, seed: int | None = None) -> dict:
        if seed is not None:
            self.seed = int(seed)
        benchmark = self._metaworld.MT1(self.env_name, seed=self.seed)
        if self.env is None:
            self.env = benchmark.train_classes[self.env_name]()
            for cam in self.camera_names:
                if self.env.model.camera(cam) is None:
                    raise ValueError(f"unknown Meta-World camera {cam!r}")
        self.env.set_task(benchmark.train_tasks[0])
        self.env.seed(self.seed)
        self._obs, _ = self.env.reset()
        self._info = {"success": 0.0}
        rng = np.random.default_rng(self.seed)
        phrasings = METAWORLD_TASKS[self.task_name]
        self.instruction = phrasings[int(rng.integers(len(phrasings)))]
        self.steps = 0
        return self.observation()

    def step(self, action: np.ndarray, render: bool = True) -> dict:
        """Apply one action; ``render=False`` skips the cameras (a receding-horizon rollout only looks at
        the frame it re-plans from, and rendering is ~99% of a step's cost)."""
        action = np.clip(np.asarray(action, dtype=np.float32), -1.0, 1.0)
        if action.shape != (4,):
            raise ValueError(f"Meta-World action must have shape (4,), got {action.shape}")
        self._obs, _, _, _, self._info = self.env.step(action)
        self.steps += 1
        return self.observation(render)

    @property
    def control_dt(self) -> float:
        """Seconds per step (Meta-World: 5 physics frames of 2.5 ms = 80 Hz)."""
        return float(self.env.dt)

    @property
    def raw_observation(self) -> np.ndarray:
        """Meta-World's 39-dim state vector (what its scripted policies read)."""
        return self._obs.copy()

    def joint_positions(self) -> np.ndarray:
        return np.asarray(self._obs[:4], dtype=np.float64).copy()

    def success(self) -> bool:
        return bool(self._info.get("success", 0.0))

    def observation(self, render: bool = True) -> dict:
        obs = {"joint_positions": self.joint_positions(), "instruction": self.instruction}
        if self._want_render and render:
            obs["images"] = {cam: self.render(cam) for cam in self.camera_names}
        return obs

    def render(self, camera: str = "corner") -> np.ndarray:
        import mujoco

        if self._renderer is None:
            self._renderer = mujoco.Renderer(self.env.model, self.camera_size, self.camera_size)
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        self._renderer.update_scene(self.env.data, camera)
        image = self._renderer.render()
        if camera.startswith("corner"):
            image = image[::-1, ::-1]
        return np.ascontiguousarray(image)

    def expert(self) -> "MetaWorldExpert":
        return MetaWorldExpert(self)

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # EGL may already be torn down at interpreter exit; nothing to report then
            pass


class MetaWorldExpert:
    """The task's scripted policy from `metaworld.policies`, reading the env's raw state."""

    def __init__(self, env: MetaWorldEnv):
        import metaworld.policies as policies

        self.env = env
        self.policy = getattr(policies, _POLICIES[env.task_name])()

    def act(self) -> np.ndarray:
        return np.asarray(self.policy.get_action(self.env.raw_observation), dtype=np.float64)


def rollout_metaworld_expert(env: MetaWorldEnv, max_steps: int | None = None, on_step=None,
                             extra_steps_after_success: int = 5, action_noise: float = 0.0,
                             rng: np.random.Generator | None = None) -> dict:
    """Run the scripted policy until success (plus a few steps) or `max_steps`; returns {"success", "steps"}.

    `action_noise` > 0 adds Gaussian noise to the executed hand motion (dx, dy, dz) while `on_step` gets
    the expert's clean action, so the demonstrations include recoveries (see experts.rollout_expert).
    """
    from fedvla_sim.experts import perturb

    expert = env.expert()
    obs = env.observation()
    max_steps = max_steps or env.max_steps
    steps, after = 0, None
    while steps < max_steps:
        action = expert.act()
        if on_step is not None:
            on_step(obs, action)
        obs = env.step(perturb(action, action_noise, rng, 3))
        steps += 1
        if env.success():
            after = extra_steps_after_success if after is None else after - 1
            if after <= 0:
                break
    return {"success": env.success(), "steps": steps}
