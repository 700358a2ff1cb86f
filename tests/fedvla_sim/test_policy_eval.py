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
    frames = []

    def frozen(obs):
        frames.append(obs["images"]["agentview"].copy())
        return np.repeat(hold[None], 5, 0)

    rendered = []
    real_render = env.render
    env.render = lambda cam: rendered.append(cam) or real_render(cam)
    try:
        result = rollout_policy(env, frozen, seed=0, max_steps=15, execute_steps=5)
    finally:
        del env.render
    assert not result["success"] and result["steps"] == 15
    # re-planning every 5 steps: 3 policy calls, each on a fresh frame; the cameras render only for the reset
    # and for the frame each re-plan reads (3 + 1 of the 15 steps' observations), not on every step
    assert len(frames) == 3
    cams = len(env.config.camera_names)
    assert len(rendered) == cams * 4


def test_eval_config_validates_fields():
    with pytest.raises(ValueError, match="execute_steps"):
        EvalConfig(checkpoint="x", execute_steps=0)
    assert "stack_red_on_green" in EvalConfig(checkpoint="x").tasks


# --- job-based evaluation: many policies in one pool, global arrays over a local policy ----------------
TINY_MW = dict(camera_names=["corner", "topview", "gripperPOV"], proprio_dim=4, action_dim=4, chunk_size=4,
               image_size=32, patch_size=8, d_model=32, n_layers=2, n_heads=2, n_experts=4, expert_hidden=32,
               iosp_topk=2, iosp_n_experts=2, iosp_expert_hidden=16)


@pytest.fixture(scope="module")
def tiny_policy_dir(tmp_path_factory):
    import torch

    from fedvla_core.model import FedVLAConfig, FedVLAPolicy

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("policy")
    FedVLAPolicy(FedVLAConfig(**TINY_MW)).save_pretrained(str(folder))
    return folder


def test_policy_source_loads_global_trunk_over_the_local_policy(tiny_policy_dir, tmp_path):
    from safetensors.numpy import save_file

    from fedvla_sim.policy_eval import PolicySource, load_policy

    local = load_policy(PolicySource(str(tiny_policy_dir)))
    trunk = {k: np.full(v.shape, 0.125, np.float32) for k, v in local.export_trunk().items()}
    save_file(trunk, str(tmp_path / "global.safetensors"))
    merged = load_policy(PolicySource(str(tiny_policy_dir), str(tmp_path / "global.safetensors"), "trunk"))
    name = next(iter(trunk))
    assert np.all(merged.export_trunk()[name].numpy() == 0.125)
    assert not np.all(local.export_trunk()[name].numpy() == 0.125)
    stem = next(n for n, _ in local.named_parameters() if n.startswith("stem."))
    assert np.array_equal(dict(merged.named_parameters())[stem].detach().numpy(),
                          dict(local.named_parameters())[stem].detach().numpy())  # the robot's own stem stays
    with pytest.raises(ValueError, match="scope"):
        PolicySource(str(tiny_policy_dir), scope="half")


def test_evaluate_jobs_returns_every_job_in_order_with_expert_usage(tiny_policy_dir):
    from fedvla_sim.policy_eval import EvalJob, PolicySource, evaluate_jobs, success_by_task

    src = PolicySource(str(tiny_policy_dir))
    jobs = [EvalJob(src, "drawer-close", 1, tag="b"), EvalJob(src, "door-lock", 0, tag="a")]
    seen = []
    rows = evaluate_jobs(jobs, "metaworld", workers=1, camera_size=32, max_steps=4, execute_steps=2,
                         progress=False, on_result=seen.append)
    assert [(r["tag"], r["task"], r["seed"]) for r in rows] == [("b", "drawer-close", 1), ("a", "door-lock", 0)]
    assert len(seen) == 2
    for r in rows:
        assert isinstance(r["success"], bool) and 1 <= r["steps"] <= 4
        assert len(r["expert_counts"]) == TINY_MW["n_layers"] and len(r["expert_counts"][0]) == TINY_MW["n_experts"]
        assert all(t > 0 for t in r["expert_tokens"])  # the DGMoE trunk routed this rollout's tokens
    assert set(success_by_task(rows)) == {"drawer-close", "door-lock"}
    with pytest.raises(ValueError, match="device"):
        evaluate_jobs(jobs, "metaworld", device="tpu")
