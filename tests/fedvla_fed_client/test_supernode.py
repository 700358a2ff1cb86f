"""SuperNodeSupervisor with a real flower-supernode process (it keeps retrying a SuperLink that is not there)."""
from __future__ import annotations

import os
import signal
import time

import pytest

from fedvla_fed_client.supernode import SuperNodeSupervisor, _node_config_arg, free_port


def test_node_config_argument_is_toml():
    assert _node_config_arg({"robot-id": "r1", "episode-dir": '/a b/"c"', "steps": 3, "on": True}) == \
        'robot-id="r1" episode-dir="/a b/\\"c\\"" steps=3 on=true'


def test_supervisor_restarts_a_killed_supernode_and_stops_it(tmp_path):
    sup = SuperNodeSupervisor(f"127.0.0.1:{free_port()}", {"robot-id": "r1", "episode-dir": str(tmp_path)},
                              insecure=True, log_path=tmp_path / "sn.log", restart_backoff_s=0.5)
    assert "--insecure" in sup.command() and "--node-config" in sup.command()
    try:
        sup.start()
        first = sup.status.pid
        time.sleep(2.0)
        assert sup.poll().state == "running" and sup.running
        os.killpg(first, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not (sup.status.restarts >= 1 and sup.running):
            sup.poll()
            time.sleep(0.2)
        assert sup.status.restarts >= 1 and sup.running and sup.status.pid != first
        assert "exited" in sup.status.last_reason
        sup.restart("round timed out")
        assert sup.status.restarts >= 2 and sup.status.last_reason == "round timed out" and sup.running
    finally:
        status = sup.stop()
    assert status.state == "stopped" and not sup.running
    assert sup.poll().state == "stopped"  # no restart after stop()


def test_supervisor_runs_the_warm_trainer_and_restarts_it(tmp_path):
    from fedvla_flower.trainer_ipc import ping, read_discovery

    sup = SuperNodeSupervisor(f"127.0.0.1:{free_port()}", {"robot-id": "r1", "episode-dir": str(tmp_path)},
                              insecure=True, log_path=tmp_path / "sn.log", restart_backoff_s=0.5)
    assert sup.env["FLWR_SUPEREXEC_TASK_POLL_INTERVAL"] == "0.25"
    assert SuperNodeSupervisor("x:1", {"episode-dir": str(tmp_path)}, insecure=True, local_trainer=False).trainer is None
    try:
        sup.start()
        first = sup.status.trainer_pid
        assert first and sup.trainer.wait_ready(60)
        status = ping(tmp_path, timeout_s=60)
        assert status is not None and status["pid"] == first and status["rounds"] == 0
        sup.restart("round timed out")  # a SuperNode restart leaves the warm trainer alone
        assert sup.status.trainer_pid == first and sup.trainer.running
        os.kill(first, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not (sup.status.trainer_restarts >= 1 and sup.trainer.running):
            sup.poll()
            time.sleep(0.2)
        assert sup.status.trainer_restarts == 1 and sup.status.trainer_pid not in (0, first)
        assert sup.trainer.wait_ready(60) and read_discovery(tmp_path)["pid"] == sup.status.trainer_pid
    finally:
        sup.stop()
    assert not sup.trainer.running and sup.status.trainer_pid == 0
    assert read_discovery(tmp_path) is None  # a stopped trainer no longer advertises itself
    assert "local trainer of r1 listening" in (tmp_path / "local_trainer.log").read_text()


def test_trainer_threads_cap_openmp_only_when_asked():
    from fedvla_fed_client.client_node import trainer_thread_env

    assert trainer_thread_env(0) == {}
    assert trainer_thread_env(1) == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with pytest.raises(ValueError, match="trainer_threads"):
        trainer_thread_env(-1)
