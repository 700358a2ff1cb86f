"""Expert-Driven Aggregation (FedVLA, ICCV 2025, Algorithm 2) as plain numpy functions.

Kept free of Flower and of the model so that the formula can be checked by hand (see
tests/fedvla_flower/test_strategies.py for a 3-client example written out in numbers).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def cosine_similarity_matrix(counts: Sequence[np.ndarray]) -> np.ndarray:
    """S[i, j] = cos(V_i, V_j) for the clients' expert-count vectors of one layer.

    A client whose vector is all zeros (it routed no token through this layer's experts)
    has similarity 0 with everyone, itself included.
    """
    v = np.stack([np.asarray(c, dtype=np.float64) for c in counts])
    norms = np.linalg.norm(v, axis=1)
    safe = np.where(norms > 0, norms, 1.0)
    unit = v / safe[:, None]
    s = unit @ unit.T
    s[norms == 0, :] = 0.0
    s[:, norms == 0] = 0.0
    return s


def layer_client_weights(counts: Sequence[np.ndarray], num_examples: Sequence[float]) -> np.ndarray:
    """w_{l,i} = sum_j S_l[i, j] / sum_{i,j} S_l[i, j] for one layer l.

    Clients whose expert usage resembles the others' get more weight in the layer's
    shared tensors. When no client has any count in the layer (a dense layer, or nobody
    routed anything) the weights fall back to FedAvg's num-examples proportions.
    """
    s = cosine_similarity_matrix(counts)
    total = s.sum()
    if total <= 0:
        n = np.asarray(num_examples, dtype=np.float64)
        return n / n.sum() if n.sum() > 0 else np.full(len(n), 1.0 / max(len(n), 1))
    return s.sum(axis=1) / total


def expert_client_weights(layer_weights: np.ndarray, expert_counts: Sequence[float]) -> np.ndarray | None:
    """Normalized weights of expert e over clients: w_{l,i} * count_{i,l,e} / sum_k w_{l,k} * count_{k,l,e}.

    Returns None when no client used the expert: the caller then keeps the global value.
    """
    raw = np.asarray(layer_weights, dtype=np.float64) * np.asarray(expert_counts, dtype=np.float64)
    total = raw.sum()
    if total <= 0:
        return None
    return raw / total
