"""The training loop: overfitting a tiny dataset, FedProx, FedPart freezing, eval hooks, collation."""
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from fedvla_core.model import FedVLAConfig, FedVLAPolicy
from fedvla_core.training import NonFiniteLossError, TrainConfig, collate_samples, compute_normalization, train


class TinyEpisodes(Dataset):
    """n samples whose actions are a fixed function of the image, the instruction and the proprioception."""

    def __init__(self, n=8, size=16, proprio_dim=4, action_dim=2, chunk=3, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.images = torch.randint(0, 256, (n, 1, 3, size, size), generator=g, dtype=torch.uint8)
        self.proprio = torch.randn(n, proprio_dim, generator=g)
        self.actions = 5.0 + 3.0 * torch.randn(n, chunk, action_dim, generator=g)
        self.instructions = ["pick up the cube" if i % 2 else "open the drawer" for i in range(n)]

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        pad = torch.zeros(self.actions.shape[1], dtype=torch.bool)
        pad[-1] = i == 0  # the first sample ends its episode: last step padded
        return {"images": self.images[i], "instruction": self.instructions[i], "proprio": self.proprio[i],
                "actions": self.actions[i], "action_is_pad": pad, "episode_id": f"ep{i // 4}"}


def tiny_policy(kind="dgmoe", seed=0, **kw) -> FedVLAPolicy:
    torch.manual_seed(seed)
    cfg = FedVLAConfig(camera_names=["cam"], image_size=16, patch_size=4, proprio_dim=4, action_dim=2,
                       chunk_size=3, d_model=32, n_layers=2, n_heads=2, n_experts=4, expert_hidden=32,
                       ffn_kind=kind, iosp_topk=4, iosp_n_experts=2, iosp_expert_hidden=16, **kw)
    return FedVLAPolicy(cfg)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models on a shared 2-core box run fastest (and most predictably) on one thread."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_collate_samples():
    ds = TinyEpisodes()
    batch = collate_samples([ds[0], ds[1], ds[2]])
    assert batch["images"].shape == (3, 1, 3, 16, 16) and batch["images"].dtype == torch.uint8
    assert batch["instruction"] == ["open the drawer", "pick up the cube", "open the drawer"]
    assert batch["action_is_pad"].tolist()[0] == [False, False, True]
    assert batch["episode_id"] == ["ep0", "ep0", "ep0"]


def test_compute_normalization_skips_padding():
    ds = TinyEpisodes()
    stats = compute_normalization(ds)
    acts = torch.cat([ds.actions[0, :2], ds.actions[1:].reshape(-1, 2)])
    torch.testing.assert_close(stats["action_mean"], acts.mean(0))
    torch.testing.assert_close(stats["proprio_std"], ds.proprio.std(0, unbiased=False))


@pytest.mark.timeout(240)
def test_tiny_model_overfits_tiny_dataset():
    policy = tiny_policy()
    ds = TinyEpisodes()
    evals = []
    metrics = train(policy, ds, TrainConfig(max_steps=150, batch_size=8, lr=2e-3, warmup=10, seed=0, device="cpu",
                                            eval_every=60, progress=False, loss_window=5),
                    eval_hook=lambda p, step: evals.append(step) or {"training": float(p.training)})
    assert metrics["steps"] == 150 and metrics["num_examples"] == 8 and metrics["samples_seen"] == 1200
    assert metrics["action_loss"] < metrics["first_loss"] / 10, metrics
    assert evals == [60, 120, 150]
    assert [e["step"] for e in metrics["evals"]] == evals and metrics["evals"][0]["training"] == 0.0
    assert policy.has_normalization  # fitted from the dataset
    assert 1.0 <= metrics["mean_active_experts"] <= 4.0
    assert sum(map(sum, metrics["expert_counts"])) > 0
    # The trained policy reproduces its training actions (in the original units).
    policy.eval()
    pred = policy.predict_action_chunk(collate_samples([ds[i] for i in range(1, 8)]))
    assert torch.mean(torch.abs(pred - ds.actions[1:])) < 0.6  # actions have std 3 (mean predictor: ~2.4)


def test_fedprox_keeps_the_trunk_near_the_reference():
    ds = TinyEpisodes()
    drift = {}
    for mu in (0.0, 100.0):
        policy = tiny_policy(seed=1)
        reference = policy.export_trunk()
        train(policy, ds, TrainConfig(max_steps=30, batch_size=4, lr=3e-3, progress=False, prox_mu=mu, device="cpu"),
              reference_trunk=reference)
        drift[mu] = sum(float((t - reference[n]).pow(2).sum()) for n, t in policy.export_trunk().items())
    assert drift[100.0] < 0.5 * drift[0.0]
    with pytest.raises(ValueError, match="reference_trunk"):
        train(tiny_policy(), ds, TrainConfig(max_steps=1, prox_mu=1.0, progress=False))


def test_trainable_groups_freeze_everything_else():
    policy = tiny_policy(kind="topk", seed=2)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    train(policy, TinyEpisodes(), TrainConfig(max_steps=5, batch_size=4, lr=1e-2, progress=False, device="cpu"),
          trainable_groups=[1, "head"])
    changed = {n for n, p in policy.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed, "nothing trained"
    assert all(n.startswith(("trunk.layers.1.", "head.")) for n in changed), sorted(changed)
    assert any(n.startswith("head.") for n in changed) and any(n.startswith("trunk.layers.1.") for n in changed)
    assert all(p.requires_grad for p in policy.parameters())  # flags restored
    with pytest.raises(ValueError):
        train(policy, TinyEpisodes(), TrainConfig(max_steps=1, progress=False), trainable_groups=[7])


def test_train_config_validation_names_the_field():
    with pytest.raises(ValueError, match="TrainConfig.batch_size"):
        TrainConfig(batch_size=0)
    with pytest.raises(ValueError, match="TrainConfig.device"):
        TrainConfig(device="tpu")


def test_train_cli_help():
    out = subprocess.run([sys.executable, "-m", "fedvla_core.train_cli", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "--ffn-kind" in out.stdout and "--max-steps" in out.stdout


def test_relative_actions_round_trip_and_normalization():
    """relative_action_dims: the model learns offsets from the chunk's starting proprio, act() returns absolutes."""
    ds = TinyEpisodes()
    policy = tiny_policy(relative_action_dims=1)
    batch = collate_samples([ds[i] for i in range(4)])
    model_actions = policy.to_model_actions(batch["actions"], batch)
    torch.testing.assert_close(model_actions[..., 0], batch["actions"][..., 0] - batch["proprio"][:, None, 0])
    torch.testing.assert_close(model_actions[..., 1], batch["actions"][..., 1])  # not relative
    torch.testing.assert_close(policy.from_model_actions(model_actions, batch), batch["actions"])
    stats = compute_normalization(ds, relative_action_dims=1)
    rel = torch.cat([(ds.actions[0, :2, 0] - ds.proprio[0, 0]),
                     (ds.actions[1:, :, 0] - ds.proprio[1:, None, 0]).reshape(-1)])
    torch.testing.assert_close(stats["action_mean"][0], rel.mean())
    train(policy, ds, TrainConfig(max_steps=1, batch_size=8, progress=False, device="cpu"))
    torch.testing.assert_close(policy.normalizer.action_std[0], rel.std(unbiased=False))
    # A prediction moves with the proprio it is relative to, by exactly the shift.
    policy.eval()
    shifted = dict(batch, proprio=batch["proprio"] + torch.tensor([0.5, 0.0, 0.0, 0.0]))
    with torch.no_grad():
        base = policy.predict_action_chunk(batch)
        seq_shift = policy.predict_action_chunk(shifted)
    delta = seq_shift - base
    # The encoder sees the shifted proprio too, so only the offset's direct part is exact: compare the model outputs.
    pred_base, _ = policy.predict_normalized(batch)
    pred_shift, _ = policy.predict_normalized(shifted)
    expected = (pred_shift - pred_base)[..., 0] * policy.normalizer.action_std[0] + 0.5
    torch.testing.assert_close(delta[..., 0], expected, rtol=1e-4, atol=1e-4)


def test_config_rejects_too_many_relative_dims():
    with pytest.raises(ValueError, match="relative_action_dims"):
        tiny_policy(relative_action_dims=3)  # action_dim is 2


def test_non_finite_loss_stops_before_the_step_is_applied():
    ds = TinyEpisodes()
    policy = tiny_policy(seed=3)
    train(policy, ds, TrainConfig(max_steps=1, batch_size=8, progress=False, device="cpu"))  # fits normalization
    ds.actions[3, 1, 0] = float("nan")  # one poisoned target: every batch holding sample 3 has a NaN loss
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    with pytest.raises(NonFiniteLossError, match=r"step 1: loss is not finite \(nan\)") as info:
        train(policy, ds, TrainConfig(max_steps=3, batch_size=8, progress=False, device="cpu"))
    assert info.value.step == 1 and info.value.what == "loss" and np.isnan(info.value.value)
    assert isinstance(info.value, RuntimeError)
    assert all(torch.equal(p.detach(), before[n]) for n, p in policy.named_parameters()), "a NaN step was applied"
    assert all(p.requires_grad for p in policy.parameters()) and not policy.training


def test_non_finite_gradient_norm_is_caught_without_clipping():
    ds = TinyEpisodes()
    policy = tiny_policy(seed=4)
    param = next(policy.head.parameters())
    handle = param.register_hook(lambda g: g * float("inf"))
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    with pytest.raises(NonFiniteLossError, match="step 1: grad_norm is not finite") as info:
        train(policy, ds, TrainConfig(max_steps=2, batch_size=8, grad_clip=0.0, progress=False, device="cpu"))
    handle.remove()
    assert info.value.what == "grad_norm" and not np.isfinite(info.value.value)
    assert all(torch.equal(p.detach(), before[n]) for n, p in policy.named_parameters())


def test_device_dataset_batches_equal_collated_samples():
    from fedvla_core.device_data import DeviceDataset

    ds = TinyEpisodes(n=10)
    policy = tiny_policy()
    data = DeviceDataset.from_dataset(ds, "cpu", policy.language_encoder, block=3)  # blocks cross sample borders
    assert len(data) == 10 and data.instructions == ["open the drawer", "pick up the cube"]
    idx = torch.tensor([7, 0, 3, 3])
    batch = data.gather(idx)
    ref = collate_samples([ds[i] for i in idx.tolist()])
    for key in ("images", "proprio", "actions", "action_is_pad"):
        assert torch.equal(batch[key], ref[key]), key
    assert batch["images"].dtype == torch.uint8
    assert data.instruction_texts(batch) == ref["instruction"]
    pooled, tokens, mask = policy.language_encoder.encode(ref["instruction"])
    torch.testing.assert_close(batch["lang_pooled"], pooled)
    width = tokens.shape[1]
    torch.testing.assert_close(batch["lang_tokens"][:, :width], tokens)
    assert torch.equal(batch["lang_mask"][:, :width], mask) and not batch["lang_mask"][:, width:].any()
    # The policy reads the gathered language features exactly as it would compute them.
    policy.eval()
    with torch.no_grad():
        torch.testing.assert_close(policy.predict_action_chunk(batch), policy.predict_action_chunk(ref))
    stats, generic = data.stats(relative_action_dims=1), compute_normalization(ds, relative_action_dims=1)
    for key in stats:
        torch.testing.assert_close(stats[key], generic[key])


def test_index_stream_gives_full_batches_and_covers_every_sample():
    from fedvla_core.device_data import IndexStream

    stream = IndexStream(10, 4, seed=3, device="cpu")
    batches = [stream.next() for _ in range(10)]  # 40 draws = 4 epochs
    assert all(b.shape == (4,) for b in batches)
    counts = torch.bincount(torch.cat(batches), minlength=10)
    assert counts.tolist() == [4] * 10
    again = IndexStream(10, 4, seed=3, device="cpu")
    assert all(torch.equal(b, again.next()) for b in batches)  # seeded
    assert IndexStream(3, 8, seed=0, device="cpu").next().sort().values.tolist() == [0, 1, 2]  # batch <= dataset


@pytest.mark.parametrize("kind", ["dgmoe", "topk", "dense", "adamoe"])
def test_training_forward_is_one_graph_for_torch_compile(kind):
    """No graph break in forward + loss on a gathered batch (augmentation on): compile and CUDA graphs see one graph."""
    from fedvla_core.device_data import DeviceDataset

    policy = tiny_policy(kind, image_shift_aug=2, proprio_dropout=0.2)
    data = DeviceDataset.from_dataset(TinyEpisodes(), "cpu", policy.language_encoder)
    policy.train()

    def forward_loss(batch):
        out = policy(batch)
        return out["loss"], out["expert_stats"]

    explained = torch._dynamo.explain(forward_loss)(data.gather(torch.arange(4)))
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_expert_stats_from_the_forward_equal_the_recorded_counts():
    ds = TinyEpisodes()
    policy = tiny_policy()
    policy.train()
    out = policy(collate_samples([ds[i] for i in range(4)]))
    recorded = {n: m.expert_counts() for n, m in policy.named_modules() if n in out["expert_stats"]}
    assert set(recorded) == {"trunk.layers.0.ffn", "trunk.layers.1.ffn", "stem.iosp.refiners.0",
                             "stem.iosp.refiners.1", "stem.iosp.refiners.2"}
    assert all(out["expert_stats"][n].counts.tolist() == c for n, c in recorded.items())
    policy.record_expert_stats(out["expert_stats"])  # what a compiled step does: counts double
    assert policy.expert_counts() == [[2 * c for c in counts] for counts in
                                      (recorded["trunk.layers.0.ffn"], recorded["trunk.layers.1.ffn"])]


def test_a_late_non_finite_step_is_never_applied_even_between_host_checks():
    """With sync_every > 1 the host looks only every few steps; the fused AdamW skips the bad step on the
    device, so the weights after the error are exactly those of the last good step."""
    ds = TinyEpisodes()
    cfg = dict(batch_size=4, lr=1e-3, warmup=0, progress=False, device="cpu", seed=5)
    clean, snapshot = tiny_policy(seed=6), {}
    train(clean, ds, TrainConfig(max_steps=8, eval_every=2, **cfg),  # same schedule; weights after step 2
          eval_hook=lambda p, step: None if snapshot else snapshot.update({n: t.detach().clone() for n, t in p.named_parameters()}))
    poisoned = tiny_policy(seed=6)
    calls = []
    param = next(poisoned.head.parameters())
    param.register_hook(lambda g: g * float("inf") if len(calls.append(0) or calls) >= 3 else g)
    with pytest.raises(NonFiniteLossError, match="step 3: grad_norm") as info:
        train(poisoned, ds, TrainConfig(max_steps=8, sync_every=6, **cfg))
    assert info.value.step == 3 and len(calls) == 6  # the loop ran on to the host check at step 6
    assert len(snapshot) > 0
    for name, b in poisoned.named_parameters():
        assert torch.equal(snapshot[name], b), name


def test_train_accepts_a_device_dataset_and_reports_its_engine():
    from fedvla_core.device_data import DeviceDataset

    policy = tiny_policy(kind="dense")
    data = DeviceDataset.from_dataset(TinyEpisodes(), "cpu", policy.language_encoder)
    metrics = train(policy, data, TrainConfig(max_steps=3, batch_size=16, progress=False, device="cpu",
                                              cpu_threads=1))
    assert metrics["samples_seen"] == 3 * 8  # the batch is at most the dataset
    engine = metrics["engine"]
    assert engine["compiled"] is False and engine["fused_adamw"] is True and engine["batch_size"] == 8
    assert engine["data_device"] == "cpu" and engine["threads"] == 1 and engine["sync_every"] == 1
    with pytest.raises(ValueError, match="TrainConfig.compile"):
        TrainConfig(compile="maybe")



def test_time_schedule_anneals_within_the_time_budget_whatever_the_step_rate():
    """schedule_clock=time: the run stops once the budget (counted after the first step) is spent, with the
    learning rate annealed to ~0 by the cosine over elapsed time, though max_steps alone would run far longer."""
    import time

    start = time.perf_counter()
    metrics = train(tiny_policy(), TinyEpisodes(), TrainConfig(
        max_steps=100_000, batch_size=4, lr=1e-3, warmup=2, progress=False, device="cpu",
        schedule_clock="time", max_time_s=1.5))
    took = time.perf_counter() - start
    assert 1.5 <= took < 30
    assert 2 < metrics["steps"] < 100_000
    assert metrics["final_lr"] < 1e-3 * 0.01
    with pytest.raises(ValueError, match="schedule_clock"):
        TrainConfig(schedule_clock="time")  # needs max_time_s
    with pytest.raises(ValueError, match="schedule_clock"):
        TrainConfig(schedule_clock="epochs", max_time_s=1.0)


def test_train_cli_refuses_model_overrides_that_have_their_own_flag(tmp_path):
    """--model chunk_size=20 would give the model one chunk size and the dataset another: refused, naming the flag."""
    out = subprocess.run([sys.executable, "-m", "fedvla_core.train_cli", "--episodes", str(tmp_path),
                          "--output", str(tmp_path / "out"), "--model", "chunk_size=20"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "--model chunk_size=... is set by --chunk-size" in out.stderr
