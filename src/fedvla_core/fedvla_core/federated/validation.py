"""Sanity checks on a client's update before it may touch the global model.

One bad robot (a diverged run, a flipped bit, a buggy client) must not poison the fleet's
trunk, and must not stall the round either: a failing update is dropped with a logged reason
and the round aggregates the others.
"""
from __future__ import annotations

from typing import Mapping

import numpy as np

from fedvla_core.federated.keys import EXPERT_COUNTS_PREFIX, NUM_EXAMPLES, expert_counts_key


def layer_expert_sizes(layout: Mapping[str, tuple]) -> dict[int, int]:
    """Number of experts per MoE layer, from a trunk layout {name: (layer, expert or None)}."""
    sizes: dict[int, int] = {}
    for layer, expert in layout.values():
        if layer is not None and expert is not None:
            sizes[int(layer)] = max(sizes.get(int(layer), 0), int(expert) + 1)
    return sizes


def parse_counts(metrics: Mapping[str, object]) -> dict[int, np.ndarray]:
    """The per-layer count vectors ``expert-counts.<layer>`` of a reply's MetricRecord."""
    out = {}
    for key, value in metrics.items():
        if key.startswith(EXPERT_COUNTS_PREFIX):
            vals = value if isinstance(value, (list, tuple)) else [value]
            out[int(key[len(EXPERT_COUNTS_PREFIX):])] = np.asarray(vals, dtype=np.float64)
    return out


def check_update(global_arrays: Mapping[str, np.ndarray], update: Mapping[str, np.ndarray],
                 metrics: Mapping[str, object], layout: Mapping[str, tuple],
                 max_update_ratio: float, weighted_by_key: str = NUM_EXAMPLES) -> str | None:
    """Why this update must be rejected, or None when it is acceptable.

    Checks: at least one array; every array known to the global model with the same shape and
    finite values; ``num-examples`` finite and >= 0; count vectors finite, >= 0 and as long as the
    layer's expert count; and ||update - global|| <= max_update_ratio * max(||global||, 1)
    over the tensors the client sent (an "absurd norm" is a blown-up or garbage update).
    """
    if not update:
        return "no arrays in the reply"
    n = metrics.get(weighted_by_key)
    if n is None or not isinstance(n, (int, float)) or not np.isfinite(n) or n < 0:
        return f"metric {weighted_by_key!r} missing or invalid ({n!r})"
    diff_sq = 0.0
    ref_sq = 0.0
    for key, arr in update.items():
        if key not in global_arrays:
            return f"unknown tensor {key!r}"
        ref = global_arrays[key]
        if arr.shape != ref.shape:
            return f"tensor {key!r} has shape {tuple(arr.shape)}, expected {tuple(ref.shape)}"
        if not np.issubdtype(arr.dtype, np.number) and arr.dtype != np.bool_:
            return f"tensor {key!r} has dtype {arr.dtype}"
        a64 = arr.astype(np.float64, copy=False)
        if not np.all(np.isfinite(a64)):
            return f"tensor {key!r} has NaN/Inf values"
        diff_sq += float(np.sum((a64 - ref) ** 2))
        ref_sq += float(np.sum(ref.astype(np.float64) ** 2))
    sizes = layer_expert_sizes(layout)
    try:
        counts = parse_counts(metrics)
    except (TypeError, ValueError) as err:
        return f"bad expert counts: {err}"
    for layer, vec in counts.items():
        if not np.all(np.isfinite(vec)) or np.any(vec < 0):
            return f"{expert_counts_key(layer)} has negative or non-finite values"
        if layer in sizes and vec.size != sizes[layer]:
            return f"{expert_counts_key(layer)} has {vec.size} entries, layer has {sizes[layer]} experts"
    norm = diff_sq ** 0.5
    limit = max_update_ratio * max(ref_sq ** 0.5, 1.0)
    if norm > limit:
        return f"update norm {norm:.4g} exceeds {limit:.4g} ({max_update_ratio} x global norm)"
    return None
