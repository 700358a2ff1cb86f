"""The warm local trainer with real processes: hand-off over its Unix socket, fallback when it is gone."""
from __future__ import annotations

import json
import os
import signal
import stat
import threading
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client

import numpy as np
import pytest

from fedvla_flower.client_app import _train
from fedvla_core.episodes import EpisodeWriter
from fedvla_core.federated.local_round import LocalRoundConfig, run_local_round
from fedvla_flower.local_trainer import LocalTrainerProcess
from fedvla_flower.trainer_ipc import DISCOVERY_FILE, TrainerUnavailable, ping, read_discovery, request_round

from test_local_round import TINY, global_trunk


def write_episodes(directory, n=2, steps=8, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        w = EpisodeWriter(directory, metadata={"instruction": "push the block"}, camera_names=["agentview"],
                          joint_names=[f"j{i}" for i in range(8)], action_names=[f"a{i}" for i in range(7)])
        for t in range(steps):
            w.add_step(t, {"agentview": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)}, rng.normal(size=8),
                       rng.normal(size=7))
        w.close(True)


def round_config(directory, rnd, steps=3):
    return LocalRoundConfig(episode_dir=str(directory), model_config=json.dumps(TINY), server_round=rnd,
                            local_steps=steps, batch_size=4)


@pytest.fixture
def trainer(tmp_path):
    robot = tmp_path / "robot"
    write_episodes(robot)
    proc = LocalTrainerProcess(robot, robot_id="r1", log_path=tmp_path / "trainer.log")
    proc.start()
    try:
        assert proc.wait_ready(60), (tmp_path / "trainer.log").read_text()
        yield proc
    finally:
        proc.stop()


def test_warm_trainer_gives_the_in_process_result_and_keeps_its_state(trainer, tmp_path):
    robot = trainer.cfg.episode_dir
    cold = tmp_path / "cold"  # the same robot, trained in-process
    write_episodes(cold)
    info = json.loads((tmp_path / "robot" / DISCOVERY_FILE).read_text())
    assert info["pid"] == trainer.pid
    assert stat.S_IMODE(os.stat(tmp_path / "robot" / DISCOVERY_FILE).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(info["address"]).st_mode) & 0o077 == 0  # socket only for its owner
    with pytest.raises(AuthenticationError):
        Client(info["address"], family="AF_UNIX", authkey=b"not the key")

    _, trunk = global_trunk()
    for rnd in (1, 2):
        warm, trainer_s = request_round(round_config(robot, rnd), trunk, timeout_s=120)
        ref = run_local_round(round_config(cold, rnd), trunk)
        assert trainer_s > 0 and set(warm.upload) == set(ref.upload) == set(trunk)
        for key in trunk:
            np.testing.assert_allclose(warm.upload[key], ref.upload[key], rtol=0, atol=1e-6)
        assert warm.metrics["expert-counts.0"] == ref.metrics["expert-counts.0"]
        assert warm.checkpoint.endswith(f"round_{rnd:04d}") and os.path.isdir(warm.checkpoint)
    status = ping(robot, timeout_s=30)
    assert status["pid"] == trainer.pid and status["rounds"] == 2 and status["warm"]
    assert status["hits"] == {"policy": 1, "dataset": 1}  # round 2 reused round 1's policy and decoded episodes

    # A failing round is reported, and the trainer keeps serving.
    bad = LocalRoundConfig(episode_dir=robot, server_round=3, scope="full", local_steps=1)
    with pytest.raises(RuntimeError, match="local trainer: KeyError"):  # a tensor the policy does not have
        _train(bad, {"nope": np.zeros(3, np.float32)}, "auto", 60)
    assert ping(robot, timeout_s=30)["rounds"] == 2


def test_killed_trainer_means_in_process_training_and_one_trainer_per_robot(trainer, tmp_path):
    robot = trainer.cfg.episode_dir
    second = LocalTrainerProcess(robot, log_path=tmp_path / "second.log")
    second.start()
    assert second.proc.wait(timeout=60) == 3  # the first one holds the robot's trainer lock

    _, trunk = global_trunk()
    outcome = {}

    def long_round():
        try:
            outcome["result"] = request_round(round_config(robot, 1, steps=2000), trunk, timeout_s=120)
        except Exception as err:  # noqa: BLE001 - the test inspects it
            outcome["error"] = err

    assert ping(robot, timeout_s=60)["warm"]  # answered after its warm-up: the next request trains at once
    worker = threading.Thread(target=long_round)
    worker.start()
    worker.join(2.0)
    assert worker.is_alive()  # 2000 steps are still running
    os.kill(trainer.pid, signal.SIGKILL)  # dies mid-round
    worker.join(60)
    assert isinstance(outcome.get("error"), TrainerUnavailable), outcome
    assert read_discovery(robot) is None  # the advertisement of a dead trainer is ignored

    result, handoff = _train(round_config(robot, 1), trunk, "auto", 60)
    assert handoff == {"warm-trainer": 0} and set(result.upload) == set(trunk)
    assert result.metrics["num-examples"] == 16


def test_trainer_exits_when_its_parent_dies(tmp_path):
    """A supervisor killed with SIGKILL leaves no orphan trainer behind (it watches its parent's pid)."""
    import subprocess
    import sys
    import time

    robot = tmp_path / "robot"
    parent = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\n"
        "from fedvla_flower.local_trainer import LocalTrainerProcess\n"
        f"p = LocalTrainerProcess({str(robot)!r}, log_path={str(tmp_path / 'trainer.log')!r})\n"
        "p.start(); assert p.wait_ready(60); print(p.pid, flush=True); time.sleep(600)\n")],
        stdout=subprocess.PIPE, text=True, start_new_session=True)
    trainer_pid = 0
    try:
        trainer_pid = int(parent.stdout.readline())
        assert read_discovery(robot)["pid"] == trainer_pid
        os.killpg(parent.pid, signal.SIGKILL)  # the trainer runs in its own session: it survives this
        parent.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and read_discovery(robot) is not None:
            time.sleep(0.2)
        assert read_discovery(robot) is None and not (robot / DISCOVERY_FILE).exists()
        assert "parent" in (tmp_path / "trainer.log").read_text()
    finally:
        if parent.poll() is None:
            os.killpg(parent.pid, signal.SIGKILL)
        if trainer_pid and read_discovery(robot) is not None:
            os.kill(trainer_pid, signal.SIGKILL)  # the test failed: leave nothing behind
