"""The fed client's input rules and the episode writer's refusal of steps that would poison training (no ROS)."""
import numpy as np
import pytest

from fedvla_core.episodes.recorder import TrajectoryTracker
from fedvla_core.episodes import EpisodeWriter, read_episode
from fedvla_core.episodes.input_checks import (InputRejected, bounded, check_episode_id, check_joint_state,
                                            check_trajectory)


def test_bounded_keeps_one_short_line():
    text = bounded("a\nb" + "x" * 5000, 100)
    assert len(text) == 100 and "\n" not in text and text.endswith("chars)")


@pytest.mark.parametrize("names, times, rows, why", [
    (["a", "b"], [0.5], [[0.1]], "1 positions for 2 joint names"),
    (["a"], [0.5], [[float("nan")]], "non-finite"),
    (["a"], [0.5, 0.5], [[0.1], [0.2]], "increase strictly"),
    (["a", "a"], [0.5], [[0.1, 0.2]], "repeated"),
    ([], [0.5], [[]], "no joint names"),
])
def test_malformed_trajectories_are_refused_and_the_tracker_keeps_the_last_good_one(names, times, rows, why):
    with pytest.raises(InputRejected, match=why):
        check_trajectory(names, times, rows)
    tracker = TrajectoryTracker()
    tracker.set(["a"], [1.0], [[1.0]], start_time=0.0, current={"a": 0.0})
    with pytest.raises(InputRejected):
        tracker.set(names, times, rows, start_time=0.0, current={"a": 0.0})
    assert tracker.target(0.5, {"a": 0.0})["a"] == pytest.approx(0.5)


def test_joint_states_and_episode_ids():
    assert check_joint_state(["a", "b"], [0.1, 0.2]) == {"a": 0.1, "b": 0.2}
    for names, pos in ((["a", "b"], [0.1]), (["a"], [float("inf")]), (["a", "a"], [0.1, 0.2])):
        with pytest.raises(InputRejected):
            check_joint_state(names, pos)
    assert check_episode_id("robot1_2026-01-01T00.x") == "robot1_2026-01-01T00.x"
    for bad in ("../x", "a/b", ".hidden", "x" * 200, "a b"):
        with pytest.raises(InputRejected, match="plain file stem"):
            check_episode_id(bad)


def test_writer_refuses_non_finite_and_resized_steps_and_keeps_the_good_ones(tmp_path):
    w = EpisodeWriter(tmp_path, camera_names=["cam"], joint_names=["j0", "j1"], action_names=["a0"])
    img = np.zeros((8, 8, 3), np.uint8)
    w.add_step(1, {"cam": img}, [0.0, 0.1], [0.5])
    with pytest.raises(ValueError, match="non-finite"):
        w.add_step(2, {"cam": img}, [np.nan, 0.1], [0.5])
    with pytest.raises(ValueError, match="non-finite"):
        w.add_step(3, {"cam": img}, [0.0, 0.1], [np.inf])
    with pytest.raises(ValueError, match="earlier steps"):
        w.add_step(4, {"cam": np.zeros((4, 4, 3), np.uint8)}, [0.0, 0.1], [0.5])
    w.add_step(5, {"cam": img}, [0.0, 0.2], [0.6])
    episode = read_episode(w.close(True))
    assert episode.num_steps == 2 and np.all(np.isfinite(episode.joint_positions))


@pytest.mark.parametrize("garbage", ["[1, 2]", "not json", '{"server_round": 1}', '\xff\xfe'])
def test_gate_and_report_files_written_by_something_else_do_not_break_the_node(tmp_path, garbage):
    from fedvla_core.federated.round_gate import GATE_FILE, REPORT_FILE, read_gate, read_report, write_gate

    (tmp_path / REPORT_FILE).write_text(garbage)
    (tmp_path / GATE_FILE).write_text(garbage)
    assert read_report(tmp_path) is None and not read_gate(tmp_path).open
    write_gate(tmp_path, True, "ready")
    assert read_gate(tmp_path).open
    (tmp_path / REPORT_FILE).write_text('{"server_round": 3, "state": "done", "from_a_newer_version": 1}')
    assert read_report(tmp_path).server_round == 3
