"""Flower strategies for the FedVLA trunk: FedAvg, FedProx, Expert-Driven Aggregation, FedPart option.

All of them subclass ``flwr.serverapp.strategy.FedAvg`` and override ``configure_train`` and
``aggregate_train``, because stock FedAvg (a) insists every reply carries the same keys and (b)
weights every tensor by num-examples. Here every tensor is averaged separately over the clients
that sent it, with a per-tensor weight that the subclass decides, and every reply is validated
first (see :mod:`fedvla_core.federated.validation`).

What a strategy needs to know about the model is a *layout*: ``{tensor name: (layer index or
None, expert index or None)}`` (``FedVLAPolicy.trunk_layout()``). Clients report per-layer expert
activation counts in their MetricRecord as ``expert-counts.<layer>`` (a list, one entry per expert;
the keys client and server exchange are in :mod:`fedvla_core.federated.keys`).

A client may upload float16 deltas (local - global) instead of float32 weights (``upload-delta`` = 1
in its metrics); they are turned back into weights before validation and aggregation.

Config sent to clients every round (ConfigRecord): ``server-round``, ``scope`` ("trunk" or "full"),
``proximal-mu`` (0 unless FedProx) and ``train-layers`` (FedPart: the layer indices trained
this round; empty = all).
"""
from __future__ import annotations

import logging
import random
import time
from typing import Iterable, Mapping

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp.strategy import FedAvg

from fedvla_core.federated import keys
from fedvla_core.federated.eda import expert_client_weights, layer_client_weights
from fedvla_core.federated.validation import check_update, parse_counts
from fedvla_flower.task import arrays_to_numpy, numpy_to_arrays

log = logging.getLogger("fedvla.federation")


class FedVLAFedAvg(FedAvg):
    """FedAvg over whatever tensors the global model holds (trunk only, or stem+trunk+head).

    Args:
        layout: {tensor: (layer or None, expert or None)}; tensors missing from it count as layer None.
        scope: "trunk" (only the trunk travels; stem and head stay on the robot) or "full" (whole model).
        min_train_nodes / min_available_nodes: as in FedAvg; a round starts once ``min_available_nodes``
            are connected, waiting at most ``node_wait_timeout`` seconds (then the round is skipped).
        max_update_ratio: reject an update whose distance to the global model exceeds this multiple
            of the global norm.
        fedpart_layers_per_round: 0 = off; else FedPart: each round trains and aggregates only this many
            consecutive layers, rotating shallow to deep (tensors with no layer are always included).
    """

    name = "fedavg"

    def __init__(self, layout: Mapping[str, tuple] | None = None, scope: str = "trunk",
                 min_train_nodes: int = 2, min_available_nodes: int = 2, fraction_train: float = 1.0,
                 max_update_ratio: float = 10.0, fedpart_layers_per_round: int = 0,
                 node_wait_timeout: float = 600.0, weighted_by_key: str = keys.NUM_EXAMPLES):
        super().__init__(fraction_train=fraction_train, fraction_evaluate=0.0, min_train_nodes=min_train_nodes,
                         min_evaluate_nodes=0, min_available_nodes=min_available_nodes,
                         weighted_by_key=weighted_by_key, arrayrecord_key=keys.ARRAYS,
                         configrecord_key=keys.CONFIG)
        if scope not in ("trunk", "full"):
            raise ValueError(f"scope must be 'trunk' or 'full', got {scope!r}")
        if max_update_ratio <= 0:
            raise ValueError(f"max_update_ratio must be > 0, got {max_update_ratio}")
        if fedpart_layers_per_round < 0:
            raise ValueError(f"fedpart_layers_per_round must be >= 0, got {fedpart_layers_per_round}")
        self.layout = {k: (v[0], v[1]) for k, v in (layout or {}).items()}
        self.scope = scope
        self.max_update_ratio = float(max_update_ratio)
        self.fedpart_layers_per_round = int(fedpart_layers_per_round)
        self.node_wait_timeout = float(node_wait_timeout)
        self.global_arrays: dict[str, np.ndarray] = {}
        self.rejected: list[tuple[int, int, str]] = []  # (round, node id, reason)
        self.history: list[dict] = []

    # -- helpers ---------------------------------------------------------------------------
    def layer_of(self, key: str):
        return self.layout.get(key, (None, None))[0]

    def expert_of(self, key: str):
        return self.layout.get(key, (None, None))[1]

    def layers(self) -> list[int]:
        return sorted({l for l, _ in self.layout.values() if l is not None})

    def train_layers(self, server_round: int) -> list[int]:
        """FedPart's layer group of this round (empty list = all layers)."""
        layers = self.layers()
        k = self.fedpart_layers_per_round
        if k <= 0 or not layers or k >= len(layers):
            return []
        groups = [layers[i:i + k] for i in range(0, len(layers), k)]
        return groups[(server_round - 1) % len(groups)]

    def extra_config(self, server_round: int) -> dict:
        """Per-round config entries added to what clients receive (FedProx adds proximal-mu)."""
        return {keys.PROXIMAL_MU: 0.0}

    def summary(self) -> None:
        log.info("strategy %s: scope=%s min_train_nodes=%d min_available_nodes=%d fedpart=%d max_update_ratio=%g",
                 self.name, self.scope, self.min_train_nodes, self.min_available_nodes,
                 self.fedpart_layers_per_round, self.max_update_ratio)

    # -- Flower hooks ------------------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid) -> Iterable[Message]:
        """Remember the global model, wait (bounded) for enough nodes, send the round's config."""
        self.global_arrays = arrays_to_numpy(arrays)
        deadline = time.monotonic() + self.node_wait_timeout
        need = max(self.min_available_nodes, self.min_train_nodes)
        while len(nodes := list(grid.get_node_ids())) < need:
            if time.monotonic() > deadline:
                log.warning("round %d skipped: %d of %d required nodes connected after %.0f s",
                            server_round, len(nodes), need, self.node_wait_timeout)
                return []
            time.sleep(1.0)
        sample_size = min(len(nodes), max(int(len(nodes) * self.fraction_train), self.min_train_nodes))
        node_ids = random.sample(nodes, sample_size)
        cfg = ConfigRecord(dict(config))
        cfg[keys.SERVER_ROUND] = server_round
        cfg[keys.SCOPE] = self.scope
        cfg[keys.TRAIN_LAYERS] = self.train_layers(server_round)
        cfg.update(self.extra_config(server_round))
        log.info("round %d: training on %d of %d nodes, layers %s", server_round, len(node_ids), len(nodes),
                 cfg[keys.TRAIN_LAYERS] or "all")
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: cfg})
        return [Message(content=record, message_type=MessageType.TRAIN, dst_node_id=n) for n in node_ids]

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        """Validate every reply, then average each tensor over the clients that sent it."""
        replies = list(replies)
        valid, errors = self._check_and_log_replies(replies, is_train=True, validate=False)
        for msg in errors:
            self.rejected.append((server_round, msg.metadata.src_node_id, f"error reply: {msg.error.reason}"))
        clients = []  # (node id, arrays, metrics, bytes up)
        skipped = 0
        for msg in valid:
            node = msg.metadata.src_node_id
            try:
                record = msg.content[self.arrayrecord_key]
                metrics = dict(msg.content[keys.METRICS]) if keys.METRICS in msg.content else {}
                update = arrays_to_numpy(record)
                nbytes = record.count_bytes()
                if metrics.get(keys.UPLOAD_DELTA, 0):  # compressed upload: float16 (local - global) deltas
                    update = {k: (self.global_arrays[k].astype(np.float64) + d.astype(np.float64)).astype(
                        self.global_arrays[k].dtype) if k in self.global_arrays and d.shape == self.global_arrays[k].shape
                        else d for k, d in update.items()}
            except Exception as err:  # noqa: BLE001 - a malformed reply is rejected, never fatal
                reason = f"malformed reply: {err}"
            else:
                if not update and metrics.get(self.weighted_by_key) == 0:
                    log.info("round %d: node %d had no local training data; skipped", server_round, node)
                    skipped += 1
                    continue
                reason = check_update(self.global_arrays, update, metrics, self.layout, self.max_update_ratio,
                                      self.weighted_by_key)
            if reason is not None:
                log.warning("round %d: rejected update from node %d: %s", server_round, node, reason)
                self.rejected.append((server_round, node, reason))
                continue
            clients.append((node, update, metrics, nbytes))
        if not clients:
            log.warning("round %d: no acceptable update; the global model is unchanged", server_round)
            self.history.append({"round": server_round, "clients": 0, "rejected": len(replies)})
            return None, MetricRecord({"num-clients": 0, "num-rejected": len(replies) - skipped,
                                       "num-skipped": skipped})
        new = self.aggregate_arrays(clients)
        metrics = self.aggregate_metrics(clients, rejected=len(replies) - len(clients) - skipped)
        metrics["num-skipped"] = skipped
        self.history.append({"round": server_round, **{k: v for k, v in metrics.items()}})
        return numpy_to_arrays(new), metrics

    # -- aggregation -----------------------------------------------------------------------------
    def tensor_weights(self, key: str, clients: list, context: dict) -> np.ndarray | None:
        """Weights of the clients (that sent ``key``) for tensor ``key``; None = keep the global value."""
        n = np.asarray([c[2][self.weighted_by_key] for c in clients], dtype=np.float64)
        return n / n.sum() if n.sum() > 0 else None

    def prepare(self, clients: list) -> dict:
        """Per-round quantities shared by all tensors (EDA computes layer weights here)."""
        return {}

    def aggregate_arrays(self, clients: list) -> dict[str, np.ndarray]:
        context = self.prepare(clients)
        out = {}
        for key, ref in self.global_arrays.items():
            senders = [c for c in clients if key in c[1]]
            if not senders:
                out[key] = ref
                continue
            w = self.tensor_weights(key, senders, context)
            if w is None:
                out[key] = ref
                continue
            acc = np.zeros(ref.shape, dtype=np.float64)
            for wi, c in zip(w, senders):
                acc += wi * c[1][key].astype(np.float64)
            out[key] = acc.astype(ref.dtype) if np.issubdtype(ref.dtype, np.floating) else np.rint(acc).astype(ref.dtype)
        return out

    def aggregate_metrics(self, clients: list, rejected: int) -> MetricRecord:
        """Sums (examples, bytes, expert counts) and num-examples-weighted means of scalar metrics."""
        n = np.asarray([c[2][self.weighted_by_key] for c in clients], dtype=np.float64)
        out: dict = {"num-clients": len(clients), "num-rejected": rejected,
                     self.weighted_by_key: int(n.sum()), keys.BYTES_UP: int(sum(c[3] for c in clients))}
        counts_sum: dict[int, np.ndarray] = {}
        for c in clients:
            for layer, vec in parse_counts(c[2]).items():
                counts_sum[layer] = counts_sum.get(layer, 0) + vec
        for layer, vec in counts_sum.items():
            out[keys.expert_counts_key(layer)] = [float(v) for v in vec]
        scalar_keys = {k for c in clients for k, v in c[2].items()
                       if isinstance(v, (int, float)) and k not in out and not k.startswith(keys.EXPERT_COUNTS_PREFIX)}
        for key in sorted(scalar_keys):
            vals = [(float(c[2][key]), wn) for c, wn in zip(clients, n) if isinstance(c[2].get(key), (int, float))]
            tot = sum(wn for _, wn in vals)
            out[key] = float(sum(v * wn for v, wn in vals) / tot if tot > 0 else np.mean([v for v, _ in vals]))
            if key.endswith("-s"):  # timings: the slowest client bounds the round
                out[f"{key}-max"] = float(max(v for v, _ in vals))
        return MetricRecord(out)


class FedVLAFedProx(FedVLAFedAvg):
    """FedAvg aggregation; clients add (mu/2)||w - w_global||^2 to their loss (``proximal-mu`` in the config)."""

    name = "fedprox"

    def __init__(self, proximal_mu: float = 0.01, **kwargs):
        super().__init__(**kwargs)
        if proximal_mu < 0:
            raise ValueError(f"proximal_mu must be >= 0, got {proximal_mu}")
        self.proximal_mu = float(proximal_mu)

    def extra_config(self, server_round: int) -> dict:
        return {keys.PROXIMAL_MU: self.proximal_mu}


class ExpertDrivenAggregation(FedVLAFedAvg):
    """Expert-Driven Aggregation (FedVLA Algorithm 2, extended with per-expert count weighting).

    For every trunk layer l and the N clients that sent it, with V_i[l] the K-vector of client i's
    expert activation counts in layer l::

        S_l[i, j] = cos(V_i[l], V_j[l])                      (0 when either vector is all zeros)
        w_{l,i}   = sum_j S_l[i, j] / sum_{i,j} S_l[i, j]     (num-examples shares if S_l is all zero)

        non-expert tensor T of layer l (attention, norms, router):
            T_new = sum_i w_{l,i} T_i
        expert e of layer l:
            a_{i,e} = w_{l,i} * V_i[l][e] / sum_k w_{l,k} * V_k[l][e]
            E_new   = sum_i a_{i,e} E_i            if sum_k w_{l,k} V_k[l][e] > 0
            E_new   = E_global                     otherwise (no client used expert e)
        tensors with no layer: num-examples weights (FedAvg).
    """

    name = "eda"

    def tensor_weights(self, key: str, clients: list, context: dict) -> np.ndarray | None:
        layer = self.layer_of(key)
        if layer is None:
            return super().tensor_weights(key, clients, context)
        counts = []
        for c in clients:
            vec = parse_counts(c[2]).get(int(layer))
            if vec is None:
                vec = np.zeros(self._experts_in(layer))
            counts.append(vec)
        n = [float(c[2][self.weighted_by_key]) for c in clients]
        cache_key = (int(layer), tuple(c[0] for c in clients))  # layer weights, per sender set
        w_layer = context.get(cache_key)
        if w_layer is None:
            w_layer = context[cache_key] = layer_client_weights(counts, n)
        expert = self.expert_of(key)
        if expert is None:
            return w_layer if w_layer.sum() > 0 else None
        return expert_client_weights(w_layer, [v[int(expert)] if int(expert) < v.size else 0.0 for v in counts])

    def _experts_in(self, layer) -> int:
        return 1 + max([e for l, e in self.layout.values() if l == layer and e is not None], default=0)


STRATEGIES = {"fedavg": FedVLAFedAvg, "fedprox": FedVLAFedProx, "eda": ExpertDrivenAggregation}


def make_strategy(name: str, **kwargs) -> FedVLAFedAvg:
    """Build a strategy by name: eda | fedavg | fedprox (FedPart is ``fedpart_layers_per_round`` > 0 on any)."""
    try:
        cls = STRATEGIES[name]
    except KeyError:
        raise ValueError(f"strategy must be one of {sorted(STRATEGIES)}, got {name!r}") from None
    if cls is not FedVLAFedProx:
        kwargs.pop("proximal_mu", None)
    return cls(**kwargs)
