"""A robot's local round (what the ClientApp runs) with a tiny real FedVLAPolicy."""
from __future__ import annotations

import json

import numpy as np
import torch

from fedvla_core.episodes import EpisodeWriter
from fedvla_core.federated.local_round import (LocalRoundConfig, WarmState, latest_local_checkpoint, run_local_round,
                                          save_local_policy)

TINY = dict(camera_names=["agentview"], image_size=32, patch_size=8, d_model=32, n_layers=2, n_heads=2, n_experts=4,
            expert_hidden=32, iosp_topk=2, iosp_n_experts=2, iosp_expert_hidden=16, chunk_size=4, proprio_dim=8,
            action_dim=7)


def global_trunk():
    from fedvla_core.model import FedVLAConfig, FedVLAPolicy

    torch.manual_seed(0)
    policy = FedVLAPolicy(FedVLAConfig(**TINY))
    return policy, {k: v.numpy() for k, v in policy.export_trunk().items()}


def write_episode(directory, seed=0, steps=8):
    rng = np.random.default_rng(seed)
    w = EpisodeWriter(directory, metadata={"instruction": "push the block"}, camera_names=["agentview"],
                      joint_names=[f"j{i}" for i in range(8)], action_names=[f"a{i}" for i in range(7)])
    for t in range(steps):
        w.add_step(t, {"agentview": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)}, rng.normal(size=8),
                   rng.normal(size=7))
    w.close(True)


def test_local_round_uploads_all_experts_counts_and_persists_the_robot_policy(tmp_path):
    write_episode(tmp_path)
    policy, trunk = global_trunk()
    layout = policy.trunk_layout()
    cfg = LocalRoundConfig(episode_dir=str(tmp_path), model_config=json.dumps(TINY), server_round=1, local_steps=3,
                           batch_size=4)
    res = run_local_round(cfg, trunk)
    assert set(res.upload) == set(trunk)  # every expert travels, used or not
    assert res.metrics["num-examples"] == 8 and res.metrics["upload-delta"] == 0
    for layer in range(TINY["n_layers"]):
        counts = res.metrics[f"expert-counts.{layer}"]
        assert len(counts) == TINY["n_experts"] and sum(counts) > 0
    assert any(not np.array_equal(res.upload[k], trunk[k]) for k in trunk)
    assert latest_local_checkpoint(tmp_path / "policy") == res.checkpoint

    # Round 2 starts from the robot's saved policy (its own head), trains only layer 1 (FedPart)
    # and uploads float16 deltas.
    cfg2 = LocalRoundConfig(episode_dir=str(tmp_path), model_config=json.dumps(TINY), server_round=2, local_steps=2,
                            batch_size=4, train_layers=[1], proximal_mu=0.1, upload_dtype="float16")
    res2 = run_local_round(cfg2, trunk)
    assert set(res2.upload) == {k for k in trunk if layout[k][0] == 1}
    assert all(v.dtype == np.float16 for v in res2.upload.values()) and res2.metrics["upload-delta"] == 1
    assert latest_local_checkpoint(tmp_path / "policy").endswith("round_0002")

    empty = tmp_path / "empty"
    empty.mkdir()
    res3 = run_local_round(LocalRoundConfig(episode_dir=str(empty), model_config=json.dumps(TINY)), trunk)
    assert res3.upload == {} and res3.metrics["num-examples"] == 0


def test_warm_state_is_reused_only_while_the_disk_still_matches(tmp_path):
    write_episode(tmp_path)
    policy, trunk = global_trunk()
    warm = WarmState()

    def cfg(rnd):
        return LocalRoundConfig(episode_dir=str(tmp_path), model_config=json.dumps(TINY), server_round=rnd,
                                local_steps=2, batch_size=4)

    first = run_local_round(cfg(1), trunk, warm=warm)
    assert warm.policy_checkpoint == first.checkpoint and warm.hits == {"policy": 0, "dataset": 0}
    run_local_round(cfg(2), trunk, warm=warm)
    assert warm.hits == {"policy": 1, "dataset": 1}
    write_episode(tmp_path, seed=1, steps=5)  # a new episode: decoded again, and trained on
    third = run_local_round(cfg(3), trunk, warm=warm)
    assert warm.hits == {"policy": 2, "dataset": 1} and third.metrics["num-examples"] == 13
    save_local_policy(policy, cfg(9))  # someone else saved a newer local policy: the cached one is stale
    run_local_round(cfg(10), trunk, warm=warm)
    assert warm.hits == {"policy": 2, "dataset": 2}
