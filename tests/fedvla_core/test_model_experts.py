"""Expert FFNs: DGMoE semantics on hand-built scores, real sparsity, counts, and the other kinds."""
import math

import pytest
import torch

from fedvla_core.model.experts import AdaMoE, DenseFFN, DGMoE, TopKMoE, dispatch_to_experts


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _dgmoe_with_thresholds(thetas, lam=0.5, d=4, hidden=8):
    """A DGMoE whose gate is the identity, so softmax(gate(log s)) = s exactly."""
    torch.manual_seed(0)
    moe = DGMoE(d, n_experts=len(thetas), hidden=hidden, lam=lam, residual_gate=True)
    with torch.no_grad():
        moe.gate.weight.copy_(torch.eye(len(thetas)))
        moe.threshold.copy_(torch.tensor([_logit(t) for t in thetas]))
    return moe


SCORES = torch.tensor([
    [0.50, 0.30, 0.15, 0.05],  # thresholds 0.25, 0.25, 0.30, 0.30 -> experts 0 and 1
    [0.24, 0.24, 0.27, 0.25],  # nobody passes -> fallback to expert 2 (best score)
    [0.05, 0.05, 0.20, 0.70],  # only expert 3
])


def test_dgmoe_route_hand_built_case():
    # lambda * sigmoid(w_e) = 0.5 * [0.5, 0.5, 0.6, 0.6] = [0.25, 0.25, 0.30, 0.30]
    moe = _dgmoe_with_thresholds([0.5, 0.5, 0.6, 0.6])
    hard, weights = moe.route(SCORES)
    assert hard.tolist() == [[True, True, False, False], [False, False, True, False], [False, False, False, True]]
    expected = torch.tensor([[0.5 / 0.8, 0.3 / 0.8, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1]])
    torch.testing.assert_close(weights.detach(), expected)


def test_dgmoe_lambda_scales_the_threshold():
    moe = _dgmoe_with_thresholds([0.5, 0.5, 0.6, 0.6], lam=1.0)  # thresholds 0.5, 0.5, 0.6, 0.6
    hard, weights = moe.route(SCORES)
    # row 0: 0.50 is not > 0.5 -> fallback to expert 0; row 2: 0.70 > 0.6 -> expert 3
    assert hard.tolist() == [[True, False, False, False], [False, False, True, False], [False, False, False, True]]
    torch.testing.assert_close(weights.detach().sum(-1), torch.ones(3))


def test_dgmoe_forward_output_counts_and_sparsity():
    moe = _dgmoe_with_thresholds([0.5, 0.5, 0.6, 0.6])
    x = SCORES[:2].log().requires_grad_(True)  # rows 0 and 1: experts 0, 1, 2 fire; expert 3 gets no token
    out = moe(x)
    manual = torch.stack([
        (0.5 * moe.experts[0](x[0]) + 0.3 * moe.experts[1](x[0])) / 0.8,
        moe.experts[2](x[1]),
    ])
    torch.testing.assert_close(out.y, manual)
    assert moe.expert_counts() == [1, 1, 1, 0]
    assert moe.tokens_seen() == 2
    assert moe.mean_active_experts() == pytest.approx(1.5)

    (out.y.sum() + out.aux_loss).backward()
    for p in moe.experts[3].parameters():
        assert p.grad is None  # never called: no token, no compute, no gradient
    for e in range(3):
        assert moe.experts[e].w1.weight.grad.abs().sum() > 0
    assert moe.threshold.grad is not None and moe.threshold.grad.abs().sum() > 0  # thresholds learn (surrogate)

    moe(SCORES[2:].log())
    assert moe.expert_counts() == [1, 1, 1, 1]
    assert moe.tokens_seen() == 3
    moe.reset_stats()
    assert moe.expert_counts() == [0, 0, 0, 0] and moe.mean_active_experts() == 0.0


def test_dgmoe_residual_gate_prior():
    moe = _dgmoe_with_thresholds([0.5, 0.5, 0.6, 0.6])
    x = torch.randn(5, 4)
    prior = torch.randn(5, 4)
    out = moe(x, prior)
    torch.testing.assert_close(out.gate_logits, moe.gate(x) + moe.prior(prior))
    # The prior changes the routing: a large prior on expert 3 sends every token there.
    moe.reset_stats()
    moe(x, torch.tensor([0.0, 0.0, 0.0, 50.0]).expand(5, 4))
    assert moe.expert_counts() == [0, 0, 0, 5]


def test_dgmoe_without_residual_gate_ignores_prior():
    torch.manual_seed(0)
    moe = DGMoE(8, 4, 16, residual_gate=False)
    x = torch.randn(6, 8)
    torch.testing.assert_close(moe(x, torch.randn(6, 4) * 100).y, moe(x).y)


def test_dispatch_matches_dense_computation():
    torch.manual_seed(0)
    moe = TopKMoE(8, 4, 16, top_k=2)
    x = torch.randn(3, 7, 8)
    out = moe(x)
    flat = x.reshape(-1, 8)
    probs = moe.gate(flat).softmax(-1)
    top_p, top_i = probs.topk(2, -1)
    manual = torch.stack([sum(top_p[t, j] * moe.experts[int(top_i[t, j])](flat[t]) for j in range(2))
                          for t in range(flat.shape[0])])
    torch.testing.assert_close(out.y.reshape(-1, 8), manual, rtol=1e-5, atol=1e-6)
    assert sum(moe.expert_counts()) == 2 * 21
    assert moe.mean_active_experts() == pytest.approx(2.0)


def test_dispatch_skips_experts_without_tokens():
    torch.manual_seed(0)
    moe = TopKMoE(4, 3, 8, top_k=1)
    calls = []
    for e, expert in enumerate(moe.experts):
        expert.register_forward_hook(lambda mod, inp, out, e=e: calls.append(e))
    x = torch.randn(5, 4)
    y, counts = dispatch_to_experts(x, moe.experts, torch.tensor([0, 1, 4]), torch.tensor([2, 0, 2]),
                                    torch.tensor([1.0, 0.5, 2.0]))
    assert calls == [0, 2] and counts.tolist() == [1, 0, 2]
    torch.testing.assert_close(y[2], torch.zeros(4))  # tokens with no expert get nothing
    torch.testing.assert_close(y[1], 0.5 * moe.experts[0](x[1]))


def test_adamoe_decouples_selection_from_weighting():
    torch.manual_seed(0)
    moe = AdaMoE(8, 4, 16, shared_hidden=16, top_k=2)
    torch.nn.init.zeros_(moe.scale_adapter.weight)
    x = torch.randn(10, 8)
    out = moe(x)
    vanilla = TopKMoE(8, 4, 16, top_k=2)
    vanilla.load_state_dict({k: v for k, v in moe.state_dict().items()
                             if not k.startswith(("scale_adapter", "shared"))})
    torch.testing.assert_close(out.y, 0.5 * moe.shared(x) + 0.5 * vanilla(x).y)
    counts = moe.expert_counts()
    torch.nn.init.normal_(moe.scale_adapter.weight, std=1.0)
    moe.reset_stats()
    out2 = moe(x)
    assert moe.expert_counts() == counts  # same experts chosen
    assert not torch.allclose(out2.y, out.y)  # different weights


def test_dense_ffn_is_one_expert():
    ffn = DenseFFN(8, 32)
    y = ffn(torch.randn(2, 3, 8)).y
    assert y.shape == (2, 3, 8)
    assert ffn.expert_counts() == [6] and ffn.mean_active_experts() == 1.0


def test_flops_per_token_follow_active_experts():
    moe = DGMoE(16, 4, 32)
    assert moe.flops_per_token(1.0) < moe.flops_per_token(2.0)
    assert TopKMoE(16, 4, 32, top_k=2).flops_per_token() == pytest.approx(moe.flops_per_token(2.0) - 2 * 4 ** 2)  # minus the prior


@pytest.mark.parametrize("cls", [DGMoE, TopKMoE])
def test_grouped_gemm_dispatch_matches_the_loop(cls, monkeypatch):
    """The grouped-GEMM path (used on Hopper GPUs) computes the same outputs and gradients as the loop."""
    from fedvla_core.model import experts as experts_module

    try:
        torch._grouped_mm(torch.ones(2, 8), torch.ones(1, 8, 8), offs=torch.tensor([2], dtype=torch.int32))
    except (AttributeError, RuntimeError, NotImplementedError):
        pytest.skip("torch._grouped_mm has no CPU kernel in this torch")
    torch.manual_seed(0)
    moe = cls(16, 4, 32)
    with torch.no_grad():
        moe.gate.weight[3] = -100.0  # with positive inputs, expert 3 is never chosen
    x = torch.rand(2, 9, 16) + 0.1
    results = {}
    for mode in ("loop", "grouped"):
        monkeypatch.setattr(experts_module, "DISPATCH", mode)
        moe.zero_grad(set_to_none=True)
        out = moe(x)
        out.y.square().sum().backward()
        results[mode] = (out.y.detach(), {n: None if p.grad is None else p.grad.clone() for n, p in moe.named_parameters()})
    torch.testing.assert_close(results["grouped"][0], results["loop"][0], rtol=1e-4, atol=1e-5)
    for name, grad in results["loop"][1].items():
        other = results["grouped"][1][name]
        if grad is None:
            assert other is None, name  # an expert without tokens gets no gradient on either path
        else:
            torch.testing.assert_close(other, grad, rtol=1e-4, atol=1e-5)
    assert results["loop"][1]["experts.3.w1.weight"] is None


def _reference_per_token(moe, x: torch.Tensor, prior: torch.Tensor | None = None) -> torch.Tensor:
    """Each token on its own, written from the papers' formulas: route it, run its chosen experts, mix."""
    rows = []
    for t in range(x.shape[0]):
        xt = x[t]
        logits = moe.gate(xt)
        if isinstance(moe, DGMoE):
            if prior is not None:
                logits = logits + moe.prior(prior[t])
            s = logits.softmax(-1)
            theta = moe.lam * torch.sigmoid(moe.threshold)
            chosen = [e for e in range(moe.n_experts) if s[e] > theta[e]] or [int(s.argmax())]
            total = sum(s[e] for e in chosen)
            rows.append(sum(s[e] * moe.experts[e](xt) for e in chosen) / total)
            continue
        p = logits.softmax(-1)
        top = torch.topk(p, moe.top_k).indices.tolist()
        if isinstance(moe, AdaMoE):
            scale = moe.scale_adapter(xt)
            routed = sum((p[e] + scale[e]) * moe.experts[e](xt) for e in top)
            rows.append(0.5 * moe.shared(xt) + 0.5 * routed)
        else:
            rows.append(sum(p[e] * moe.experts[e](xt) for e in top))
    return torch.stack(rows)


def _run(moe, x, prior, mode):
    from fedvla_core.model.experts import dispatch_mode

    moe.zero_grad(set_to_none=True)
    moe.reset_stats()
    with dispatch_mode(mode):
        out = moe(x, prior)
    (out.y.square().sum() + out.aux_loss).backward()
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in moe.named_parameters()}
    return out, grads, moe.expert_counts(), moe.tokens_seen()


@pytest.mark.parametrize("cls", [DGMoE, TopKMoE, AdaMoE])
def test_dense_dispatch_equals_a_per_token_reference_and_the_sparse_path(cls):
    """The static-shape dispatch (every expert on every token, masked) gives the per-token loop's outputs,
    and the sparse dispatch's routing counts, aux loss and gradients (zero, not None, for an idle expert)."""
    torch.manual_seed(0)
    kw = {"shared_hidden": 16} if cls is AdaMoE else {}
    moe = cls(16, 4, 32, **kw)
    if cls is AdaMoE:
        torch.nn.init.normal_(moe.scale_adapter.weight, std=0.5)  # make the decoupled weighting matter
    with torch.no_grad():
        moe.gate.weight[3] = -50.0  # with positive inputs, expert 3 is never chosen
    x = torch.rand(3, 11, 16) + 0.1
    prior = torch.randn(3, 11, 4) if cls is DGMoE else None
    dense, dense_grads, dense_counts, dense_tokens = _run(moe, x, prior, "dense")
    with torch.no_grad():
        reference = _reference_per_token(moe, x.reshape(-1, 16), None if prior is None else prior.reshape(-1, 4))
    torch.testing.assert_close(dense.y.reshape(-1, 16), reference, rtol=1e-5, atol=1e-6)
    sparse, sparse_grads, sparse_counts, sparse_tokens = _run(moe, x, prior, "sparse")
    torch.testing.assert_close(dense.y, sparse.y, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(dense.aux_loss, sparse.aux_loss)
    torch.testing.assert_close(dense.gate_logits, sparse.gate_logits)
    assert dense_counts == sparse_counts and dense_counts[3] == 0 and sum(dense_counts) >= 33
    assert dense_tokens == sparse_tokens == 33
    assert dense.counts.tolist() == dense_counts
    for name, grad in sparse_grads.items():
        if grad is None:
            assert name.startswith("experts.3."), name  # the idle expert: never run on the sparse path
            torch.testing.assert_close(dense_grads[name], torch.zeros_like(dense_grads[name]))
        else:
            torch.testing.assert_close(dense_grads[name], grad, rtol=1e-4, atol=1e-6)
    if cls is DGMoE:
        assert sparse_grads["threshold"].abs().sum() > 0  # the straight-through surrogate reaches w_e on both


def test_dispatch_mode_rejects_unknown_and_restores():
    from fedvla_core.model import experts as experts_module

    before = experts_module.DISPATCH
    with experts_module.dispatch_mode("dense"):
        assert experts_module.DISPATCH == "dense"
    assert experts_module.DISPATCH == before
    with pytest.raises(ValueError, match="unknown mode"):
        with experts_module.dispatch_mode("fastest"):
            pass
