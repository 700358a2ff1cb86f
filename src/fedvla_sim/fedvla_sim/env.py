"""`PandaTabletopEnv`: the simulated Franka Panda on a tabletop, with no ROS in sight.

One control step (`step`) is `control_dt` seconds (0.1 s = the 10 Hz at which the policy sees
images and emits actions); inside it, the physics runs at 500 Hz and the position servo
targets are interpolated linearly from the previous target to the new one, like a joint
trajectory controller would. The ROS node drives the same object through `set_joint_targets`
and `physics_step` at the physics rate instead.

Action: 7 absolute arm joint targets (rad) + 1 gripper command in [0, 1] (0 closed, 1 open).
Proprio (`joint_positions`): 7 arm joint positions (rad) + panda_finger_joint1 (m, 0..0.04),
the order and units of the published sensor_msgs/JointState.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import mujoco
import numpy as np

from fedvla_core import embodiment
from fedvla_sim import scene
from fedvla_sim.tasks import SceneState, Task, get_task

SEGMENTATION_CLASSES = ("background", "table", "robot") + scene.OBJECTS


def gripper_command_to_finger(command: float) -> float:
    """Gripper command in [0, 1] -> finger joint position in metres."""
    return float(embodiment.gripper_to_finger(command))


def finger_to_gripper_command(position: float) -> float:
    """Finger joint position in metres -> gripper command in [0, 1]."""
    return float(embodiment.finger_to_gripper(position))


def action_to_joint_targets(action: np.ndarray) -> np.ndarray:
    """8-dim action (gripper in [0, 1]) -> 8 joint positions in ROS units (finger in metres)."""
    targets = np.asarray(action, dtype=float).copy()
    targets[7] = gripper_command_to_finger(targets[7])
    return targets


def joint_targets_to_action(targets: np.ndarray) -> np.ndarray:
    """8 joint positions in ROS units -> 8-dim action (gripper in [0, 1])."""
    action = np.asarray(targets, dtype=float).copy()
    action[7] = finger_to_gripper_command(action[7])
    return action


@dataclass
class EnvConfig:
    """Settings of the simulated tabletop."""

    camera_size: int = field(default=128, metadata={"help": "Height and width of every camera image, pixels."})
    camera_names: tuple[str, ...] = field(default=("agentview", "wrist"), metadata={"help": "Cameras rendered into observations."})
    control_dt: float = field(default=0.1, metadata={"help": "Seconds per control step (10 Hz policy rate)."})
    settle_time: float = field(default=0.3, metadata={"help": "Seconds of physics after a reset so objects come to rest."})

    def __post_init__(self):
        if not 16 <= self.camera_size <= 1024:
            raise ValueError(f"EnvConfig.camera_size must be in [16, 1024], got {self.camera_size}")
        for cam in self.camera_names:
            if cam not in ("agentview", "wrist"):
                raise ValueError(f"EnvConfig.camera_names: unknown camera {cam!r} (agentview, wrist)")
        if self.control_dt < 0.002:
            raise ValueError(f"EnvConfig.control_dt must be >= the physics step 0.002 s, got {self.control_dt}")
        if self.settle_time < 0:
            raise ValueError("EnvConfig.settle_time must be >= 0")


class PandaTabletopEnv:
    """A seeded tabletop task for the Panda: reset, step, render, success."""

    joint_names = embodiment.JOINT_NAMES
    action_names = embodiment.ACTION_NAMES

    def __init__(self, task: str | Task = "put_red_block_in_bowl", seed: int = 0, camera_size: int = 128,
                 camera_names=("agentview", "wrist"), control_dt: float = 0.1, render: bool = True,
                 visual_meshes: str = "fast"):
        self.config = EnvConfig(camera_size=camera_size, camera_names=tuple(camera_names), control_dt=control_dt)
        # "fast": low-poly robot meshes (12x faster on llvmpipe); "detailed": the original visual meshes.
        self.model = scene.load_model(visual_meshes=visual_meshes)
        self.data = mujoco.MjData(self.model)
        self.physics_dt = float(self.model.opt.timestep)
        self.substeps = max(1, int(round(self.config.control_dt / self.physics_dt)))
        self._arm_qpos = np.array([self.model.joint(n).qposadr[0] for n in embodiment.ARM_JOINTS])
        self._arm_dof = np.array([self.model.joint(n).dofadr[0] for n in embodiment.ARM_JOINTS])
        self._finger_qpos = np.array([self.model.joint(n).qposadr[0] for n in embodiment.FINGER_JOINTS])
        self._obj_qpos = {n: self.model.joint(f"{n}_joint").qposadr[0] for n in scene.OBJECTS}
        self._grasp_site = self.model.site("grasp").id
        lo = [self.model.joint(n).range[0] for n in self.joint_names]
        hi = [self.model.joint(n).range[1] for n in self.joint_names]
        self.position_limits = np.stack([lo, hi], axis=1)  # (8, 2), rad / m
        # The Panda datasheet's rate limits, fingers last.
        self.velocity_limits = np.append(embodiment.PANDA_LIMITS.max_velocity, embodiment.FINGER_MAX_VELOCITY)
        self.acceleration_limits = np.append(embodiment.PANDA_LIMITS.max_acceleration,
                                             embodiment.FINGER_MAX_ACCELERATION)
        self._geom_class = self._segmentation_lookup()
        self._obj_dof = {n: self.model.joint(f"{n}_joint").dofadr[0] for n in scene.OBJECTS}
        self._contact_part = self._contact_parts()
        self._renderer = None
        self._want_render = render
        self.task = get_task(task) if isinstance(task, str) else task
        self.seed = seed
        self.instruction = ""
        self.reset(seed)

    # ----- episode -----------------------------------------------------------------------------
    def reset(self, seed: int | None = None, task: str | Task | None = None) -> dict:
        """Put the robot home and the objects at the seed's layout; returns the first observation."""
        if task is not None:
            self.task = get_task(task) if isinstance(task, str) else task
        if seed is not None:
            self.seed = int(seed)
        rng = np.random.default_rng(self.seed)
        self.instruction = self.task.phrasings[int(rng.integers(len(self.task.phrasings)))]
        layout = self.task.sample_layout(rng)
        mujoco.mj_resetData(self.model, self.data)
        self.data.qpos[self._arm_qpos] = scene.ARM_HOME
        self.data.qpos[self._finger_qpos] = embodiment.FINGER_MAX_M
        for name, (x, y, yaw) in layout.items():
            adr = self._obj_qpos[name]
            z = 0.0 if name == "bowl" else scene.BLOCK_HALF + 1e-4
            self.data.qpos[adr:adr + 7] = [x, y, z, np.cos(yaw / 2), 0.0, 0.0, np.sin(yaw / 2)]
        self._target = np.concatenate([scene.ARM_HOME, [embodiment.FINGER_MAX_M]])
        self._apply_ctrl(self._target)
        mujoco.mj_forward(self.model, self.data)
        for _ in range(int(round(self.config.settle_time / self.physics_dt))):
            mujoco.mj_step(self.model, self.data)
        self.steps = 0
        return self.observation()

    def step(self, action: np.ndarray, render: bool = True) -> dict:
        """Advance one control step toward the 8-dim action (7 joint targets + gripper in [0, 1]).

        ``render=False`` skips the cameras for steps whose frames nobody reads (receding-horizon rollouts)."""
        action = np.asarray(action, dtype=float)
        if action.shape != (8,):
            raise ValueError(f"action must have shape (8,), got {action.shape}")
        goal = np.clip(action_to_joint_targets(action), self.position_limits[:, 0], self.position_limits[:, 1])
        start = self._target.copy()
        for i in range(1, self.substeps + 1):
            self._target = start + (goal - start) * (i / self.substeps)
            self._apply_ctrl(self._target)
            mujoco.mj_step(self.model, self.data)
        self.steps += 1
        return self.observation(render)

    # ----- low-level access for the ROS node ---------------------------------------------------
    def set_joint_targets(self, targets: np.ndarray) -> None:
        """Servo targets in ROS units (7 rad + finger m), clipped to the joint limits."""
        self._target = np.clip(np.asarray(targets, dtype=float), self.position_limits[:, 0], self.position_limits[:, 1])
        self._apply_ctrl(self._target)

    def physics_step(self, n: int = 1) -> None:
        for _ in range(n):
            mujoco.mj_step(self.model, self.data)

    @property
    def joint_targets(self) -> np.ndarray:
        return self._target.copy()

    @property
    def time(self) -> float:
        return float(self.data.time)

    def _apply_ctrl(self, targets: np.ndarray) -> None:
        self.data.ctrl[:7] = targets[:7]
        self.data.ctrl[7] = targets[7]
        self.data.ctrl[8] = targets[7]

    # ----- state -------------------------------------------------------------------------------
    def joint_positions(self) -> np.ndarray:
        """7 arm joints (rad) + panda_finger_joint1 (m)."""
        return np.concatenate([self.data.qpos[self._arm_qpos], self.data.qpos[self._finger_qpos[:1]]]).copy()

    def joint_velocities(self) -> np.ndarray:
        finger_dof = self.model.joint(embodiment.GRIPPER_JOINT).dofadr[0]
        return np.concatenate([self.data.qvel[self._arm_dof], [self.data.qvel[finger_dof]]]).copy()

    def object_poses(self) -> dict[str, np.ndarray]:
        """Object name -> (x, y, z, qw, qx, qy, qz)."""
        return {n: self.data.qpos[a:a + 7].copy() for n, a in self._obj_qpos.items()}

    def grasp_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """(position, 3x3 rotation) of the grasp site between the fingers."""
        return self.data.site_xpos[self._grasp_site].copy(), self.data.site_xmat[self._grasp_site].reshape(3, 3).copy()

    def object_speeds(self) -> dict[str, float]:
        """Object name -> linear speed (m/s) of its free joint."""
        return {n: float(np.linalg.norm(self.data.qvel[a:a + 3])) for n, a in self._obj_dof.items()}

    def contacts(self) -> set[tuple[str, str]]:
        """Touching pairs of parts, each sorted: parts are object names, "left_finger", "right_finger",
        "robot" (any other Panda link), "table" and "floor"."""
        pairs = set()
        for c in self.data.contact[:self.data.ncon]:
            a, b = self._contact_part[c.geom1], self._contact_part[c.geom2]
            if a != b:
                pairs.add((a, b) if a < b else (b, a))
        return pairs

    def robot_table_force(self) -> float:
        """Largest normal force (N) of any robot-table contact: the scripted experts stay under ~21 N, pressing the
        closed fingers into the table gives 50-70 N."""
        force, best = np.zeros(6), 0.0
        for i in range(self.data.ncon):
            c = self.data.contact[i]
            parts = {self._contact_part[c.geom1], self._contact_part[c.geom2]}
            if "table" in parts and parts & {"left_finger", "right_finger", "robot"}:
                mujoco.mj_contactForce(self.model, self.data, i, force)
                best = max(best, abs(float(force[0])))
        return best

    def scene_state(self) -> SceneState:
        """Poses, speeds and robot contacts of the objects: what success checks and failure analysis read."""
        fingers: dict[str, int] = {}
        touched: set[str] = set()
        for a, b in self.contacts():
            for part, other in ((a, b), (b, a)):
                if other in scene.OBJECTS and part in ("left_finger", "right_finger", "robot"):
                    touched.add(other)
                    if part != "robot":
                        fingers[other] = fingers.get(other, 0) + 1
        return SceneState(poses=self.object_poses(), speeds=self.object_speeds(), finger_contacts=fingers,
                          robot_contacts=frozenset(touched))

    def success(self) -> bool:
        return self.task.success(self.scene_state())

    def observation(self, render: bool = True) -> dict:
        obs = {"joint_positions": self.joint_positions(), "instruction": self.instruction}
        if self._want_render and render:
            obs["images"] = {cam: self.render(cam) for cam in self.config.camera_names}
        return obs

    # ----- cameras -----------------------------------------------------------------------------
    def _get_renderer(self) -> mujoco.Renderer:
        if self._renderer is None:
            size = self.config.camera_size
            self._renderer = mujoco.Renderer(self.model, size, size)
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = False
            self._renderer.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = False
        return self._renderer

    def render(self, camera: str = "agentview") -> np.ndarray:
        """HxWx3 uint8 RGB image of `camera`."""
        renderer = self._get_renderer()
        renderer.update_scene(self.data, camera)
        return renderer.render().copy()

    def segmentation(self, camera: str = "agentview") -> np.ndarray:
        """HxW int32 map of object ids, indices into `SEGMENTATION_CLASSES` (0 = background)."""
        renderer = self._get_renderer()
        renderer.enable_segmentation_rendering()
        try:
            renderer.update_scene(self.data, camera)
            seg = renderer.render()
        finally:
            renderer.disable_segmentation_rendering()
        geom_ids = seg[..., 0]
        is_geom = seg[..., 1] == int(mujoco.mjtObj.mjOBJ_GEOM)
        out = np.zeros(geom_ids.shape, dtype=np.int32)
        out[is_geom] = self._geom_class[geom_ids[is_geom]]
        return out

    def camera_intrinsics(self, camera: str) -> np.ndarray:
        """3x3 pinhole matrix K of `camera` at the configured size (square pixels)."""
        size = self.config.camera_size
        fovy = np.deg2rad(self.model.cam_fovy[self.model.camera(camera).id])
        f = 0.5 * size / np.tan(fovy / 2)
        return np.array([[f, 0.0, size / 2], [0.0, f, size / 2], [0.0, 0.0, 1.0]])

    def _segmentation_lookup(self) -> np.ndarray:
        """Geom id -> index in SEGMENTATION_CLASSES."""
        lookup = np.zeros(self.model.ngeom, dtype=np.int32)
        robot_bodies = {self.model.body(i).id for i in range(self.model.nbody) if self.model.body(i).name.startswith("panda")}
        for g in range(self.model.ngeom):
            body = self.model.geom_bodyid[g]
            name = self.model.body(body).name
            if name in scene.OBJECTS:
                lookup[g] = SEGMENTATION_CLASSES.index(name)
            elif body in robot_bodies:
                lookup[g] = SEGMENTATION_CLASSES.index("robot")
            elif self.model.geom(g).name == "table":
                lookup[g] = SEGMENTATION_CLASSES.index("table")
        return lookup

    def _contact_parts(self) -> list[str]:
        """Geom id -> the part name `contacts` reports."""
        parts = []
        for g in range(self.model.ngeom):
            body = self.model.body(self.model.geom_bodyid[g]).name
            if body in scene.OBJECTS:
                parts.append(body)
            elif body.endswith("leftfinger"):
                parts.append("left_finger")
            elif body.endswith("rightfinger"):
                parts.append("right_finger")
            elif body.startswith("panda"):
                parts.append("robot")
            else:
                parts.append(self.model.geom(g).name or "world")
        return parts

    def close(self) -> None:
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None

    def __del__(self):
        try:
            self.close()
        except Exception:  # EGL may already be torn down at interpreter exit
            pass
