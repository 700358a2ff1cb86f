"""The FedVLA app on Flower's simulation engine (real SuperLink --simulation, real Ray, the app's own
ServerApp/ClientApp/strategy): virtual nodes get their robot's episodes from the fleet file and the rounds aggregate."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedvla_core.episodes import EpisodeWriter
from fedvla_core.federated import keys
from fedvla_flower.simulation import SimulationSettings, fleet_node_configs, run_simulation
from fedvla_flower.task import SIM_FLEET_ENV, node_config_of, simulated

pytest.importorskip("ray")

TINY = dict(camera_names=["agentview"], image_size=32, patch_size=8, d_model=32, n_layers=2, n_heads=2, n_experts=4,
            expert_hidden=32, iosp_topk=2, iosp_n_experts=2, iosp_expert_hidden=16, chunk_size=4, proprio_dim=8,
            action_dim=7)


def make_episodes(directory, seed, steps=8):
    rng = np.random.default_rng(seed)
    w = EpisodeWriter(directory, metadata={"instruction": "open the drawer", "robot_id": directory.name},
                      camera_names=["agentview"], joint_names=[f"j{i}" for i in range(8)],
                      action_names=[f"a{i}" for i in range(7)])
    for t in range(steps):
        w.add_step(t, {"agentview": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)}, rng.normal(size=8),
                   rng.normal(size=7) * 0.1 + seed)
    w.close(True)


def test_a_simulated_node_takes_its_robot_config_from_the_fleet_file_and_a_supernode_keeps_its_own(tmp_path, monkeypatch):
    fleet = tmp_path / "fleet.json"
    fleet.write_text(json.dumps({"nodes": fleet_node_configs([tmp_path / "a", tmp_path / "b"])}))
    supernode = {keys.NODE_ROBOT_ID: "robot1", keys.NODE_EPISODE_DIR: "/data/robot1"}
    virtual = {"partition-id": 1, "num-partitions": 2}
    assert node_config_of(virtual) == virtual and not simulated(virtual)  # no fleet file: nothing changes
    monkeypatch.setenv(SIM_FLEET_ENV, str(fleet))
    assert node_config_of(supernode) == supernode and not simulated(supernode)
    got = node_config_of(virtual)
    assert simulated(virtual)
    assert got[keys.NODE_EPISODE_DIR] == str((tmp_path / "b").resolve()) and got[keys.NODE_ROBOT_ID] == "sim1"
    assert got[keys.NODE_LOCAL_TRAINER] == "off"


@pytest.mark.timeout(300)
def test_two_simulated_clients_two_rounds_aggregate(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    robots = [tmp_path / f"robot{i}" for i in range(2)]
    for i, d in enumerate(robots):
        make_episodes(d, seed=i)
    run_config = {"num-server-rounds": 2, "strategy": "eda", "model-config": json.dumps(TINY), "local-steps": 2,
                  "batch-size": 4, "round-timeout": 120.0, "node-wait-timeout": 60.0}
    res = run_simulation(run_config, robots, tmp_path / "sim",
                         SimulationSettings(num_cpus=2, client_cpus=1, timeout_s=240))
    assert res.status == "finished:completed", res.log_path.read_text()[-3000:]
    assert len(res.rounds) == 2
    for m in res.rounds:  # both clients' metrics arrived and were aggregated
        assert m["sent"] == 2 and m["replies"] == 2 and m["num-clients"] == 2 and m["num-rejected"] == 0
        assert m["num-examples"] > 0 and m["bytes-up"] > 0 and len(m["expert-counts.0"]) == TINY["n_experts"]
        assert np.isfinite(m["train-loss"]) and m["train-time-s-max"] > 0
    ckpt = res.checkpoint_dir
    g0, g2 = load_file(str(ckpt / "round_0000.safetensors")), load_file(str(ckpt / "round_0002.safetensors"))
    assert all(np.isfinite(v).all() for v in g2.values())
    assert any(not np.array_equal(g0[k], g2[k]) for k in g0)  # the global trunk moved
    for i, robot in enumerate(robots):  # each virtual node trained on its own robot's episodes
        report = json.loads((robot / ".round_report.json").read_text())
        assert report["state"] == "done" and report["server_round"] == 2 and report["num_examples"] > 0
        assert os.path.isdir(report["checkpoint"])
    # Everything the run started is gone (SuperLink, SuperExec, flwr-simulation, Ray).
    leftovers = [p for p in os.listdir("/proc") if p.isdigit() and _cmd_mentions(p, str(tmp_path / "sim"))]
    assert not leftovers


def _cmd_mentions(pid: str, text: str) -> bool:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            return text.encode() in f.read()
    except OSError:
        return False
