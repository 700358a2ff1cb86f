"""Routing statistics of a model's expert FFNs: what the robot reports and Expert-Driven Aggregation weighs.

Every ExpertFFN counts, since its last reset, the tokens it saw and the tokens routed to each of its
experts (eager calls count themselves; a compiled step returns ExpertStat records for
:func:`record`). These functions read, reset and add to those counts over a set of FFNs.
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .experts import ExpertFFN, ExpertStat


def reset(model: nn.Module) -> None:
    """Zero the counts of every expert FFN in `model` (trunk and IOSP refiners)."""
    for module in model.modules():
        if isinstance(module, ExpertFFN):
            module.reset_stats()


def record(model: nn.Module, stats: dict[str, ExpertStat]) -> None:
    """Add one step's routing counts ({FFN module name: ExpertStat}) to those FFNs' counts."""
    for name, stat in stats.items():
        model.get_submodule(name).record(stat.counts, stat.tokens)


def counts(ffns: Sequence[ExpertFFN]) -> list[list[int]]:
    """Per FFN, per expert: tokens routed since the last reset."""
    return [ffn.expert_counts() for ffn in ffns]


def mean_active(ffns: Sequence[ExpertFFN]) -> float:
    """Routed experts per token over all the FFNs since the last reset (0.0 if none seen)."""
    tokens = sum(ffn.tokens_seen() for ffn in ffns)
    routed = sum(sum(ffn.expert_counts()) for ffn in ffns)
    return routed / tokens if tokens else 0.0


def mean_active_by_name(named_ffns: dict[str, ExpertFFN]) -> dict[str, float]:
    """{name: that FFN's routed experts per token since the last reset}."""
    return {name: ffn.mean_active_experts() for name, ffn in named_ffns.items()}


def mean_flops_per_token(ffns: Sequence[ExpertFFN]) -> float:
    """FFN FLOPs per token, the mean over the FFNs, each at its measured mean active experts."""
    flops = [ffn.flops_per_token() for ffn in ffns]
    return float(sum(flops) / len(flops))
