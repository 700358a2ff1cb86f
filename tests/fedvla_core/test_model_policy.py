"""FedVLAPolicy: shapes for every variant, checkpoints, parameter groups, trunk exchange, act()."""
import numpy as np
import pytest
import torch
from safetensors import safe_open

from fedvla_core.model import FFN_KINDS, FedVLAConfig, FedVLAPolicy
from fedvla_core.model.scene_parsing import patch_ids_from_masks, proposal_scores, split_into_groups

CAMS = ["agentview", "wrist"]


def tiny_config(**overrides) -> FedVLAConfig:
    kw = dict(camera_names=CAMS, image_size=32, patch_size=8, proprio_dim=5, action_dim=3, chunk_size=4,
              d_model=32, n_layers=2, n_heads=2, n_experts=4, expert_hidden=32, iosp_topk=3, iosp_n_experts=2,
              iosp_expert_hidden=16)
    kw.update(overrides)
    return FedVLAConfig(**kw)


def tiny_batch(cfg: FedVLAConfig, b: int = 3, seed: int = 0, masks: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)
    s = cfg.image_size
    batch = {
        "images": torch.randint(0, 256, (b, len(cfg.camera_names), 3, s, s), generator=g, dtype=torch.uint8),
        "instruction": ["put the red block in the bowl", "open the drawer", "put the red block in the bowl"][:b],
        "proprio": torch.randn(b, cfg.proprio_dim, generator=g),
        "actions": torch.randn(b, cfg.chunk_size, cfg.action_dim, generator=g),
        "action_is_pad": torch.zeros(b, cfg.chunk_size, dtype=torch.bool),
    }
    if masks:
        batch["masks"] = torch.randint(-1, 4, (b, len(cfg.camera_names), s, s), generator=g)
    return batch


@pytest.mark.parametrize("use_iosp", [True, False])
@pytest.mark.parametrize("kind", FFN_KINDS)
def test_forward_shapes_every_variant(kind, use_iosp):
    torch.manual_seed(0)
    cfg = tiny_config(ffn_kind=kind, use_iosp=use_iosp)
    policy = FedVLAPolicy(cfg)
    batch = tiny_batch(cfg, masks=use_iosp)
    seq, _ = policy.encode(batch)
    n_scene = 3 * cfg.iosp_topk if use_iosp else len(CAMS) * cfg.patches_per_camera
    assert seq.shape == (3, cfg.chunk_size + 2 + n_scene, cfg.d_model)
    out = policy(batch)
    assert out["pred"].shape == (3, cfg.chunk_size, cfg.action_dim)
    assert out["loss"].ndim == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    counts = policy.expert_counts()
    assert len(counts) == cfg.n_layers
    assert len(counts[0]) == (1 if kind == "dense" else cfg.n_experts)
    tokens = 3 * seq.shape[1]
    expected_active = {"dense": 1.0, "topk": 2.0, "adamoe": 2.0}
    if kind in expected_active:
        assert policy.mean_active_experts() == pytest.approx(expected_active[kind])
        assert sum(counts[0]) == tokens * expected_active[kind]
    else:
        assert 1.0 <= policy.mean_active_experts() <= cfg.n_experts
    if use_iosp:
        assert set(policy.iosp_mean_active_experts()) == {"target", "surrounding", "background"}


def test_padding_is_masked_out_of_the_loss():
    torch.manual_seed(0)
    cfg = tiny_config()
    policy = FedVLAPolicy(cfg).eval()
    batch = tiny_batch(cfg)
    batch["action_is_pad"][:, 2:] = True
    loss = policy(batch)["action_loss"]
    batch["actions"][:, 2:] += 100.0  # padded steps may hold anything
    assert policy(batch)["action_loss"] == pytest.approx(float(loss))


def test_save_pretrained_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config()
    policy = FedVLAPolicy(cfg).eval()
    policy.set_normalization(np.arange(3) + 1.0, [2.0, 3.0, 0.0], np.ones(5), np.full(5, 4.0))
    batch = tiny_batch(cfg, masks=True)
    expected = policy.predict_action_chunk(batch)
    policy.save_pretrained(tmp_path)

    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = list(f.keys())
    assert keys and all(k.split(".")[0] in {"stem", "trunk", "head", "normalizer"} for k in keys)
    assert not any("embeddings.word_embeddings" in k for k in keys)  # MiniLM stays out
    assert (tmp_path / "model.safetensors").stat().st_size < 5e6

    loaded = FedVLAPolicy.from_pretrained(tmp_path).eval()
    assert loaded.config.ffn_kind == cfg.ffn_kind and loaded.config.camera_names == CAMS
    torch.testing.assert_close(loaded.normalizer.action_std, torch.tensor([2.0, 3.0, 1.0]))
    assert loaded.has_normalization
    torch.testing.assert_close(loaded.predict_action_chunk(batch), expected, rtol=0, atol=0)


def test_parameter_groups_partition_the_model():
    policy = FedVLAPolicy(tiny_config())
    groups = {g: policy.parameter_group(g) for g in ("stem", "trunk", "head")}
    names = [n for g in groups.values() for n in g]
    assert sorted(names) == sorted(n for n, _ in policy.named_parameters())
    with pytest.raises(ValueError, match="unknown group"):
        policy.parameter_group("tail")
    layout = policy.trunk_layout()
    assert set(layout) == set(groups["trunk"])
    assert layout["trunk.layers.1.ffn.experts.3.w1.weight"] == (1, 3)
    assert layout["trunk.layers.0.qkv.weight"] == (0, None)
    assert layout["trunk.layers.1.ffn.threshold"] == (1, None)


def test_export_and_load_trunk_changes_only_the_trunk():
    torch.manual_seed(0)
    a = FedVLAPolicy(tiny_config())
    torch.manual_seed(1)
    b = FedVLAPolicy(tiny_config())
    stem_before = {n: p.detach().clone() for n, p in b.named_parameters() if not n.startswith("trunk.")}
    trunk = a.export_trunk()
    assert all(t.device.type == "cpu" and not t.requires_grad for t in trunk.values())
    assert set(trunk) == set(a.parameter_group("trunk"))
    loaded = b.load_trunk(trunk)
    assert sorted(loaded) == sorted(trunk)
    for n, p in b.parameter_group("trunk").items():
        torch.testing.assert_close(p.detach(), trunk[n], rtol=0, atol=0)
    for n, p in b.named_parameters():
        if not n.startswith("trunk."):
            torch.testing.assert_close(p.detach(), stem_before[n], rtol=0, atol=0)
    trunk["trunk.layers.0.qkv.weight"] += 1.0  # an exported copy, not a view
    assert not torch.equal(a.parameter_group("trunk")["trunk.layers.0.qkv.weight"].detach(),
                           trunk["trunk.layers.0.qkv.weight"])
    with pytest.raises(KeyError):
        b.load_trunk({"stem.proprio.mlp.0.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="shape"):
        b.load_trunk({"trunk.layers.0.qkv.weight": torch.zeros(2, 2)})


def test_export_experts_selects_one_layer_and_experts():
    policy = FedVLAPolicy(tiny_config())
    part = policy.export_experts(1, [0, 2])
    assert part and {policy.trunk_layout()[n] for n in part} == {(1, 0), (1, 2)}
    assert "trunk.layers.1.ffn.experts.2.w2.bias" in part


def test_act_returns_an_unnormalized_chunk_and_resizes():
    torch.manual_seed(0)
    cfg = tiny_config()
    policy = FedVLAPolicy(cfg)
    policy.set_normalization([10.0, 20.0, 30.0], [0.1, 0.1, 0.1], np.zeros(5), np.ones(5))
    rng = np.random.default_rng(0)
    obs = {"images": {"agentview": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8),
                      "wrist": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)},
           "instruction": "open the drawer", "proprio": rng.normal(size=5)}
    chunk = policy.act(obs)
    assert chunk.shape == (cfg.chunk_size, cfg.action_dim) and chunk.dtype == np.float32
    batch = {"images": torch.stack([torch.from_numpy(obs["images"][c]).permute(2, 0, 1) for c in CAMS])[None],
             "instruction": [obs["instruction"]], "proprio": torch.tensor(obs["proprio"][None], dtype=torch.float32)}
    policy.eval()
    np.testing.assert_allclose(chunk, policy.predict_action_chunk(batch)[0].numpy(), rtol=1e-5, atol=1e-5)
    assert np.all(np.abs(chunk - [10.0, 20.0, 30.0]) < 5.0)  # unnormalized around the mean
    big = dict(obs, images={c: np.kron(obs["images"][c], np.ones((2, 2, 1), np.uint8)) for c in CAMS})
    assert policy.act(big).shape == chunk.shape  # 64x64 frames are resized to 32x32
    with pytest.raises(KeyError, match="wrist"):
        policy.act(dict(obs, images={"agentview": obs["images"]["agentview"]}))


def test_instruction_embeddings_are_cached():
    policy = FedVLAPolicy(tiny_config())
    enc = policy.language_encoder
    enc.encode(["a brand new instruction 123"])
    size = enc.cache_size()
    s1, t1, m1 = enc.encode(["a brand new instruction 123", "a brand new instruction 123"])
    assert enc.cache_size() == size
    torch.testing.assert_close(s1[0], s1[1])
    assert s1.shape == (2, 384) and t1.shape[:2] == m1.shape and m1.all()
    torch.testing.assert_close(s1.norm(dim=-1), torch.ones(2))


def test_iosp_grouping_hand_built():
    relevance = torch.tensor([[0.9, 0.1, 0.5, 0.8, 0.2, 0.4]])
    groups = split_into_groups(relevance, relevance, k=1)
    assert groups.tolist() == [[[0], [2], [4]]]  # tiers {0,3}, {2,5}, {1,4}; best of each
    # Proposals: tokens 1 and 4 belong to the object with the highest mean relevance.
    ids = torch.tensor([[0, 7, 0, 0, 7, 3]])
    ids_rel = torch.tensor([[0.0, 1.0, 0.3, 0.0, 0.9, 0.5]])
    score = proposal_scores(ids_rel, ids)
    torch.testing.assert_close(score, torch.tensor([[0.1, 0.95, 0.1, 0.1, 0.95, 0.5]]))
    groups = split_into_groups(ids_rel, score, k=2)
    assert sorted(groups[0, 0].tolist()) == [1, 4]  # the whole object is the Target


def test_patch_ids_from_masks_take_patch_centres():
    masks = torch.zeros(1, 1, 8, 8, dtype=torch.long)
    masks[0, 0, :4, 4:] = 5
    ids = patch_ids_from_masks(masks, image_size=8, patch_size=4)
    assert ids.tolist() == [[0, 5, 0, 0]]
