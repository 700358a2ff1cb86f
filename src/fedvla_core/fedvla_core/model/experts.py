"""Expert FFNs: DGMoE, AdaMoE, vanilla top-k MoE and a dense FFN behind one interface.

Every FFN here maps tokens ``x (..., d)`` (plus the previous layer's gate logits, which only DGMoE
uses) to ``FFNOutput(y, gate_logits, aux_loss)``. Each keeps per-expert activation counts since
the last ``reset_stats()``: they are what Expert-Driven Aggregation compares between clients.

Every router produces the same two static-shape tensors: the 0/1 assignment (N, E) and the
combine weights (N, E), zero off the assignment. Two dispatches turn them into outputs:
  - "sparse": (token, expert, weight) triples; tokens are gathered per expert, run through that
    expert only and scatter-added back (``index_add_``). An expert that receives no token is never
    called, so it costs nothing and its parameters get no gradient. The triples have a data-dependent
    length, so this path reads the per-expert counts on the host (one sync per layer): right for the
    CPU, where FLOPs are what costs.
  - "dense": every expert runs on every token in two batched matmuls over the stacked expert
    weights, and the weights mask and mix the results. Shapes never depend on the routing: no host
    sync, one graph for torch.compile / CUDA graphs. With 4 experts the extra FLOPs cost less on a
    GPU than the launches and syncs they save. Outputs and gradients equal the sparse path's, except
    that an expert with no token gets a zero gradient instead of none.
``dispatch_mode()`` picks one for a block of code; "auto" is dense on CUDA or under torch.compile,
sparse otherwise (on the CPU, eager act() at batch 1 and 1 thread measured the same or 0.4 ms
slower with dense; compile_act() gets the dense graph). Parameter names do not depend on the
dispatch (checkpoints load either way).
"""
from __future__ import annotations

import contextlib
import os
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn


class FFNOutput(NamedTuple):
    y: torch.Tensor  # same shape as the input tokens
    gate_logits: torch.Tensor | None  # (..., n_experts) router logits, the next DGMoE layer's prior
    aux_loss: torch.Tensor  # scalar load-balance loss (0 for the dense FFN)
    counts: torch.Tensor | None = None  # (n_experts,) tokens routed to each expert in this call
    tokens: int = 0  # tokens in this call


class ExpertStat(NamedTuple):
    """One FFN call's routing statistics, for :meth:`ExpertFFN.record` outside a compiled region."""

    counts: torch.Tensor  # (n_experts,)
    tokens: int


class Expert(nn.Module):
    """One two-layer GELU MLP: d -> hidden -> d (4 * d * hidden FLOPs per token)."""

    def __init__(self, d_model: int, hidden: int, dropout: float = 0.0):
        super().__init__()
        self.w1 = nn.Linear(d_model, hidden)
        self.w2 = nn.Linear(hidden, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.w2(F.gelu(self.w1(x))))

    def flops_per_token(self) -> int:
        return 2 * 2 * self.w1.in_features * self.w1.out_features


# How routed tokens reach their experts (see the module doc): "auto" | "dense" | "sparse", plus the
# older "loop" (= sparse) and "grouped" (sparse triples in two grouped GEMMs, torch._grouped_mm).
# Measured on an H200 (d=512, 4 experts of 1024): grouped fwd+bwd 3.4 ms vs loop 5.1 ms at 2.3k
# tokens, 9.2 ms vs 5.3 ms at 74k tokens. The environment variable sets the process default.
DISPATCH = os.environ.get("FEDVLA_MOE_DISPATCH", "auto")
DISPATCH_MODES = ("auto", "dense", "sparse", "loop", "grouped")


@contextlib.contextmanager
def dispatch_mode(mode: str | None):
    """Use this dispatch inside the block (None: keep the current one); restores the previous one."""
    global DISPATCH
    if mode is None:
        yield
        return
    if mode not in DISPATCH_MODES:
        raise ValueError(f"moe dispatch: unknown mode {mode!r}; use one of {DISPATCH_MODES}")
    before, DISPATCH = DISPATCH, mode
    try:
        yield
    finally:
        DISPATCH = before


def _use_dense(x: torch.Tensor) -> bool:
    if DISPATCH == "dense" or torch.compiler.is_compiling():
        return True  # the sparse paths have data-dependent shapes: no single graph
    return DISPATCH == "auto" and x.is_cuda


def _stacked_weights(experts: nn.ModuleList) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(w1 (E, h, d), b1 (E, h), w2 (E, d, h), b2 (E, d)) of the experts, stacked.

    With autograd the stack is part of the graph (rebuilt each call). Without it (inference) the
    stack is cached on the ModuleList and rebuilt only when a weight changed: the key holds each
    parameter's storage and in-place version counter, which optimizer steps, ``load_trunk`` and
    ``copy_`` all bump.
    """
    params = [t for e in experts for t in (e.w1.weight, e.w1.bias, e.w2.weight, e.w2.bias)]
    if torch.is_grad_enabled() or torch.compiler.is_compiling():
        return tuple(torch.stack(params[i::4]) for i in range(4))
    key = tuple((t.data_ptr(), t._version, t.device, t.dtype) for t in params)
    cached = experts.__dict__.get("_stacked_cache")
    if cached is None or cached[0] != key:
        with torch.inference_mode(False):  # usable outside inference mode too (e.g. a no_grad eval)
            cached = (key, tuple(torch.stack([t.detach() for t in params[i::4]]) for i in range(4)))
        experts.__dict__["_stacked_cache"] = cached
    return cached[1]


def _use_grouped(x: torch.Tensor, experts: nn.ModuleList, rows: int) -> bool:
    if DISPATCH != "grouped" or not hasattr(torch, "_grouped_mm"):
        return False
    return not any(n % 8 for n in experts[0].w1.weight.shape)  # 16-byte aligned rows (8 bf16 values)


def dense_dispatch(x: torch.Tensor, experts: nn.ModuleList, weights: torch.Tensor) -> torch.Tensor:
    """y = sum_e weights[:, e] * experts[e](x), every expert on every token, in two batched matmuls.

    x: (N, d); weights: (N, E), zero where a token is not routed to an expert (those products are
    computed and multiplied by an exact zero, so they add neither value nor gradient).
    """
    w1, b1, w2, b2 = _stacked_weights(experts)  # (E, h, d), (E, h), (E, d, h), (E, d)
    xs = x.unsqueeze(0).expand(len(experts), -1, -1)  # (E, N, d), a view
    h = F.gelu(torch.baddbmm(b1.unsqueeze(1), xs, w1.transpose(1, 2)))  # (E, N, h)
    out = experts[0].dropout(torch.baddbmm(b2.unsqueeze(1), h, w2.transpose(1, 2)))  # (E, N, d)
    # Mixed in fp32 like the sparse path (bf16 combine weights would round the routing weights).
    return (out.float() * weights.t().unsqueeze(-1).float()).sum(0).to(x.dtype)


def mix_experts(x: torch.Tensor, experts: nn.ModuleList, assignment: torch.Tensor, weights: torch.Tensor
                ) -> torch.Tensor:
    """The routed experts' weighted sum for flattened tokens x (N, d), by the current dispatch.

    assignment: (N, E) bool, which experts a token goes to; weights: (N, E), 0 off the assignment.
    """
    if _use_dense(x):
        return dense_dispatch(x, experts, torch.where(assignment, weights, torch.zeros_like(weights)))
    expert_idx, token_idx = assignment.t().nonzero(as_tuple=True)  # expert-major: grouped by expert
    counts = assignment.sum(0)
    return dispatch_sorted(x, experts, token_idx, expert_idx, weights[token_idx, expert_idx], counts)


def dispatch_to_experts(
    x: torch.Tensor,
    experts: nn.ModuleList,
    token_idx: torch.Tensor,
    expert_idx: torch.Tensor,
    weight: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """y[t] = sum over triples (t, e, w) of w * experts[e](x[t]); experts without triples are skipped.

    x: (N, d); token_idx, expert_idx: (M,) long; weight: (M,). Returns (y (N, d), tokens per expert (E,)).
    """
    order = torch.argsort(expert_idx, stable=True)
    counts = torch.bincount(expert_idx, minlength=len(experts))
    return dispatch_sorted(x, experts, token_idx[order], expert_idx[order], weight[order], counts), counts


def dispatch_sorted(x: torch.Tensor, experts: nn.ModuleList, token_idx: torch.Tensor, expert_idx: torch.Tensor,
                     weight: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Like :func:`dispatch_to_experts` for triples already sorted by expert (counts[e] consecutive triples each).

    Gather the tokens of each expert, run it, scale, scatter-add back. One host sync (the counts)
    per call, whatever the number of experts. Experts with no token are left out of the graph.
    """
    counts_list = counts.tolist()
    y = torch.zeros_like(x)
    if _use_grouped(x, experts, token_idx.shape[0]):
        return _grouped_experts(x, y, experts, token_idx, expert_idx, weight, counts, counts_list)
    start = 0
    for e, n in enumerate(counts_list):
        if n == 0:
            continue  # no token: the expert is not run and gets no gradient
        idx = token_idx[start:start + n]
        out = experts[e](x.index_select(0, idx)) * weight[start:start + n, None].to(x.dtype)
        y.index_add_(0, idx, out.to(y.dtype))
        start += n
    return y


def _grouped_experts(x, y, experts, token_idx, expert_idx, weight, counts, counts_list):
    """All experts in two grouped GEMMs over the expert-sorted rows (no per-expert Python loop).

    GEMMs run in the autocast dtype; biases, GELU input and the scatter-add stay in fp32 so the
    bias gradients (sums over thousands of rows) keep fp32 accuracy. Weights of experts without
    tokens enter detached: zero rows cost nothing and they get no gradient.
    """
    dtype = torch.get_autocast_dtype("cuda") if (x.is_cuda and torch.is_autocast_enabled("cuda")) else x.dtype

    def stacked(name: str, attr: str, cast: bool) -> torch.Tensor:
        ts = [getattr(getattr(ex, name), attr) for ex in experts]
        out = torch.stack([t if n else t.detach() for t, n in zip(ts, counts_list)])
        return out.to(dtype) if cast else out.float()

    offs = counts.cumsum(0).to(torch.int32)
    with torch.autocast(x.device.type, enabled=False):
        xs = x.index_select(0, token_idx).to(dtype)
        h = torch._grouped_mm(xs, stacked("w1", "weight", True).transpose(1, 2), offs=offs)
        h = F.gelu(h.float() + stacked("w1", "bias", False).index_select(0, expert_idx)).to(dtype)
        out = torch._grouped_mm(h, stacked("w2", "weight", True).transpose(1, 2), offs=offs)
        out = out.float() + stacked("w2", "bias", False).index_select(0, expert_idx)
        out = experts[0].dropout(out) * weight[:, None].float()
        y.index_add_(0, token_idx, out.to(y.dtype))
    return y


def load_balance_loss(probs: torch.Tensor, assignment: torch.Tensor) -> torch.Tensor:
    """Switch-style balance loss E * sum_e f_e * P_e.

    probs: (N, E) router probabilities; assignment: (N, E) 0/1 routing. f_e is the share of all
    assignments that went to expert e, P_e the mean probability of e. Equals 1 when balanced.
    """
    n_experts = probs.shape[-1]
    frac = assignment.float().sum(0) / assignment.float().sum().clamp_min(1.0)
    return n_experts * (frac * probs.float().mean(0)).sum()


class ExpertFFN(nn.Module):
    """Shared bookkeeping of every FFN kind: activation counts and the mean active experts per token.

    The counts are a plain tensor created at the first forward pass on the input's device (not a
    buffer): it never enters a checkpoint or a state dict, survives meta-device construction in
    ``from_pretrained``, and accumulates without a host sync. The token total is a Python int
    (it depends on shapes only), so counting it launches nothing.
    """

    n_experts: int

    def __init__(self, n_experts: int):
        super().__init__()
        self.n_experts = n_experts
        self._counts: torch.Tensor | None = None
        self._tokens = 0

    def _record(self, counts: torch.Tensor, n_tokens: int) -> None:
        """Count this call, except inside torch.compile: a compiled step returns the counts in its
        outputs (FFNOutput.counts) and the caller records them with :meth:`record` (module state
        mutated inside a graph would stop CUDA graphs)."""
        if not torch.compiler.is_compiling():
            self.record(counts, n_tokens)

    @torch.no_grad()
    def record(self, counts: torch.Tensor, n_tokens: int) -> None:
        """Add one call's routing counts (n_experts,) and its number of tokens.

        The running counts are a normal tensor even when act() runs under torch.inference_mode
        (an inference tensor could not be updated in place by a later training step).
        """
        with torch.inference_mode(False):
            if self._counts is None:
                self._counts = counts.detach().to(torch.long).clone()
            else:
                if self._counts.device != counts.device:
                    self._counts = self._counts.to(counts.device)
                self._counts += counts.detach()
        self._tokens += int(n_tokens)

    def reset_stats(self) -> None:
        self._counts = None
        self._tokens = 0

    def expert_counts(self) -> list[int]:
        """Tokens routed to each expert since the last reset (a token routed to 2 experts counts for both)."""
        if self._counts is None:
            return [0] * self.n_experts
        return [int(c) for c in self._counts.tolist()]

    def tokens_seen(self) -> int:
        return self._tokens

    def mean_active_experts(self) -> float:
        """Mean number of routed experts that processed a token, since the last reset (0.0 if none seen)."""
        tokens = self.tokens_seen()
        return sum(self.expert_counts()) / tokens if tokens else 0.0

    def flops_per_token(self, mean_active: float | None = None) -> float:
        """FFN FLOPs per token (router included) for a given mean number of active experts."""
        raise NotImplementedError


class DenseFFN(ExpertFFN):
    """A plain FFN, kept as a one-expert layer so names, counts and aggregation look like the MoE kinds."""

    def __init__(self, d_model: int, hidden: int, dropout: float = 0.0):
        super().__init__(n_experts=1)
        self.experts = nn.ModuleList([Expert(d_model, hidden, dropout)])

    def forward(self, x: torch.Tensor, prior_logits: torch.Tensor | None = None) -> FFNOutput:
        y = self.experts[0](x)
        n = x.numel() // x.shape[-1]
        counts = torch.full((1,), n, device=x.device, dtype=torch.long)
        self._record(counts, n)
        return FFNOutput(y, None, x.new_zeros((), dtype=torch.float32), counts, n)

    def flops_per_token(self, mean_active: float | None = None) -> float:
        return float(self.experts[0].flops_per_token())


class _RoutedFFN(ExpertFFN):
    def __init__(self, d_model: int, n_experts: int, hidden: int, dropout: float):
        super().__init__(n_experts)
        self.gate = nn.Linear(d_model, n_experts, bias=False)
        self.experts = nn.ModuleList([Expert(d_model, hidden, dropout) for _ in range(n_experts)])

    def _expert_flops(self) -> int:
        return self.experts[0].flops_per_token()

    def _gate_flops(self) -> int:
        return 2 * self.gate.in_features * self.gate.out_features


class TopKMoE(_RoutedFFN):
    """Vanilla softmax top-k MoE: y = sum_{e in topk(p)} p_e * E_e(x) (weights not renormalized)."""

    def __init__(self, d_model: int, n_experts: int, hidden: int, top_k: int = 2, dropout: float = 0.0):
        super().__init__(d_model, n_experts, hidden, dropout)
        self.top_k = top_k

    def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(logits (N, E), probs (N, E), top-k probs (N, k), top-k ids (N, k)) for flattened tokens x (N, d)."""
        logits = self.gate(x)
        probs = logits.float().softmax(-1)
        top_p, top_i = probs.topk(self.top_k, dim=-1)
        return logits, probs, top_p, top_i

    def combine(self, flat: torch.Tensor, probs: torch.Tensor, top_p: torch.Tensor, top_i: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """(assignment (N, E) bool, combine weights (N, E)): the top-k probabilities at the chosen experts."""
        assignment = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, top_i, True)
        return assignment, torch.zeros_like(probs).scatter_(1, top_i, top_p)

    def forward(self, x: torch.Tensor, prior_logits: torch.Tensor | None = None) -> FFNOutput:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        logits, probs, top_p, top_i = self.route(flat)
        assignment, weights = self.combine(flat, probs, top_p, top_i)
        y = self.mix(flat, assignment, weights)
        counts = assignment.sum(0)
        self._record(counts, flat.shape[0])
        aux = load_balance_loss(probs, assignment)
        return FFNOutput(y.reshape(shape), logits.reshape(*shape[:-1], -1), aux, counts, flat.shape[0])

    def mix(self, flat: torch.Tensor, assignment: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return mix_experts(flat, self.experts, assignment, weights)

    def flops_per_token(self, mean_active: float | None = None) -> float:
        k = self.top_k if mean_active is None else mean_active
        return k * self._expert_flops() + self._gate_flops()


class AdaMoE(TopKMoE):
    """AdaMoE: top-k selection by the router, weighting by p_e + scale_adapter(x)_e, plus a shared expert.

    Selection and weighting are decoupled: the scale adapter (its own linear map, zero-initialised so
    training starts from the vanilla router) changes how much a chosen expert counts, never which
    experts are chosen. Output = 0.5 * shared(x) + 0.5 * sum_{e in topk} (p_e + s_e(x)) * E_e(x).
    """

    def __init__(self, d_model: int, n_experts: int, hidden: int, shared_hidden: int, top_k: int = 2,
                 dropout: float = 0.0):
        super().__init__(d_model, n_experts, hidden, top_k, dropout)
        self.scale_adapter = nn.Linear(d_model, n_experts, bias=False)
        self.shared = Expert(d_model, shared_hidden, dropout)

    def combine(self, flat: torch.Tensor, probs: torch.Tensor, top_p: torch.Tensor, top_i: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Selection as top-k; weights p_e + scale_adapter(x)_e at the chosen experts."""
        scale = self.scale_adapter(flat).float().gather(1, top_i)
        assignment = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, top_i, True)
        return assignment, torch.zeros_like(probs).scatter_(1, top_i, top_p + scale)

    def mix(self, flat: torch.Tensor, assignment: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return 0.5 * self.shared(flat) + 0.5 * mix_experts(flat, self.experts, assignment, weights)

    def flops_per_token(self, mean_active: float | None = None) -> float:
        return super().flops_per_token(mean_active) + self.shared.flops_per_token() + self._gate_flops()


class DGMoE(_RoutedFFN):
    """Dual-Gating MoE (FedVLA): every token activates a variable number of experts.

    Gate (the 'dual' part): logits_l = W_t x + W_gt logits_{l-1}, the previous layer's gate logits as a
    residual prior (W_gt starts at the identity, so routing starts consistent across depth).
    Scores s = softmax(logits_l). Expert e fires for a token when s_e > lambda * sigmoid(w_e), with w_e a
    learnable per-expert threshold. Weights of the firing experts are renormalized:
    y = sum_e s_e m_e E_e(x) / sum_e s_e m_e. A token that no expert accepts goes to its best expert.

    The comparison is a step function, so in the backward pass the mask is replaced by
    sigmoid((s_e - lambda * sigmoid(w_e)) / temperature) (straight-through): that is how w_e learns.
    """

    def __init__(self, d_model: int, n_experts: int, hidden: int, lam: float = 0.5, residual_gate: bool = True,
                 temperature: float = 0.05, dropout: float = 0.0, threshold_init: float = 0.0):
        super().__init__(d_model, n_experts, hidden, dropout)
        self.lam = lam
        self.threshold_init = threshold_init
        self.temperature = temperature
        self.prior = nn.Linear(n_experts, n_experts, bias=False) if residual_gate else None
        self.threshold = nn.Parameter(torch.full((n_experts,), float(threshold_init)))  # w_e; theta_e = sigmoid(w_e)

    def gate_logits(self, x: torch.Tensor, prior_logits: torch.Tensor | None) -> torch.Tensor:
        logits = self.gate(x)
        if self.prior is not None and prior_logits is not None:
            logits = logits + self.prior(prior_logits.to(logits.dtype))
        return logits

    def route(self, scores: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """From scores s (N, E) to (hard mask (N, E) bool, weights (N, E)); weights are 0 off the mask.

        Pure function of the scores and the thresholds: the unit tests drive it with hand-built scores.
        """
        theta = self.lam * torch.sigmoid(self.threshold.float())
        hard = scores > theta
        best = scores.argmax(-1)
        nobody = ~hard.any(-1)
        hard = hard | (F.one_hot(best, self.n_experts).bool() & nobody[:, None])
        soft = torch.sigmoid((scores - theta) / self.temperature)
        mask = hard.to(scores.dtype) + soft - soft.detach()
        masked = scores * mask
        weights = masked / masked.sum(-1, keepdim=True)
        return hard, weights

    def forward(self, x: torch.Tensor, prior_logits: torch.Tensor | None = None) -> FFNOutput:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])
        prior_flat = None if prior_logits is None else prior_logits.reshape(-1, self.n_experts)
        logits = self.gate_logits(flat, prior_flat)
        scores = logits.float().softmax(-1)
        hard, weights = self.route(scores)
        counts = hard.sum(0)
        y = mix_experts(flat, self.experts, hard, weights)
        self._record(counts, flat.shape[0])
        aux = load_balance_loss(scores, hard)
        return FFNOutput(y.reshape(shape), logits.reshape(*shape[:-1], -1), aux, counts, flat.shape[0])

    def flops_per_token(self, mean_active: float | None = None) -> float:
        k = self.mean_active_experts() if mean_active is None else mean_active
        prior = 2 * self.n_experts ** 2 if self.prior is not None else 0
        return k * self._expert_flops() + self._gate_flops() + prior


def build_ffn(kind: str, d_model: int, n_experts: int, expert_hidden: int, *, dense_hidden: int,
              shared_hidden: int, top_k: int, lam: float, residual_gate: bool, temperature: float,
              dropout: float, threshold_init: float = 0.0) -> ExpertFFN:
    """The FFN of one block, by config kind (dgmoe | adamoe | topk | dense)."""
    if kind == "dgmoe":
        return DGMoE(d_model, n_experts, expert_hidden, lam, residual_gate, temperature, dropout, threshold_init)
    if kind == "adamoe":
        return AdaMoE(d_model, n_experts, expert_hidden, shared_hidden, top_k, dropout)
    if kind == "topk":
        return TopKMoE(d_model, n_experts, expert_hidden, top_k, dropout)
    if kind == "dense":
        return DenseFFN(d_model, dense_hidden, dropout)
    raise ValueError(f"ffn_kind: unknown FFN kind {kind!r}")
