"""Commanded-trajectory tracking and goal -> episode recording (no ROS)."""
import numpy as np
import pytest

from fedvla_core.episodes.recorder import ActionLayout, GoalEpisodeRecorder, TrajectoryTracker
from fedvla_core.episodes import list_episodes, read_episode


def test_tracker_interpolates_from_current_position_and_holds_the_end():
    tr = TrajectoryTracker()
    current = {"a": 0.0, "b": 1.0, "c": 5.0}
    tr.set(["a", "b"], [1.0, 2.0], [[1.0, 3.0], [2.0, 3.0]], start_time=10.0, current=current)
    assert tr.target(10.0, current) == pytest.approx({"a": 0.0, "b": 1.0, "c": 5.0})
    assert tr.target(10.5, current) == pytest.approx({"a": 0.5, "b": 2.0, "c": 5.0})
    assert tr.target(11.5, current)["a"] == pytest.approx(1.5)
    assert tr.target(99.0, current)["a"] == pytest.approx(2.0)
    # a newer trajectory replaces the rest of the old one
    tr.set(["a"], [1.0], [[-1.0]], start_time=11.0, current={"a": 1.0})
    assert tr.target(11.5, current)["a"] == pytest.approx(0.0)


def test_layout_maps_finger_to_gripper_fraction():
    layout = ActionLayout()
    pos = {f"panda_joint{i}": 0.1 * i for i in range(1, 8)} | {"panda_finger_joint1": 0.02}
    action = layout.to_action(pos)
    assert action.shape == (8,) and action[-1] == pytest.approx(0.5) and action[0] == pytest.approx(0.1)


def test_recorder_writes_a_readable_episode_and_discards_empty_ones(tmp_path):
    layout = ActionLayout()
    rec = GoalEpisodeRecorder(tmp_path, ["cam"], robot_id="r1", layout=layout, max_episodes=2)
    rec.start("empty-goal", "do nothing")
    assert rec.finish(True, "success") is None and not list_episodes(tmp_path)
    joints = {n: 0.0 for n in layout.joint_names}
    for k in range(3):
        rec.start(f"goal-{k}", "put the red block in the bowl")
        for t in range(4):
            img = np.full((8, 8, 3), 10 * t, np.uint8)
            rec.step(1_000 + t, {"cam": img}, joints, joints | {"panda_joint1": 0.1 * t})
        rec.finish(k == 1, "done")
    files = list_episodes(tmp_path)
    assert [f.stem for f in files] == ["goal-1", "goal-2"]  # retention kept the newest 2
    ep = read_episode(files[0])
    assert ep.success and ep.instruction == "put the red block in the bowl" and ep.num_steps == 4


def test_next_goal_records_its_own_episode_while_the_last_ones_result_is_pending(tmp_path):
    """Back-to-back goals: goal A's terminal status arrives, goal B starts, then A's result comes.
    Before the fix, B's start aborted A's open episode and A's result closed B's (empty) one."""
    layout = ActionLayout()
    rec = GoalEpisodeRecorder(tmp_path, ["cam"], robot_id="r1", layout=layout)
    joints = {n: 0.0 for n in layout.joint_names}
    img = np.zeros((8, 8, 3), np.uint8)
    rec.start("goal-a", "lift the green cube")
    for t in range(3):
        rec.step(1_000 + t, {"cam": img}, joints, joints)
    pending = rec.detach()  # A's terminal status
    rec.start("goal-b", "stack red on green")  # B's first feedback, before A's result
    for t in range(5):
        rec.step(2_000 + t, {"cam": img}, joints, joints)
    assert rec.close(pending, True, "success").stem == "goal-a"  # A's result arrives
    assert rec.finish(False, "max_steps").stem == "goal-b"
    a, b = (read_episode(f) for f in list_episodes(tmp_path))
    assert (a.instruction, a.success, a.num_steps) == ("lift the green cube", True, 3)
    assert (b.instruction, b.success, b.num_steps) == ("stack red on green", False, 5)
