"""Strategies on plain arrays: the EDA formula on a hand-computed 3-client example, FedAvg, FedPart,
FedProx config and the rejection of bad updates."""
from __future__ import annotations

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, Error, Message, MessageType, Metadata, MetricRecord, RecordDict

from fedvla_core.federated.eda import layer_client_weights
from fedvla_flower.strategies import ExpertDrivenAggregation, FedVLAFedAvg, FedVLAFedProx, make_strategy

# Layer 0 has 3 experts (one scalar each) and a router "gate"; "norm" belongs to no layer.
LAYOUT = {"l0.expert.0": (0, 0), "l0.expert.1": (0, 1), "l0.expert.2": (0, 2), "l0.gate": (0, None),
          "norm": (None, None)}
GLOBAL = {"l0.expert.0": 0.0, "l0.expert.1": 0.0, "l0.expert.2": 7.0, "l0.gate": 0.0, "norm": 0.0}


def arrays(values: dict) -> ArrayRecord:
    return ArrayRecord({k: Array(np.full((2,), v, dtype=np.float32)) for k, v in values.items()})


def reply(node: int, values: dict | None, metrics: dict | None = None, error: str | None = None) -> Message:
    meta = Metadata(run_id=1, message_id=f"m{node}", src_node_id=node, dst_node_id=0, reply_to_message_id="x",
                    group_id="", created_at=0.0, ttl=100.0, message_type=MessageType.TRAIN)
    if error:
        return Message(error=Error(code=0, reason=error), metadata=meta)
    return Message(RecordDict({"arrays": arrays(values), "metrics": MetricRecord(metrics)}), metadata=meta)


def three_clients():
    # counts V_i for layer 0 (3 experts; nobody used expert 2)
    return [
        reply(1, {"l0.expert.0": 1.0, "l0.expert.1": 9.0, "l0.expert.2": 9.0, "l0.gate": 1.0, "norm": 1.0},
              {"num-examples": 10, "expert-counts.0": [3, 0, 0], "train-loss": 1.0}),
        reply(2, {"l0.expert.0": 5.0, "l0.expert.1": 3.0, "l0.expert.2": 9.0, "l0.gate": 2.0, "norm": 2.0},
              {"num-examples": 20, "expert-counts.0": [0, 4, 0], "train-loss": 2.0}),
        reply(3, {"l0.expert.0": 2.0, "l0.expert.1": -1.0, "l0.expert.2": 9.0, "l0.gate": 3.0, "norm": 3.0},
              {"num-examples": 30, "expert-counts.0": [3, 4, 0], "train-loss": 4.0}),
    ]


def run(strategy, replies, global_values=GLOBAL, rnd=1):
    strategy.global_arrays = {k: v.numpy() for k, v in arrays(global_values).items()}
    new, metrics = strategy.aggregate_train(rnd, replies)
    return ({k: float(v.numpy()[0]) for k, v in new.items()} if new is not None else None), metrics


def test_eda_hand_computed_three_clients():
    """Hand computation (written out so the test documents the formula).

    V1=[3,0,0], V2=[0,4,0], V3=[3,4,0].  cos: S12=0, S13=3/5=0.6, S23=4/5=0.8, S_ii=1.
    Row sums: 1.6, 1.8, 2.4; total 5.8 -> w = [1.6, 1.8, 2.4] / 5.8 = [0.275862, 0.310345, 0.413793].
    expert 0: w_i * V_i[0] = [4.8, 0, 7.2] -> a = [0.4, 0, 0.6] -> 0.4*1 + 0.6*2 = 1.6
    expert 1: w_i * V_i[1] = [0, 7.2, 9.6] -> a = [0, 3/7, 4/7] -> 3*3/7 - 4/7 = 5/7 = 0.714286
    expert 2: no counts -> keeps the global 7.0 (the clients' 9.0 are ignored)
    gate (layer 0, not an expert): (1.6*1 + 1.8*2 + 2.4*3) / 5.8 = 12.4 / 5.8 = 2.137931
    norm (no layer): num-examples 10, 20, 30 -> (10*1 + 20*2 + 30*3) / 60 = 2.333333
    """
    new, metrics = run(ExpertDrivenAggregation(layout=LAYOUT), three_clients())
    assert new["l0.expert.0"] == pytest.approx(1.6, abs=1e-6)
    assert new["l0.expert.1"] == pytest.approx(0.714286, abs=1e-6)
    assert new["l0.expert.2"] == pytest.approx(7.0)
    assert new["l0.gate"] == pytest.approx(2.137931, abs=1e-6)
    assert new["norm"] == pytest.approx(2.333333, abs=1e-6)
    np.testing.assert_allclose(layer_client_weights([[3, 0, 0], [0, 4, 0], [3, 4, 0]], [1, 1, 1]),
                               [0.275862, 0.310345, 0.413793], atol=1e-6)
    assert metrics["num-clients"] == 3 and metrics["num-examples"] == 60
    assert list(metrics["expert-counts.0"]) == [6.0, 8.0, 0.0]
    assert metrics["train-loss"] == pytest.approx((10 * 1 + 20 * 2 + 30 * 4) / 60)
    assert metrics["bytes-up"] > 0


def test_fedavg_weights_everything_by_examples():
    new, _ = run(FedVLAFedAvg(layout=LAYOUT), three_clients())
    assert new["l0.expert.0"] == pytest.approx((10 * 1 + 20 * 5 + 30 * 2) / 60, abs=1e-6)
    assert new["l0.expert.2"] == pytest.approx(9.0)  # FedAvg has no notion of unused experts
    assert new["l0.gate"] == pytest.approx(140 / 60, abs=1e-6)


def test_nan_wrong_shape_absurd_norm_and_errors_are_rejected_round_completes():
    good = three_clients()
    nan = reply(4, {"l0.expert.0": float("nan"), "l0.gate": 1.0}, {"num-examples": 100, "expert-counts.0": [1, 1, 1]})
    huge = reply(5, {"l0.gate": 1e9}, {"num-examples": 100, "expert-counts.0": [1, 1, 1]})
    bad_counts = reply(6, {"l0.gate": 1.0}, {"num-examples": 5, "expert-counts.0": [1, 1]})
    meta = Metadata(run_id=1, message_id="m7", src_node_id=7, dst_node_id=0, reply_to_message_id="x", group_id="",
                    created_at=0.0, ttl=100.0, message_type=MessageType.TRAIN)
    wrong_shape = Message(RecordDict({"arrays": ArrayRecord({"l0.gate": Array(np.ones(3, np.float32))}),
                                      "metrics": MetricRecord({"num-examples": 5})}), metadata=meta)
    failed = reply(8, None, error="client crashed")
    strategy = ExpertDrivenAggregation(layout=LAYOUT)
    new, metrics = run(strategy, good + [nan, huge, bad_counts, wrong_shape, failed])
    reasons = {node: why for _, node, why in strategy.rejected}
    assert "NaN" in reasons[4] and "norm" in reasons[5] and "3 experts" in reasons[6]
    assert "shape" in reasons[7] and "client crashed" in reasons[8]
    expected, _ = run(ExpertDrivenAggregation(layout=LAYOUT), three_clients())
    assert new == pytest.approx(expected)  # the bad replies changed nothing
    assert metrics["num-rejected"] == 5 and metrics["num-clients"] == 3
    none, metrics = run(ExpertDrivenAggregation(layout=LAYOUT), [nan])
    assert none is None and metrics["num-clients"] == 0


def test_fedpart_rotates_layers_and_accepts_partial_replies():
    layout = {f"l{i}.w": (i, None) for i in range(4)}
    s = FedVLAFedAvg(layout=layout, fedpart_layers_per_round=2)
    assert [s.train_layers(r) for r in (1, 2, 3)] == [[0, 1], [2, 3], [0, 1]]
    g = {k: 0.0 for k in layout}
    new, _ = run(s, [reply(1, {"l2.w": 0.2, "l3.w": 0.4}, {"num-examples": 1}),
                     reply(2, {"l2.w": 0.4, "l3.w": 0.8}, {"num-examples": 3})], global_values=g, rnd=2)
    assert new == pytest.approx({"l0.w": 0.0, "l1.w": 0.0, "l2.w": 0.35, "l3.w": 0.7}, abs=1e-6)


def test_fedprox_and_factory():
    assert FedVLAFedProx(proximal_mu=0.1).extra_config(1) == {"proximal-mu": 0.1}
    assert isinstance(make_strategy("eda", proximal_mu=0.5), ExpertDrivenAggregation)
    with pytest.raises(ValueError, match="strategy"):
        make_strategy("nope")
    with pytest.raises(ValueError, match="scope"):
        FedVLAFedAvg(scope="half")
