"""The sim, the policy server's controller and the episode recorder agree on the embodiment's joints and gripper."""
import numpy as np
import pytest

from fedvla_core import embodiment
from fedvla_core.control.server_config import ServerConfig
from fedvla_core.control.motion import JointSpaceBackend, MotionConfig
from fedvla_core.embodiment import (ACTION_NAMES, ARM_JOINTS, FINGER_JOINTS, FINGER_MAX_M, GRIPPER_JOINT, JOINT_NAMES,
                                    PANDA_LIMITS)
from fedvla_core.episodes.recorder import ActionLayout


@pytest.fixture(scope="module")
def env():
    pytest.importorskip("mujoco")
    from fedvla_sim.env import PandaTabletopEnv

    return PandaTabletopEnv("put_red_block_in_bowl", 0, camera_size=16, render=False)


def test_the_controller_and_the_recorder_use_the_embodiment_joints_and_gripper():
    cfg = ServerConfig()
    assert cfg.arm_joint_names == list(ARM_JOINTS) == list(PANDA_LIMITS.names)
    assert cfg.gripper_joint == GRIPPER_JOINT and cfg.gripper_max == FINGER_MAX_M == MotionConfig().gripper_max
    assert cfg.joint_lower_limits == PANDA_LIMITS.lower.tolist()
    assert cfg.joint_upper_limits == PANDA_LIMITS.upper.tolist()
    assert JointSpaceBackend().joint_names == list(JOINT_NAMES)
    layout = ActionLayout()
    assert layout.joint_names == list(JOINT_NAMES) and layout.action_names == list(ACTION_NAMES)
    assert layout.gripper_open_position == FINGER_MAX_M


def test_the_sim_publishes_the_embodiment_joints_within_its_limits(env):
    assert env.joint_names == JOINT_NAMES and env.action_names == ACTION_NAMES
    for name in (*ARM_JOINTS, *FINGER_JOINTS):
        env.model.joint(name)  # every embodiment joint exists in the sim's MJCF (KeyError otherwise)
    np.testing.assert_array_equal(env.velocity_limits[:7], PANDA_LIMITS.max_velocity)
    np.testing.assert_array_equal(env.acceleration_limits[:7], PANDA_LIMITS.max_acceleration)
    assert env.position_limits[7].tolist() == pytest.approx([0.0, FINGER_MAX_M])  # the finger's full travel
    assert env.joint_positions()[7] == pytest.approx(FINGER_MAX_M)  # reset opens the gripper


def test_one_gripper_mapping_from_command_to_finger_and_back(env):
    from fedvla_sim.env import action_to_joint_targets, joint_targets_to_action

    command = 0.25
    finger = embodiment.gripper_to_finger(command)
    assert finger == pytest.approx(0.01)
    action = np.r_[np.zeros(7), command]
    assert action_to_joint_targets(action)[7] == finger  # the sim
    home = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785])
    planned = JointSpaceBackend().plan(np.r_[home, FINGER_MAX_M], np.r_[home, command][None])
    assert planned.positions[-1, 7] == pytest.approx(finger)  # the policy server's plan
    positions = dict(zip(JOINT_NAMES, np.r_[home, finger]))
    assert ActionLayout().to_action(positions)[7] == pytest.approx(command)  # the recorder
    assert joint_targets_to_action(np.r_[home, finger])[7] == pytest.approx(command)
    assert embodiment.gripper_to_finger(1.5) == FINGER_MAX_M and embodiment.finger_to_gripper(-0.01) == 0.0
