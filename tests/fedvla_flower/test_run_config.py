"""The run config has one set of defaults: pyproject.toml's literals (what Flower reads) equal the code's.

The clients' training settings default to the core's LocalRoundConfig, the rest of the run to
ServerRunConfig; the ClientApp falls back to the same values when the server's ConfigRecord lacks a key.
"""
from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

from fedvla_core.federated import keys
from fedvla_core.federated.local_round import LocalRoundConfig, round_default
from fedvla_core.federated.round_gate import DEFAULT_GATE_TIMEOUT_S
from fedvla_flower.server_app import ServerRunConfig
from fedvla_flower.task import local_round_config

PYPROJECT = Path(__file__).resolve().parents[2] / "src" / "fedvla_flower" / "pyproject.toml"
#: run-config key -> the LocalRoundConfig field it sets on every robot
LOCAL_ROUND_KEYS = {keys.LOCAL_STEPS: "local_steps", keys.BATCH_SIZE: "batch_size",
                    keys.LEARNING_RATE: "learning_rate", keys.SEED: "seed", keys.UPLOAD_DTYPE: "upload_dtype"}


def app_config() -> dict:
    return tomllib.loads(PYPROJECT.read_text())["tool"]["flwr"]["app"]["config"]


def test_pyproject_run_config_defaults_equal_the_code():
    config = app_config()
    server = {f.name.replace("_", "-"): f.default for f in dataclasses.fields(ServerRunConfig)}
    assert set(config) == set(server), "pyproject.toml [tool.flwr.app.config] and ServerRunConfig name other keys"
    for key, value in config.items():
        assert type(value) is type(server[key]) and value == server[key], (key, value, server[key])
    for key, name in LOCAL_ROUND_KEYS.items():
        assert config[key] == round_default(name), (key, config[key], round_default(name))
    assert config[keys.GATE_TIMEOUT] == DEFAULT_GATE_TIMEOUT_S


def test_a_robot_runs_what_the_server_sends_and_the_defaults_without_it():
    node = {keys.NODE_EPISODE_DIR: "/data/r1", keys.NODE_ROBOT_ID: "r1"}
    bare = local_round_config(node, {})
    assert bare == LocalRoundConfig(episode_dir="/data/r1", robot_id="r1")

    run = ServerRunConfig(model_config="{}", local_steps=7, batch_size=3, learning_rate=1e-3, seed=5,
                          upload_dtype="float16")
    sent = local_round_config(node, {**run.client_config(), keys.SERVER_ROUND: 4, keys.SCOPE: "full",
                                     keys.PROXIMAL_MU: 0.5, keys.TRAIN_LAYERS: [1]})
    assert (sent.local_steps, sent.batch_size, sent.learning_rate, sent.seed, sent.upload_dtype) == (7, 3, 1e-3, 5, "float16")
    assert (sent.server_round, sent.scope, sent.proximal_mu, sent.train_layers, sent.model_config) == (4, "full", 0.5, [1], "{}")
    robot_base = local_round_config({**node, keys.NODE_BASE_CHECKPOINT: "/robot/base"},
                                    {keys.BASE_CHECKPOINT: "/run/base"})
    assert robot_base.base_checkpoint == "/robot/base"
