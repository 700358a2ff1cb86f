"""What the ClientApp and the ServerApp share (``task.py`` of the `flwr new` layout).

* the model: the initial policy from a base checkpoint or a model-config, and the tensors that
  travel (the trunk, or the whole model);
* Flower records <-> numpy, packed (one flat array per dtype, see fedvla_core.federated.wire);
* the round's settings: what a robot receives (node config + the server's ConfigRecord) turned into
  the core's :class:`~fedvla_core.federated.local_round.LocalRoundConfig`, whose defaults are the
  fleet's defaults.

No torch at import time: the ClientApp imports this and, with a warm trainer, never needs torch.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Mapping

import numpy as np
from flwr.app import Array, ArrayRecord

from fedvla_core.federated import keys
from fedvla_core.federated.local_round import LocalRoundConfig, round_default
from fedvla_core.federated.wire import unpack_arrays


# -- records ----------------------------------------------------------------------------------------
def arrays_to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    """ArrayRecord -> {name: ndarray}; a packed record (see fedvla_core.federated.wire) is unpacked."""
    return unpack_arrays({k: v.numpy() for k, v in record.items()})


def numpy_to_arrays(arrays: Mapping[str, np.ndarray]) -> ArrayRecord:
    """{name: ndarray} -> ArrayRecord (key order kept)."""
    return ArrayRecord({k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()})


# -- model ------------------------------------------------------------------------------------------
def build_policy(base_checkpoint: str, model_config: str, seed: int):
    """The initial policy: ``base_checkpoint`` (a save_pretrained folder) or a fresh one from ``model_config``
    (JSON FedVLAConfig kwargs), after seeding torch with ``seed``."""
    import torch

    from fedvla_core.model import FedVLAConfig, FedVLAPolicy

    torch.manual_seed(seed)
    if base_checkpoint:
        return FedVLAPolicy.from_pretrained(base_checkpoint)
    return FedVLAPolicy(FedVLAConfig(**json.loads(model_config)))


def initial_model(base_checkpoint: str, model_config: str, scope: str,
                  seed: int) -> tuple[dict[str, np.ndarray], dict[str, tuple]]:
    """Global arrays (trunk or whole model) and the trunk layout of the initial policy."""
    from fedvla_core.federated.local_round import tensors_to_upload

    policy = build_policy(base_checkpoint, model_config, seed)
    layout = policy.trunk_layout()
    return tensors_to_upload(policy, scope, []), layout


# -- node config ------------------------------------------------------------------------------------
#: Flower's simulation engine gives a virtual node only these keys as node config (flwr.common.constant).
PARTITION_ID_KEY = "partition-id"
#: The JSON file with one robot node config per virtual node, ``{"nodes": [{...}, ...]}`` (index = partition
#: id), written by :mod:`fedvla_flower.simulation`; its environment reaches the Ray actors that run the ClientApp.
SIM_FLEET_ENV = "FEDVLA_SIM_FLEET"
#: How many simulated robots' warm state (policy + decoded episodes) one ClientApp process keeps (0 = none).
SIM_WARM_NODES_ENV = "FEDVLA_SIM_WARM_NODES"


def simulated(node_config: Mapping) -> bool:
    """A virtual node of Flower's simulation engine whose robot config comes from the fleet file."""
    return (keys.NODE_EPISODE_DIR not in node_config and PARTITION_ID_KEY in node_config
            and bool(os.environ.get(SIM_FLEET_ENV, "")))


def node_config_of(node_config: Mapping) -> dict:
    """The robot's node config: a SuperNode's ``--node-config`` as it is (it names an episode-dir).

    A virtual node of Flower's simulation engine has only ``partition-id``/``num-partitions``; its robot
    config is entry ``partition-id`` of the fleet file named by ``$FEDVLA_SIM_FLEET`` (when set).
    """
    node = dict(node_config)
    if not simulated(node):
        return node
    fleet = json.loads(Path(os.environ[SIM_FLEET_ENV]).read_text())["nodes"]
    return {**node, **fleet[int(node[PARTITION_ID_KEY])]}


# -- round settings ---------------------------------------------------------------------------------
def local_round_config(node_config: Mapping, conf: Mapping) -> LocalRoundConfig:
    """The local round a robot runs: its node config (where its data is) + the server's ConfigRecord.

    A key the server did not send takes LocalRoundConfig's default; the robot's own base checkpoint
    (node config) wins over the run's.
    """
    node, d = dict(node_config), round_default
    return LocalRoundConfig(
        episode_dir=str(node.get(keys.NODE_EPISODE_DIR, "")),
        policy_dir=str(node.get(keys.NODE_POLICY_DIR, "")),
        robot_id=str(node.get(keys.NODE_ROBOT_ID, "")),
        base_checkpoint=str(node.get(keys.NODE_BASE_CHECKPOINT, "") or conf.get(keys.BASE_CHECKPOINT, "")),
        model_config=str(conf.get(keys.MODEL_CONFIG, d("model_config"))),
        server_round=int(conf.get(keys.SERVER_ROUND, d("server_round"))),
        scope=str(conf.get(keys.SCOPE, d("scope"))),
        proximal_mu=float(conf.get(keys.PROXIMAL_MU, d("proximal_mu"))),
        train_layers=list(conf.get(keys.TRAIN_LAYERS, []) or []),
        local_steps=int(conf.get(keys.LOCAL_STEPS, d("local_steps"))),
        batch_size=int(conf.get(keys.BATCH_SIZE, d("batch_size"))),
        learning_rate=float(conf.get(keys.LEARNING_RATE, d("learning_rate"))),
        seed=int(conf.get(keys.SEED, d("seed"))),
        upload_dtype=str(conf.get(keys.UPLOAD_DTYPE, d("upload_dtype"))),
        fault_injection=str(node.get(keys.NODE_FAULT_INJECTION, "")),
    )
