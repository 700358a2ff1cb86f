"""act()'s fast path: the compiled graph gives the eager chunk, the instruction cache is hit and bounded."""
import numpy as np
import torch

from fedvla_core.model import FedVLAConfig, FedVLAPolicy
from fedvla_core.model.encoders import FrozenSentenceEncoder

CAMS = ["agentview", "wrist"]


def tiny_policy(**overrides) -> FedVLAPolicy:
    kw = dict(camera_names=CAMS, image_size=32, patch_size=8, proprio_dim=5, action_dim=3, chunk_size=4,
              d_model=32, n_layers=2, n_heads=2, n_experts=4, expert_hidden=32, iosp_topk=3, iosp_n_experts=2,
              iosp_expert_hidden=16, relative_action_dims=2)
    kw.update(overrides)
    torch.manual_seed(0)
    policy = FedVLAPolicy(FedVLAConfig(**kw))
    policy.set_normalization([1.0, 2.0, 3.0], [0.1, 0.2, 0.3], np.zeros(5), np.ones(5))
    return policy.eval()


def observations(n: int, seed: int = 0) -> list[dict]:
    rng = np.random.default_rng(seed)
    texts = ["open the drawer", "put the red block in the bowl next to the small green cup on the left"]
    return [{"images": {c: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for c in CAMS},
             "instruction": texts[i % 2], "proprio": rng.normal(size=5).astype(np.float32)} for i in range(n)]


def test_compiled_act_gives_the_eager_chunk_and_sees_weight_updates():
    policy = tiny_policy()
    obs = observations(4)
    reference = [policy.act(o) for o in obs]
    assert policy.compile_act() > 0.0  # warm-up ran (the compile happens here, not at the first act)
    for o, ref in zip(obs, reference):  # two instruction lengths: padded to one shape
        np.testing.assert_allclose(policy.act(o), ref, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # in-place weight updates (checkpoint swap, load_trunk) reach the graph
        policy.head.out.bias.add_(1.0)
    shifted = policy.act(obs[0])
    policy.compile_act(False)
    np.testing.assert_allclose(shifted, policy.act(obs[0]), rtol=1e-5, atol=1e-5)
    assert not np.allclose(shifted, reference[0], atol=1e-3)


def test_compiled_act_counts_routing_like_eager():
    eager, compiled = tiny_policy(), tiny_policy()
    compiled.compile_act()
    assert sum(map(sum, compiled.expert_counts())) == 0  # the warm-up is not counted
    for o in observations(3):
        eager.act(o)
        compiled.act(o)
    assert compiled.expert_counts() == eager.expert_counts()


def test_act_keeps_the_mode_and_training_works_after_it():
    policy = tiny_policy()
    policy.act(observations(1)[0])  # runs under inference_mode
    assert not policy.training
    policy.train()
    policy.act(observations(1)[0])
    assert policy.training  # switched to eval for the call, and back
    g = torch.Generator().manual_seed(0)
    batch = {"images": torch.randint(0, 256, (2, 2, 3, 32, 32), generator=g, dtype=torch.uint8),
             "instruction": ["open the drawer", "open the drawer"], "proprio": torch.randn(2, 5, generator=g),
             "actions": torch.randn(2, 4, 3, generator=g)}
    before = sum(map(sum, policy.expert_counts()))
    out = policy(batch)
    out["loss"].backward()  # cached embeddings and routing counts made under inference_mode still work
    assert sum(map(sum, policy.expert_counts())) > before


def test_instruction_embedding_is_computed_once_per_goal():
    policy = tiny_policy()
    enc = policy.language_encoder
    obs = [dict(o, instruction="a goal instruction seen for the first time 7") for o in observations(5)]
    hits, misses = enc.hits, enc.misses
    for o in obs:
        policy.act(o)
    assert enc.misses == misses + 1 and enc.hits == hits + 4


def test_language_cache_is_a_bounded_lru():
    enc = FrozenSentenceEncoder("", 32, max_entries=3)
    for text in ("one", "two", "three"):
        enc.encode([text])
    enc.encode(["one"])  # most recently used now
    enc.encode(["four"])  # evicts "two", the least recently used
    assert enc.cache_size() == 3
    misses = enc.misses
    enc.encode(["one", "three", "four"])
    assert enc.misses == misses
    enc.encode(["two"])
    assert enc.misses == misses + 1 and enc.cache_size() == 3
    many = [f"instruction {i}" for i in range(7)]  # more than the bound in one call: all answered
    pooled, tokens, mask = enc.encode(many)
    assert pooled.shape[0] == 7 and enc.cache_size() == 3
    torch.testing.assert_close(pooled[6], enc.encode(["instruction 6"])[0][0])


def test_stacked_expert_weights_are_cached_without_autograd_and_follow_updates():
    from fedvla_core.model.experts import DGMoE, dispatch_mode

    torch.manual_seed(0)
    ffn = DGMoE(16, 4, 24).eval()
    x = torch.randn(7, 16)
    with dispatch_mode("dense"):
        with torch.no_grad():
            first = ffn(x).y
            assert torch.equal(ffn(x).y, first)  # from the cache
            ffn.experts[2].w1.weight.add_(0.5)  # an in-place update (optimizer step, load_trunk)
            updated = ffn(x).y
        fresh = ffn(x).y  # with autograd: stacked in the graph, no cache
        with dispatch_mode("sparse"):
            sparse = ffn(x).y
    assert not torch.allclose(updated, first)
    torch.testing.assert_close(updated, fresh.detach())
    torch.testing.assert_close(updated, sparse.detach(), rtol=1e-5, atol=1e-6)
    assert fresh.requires_grad


def test_each_compiled_policy_uses_its_own_weights():
    a, b = tiny_policy(), tiny_policy()
    with torch.no_grad():
        torch.manual_seed(5)
        for q in b.parameters():
            q.add_(torch.randn_like(q) * 0.05)
    obs = observations(2)
    expected = [(a.act(o), b.act(o)) for o in obs]
    a.compile_act()
    b.compile_act()  # may reuse a's generated code: the weights are graph inputs, not constants
    for o, (ra, rb) in zip(obs, expected):
        np.testing.assert_allclose(a.act(o), ra, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(b.act(o), rb, rtol=1e-5, atol=1e-5)
        assert not np.allclose(ra, rb, atol=1e-3)
