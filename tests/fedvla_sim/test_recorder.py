"""Recorded demonstrations re-read, through the fed client's episode reader, into tensors of the right shapes."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from fedvla_core.episodes import EpisodeDataset, read_episode
from fedvla_sim.env import PandaTabletopEnv
from fedvla_sim.recorder import RecordConfig, record_episode


def test_recorded_panda_demo_reads_back_into_tensors(tmp_path):
    env = PandaTabletopEnv("pick_up_green_block", 0, camera_size=64)
    result = record_episode(env, "panda", seed=4, out_dir=tmp_path)
    assert result["success"] and result["path"] is not None
    episode = read_episode(result["path"])
    meta = episode.metadata
    assert meta["success"] is True and meta["task"] == "pick_up_green_block" and meta["seed"] == 4
    assert meta["instruction"] in env.task.phrasings and meta["suite"] == "panda"
    steps = result["steps"]
    assert episode.images["agentview"].shape == (steps, 64, 64, 3)
    assert episode.joint_positions.shape == (steps, 8) and episode.actions.shape == (steps, 8)
    assert np.all((episode.actions[:, 7] >= 0) & (episode.actions[:, 7] <= 1))

    dataset = EpisodeDataset(tmp_path, camera_names=["agentview", "wrist"], chunk_size=10)
    assert len(dataset) == steps
    sample = dataset[0]
    images = torch.as_tensor(sample["images"])
    assert images.shape == (2, 3, 64, 64) and images.dtype == torch.uint8
    assert torch.as_tensor(sample["actions"]).shape == (10, 8)
    assert torch.as_tensor(sample["proprio"]).shape == (8,)
    assert sample["instruction"] == meta["instruction"]


def test_cli_records_with_parallel_workers(tmp_path):
    out = tmp_path / "demos"
    proc = subprocess.run(
        [sys.executable, "-m", "fedvla_sim.cli", "record", "--suite", "panda", "--task", "push_blue_block_left",
         "--episodes", "2", "--out", str(out), "--workers", "2", "--seed-start", "10", "--camera-size", "32"],
        capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = sorted(Path(out).glob("*.mcap"))
    assert [f.name for f in files] == ["panda_push_blue_block_left_seed000010.mcap",
                                       "panda_push_blue_block_left_seed000011.mcap"]
    for f in files:
        ep = read_episode(f)
        assert ep.metadata["success"] is True
        assert ep.images["wrist"].shape[1:] == (32, 32, 3)


def test_record_config_names_bad_fields():
    import pytest

    with pytest.raises(ValueError, match="RecordConfig.task"):
        RecordConfig(suite="panda", task="door-lock")
    with pytest.raises(ValueError, match="RecordConfig.workers"):
        RecordConfig(workers=0)
    assert RecordConfig(episodes=5).max_attempts == 20
