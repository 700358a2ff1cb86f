"""Training and rounds are guarded (issue 20): bad episodes are skipped, a non-finite round changes nothing.

Real tiny FedVLAPolicy, the real Flower ClientApp function and the robot's warm trainer in its own process.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ConfigRecord, Context, Message, Metadata, RecordDict

from fedvla_flower.client_app import _record
from fedvla_flower.client_app import train as client_app_train
from fedvla_core.episodes import EpisodeDataset, EpisodeWriter
from fedvla_core.federated.local_round import LATEST_FILE, LocalRoundConfig, RoundFailed, run_local_round
from fedvla_flower.local_trainer import LocalTrainerProcess
from fedvla_core.federated.round_gate import read_report
from fedvla_core.federated.wire import pack_arrays

from test_local_round import TINY, global_trunk


def write_episode(directory, seed=0, steps=8, cameras=("agentview",), joints=8, actions=7, poison=None):
    """One successful episode; `poison` ('nan' / 'inf') writes a non-finite action, as a writer without guards would."""
    rng = np.random.default_rng(seed)
    w = EpisodeWriter(directory, metadata={"instruction": "push the block"}, camera_names=list(cameras),
                      joint_names=[f"j{i}" for i in range(joints)], action_names=[f"a{i}" for i in range(actions)])
    if poison:
        w._check_step = lambda *args: None  # an episode from before the writer refused non-finite steps
    for t in range(steps):
        act = rng.normal(size=actions)
        if poison and t == steps // 2:
            act[0] = np.nan if poison == "nan" else np.inf
        w.add_step(t, {c: rng.integers(0, 256, (32, 32, 3), dtype=np.uint8) for c in cameras},
                   rng.normal(size=joints), act)
    return w.close(True)


def write_bad_episodes(directory) -> dict[str, Path]:
    bad = {
        "nan": write_episode(directory, seed=11, poison="nan"),
        "inf": write_episode(directory, seed=12, poison="inf"),
        "other cameras": write_episode(directory, seed=13, cameras=("wrist",)),
        "wrong dims": write_episode(directory, seed=14, joints=6, actions=5),
    }
    good = write_episode(directory, seed=15)
    corrupt = directory / "corrupt.mcap"
    data = good.read_bytes()
    corrupt.write_bytes(data[: len(data) // 2])  # a disk that failed mid-file
    good.unlink()
    bad["corrupt"] = corrupt
    return bad


def snapshot(policy_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(policy_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(policy_dir.rglob("*")) if p.is_file()}


def cfg(directory, rnd, **kw):
    return LocalRoundConfig(episode_dir=str(directory), model_config=json.dumps(TINY), server_round=rnd,
                            local_steps=3, batch_size=4, **kw)


def test_bad_and_mismatched_episodes_are_skipped_with_a_warning_and_training_goes_on(tmp_path, caplog):
    write_episode(tmp_path, seed=1)
    bad = write_bad_episodes(tmp_path)
    write_episode(tmp_path, seed=2)
    caplog.set_level(logging.WARNING)
    dataset = EpisodeDataset(tmp_path, camera_names=["agentview"], chunk_size=4, image_size=32, action_dim=7,
                             proprio_dim=8)
    assert dataset.num_episodes == 2 and len(dataset) == 16
    assert {Path(p) for p in dataset.skipped} == {bad["nan"], bad["inf"], bad["other cameras"], bad["wrong dims"]}
    assert "non-finite" in dataset.skipped[str(bad["nan"])] and "wrist" not in dataset.camera_names
    assert "dim" in dataset.skipped[str(bad["wrong dims"])]
    for p in (*bad.values(),):
        assert str(p) in caplog.text  # each skipped file is named in a warning (the corrupt one by the lister)
    for i in range(len(dataset)):
        sample = dataset[i]
        assert np.isfinite(sample["actions"].numpy()).all() and np.isfinite(sample["proprio"].numpy()).all()

    _, trunk = global_trunk()
    result = run_local_round(cfg(tmp_path, 1), trunk)
    assert result.metrics["num-episodes"] == 2 and result.metrics["skipped-episodes"] == 4
    assert np.isfinite(result.metrics["train-loss"]) and result.checkpoint


def test_a_non_finite_round_stops_with_a_reason_and_changes_nothing_on_the_robot(tmp_path):
    write_episode(tmp_path, seed=1)
    write_episode(tmp_path, seed=2)
    _, trunk = global_trunk()
    first = run_local_round(cfg(tmp_path, 1), trunk)
    policy_dir = tmp_path / "policy"
    before = snapshot(policy_dir)
    assert LATEST_FILE in before and first.checkpoint.endswith("round_0001")

    with pytest.raises(RoundFailed, match="non-finite|not finite"):  # lr = inf: the loss/weights blow up
        run_local_round(cfg(tmp_path, 2, learning_rate=float("inf")), trunk)
    assert snapshot(policy_dir) == before and not (policy_dir / "round_0002").exists()

    poisoned = dict(trunk)
    key = next(iter(poisoned))
    poisoned[key] = poisoned[key].copy()
    poisoned[key].reshape(-1)[0] = np.nan
    with pytest.raises(RoundFailed, match="global model from the server"):
        run_local_round(cfg(tmp_path, 3), poisoned)
    assert snapshot(policy_dir) == before


def _train_message(trunk, rnd, lr):
    config = ConfigRecord({"server-round": rnd, "model-config": json.dumps(TINY), "local-steps": 3, "batch-size": 4,
                           "learning-rate": lr, "gate-timeout": 5.0, "round-timeout": 120.0})
    # as a SuperNode hands it to the ClientApp (metadata set by the SuperLink)
    metadata = Metadata(run_id=1, message_id=f"m{rnd}", src_node_id=0, dst_node_id=1, reply_to_message_id="",
                        group_id=str(rnd), created_at=time.time(), ttl=3600.0, message_type="train")
    return Message(content=RecordDict({"arrays": _record(pack_arrays(trunk)), "config": config}), metadata=metadata)


@pytest.mark.parametrize("trainer_mode", ["auto", "off"])  # the warm trainer process, and the ClientApp alone
def test_client_app_reports_a_failed_round_and_keeps_latest_json(tmp_path, trainer_mode):
    robot = tmp_path / "robot"
    write_episode(robot, seed=1)
    write_episode(robot, seed=2)
    write_episode(robot, seed=3, poison="nan")
    _, trunk = global_trunk()
    context = Context(run_id=1, node_id=1, node_config={"episode-dir": str(robot), "robot-id": "r1",
                                                        "local-trainer": trainer_mode},
                      state=RecordDict(), run_config={})
    trainer = None
    if trainer_mode == "auto":
        trainer = LocalTrainerProcess(robot, robot_id="r1", log_path=tmp_path / "trainer.log")
        trainer.start()
        assert trainer.wait_ready(60), (tmp_path / "trainer.log").read_text()
    try:
        reply = client_app_train(_train_message(trunk, 1, 1e-3), context)
        report = read_report(robot)
        assert report.state == "done" and report.num_episodes == 2, report  # the NaN episode was skipped
        assert report.metrics["skipped-episodes"] == 1 and reply.content["metrics"]["num-examples"] == 16
        before = snapshot(robot / "policy")

        reply = client_app_train(_train_message(trunk, 2, float("inf")), context)
        report = read_report(robot)
        assert report.state == "failed" and report.server_round == 2 and not report.checkpoint
        assert "RoundFailed" in report.message and "finite" in report.message and "\n" not in report.message
        assert reply.content["metrics"]["num-examples"] == 0 and reply.content["metrics"]["failed"] == 1
        assert len(reply.content["arrays"]) == 0  # nothing uploaded
        assert snapshot(robot / "policy") == before  # local policy and latest.json untouched
        if trainer is not None:
            assert trainer.proc.poll() is None  # the warm trainer keeps serving
    finally:
        if trainer is not None:
            trainer.stop()
