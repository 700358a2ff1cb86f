"""SuperNodeSupervisor with a real flower-supernode process (it keeps retrying a SuperLink that is not there)."""
from __future__ import annotations

import os
import signal
import time

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
