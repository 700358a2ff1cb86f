"""PandaTabletopEnv: determinism, observations, cameras, segmentation, action handling."""
import numpy as np
import pytest

from fedvla_core.embodiment import FINGER_MAX_M
from fedvla_sim import scene
from fedvla_sim.env import SEGMENTATION_CLASSES, PandaTabletopEnv, action_to_joint_targets, joint_targets_to_action


@pytest.fixture(scope="module")
def env():
    e = PandaTabletopEnv("put_red_block_in_bowl", 0, camera_size=64)
    yield e
    e.close()


def _state(e):
    return np.concatenate([e.data.qpos.copy(), e.data.qvel.copy()])


def test_same_seed_same_initial_state_and_instruction(env):
    env.reset(5)
    first, instruction, image = _state(env), env.instruction, env.render("agentview")
    env.reset(9)
    other = _state(env)
    env.reset(5)
    np.testing.assert_array_equal(_state(env), first)
    np.testing.assert_array_equal(env.render("agentview"), image)
    assert env.instruction == instruction
    assert not np.allclose(other[:env.model.nq], first[:env.model.nq])


def test_same_seed_same_rollout():
    a = PandaTabletopEnv("pick_up_green_block", 3, render=False)
    b = PandaTabletopEnv("pick_up_green_block", 3, render=False)
    action = np.concatenate([scene.ARM_HOME + 0.1, [0.5]])
    for _ in range(3):
        a.step(action)
        b.step(action)
    np.testing.assert_array_equal(a.data.qpos, b.data.qpos)


def test_observation_layout(env):
    obs = env.reset(1)
    assert set(obs["images"]) == {"agentview", "wrist"}
    for img in obs["images"].values():
        assert img.shape == (64, 64, 3) and img.dtype == np.uint8
        assert img.std() > 5  # not a blank frame
    assert obs["joint_positions"].shape == (8,)
    np.testing.assert_allclose(obs["joint_positions"][:7], scene.ARM_HOME, atol=0.02)
    assert obs["instruction"] in env.task.phrasings
    assert env.joint_names == scene.ROS_JOINT_NAMES
    assert env.position_limits.shape == (8, 2) and env.velocity_limits.shape == (8,)
    assert env.acceleration_limits.shape == (8,)


def test_step_tracks_joint_targets(env):
    env.reset(2)
    goal = scene.ARM_HOME + np.array([0.2, 0.1, -0.1, 0.15, 0.0, -0.1, 0.3])
    for _ in range(8):
        obs = env.step(np.concatenate([goal, [0.0]]))
    np.testing.assert_allclose(obs["joint_positions"][:7], goal, atol=0.02)
    assert obs["joint_positions"][7] < 0.005  # gripper command 0 closes the fingers
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(7))


def test_gripper_unit_conversion_round_trips():
    action = np.array([0.1, 0.2, 0.3, -1.0, 0.0, 1.0, 0.5, 0.25])
    targets = action_to_joint_targets(action)
    assert targets[7] == pytest.approx(0.25 * FINGER_MAX_M)
    np.testing.assert_allclose(joint_targets_to_action(targets), action)


def test_segmentation_labels_objects(env):
    env.reset(0)
    seg = env.segmentation("agentview")
    assert seg.shape == (64, 64) and seg.dtype == np.int32
    present = {SEGMENTATION_CLASSES[i] for i in np.unique(seg)}
    assert {"table", "robot", "red_block", "bowl"} <= present


def test_camera_intrinsics(env):
    k = env.camera_intrinsics("wrist")
    assert k.shape == (3, 3) and k[0, 2] == 32 and k[1, 2] == 32 and k[0, 0] > 0


def test_unknown_task_is_a_clear_error():
    with pytest.raises(KeyError, match="known tasks"):
        PandaTabletopEnv("fly_to_the_moon", 0, render=False)
