"""Differential inverse kinematics for the Panda's grasp site, with mink.

The solver works on a robot-only copy of the scene, so its configuration is exactly the 7 arm
joints and 2 fingers, and it never touches the simulation's state. A posture task toward the
home pose keeps the redundant joint away from its limits (a bad seed gets stuck at joint 5).
"""
from __future__ import annotations

import mink
import mujoco
import numpy as np

from fedvla_sim import scene


def top_down_rotation(yaw: float) -> np.ndarray:
    """Rotation of a gripper pointing straight down: columns x=(cos, sin, 0), y=(sin, -cos, 0), z=(0, 0, -1).

    The fingers close along the site's y axis, so yaw 0 grasps a block across its world-y faces.
    """
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, s, 0.0], [s, -c, 0.0], [0.0, 0.0, -1.0]])


class GraspIK:
    """Solve arm joint targets that put the grasp site at a position with a top-down yaw."""

    def __init__(self, posture_cost: float = 1e-2, iterations: int = 20, dt: float = 0.05):
        self.model = scene.load_model(with_objects=False)
        self.configuration = mink.Configuration(self.model)
        self.frame_task = mink.FrameTask("grasp", "site", position_cost=1.0, orientation_cost=0.5, lm_damping=1e-3)
        self.posture_task = mink.PostureTask(self.model, cost=posture_cost)
        self.limits = [mink.ConfigurationLimit(self.model)]
        self.iterations = iterations
        self.dt = dt
        home = np.zeros(self.model.nq)
        home[:7] = scene.ARM_HOME
        self.posture_task.set_target(home)

    def forward(self, arm_q: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(position, rotation matrix) of the grasp site for 7 arm joint positions."""
        q = np.zeros(self.model.nq)
        q[:7] = arm_q
        self.configuration.update(q)
        pose = self.configuration.get_transform_frame_to_world("grasp", "site")
        return pose.translation(), pose.rotation().as_matrix()

    def solve(self, seed_q: np.ndarray, position: np.ndarray, rotation: np.ndarray) -> np.ndarray:
        """7 arm joint positions reaching (`position`, `rotation`), starting from `seed_q`."""
        q = np.zeros(self.model.nq)
        q[:7] = seed_q
        self.configuration.update(q)
        target = mink.SE3.from_rotation_and_translation(mink.SO3.from_matrix(np.asarray(rotation)), np.asarray(position))
        self.frame_task.set_target(target)
        for _ in range(self.iterations):
            velocity = mink.solve_ik(self.configuration, [self.frame_task, self.posture_task], self.dt,
                                     solver="daqp", damping=1e-3, limits=self.limits)
            self.configuration.integrate_inplace(velocity, self.dt)
            error = self.frame_task.compute_error(self.configuration)
            if np.linalg.norm(error[:3]) < 5e-4 and np.linalg.norm(error[3:]) < 5e-3:
                break
        return self.configuration.q[:7].copy()
