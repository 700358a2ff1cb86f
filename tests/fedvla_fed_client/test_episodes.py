"""Episode log: round trip, standard readers, crash safety (real SIGKILL), retention, dataset."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from fedvla_core.episodes import (EpisodeDataset, EpisodeWriter, apply_retention, list_episodes,
                                        read_episode, read_metadata)

CAMS = ["front", "wrist"]
JOINTS = [f"panda_joint{i}" for i in range(1, 8)] + ["gripper"]
ACTIONS = [f"a{i}" for i in range(7)]


def write_episode(out_dir, steps=6, success=True, seed=0, size=(24, 32), episode_id=None, trajectory_every=0):
    rng = np.random.default_rng(seed)
    w = EpisodeWriter(out_dir, episode_id=episode_id,
                      metadata=dict(instruction=f"open drawer {seed}", task="drawer-open", seed=seed,
                                    suite="panda", robot_id="robot_a"),
                      camera_names=CAMS, joint_names=JOINTS, action_names=ACTIONS)
    rec = {"images": {c: [] for c in CAMS}, "q": [], "a": [], "stamps": []}
    for t in range(steps):
        imgs = {c: rng.integers(0, 256, (*size, 3), dtype=np.uint8) for c in CAMS}
        q = rng.normal(size=len(JOINTS))
        a = rng.normal(size=len(ACTIONS)).astype(np.float32)
        stamp = 1_700_000_000_000_000_000 + t * 100_000_000
        traj = None
        if trajectory_every and t % trajectory_every == 0:
            traj = {"joint_names": JOINTS[:2], "positions": rng.normal(size=(3, 2)),
                    "time_from_start": [0.25, 0.5, 1.75]}
        w.add_step(stamp, images=imgs, joint_positions=q, action=a, trajectory=traj)
        for c in CAMS:
            rec["images"][c].append(imgs[c])
        rec["q"].append(q)
        rec["a"].append(a)
        rec["stamps"].append(stamp)
    path = w.close(success, extra_metadata={"duration_s": 1.5})
    return path, rec


def test_round_trip(tmp_path):
    path, rec = write_episode(tmp_path, steps=7, trajectory_every=3)
    assert path.name.endswith(".mcap") and not list(tmp_path.glob(".*partial"))
    ep = read_episode(path, with_trajectories=True)
    assert ep.num_steps == 7
    for c in CAMS:
        np.testing.assert_array_equal(ep.images[c], np.stack(rec["images"][c]))
    np.testing.assert_allclose(ep.joint_positions, np.stack(rec["q"]), rtol=1e-6)
    np.testing.assert_array_equal(ep.actions, np.stack(rec["a"]))
    np.testing.assert_array_equal(ep.stamps_ns, rec["stamps"])
    m = ep.metadata
    assert m["instruction"] == "open drawer 0" and m["success"] is True and m["seed"] == 0
    assert m["task"] == "drawer-open" and m["suite"] == "panda" and m["robot_id"] == "robot_a"
    assert m["num_steps"] == 7 and m["camera_names"] == CAMS and m["joint_names"] == JOINTS
    assert m["action_names"] == ACTIONS and m["duration_s"] == 1.5 and m["episode_id"] == path.stem
    assert sorted(ep.trajectories) == [0, 3, 6]
    np.testing.assert_allclose(ep.trajectories[3]["time_from_start"], [0.25, 0.5, 1.75])


def test_readable_by_mcap_and_rosbags(tmp_path):
    path, rec = write_episode(tmp_path, steps=3, trajectory_every=2)
    from mcap.reader import make_reader
    from mcap_ros2.decoder import DecoderFactory

    with open(path, "rb") as f:
        reader = make_reader(f, decoder_factories=[DecoderFactory()])
        assert reader.get_header().profile == "ros2"
        topics = {}
        for schema, channel, _, msg in reader.iter_decoded_messages():
            topics.setdefault(channel.topic, []).append(msg)
            assert schema.encoding == "ros2msg" and channel.message_encoding == "cdr"
    assert len(topics["/camera/front/image_raw"]) == 3 and len(topics["/commanded_trajectory"]) == 2
    img = topics["/camera/wrist/image_raw"][1]
    assert img.encoding == "rgb8" and (img.height, img.width) == (24, 32)
    np.testing.assert_array_equal(np.frombuffer(bytes(img.data), np.uint8).reshape(24, 32, 3),
                                  rec["images"]["wrist"][1])
    assert topics["/instruction"][0].data == "open drawer 0"
    assert topics["/action"][2].layout.dim[0].label == ",".join(ACTIONS)
    assert list(topics["/joint_states"][0].name) == JOINTS

    from rosbags.highlevel import AnyReader

    with AnyReader([path]) as r:
        types = {c.topic: c.msgtype for c in r.connections}
        assert types["/joint_states"] == "sensor_msgs/msg/JointState"
        assert types["/commanded_trajectory"] == "trajectory_msgs/msg/JointTrajectory"
        actions = [r.deserialize(raw, c.msgtype).data for c, _, raw in r.messages()
                   if c.topic == "/action"]
    np.testing.assert_array_equal(np.stack(actions), np.stack(rec["a"]))


def test_abort_and_failed_episodes(tmp_path):
    w = EpisodeWriter(tmp_path, camera_names=CAMS, joint_names=JOINTS, action_names=ACTIONS)
    w.add_step(1, {c: np.zeros((4, 4, 3), np.uint8) for c in CAMS}, np.zeros(8), np.zeros(7))
    w.abort()
    assert list(tmp_path.iterdir()) == []
    ok, _ = write_episode(tmp_path, seed=1, success=True)
    bad, _ = write_episode(tmp_path, seed=2, success=False)
    assert set(list_episodes(tmp_path)) == {ok, bad}
    assert list_episodes(tmp_path, only_successful=True) == [ok]
    assert read_metadata(bad)["success"] is False
    with pytest.raises(ValueError, match="missing cameras"):
        EpisodeWriter(tmp_path / "x", camera_names=CAMS).add_step(1, {"front": np.zeros((4, 4, 3), np.uint8)},
                                                                  np.zeros(8), np.zeros(7))


WRITER_SCRIPT = textwrap.dedent("""
    import sys, numpy as np
    from fedvla_core.episodes import EpisodeWriter
    out = sys.argv[1]
    rng = np.random.default_rng(0)
    print("READY", flush=True)
    for e in range(1000):
        w = EpisodeWriter(out, episode_id=f"ep{e:04d}", metadata={"instruction": "x"},
                          camera_names=["front"], joint_names=["j"], action_names=["a"])
        for t in range(20):
            w.add_step(t, {"front": rng.integers(0, 256, (48, 48, 3), dtype=np.uint8)}, [t], [e])
        print("CLOSED", w.close(True), flush=True)
""")


def test_sigkill_never_corrupts_finished_episodes(tmp_path):
    """Kill a real writer process at random moments; every finished file must read back whole."""
    script = tmp_path / "writer.py"
    script.write_text(WRITER_SCRIPT)
    rng = np.random.default_rng(1)
    for trial in range(3):
        out = tmp_path / f"eps{trial}"
        proc = subprocess.Popen([sys.executable, str(script), str(out)], stdout=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            assert proc.stdout.readline().strip() == "READY"
            closed = 0
            while closed < 2:  # at least two finished episodes, then kill at a random moment
                if proc.stdout.readline().startswith("CLOSED"):
                    closed += 1
            time.sleep(float(rng.uniform(0.0, 0.3)))
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        finished = list_episodes(out)
        assert len(finished) >= 2
        for i, path in enumerate(finished):
            ep = read_episode(path)
            assert ep.num_steps == 20 and ep.metadata["success"] is True
            assert path.stem == f"ep{i:04d}" and np.all(ep.actions == i)
        partials = list(out.glob(".*.mcap.partial"))
        assert len(partials) <= 1  # the episode being written when killed (none if killed between files)
        ds = EpisodeDataset(out, ["front"], chunk_size=4)
        assert len(ds) == 20 * len(finished) and ds.num_episodes == len(finished)


def test_retention_deletes_oldest_first(tmp_path):
    paths = []
    for i in range(5):
        p, _ = write_episode(tmp_path, seed=i, episode_id=f"ep{i}")
        os.utime(p, ns=(1_000_000_000 * (100 + i),) * 2)  # explicit ages: ep0 oldest
        paths.append(p)
    stale = tmp_path / ".old.mcap.partial"
    stale.write_bytes(b"junk")
    os.utime(stale, (time.time() - 7200,) * 2)
    young = tmp_path / ".young.mcap.partial"
    young.write_bytes(b"junk")
    deleted = apply_retention(tmp_path, max_episodes=3)
    assert set(deleted) == {paths[0], paths[1], stale}
    assert list_episodes(tmp_path) == paths[2:] and young.exists()
    size = paths[4].stat().st_size
    deleted = apply_retention(tmp_path, max_bytes=size + size // 2)
    assert deleted == [paths[2], paths[3]] and list_episodes(tmp_path) == [paths[4]]
    with pytest.raises(ValueError, match="max_bytes"):
        apply_retention(tmp_path, max_bytes=-1)


def test_dataset_chunks_padding_and_stats(tmp_path):
    _, rec0 = write_episode(tmp_path, steps=5, seed=0, episode_id="a")
    _, rec1 = write_episode(tmp_path, steps=4, seed=1, episode_id="b")
    write_episode(tmp_path, steps=3, seed=2, episode_id="c", success=False)
    os.utime(tmp_path / "b.mcap", ns=(2_000_000_000_000,) * 2)
    os.utime(tmp_path / "a.mcap", ns=(1_000_000_000_000,) * 2)
    ds = EpisodeDataset([tmp_path], camera_names=["wrist", "front"], chunk_size=3, image_size=16)
    assert len(ds) == 9 and ds.episode_ids == ["a", "b"]
    s = ds[3]  # episode a, step 3 of 5: actions 3, 4, then pad with 4
    assert s["images"].shape == (2, 3, 16, 16) and s["images"].dtype.is_floating_point is False
    np.testing.assert_array_equal(s["actions"].numpy(), np.stack([rec0["a"][3], rec0["a"][4], rec0["a"][4]]))
    assert s["action_is_pad"].tolist() == [False, False, True]
    np.testing.assert_allclose(s["proprio"].numpy(), rec0["q"][3], rtol=1e-6)
    assert s["instruction"] == "open drawer 0" and s["episode_id"] == "a"
    s = ds[5]  # episode b, step 0
    assert s["episode_id"] == "b" and s["action_is_pad"].tolist() == [False] * 3
    full = EpisodeDataset(tmp_path, camera_names=["front"], chunk_size=1)
    np.testing.assert_array_equal(full[0]["images"][0].numpy(), rec0["images"]["front"][0].transpose(2, 0, 1))
    st = ds.stats()
    acts = np.concatenate([np.stack(rec0["a"]), np.stack(rec1["a"])])
    np.testing.assert_allclose(st["action_mean"].numpy(), acts.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(st["action_std"].numpy(), acts.std(0), rtol=1e-5)
    assert st["proprio_mean"].shape == (8,)
    # Relative targets (first 7 dims minus the chunk's starting proprio): the stats of every non-padded sample.
    from fedvla_core.training import compute_normalization

    rel = []
    for i in range(len(ds)):
        smp = ds[i]
        a = smp["actions"].numpy()[~smp["action_is_pad"].numpy()].copy()
        a[:, :7] -= smp["proprio"].numpy()[:7]
        rel.append(a)
    rel = np.concatenate(rel)
    st = compute_normalization(ds, relative_action_dims=7)
    np.testing.assert_allclose(st["action_mean"].numpy(), rel.mean(0), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(st["action_std"].numpy(), rel.std(0), rtol=1e-4, atol=1e-5)
    assert len(EpisodeDataset(tmp_path, ["front"], chunk_size=2, only_successful=False)) == 12
