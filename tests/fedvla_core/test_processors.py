"""The model's processors (fedvla_core.model.processors): round trips, and that the network consumes their output."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fedvla_core.model import FedVLAPolicy
from fedvla_core.model.processors import (Normalizer, RelativeActions, compute_normalization, images_to_float,
                                          observation_to_batch)
from fedvla_core.model.threads import cpu_threads
from test_model_policy import CAMS, tiny_config  # pytest (import mode "prepend") puts this folder on sys.path


def observation(rng: np.random.Generator, size: int = 32, masks: bool = False) -> dict:
    obs = {"images": {c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for c in CAMS},
           "instruction": "pick up the green block", "proprio": rng.normal(size=5)}
    if masks:
        obs["masks"] = {c: rng.integers(-1, 4, (size, size)) for c in CAMS}
    return obs


def test_normalize_then_unnormalize_round_trips():
    norm = Normalizer(action_dim=3, proprio_dim=5)
    x_a, x_p = torch.randn(2, 4, 3), torch.randn(2, 5)
    assert not norm.has_stats
    torch.testing.assert_close(norm.normalize_actions(x_a), x_a, rtol=0, atol=0)  # identity until set
    norm.set_stats(np.array([1.0, -2.0, 3.0]), [2.0, 0.5, 0.0], torch.arange(5.0), np.full(5, 4.0))
    assert norm.has_stats
    torch.testing.assert_close(norm.action_std, torch.tensor([2.0, 0.5, 1.0]))  # a constant dim gets std 1
    torch.testing.assert_close(norm.normalize_actions(x_a), (x_a - torch.tensor([1.0, -2.0, 3.0])) / norm.action_std)
    torch.testing.assert_close(norm.unnormalize_actions(norm.normalize_actions(x_a)), x_a)
    torch.testing.assert_close(norm.unnormalize_proprio(norm.normalize_proprio(x_p)), x_p)
    with pytest.raises(ValueError, match="proprio_std has 4 values"):
        norm.set_stats(np.zeros(3), np.ones(3), np.zeros(5), np.ones(4))


def test_relative_actions_round_trip_and_offset_only_their_dims():
    rel = RelativeActions(2)
    actions, proprio = torch.randn(3, 4, 5), torch.randn(3, 6)
    model = rel.to_model(actions, proprio)
    torch.testing.assert_close(model[..., :2], actions[..., :2] - proprio[:, None, :2])
    torch.testing.assert_close(model[..., 2:], actions[..., 2:], rtol=0, atol=0)
    torch.testing.assert_close(rel.from_model(model, proprio), actions)
    assert not RelativeActions(0) and RelativeActions(0).to_model(actions, proprio) is actions


def test_compute_normalization_of_relative_targets():
    samples = [{"actions": torch.randn(4, 3), "proprio": torch.randn(5), "action_is_pad": torch.tensor([0, 0, 1, 1])}
               for _ in range(6)]
    stats = compute_normalization(samples, relative_action_dims=2)
    targets = torch.cat([torch.cat([s["actions"][:2, :2] - s["proprio"][:2], s["actions"][:2, 2:]], -1)
                         for s in samples])
    torch.testing.assert_close(stats["action_mean"], targets.mean(0))
    torch.testing.assert_close(stats["proprio_std"], torch.stack([s["proprio"] for s in samples]).std(0, unbiased=False))


def test_observation_to_batch_converts_batches_and_resizes():
    rng = np.random.default_rng(0)
    obs = observation(rng, masks=True)
    batch = observation_to_batch(obs, CAMS, 32, with_masks=True)
    expected = torch.stack([torch.from_numpy(obs["images"][c]).permute(2, 0, 1).float() / 255.0 for c in CAMS])[None]
    torch.testing.assert_close(batch["images"], expected, rtol=0, atol=0)
    assert batch["instruction"] == ["pick up the green block"]
    assert batch["proprio"].dtype == torch.float32 and batch["proprio"].shape == (1, 5)
    assert batch["masks"].shape == (1, 2, 32, 32)
    assert "masks" not in observation_to_batch(obs, CAMS, 32, with_masks=False)
    big = observation(rng, size=64)
    resized = observation_to_batch(big, CAMS, 32, with_masks=False)["images"]
    want = F.interpolate(torch.from_numpy(big["images"]["wrist"]).permute(2, 0, 1)[None].float() / 255.0,
                         size=(32, 32), mode="bilinear", align_corners=False, antialias=True)[0]
    torch.testing.assert_close(resized[0, 1], want, rtol=0, atol=0)
    with pytest.raises(KeyError, match="wrist"):
        observation_to_batch(dict(obs, images={"agentview": obs["images"]["agentview"]}), CAMS, 32, False)


def test_images_to_float_takes_uint8_or_unit_floats():
    u8 = torch.randint(0, 256, (2, 2, 3, 16, 16), dtype=torch.uint8)
    out = images_to_float(u8, 16)
    torch.testing.assert_close(out, u8.float() / 255.0 * 2.0 - 1.0)
    torch.testing.assert_close(images_to_float(u8.float() / 255.0, 16), out, rtol=0, atol=0)
    assert images_to_float(u8, 8).shape == (2, 2, 3, 8, 8)


def test_the_network_consumes_what_the_processors_produce():
    torch.manual_seed(0)
    cfg = tiny_config(relative_action_dims=2)
    policy = FedVLAPolicy(cfg).eval()
    policy.set_normalization([10.0, 20.0, 30.0], [0.5, 2.0, 4.0], np.arange(5.0), np.full(5, 3.0))
    obs = observation(np.random.default_rng(1))
    seen = {}
    hooks = [policy.stem.vision.register_forward_pre_hook(lambda m, a: seen.__setitem__("images", a[0])),
             policy.stem.proprio.register_forward_pre_hook(lambda m, a: seen.__setitem__("proprio", a[0]))]
    try:
        chunk = policy.act(obs)
    finally:
        for h in hooks:
            h.remove()
    batch = observation_to_batch(obs, CAMS, cfg.image_size, with_masks=cfg.use_iosp)
    torch.testing.assert_close(seen["images"], images_to_float(batch["images"], cfg.image_size), rtol=0, atol=0)
    torch.testing.assert_close(seen["proprio"], policy.normalizer.normalize_proprio(batch["proprio"]), rtol=0, atol=0)
    with torch.no_grad():
        pred, _ = policy.predict_normalized(batch)
    expected = RelativeActions(2).from_model(policy.normalizer.unnormalize_actions(pred), batch["proprio"])
    np.testing.assert_array_equal(chunk, expected[0].numpy())


def test_cpu_threads_are_restored():
    before = torch.get_num_threads()
    with cpu_threads(1, "cpu"):
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == before
    with cpu_threads(None, "cpu"):
        assert torch.get_num_threads() == before
