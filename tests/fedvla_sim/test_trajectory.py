"""TrajectoryFollower: joint_trajectory_controller semantics and rejections."""
import numpy as np
import pytest

from fedvla_sim.trajectory import TrajectoryFollower, TrajectoryRejected

NAMES = ("a", "b")
LIMITS = np.array([[-1.0, 1.0], [0.0, 0.04]])


def make():
    return TrajectoryFollower(NAMES, LIMITS, np.array([0.0, 0.02]))


def test_interpolates_by_time_from_start():
    f = make()
    f.command(10.0, ["a", "b"], [1.0, 2.0], [[0.5, 0.04], [-0.5, 0.0]])
    np.testing.assert_allclose(f.sample(10.5), [0.25, 0.03])
    np.testing.assert_allclose(f.sample(11.0), [0.5, 0.04])
    np.testing.assert_allclose(f.sample(11.5), [0.0, 0.02])
    np.testing.assert_allclose(f.sample(20.0), [-0.5, 0.0])
    assert not f.active


def test_newer_trajectory_replaces_the_rest_from_the_current_setpoint():
    f = make()
    f.command(0.0, ["a"], [1.0], [[1.0]])
    f.command(0.5, ["a"], [1.0], [[0.0]])  # at t=0.5 the setpoint is 0.5
    np.testing.assert_allclose(f.sample(1.0), [0.25, 0.02])
    np.testing.assert_allclose(f.sample(1.5), [0.0, 0.02])


def test_empty_trajectory_holds_and_unnamed_joints_keep_their_setpoint():
    f = make()
    f.command(0.0, ["b"], [1.0], [[0.04]])
    f.command(0.5, [], [], [])
    held = f.sample(0.5)
    np.testing.assert_allclose(f.sample(5.0), held)
    assert held[0] == 0.0 and held[1] == pytest.approx(0.03)


@pytest.mark.parametrize("names,times,positions,match", [
    (["a", "elbow"], [1.0], [[0.0, 0.0]], "unknown joint"),
    (["a", "a"], [1.0], [[0.0, 0.0]], "repeated"),
    (["a"], [1.0, 1.0], [[0.0], [0.1]], "increase strictly"),
    (["a"], [2.0, 1.0], [[0.0], [0.1]], "increase strictly"),
    (["a"], [1.0], [[1.5]], "outside its limits"),
    (["b"], [1.0], [[0.05]], "outside its limits"),
    (["a"], [1.0], [[float("nan")]], "finite"),
    (["a", "b"], [1.0], [[0.0]], "positions"),
])
def test_bad_trajectories_are_rejected_without_changing_state(names, times, positions, match):
    f = make()
    f.command(0.0, ["a"], [1.0], [[0.8]])
    before = f.sample(0.5)
    with pytest.raises(TrajectoryRejected, match=match):
        f.command(0.5, names, times, positions)
    np.testing.assert_allclose(f.sample(0.5), before)
    np.testing.assert_allclose(f.sample(1.0), [0.8, 0.02])  # the old trajectory goes on
