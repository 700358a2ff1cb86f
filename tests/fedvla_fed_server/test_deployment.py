"""Real deployment on loopback: SuperLink (TLS + SuperNode auth) + supervised SuperNodes + the FedVLA app.

One scenario, to keep CI time down (about 2 minutes on 2 cores):
  round 1: 2 good robots + 1 robot that uploads NaN; the NaN update is rejected, the round completes;
           an unregistered node is refused by the SuperLink;
  SuperLink SIGKILLed and restarted on the same database;
  round 2: the run resumes from round 1's checkpoint; one robot's SuperNode is killed and its
           supervisor brings it back; the round completes (or times out cleanly).
"""
from __future__ import annotations

import json
import os
import signal
import time

import numpy as np
import pytest
from safetensors.numpy import load_file

from fedvla_core.episodes import EpisodeWriter
from fedvla_fed_client.supernode import SuperNodeSupervisor, free_port
from fedvla_fed_server.certs import generate_certificates
from fedvla_fed_server.superlink import SuperLinkProcess

TINY = dict(camera_names=["agentview"], image_size=32, patch_size=8, d_model=32, n_layers=2, n_heads=2, n_experts=4,
            expert_hidden=32, iosp_topk=2, iosp_n_experts=2, iosp_expert_hidden=16, chunk_size=4, proprio_dim=8,
            action_dim=7)


def make_episodes(directory, seed, n=2, steps=8):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        w = EpisodeWriter(directory, metadata={"instruction": "open the drawer", "robot_id": directory.name},
                          camera_names=["agentview"], joint_names=[f"j{i}" for i in range(8)],
                          action_names=[f"a{i}" for i in range(7)])
        for t in range(steps):
            w.add_step(t, {"agentview": rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)}, rng.normal(size=8),
                       rng.normal(size=7) * 0.1 + seed)
        w.close(True)


def wait_for(cond, timeout, poll=0.5, what=""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(poll)
    raise TimeoutError(f"timed out waiting for {what}")


def test_reply_return_times_use_the_clientapps_stamp_and_drop_it():
    from flwr.app import Message, Metadata, MetricRecord, RecordDict

    from fedvla_flower.server_app import REPLY_TIME_KEY, reply_return_times

    now = time.time()

    def reply(metrics):  # what the ServerApp pulls: a train reply from node 7
        meta = Metadata(run_id=1, message_id="", src_node_id=7, dst_node_id=0, reply_to_message_id="m1",
                        group_id="1", created_at=now, ttl=60.0, message_type="train")
        return Message(RecordDict({"metrics": MetricRecord(metrics)}), metadata=meta)

    replies = [reply({"num-examples": 3, REPLY_TIME_KEY: now - 2.0}), reply({"num-examples": 1})]
    got = reply_return_times(replies, [now, now])
    assert got == [pytest.approx(2.0)]
    assert REPLY_TIME_KEY not in replies[0].content["metrics"] and replies[0].content["metrics"]["num-examples"] == 3


@pytest.mark.slow
def test_tls_auth_round_nan_rejected_unregistered_refused_restart_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    certs = tmp_path / "certs"
    generate_certificates(certs, num_nodes=4)
    link = SuperLinkProcess(tmp_path / "server", certs_dir=certs, port=free_port())
    robots = {i: tmp_path / f"robot{i}" for i in range(4)}
    for i, d in robots.items():
        make_episodes(d, seed=i)
    sups: dict[int, SuperNodeSupervisor] = {}
    ckpt = tmp_path / "server" / "checkpoints"
    run_config = {"num-server-rounds": 1, "strategy": "eda", "min-nodes": 3, "model-config": json.dumps(TINY),
                  "local-steps": 3, "batch-size": 4, "round-timeout": 90.0, "node-wait-timeout": 90.0,
                  "checkpoint-dir": str(ckpt)}
    try:
        link.start()
        for i in range(3):  # node3 is never registered
            assert link.register_node(certs / f"node{i}.pub")
        assert link.register_node(certs / "node0.pub") == ""  # idempotent
        for i in range(4):
            node_config = {"robot-id": f"robot{i}", "episode-dir": str(robots[i])}
            if i == 2:
                node_config["fault-injection"] = "nan"
            sups[i] = SuperNodeSupervisor(link.address, node_config, root_certificates=str(certs / "ca.crt"),
                                          auth_private_key=str(certs / f"node{i}"), log_path=tmp_path / f"sn{i}.log",
                                          restart_backoff_s=1.0, env={"HOME": str(tmp_path / "home")})
            sups[i].start()
        with pytest.raises(ValueError, match="insecure"):
            SuperNodeSupervisor(link.address, {})

        # Round 1 over TLS + auth.
        run_id = link.submit(run_config)
        info = link.wait_run(run_id, timeout=240, on_poll=lambda _: [s.poll() for s in sups.values()])
        assert info["status"] == "finished:completed", info
        r1 = json.loads((ckpt / "round_0001.json").read_text())
        assert r1["metrics"]["num-clients"] == 2 and r1["metrics"]["num-rejected"] == 1
        assert any("NaN" in reason for _, _, reason in r1["rejected"])
        g0, g1 = load_file(str(ckpt / "round_0000.safetensors")), load_file(str(ckpt / "round_0001.safetensors"))
        assert all(np.isfinite(v).all() for v in g1.values())
        assert any(not np.array_equal(g0[k], g1[k]) for k in g0)  # the good robots changed the trunk
        assert len(r1["metrics"]["expert-counts.0"]) == TINY["n_experts"]
        # Where the round's time went: message delivery, ClientApp process start, reply path (all > 0,
        # and each within the round); the ClientApp's reply-time stamp is consumed by the server.
        m = r1["metrics"]
        for key in ("delivery-s-max", "clientapp-start-s-max", "return-s-max"):
            assert 0 < m[key] < m["round-wall-s"], (key, m[key], m["round-wall-s"])
        assert m["clientapp-start-s-max"] < m["delivery-s-max"] and "reply-time" not in m
        assert abs(m["round-start-time"] - time.time()) < 600
        for i in (0, 1):
            report = json.loads((robots[i] / ".round_report.json").read_text())
            assert report["state"] == "done" and report["server_round"] == 1 and report["bytes_up"] > 0
            assert os.path.isdir(report["checkpoint"]) and (robots[i] / "policy" / "latest.json").is_file()
        # The unregistered node was refused (Flower exit code 305 / ApiError 2004) and never got work.
        assert sups[3].status.restarts >= 1 and not (robots[3] / ".round_report.json").exists()
        assert "2004" in (tmp_path / "sn3.log").read_text()
        sups[3].stop()

        # The SuperLink crashes and comes back on the same database; the run resumes at round 2.
        link.kill()
        link.start()
        run_config.update({"num-server-rounds": 2, "round-timeout": 30.0})
        run_id = link.submit(run_config)
        os.killpg(sups[1].status.pid, signal.SIGKILL)  # a robot's SuperNode dies during the round
        wait_for(lambda: sups[1].poll().restarts >= 1 and sups[1].running, 30, what="supervisor restart")
        info = link.wait_run(run_id, timeout=240, on_poll=lambda _: [s.poll() for s in list(sups.values())[:3]])
        assert info["status"] == "finished:completed", info
        summary = json.loads((ckpt / "run_summary.json").read_text())
        assert summary["resumed_from"] == 1 and [r["round"] for r in summary["rounds"]] == [2]
        assert json.loads((ckpt / "latest.json").read_text())["round"] == 2
        # The SuperLink refuses the restarted node until the killed one's heartbeat expires (~60 s).
        wait_for(lambda: sups[1].poll().restarts >= 1 and sups[1].running, 120, what="SuperNode back")
    finally:
        for s in sups.values():
            s.stop()
        link.stop()
