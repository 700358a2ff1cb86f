"""Closed-loop rollouts: success comes from the environment, not from the policy."""
import numpy as np
import pytest

from fedvla_sim.env import PandaTabletopEnv, joint_targets_to_action
from fedvla_sim.experts import ScriptedExpert
from fedvla_sim.policy_eval import EvalConfig, rollout_policy


@pytest.fixture(scope="module")
def env():
    e = PandaTabletopEnv("pick_up_green_block", 0, camera_size=32)
    yield e
    e.close()


def test_expert_as_policy_succeeds_and_frozen_arm_fails(env):
    env.reset(0)
    expert = ScriptedExpert(env)
    result = rollout_policy(env, lambda obs: np.asarray([expert.act()]), seed=0, max_steps=200)
    assert result["success"] and 0 < result["steps"] < 200

    env.reset(0)
    hold = joint_targets_to_action(env.joint_positions())
    result = rollout_policy(env, lambda obs: np.repeat(hold[None], 5, 0), seed=0, max_steps=15, execute_steps=5)
    assert not result["success"] and result["steps"] == 15


def test_eval_config_validates_fields():
    with pytest.raises(ValueError, match="execute_steps"):
        EvalConfig(checkpoint="x", execute_steps=0)
    assert "stack_red_on_green" in EvalConfig(checkpoint="x").tasks
