"""The robot this stack drives, a Franka Emika Panda: joint names, limits and the gripper mapping.

The one place these are defined. The sim publishes and follows these joints, the policy server
plans within these limits, and the episode recorder turns finger positions into the policy's
gripper action with the same mapping, so a demonstration, a rollout and a command agree.

Joint order, of JointState, JointTrajectory and the policy's proprio and action vectors: the 7
arm joints, then the first finger (the second mirrors it, like the real hand). The gripper is
a command in [0, 1] (0 closed, 1 open) to the policy and a finger position in metres to the robot.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ARM_JOINTS = tuple(f"panda_joint{i}" for i in range(1, 8))
FINGER_JOINTS = ("panda_finger_joint1", "panda_finger_joint2")
#: The finger joint that is published and commanded; the second finger mirrors it.
GRIPPER_JOINT = FINGER_JOINTS[0]
#: Published and commanded joint names: the arm, then the gripper.
JOINT_NAMES = ARM_JOINTS + (GRIPPER_JOINT,)
#: Names of the policy's action entries: arm joint targets, then the gripper command in [0, 1].
ACTION_NAMES = ARM_JOINTS + ("gripper",)

FINGER_MAX_M = 0.04  # metres of travel per finger (fully open)
# The sim's finger rate limits (m/s, m/s^2), listed after the arm's where all 8 joints are.
FINGER_MAX_VELOCITY = 0.2
FINGER_MAX_ACCELERATION = 1.0


@dataclass(frozen=True)
class JointLimits:
    """Position, velocity and acceleration limits of a serial arm, one entry per joint."""

    names: tuple[str, ...]
    lower: np.ndarray
    upper: np.ndarray
    max_velocity: np.ndarray
    max_acceleration: np.ndarray

    def __post_init__(self):
        n = len(self.names)
        for name in ("lower", "upper", "max_velocity", "max_acceleration"):
            value = np.asarray(getattr(self, name), dtype=float)
            if value.shape != (n,):
                raise ValueError(f"JointLimits.{name} must have {n} entries, got shape {value.shape}")
            object.__setattr__(self, name, value)
        if np.any(self.lower >= self.upper):
            raise ValueError("JointLimits.lower must be below JointLimits.upper for every joint")
        if np.any(self.max_velocity <= 0) or np.any(self.max_acceleration <= 0):
            raise ValueError("JointLimits.max_velocity and max_acceleration must be positive")

    @property
    def dof(self) -> int:
        return len(self.names)


# Franka Emika Panda, from Franka's "Robot and interface specifications" (FCI documentation,
# frankaemika.github.io/docs/control_parameters.html). The sim's MJCF has narrower position
# ranges (fedvla_sim.scene.arm_position_limits); the rate limits are the same.
PANDA_LIMITS = JointLimits(
    names=ARM_JOINTS,
    lower=np.array([-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973]),
    upper=np.array([2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973]),
    max_velocity=np.array([2.1750, 2.1750, 2.1750, 2.1750, 2.6100, 2.6100, 2.6100]),
    max_acceleration=np.array([15.0, 7.5, 10.0, 12.5, 15.0, 20.0, 20.0]),
)


def gripper_to_finger(command, finger_max: float = FINGER_MAX_M):
    """Policy gripper command(s) in [0, 1] -> finger position(s) in [0, finger_max] metres (clipped)."""
    return np.clip(command, 0.0, 1.0) * finger_max


def finger_to_gripper(position, finger_max: float = FINGER_MAX_M, clip: bool = True):
    """Finger position(s) in metres -> gripper command(s), clipped to [0, 1] unless ``clip`` is False."""
    command = position / finger_max
    return np.clip(command, 0.0, 1.0) if clip else command
