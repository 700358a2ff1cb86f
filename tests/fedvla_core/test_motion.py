"""Motion backends: chunks become trajectories that respect position, velocity and acceleration limits."""
import logging

import numpy as np
import pytest

from fedvla_core.control.motion import (EndEffectorBackend, JointSpaceBackend, MotionConfig, MotionRejected,
                                        PlannedTrajectory, enforce_limits, fallback_parameterize, hold_trajectory,
                                        make_backend)
from fedvla_core.embodiment import PANDA_LIMITS, JointLimits

HOME = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785])
CFG = MotionConfig(velocity_scale=0.5, acceleration_scale=0.5, nominal_step_s=0.0, timing="time_optimal")


def assert_within_limits(traj: PlannedTrajectory, limits: JointLimits, cfg: MotionConfig, slack: float = 1.02):
    dof = limits.dof
    q = traj.positions[:, :dof]
    assert np.all(q >= limits.lower - 1e-9) and np.all(q <= limits.upper + 1e-9)
    vmax = limits.max_velocity * cfg.velocity_scale
    amax = limits.max_acceleration * cfg.acceleration_scale
    assert np.all(np.abs(traj.velocities[:, :dof]) <= vmax * slack)
    assert np.all(np.abs(traj.accelerations[:, :dof]) <= amax * slack)
    # Independent of what the planner claims: the average speed between samples.
    dt = np.diff(traj.times)[:, None]
    assert np.all(np.abs(np.diff(q, axis=0)) / dt <= vmax * slack)
    assert np.all(np.diff(traj.times) > 0)


def chunk_towards(target, n=8, gripper=1.0):
    rows = [HOME + (target - HOME) * (i + 1) / n for i in range(n)]
    return np.column_stack([np.array(rows), np.full(n, gripper)])


def test_joint_chunk_starts_at_current_and_ends_at_last_target():
    backend = JointSpaceBackend(config=CFG)
    target = HOME + np.array([0.3, 0.2, -0.2, 0.3, 0.1, -0.2, 0.4])
    traj = backend.plan(np.r_[HOME, 0.04], chunk_towards(target, gripper=0.25))
    assert traj.joint_names == [f"panda_joint{i}" for i in range(1, 8)] + ["panda_finger_joint1"]
    np.testing.assert_allclose(traj.positions[0, :7], HOME, atol=1e-6)
    np.testing.assert_allclose(traj.positions[-1, :7], target, atol=1e-4)
    assert traj.positions[0, 7] == pytest.approx(0.04)  # the gripper starts where it is ...
    assert traj.positions[-1, 7] == pytest.approx(0.25 * 0.04)  # ... and ends at action 0.25 -> 1 cm
    assert traj.times[0] == 0.0 and traj.duration > 0.0
    assert not traj.report.clipped_positions
    assert_within_limits(traj, PANDA_LIMITS, CFG)


def test_nominal_timing_never_runs_faster_than_the_policy_meant():
    cfg = MotionConfig(nominal_step_s=0.1, timing="time_optimal")
    traj = JointSpaceBackend(config=cfg).plan(HOME, chunk_towards(HOME + 0.01, n=10))
    assert traj.duration == pytest.approx(1.0, rel=0.02)


def test_chunk_timing_reaches_each_action_one_control_period_after_the_last():
    """The default timing: action k at (k + 1) * period, exactly the chunk's targets (as demonstrated)."""
    chunk = chunk_towards(HOME + 0.2, n=10, gripper=0.5)
    traj = JointSpaceBackend(config=MotionConfig(nominal_step_s=0.1)).plan(np.r_[HOME, 0.04], chunk)
    np.testing.assert_allclose(traj.times, 0.1 * np.arange(11), atol=1e-9)
    np.testing.assert_allclose(traj.positions[1:, :7], chunk[:, :7], atol=1e-9)
    np.testing.assert_allclose(traj.positions[1:, 7], 0.5 * 0.04)
    np.testing.assert_allclose(traj.positions[0], np.r_[HOME, 0.04])
    assert np.all(traj.velocities[-1] == 0.0)  # a stalled policy leaves the arm at rest on its last target
    assert traj.report.slowed_down_by == 1.0


def test_chunk_timing_counts_from_the_observation_and_skips_actions_already_due():
    chunk = chunk_towards(HOME + 0.2, n=10)
    backend = JointSpaceBackend(config=MotionConfig(nominal_step_s=0.1, min_lead_s=0.0))
    traj = backend.plan(HOME, chunk, observation_age_s=0.13)  # action 0 was due 30 ms ago
    np.testing.assert_allclose(traj.times[1:], 0.1 * np.arange(2, 11) - 0.13, atol=1e-9)
    np.testing.assert_allclose(traj.positions[1:, :7], chunk[1:, :7], atol=1e-9)
    with pytest.raises(MotionRejected, match="stale chunk"):
        backend.plan(HOME, chunk, observation_age_s=1.2)
    # with a lead: action 0, due in 30 ms, would need a jump; action 1 (due in 130 ms) is the first target
    lead = JointSpaceBackend(config=MotionConfig(nominal_step_s=0.1, min_lead_s=0.07))
    traj = lead.plan(HOME, chunk, observation_age_s=0.07)
    np.testing.assert_allclose(traj.times[1:], 0.1 * np.arange(2, 11) - 0.07, atol=1e-9)
    assert len(lead.plan(HOME, chunk, observation_age_s=0.02).times) == 11  # due in 80 ms: kept


def test_chunk_timing_lengthens_only_a_segment_that_breaks_a_velocity_limit():
    cfg = MotionConfig(nominal_step_s=0.1, velocity_scale=0.5)
    chunk = chunk_towards(HOME + 0.01, n=5)
    chunk[0, 0] = HOME[0] + 0.3  # 3 rad/s in 0.1 s: above 0.5 x 2.175 rad/s on joint 1
    chunk[1:, 0] = HOME[0] + 0.3
    traj = JointSpaceBackend(config=cfg).plan(HOME, chunk)
    first = 0.3 / (PANDA_LIMITS.max_velocity[0] * 0.5)
    assert traj.times[1] == pytest.approx(first)
    np.testing.assert_allclose(np.diff(traj.times[1:]), 0.1, atol=1e-9)  # the rest keeps its timing
    assert traj.report.slowed_down_by > 1.0 and traj.report.velocity_limited == ["panda_joint1"]
    speed = np.abs(np.diff(traj.positions[:, :7], axis=0)) / np.diff(traj.times)[:, None]
    assert np.all(speed <= PANDA_LIMITS.max_velocity * 0.5 * (1 + 1e-9))


def test_slightly_outside_targets_are_clipped_and_reported(caplog):
    target = HOME.copy()
    target[3] = PANDA_LIMITS.upper[3] + 0.2  # joint4 above its (negative) upper limit, inside the margin
    with caplog.at_level(logging.INFO, logger="fedvla_core.control.motion"):
        traj = JointSpaceBackend(config=CFG).plan(HOME, chunk_towards(target, n=4))
    assert set(traj.report.clipped_positions) == {"panda_joint4"}
    assert traj.report.clipped_positions["panda_joint4"] == pytest.approx(0.2, abs=1e-6)
    assert traj.positions[:, 3].max() <= PANDA_LIMITS.upper[3] + 1e-12
    assert "position limit clipped on panda_joint4" in caplog.text
    assert_within_limits(traj, PANDA_LIMITS, CFG)


def test_far_outside_targets_reject_the_chunk_naming_the_joint():
    target = HOME.copy()
    target[1] = PANDA_LIMITS.upper[1] + 1.0
    with pytest.raises(MotionRejected, match="panda_joint2"):
        JointSpaceBackend(config=CFG).plan(HOME, chunk_towards(target, n=4))
    with pytest.raises(MotionRejected, match="non-finite"):
        JointSpaceBackend(config=CFG).plan(HOME, np.full((2, 8), np.nan))
    with pytest.raises(MotionRejected, match="columns"):
        JointSpaceBackend(config=CFG).plan(HOME, np.zeros((2, 5)))


def test_a_huge_jump_is_slowed_to_the_velocity_and_acceleration_limits():
    target = np.clip(HOME + 2.5, PANDA_LIMITS.lower, PANDA_LIMITS.upper)
    chunk = np.column_stack([np.tile(target, (3, 1)), np.full(3, 2.0)])  # one-step jump, gripper out of range
    traj = JointSpaceBackend(config=CFG).plan(HOME, chunk)
    assert traj.report.velocity_limited  # the limit shaped the motion, and the report says which joints
    assert traj.report.gripper_clipped and traj.positions[:, 7].max() <= 0.04 + 1e-12
    assert_within_limits(traj, PANDA_LIMITS, CFG)


def test_current_velocity_is_used_as_the_start_speed():
    target = HOME + 0.4
    vel = np.full(7, 0.3)
    traj = JointSpaceBackend(config=CFG).plan(HOME, chunk_towards(target)[:, :8], current_velocity=np.r_[vel, 0])
    assert np.linalg.norm(traj.velocities[0, :7]) > 0.1
    assert_within_limits(traj, PANDA_LIMITS, CFG)


def test_enforce_limits_slows_down_a_too_fast_trajectory():
    t = np.linspace(0.0, 0.1, 11)
    q = np.outer(t / 0.1, np.full(7, 1.0)) + HOME  # 1 rad in 0.1 s: 10 rad/s
    v = np.full_like(q, 10.0)
    a = np.zeros_like(q)
    traj = enforce_limits(PlannedTrajectory(list(PANDA_LIMITS.names), t, q, v, a), PANDA_LIMITS, CFG)
    assert traj.report.slowed_down_by == pytest.approx(10.0 / (2.175 * 0.5), rel=1e-6)
    assert_within_limits(traj, PANDA_LIMITS, CFG)


def test_fallback_segments_respect_limits():
    waypoints = np.vstack([HOME, HOME + 0.5, HOME - 0.3])
    t, q, qd, qdd, frac = fallback_parameterize(waypoints, PANDA_LIMITS, CFG, 0.0)
    traj = PlannedTrajectory(list(PANDA_LIMITS.names), t, q, qd, qdd)
    assert_within_limits(traj, PANDA_LIMITS, CFG, slack=1.001)
    np.testing.assert_allclose(q[-1], waypoints[-1], atol=1e-9)
    assert frac[0] == 0.0 and frac[-1] == pytest.approx(1.0)


def test_hold_trajectory_keeps_position_with_zero_velocity():
    traj = hold_trajectory(np.r_[HOME, 0.02], ["a"] * 8, duration=0.3)
    assert np.all(traj.positions == np.r_[HOME, 0.02]) and np.all(traj.velocities == 0)
    assert traj.duration == pytest.approx(0.3)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="velocity_scale"):
        MotionConfig(velocity_scale=0.0)
    with pytest.raises(ValueError, match="max_velocity"):
        JointLimits(("a",), np.array([0.0]), np.array([1.0]), np.array([0.0]), np.array([1.0]))
    with pytest.raises(ValueError, match="action_space"):
        make_backend("cartesian")


ARM_XML = """
<mujoco>
  <compiler angle="radian"/>
  <worldbody>
    <body name="l1">
      <joint name="j1" type="hinge" axis="0 0 1" range="-3 3"/>
      <geom type="capsule" fromto="0 0 0 0 0 0.3" size="0.03"/>
      <body name="l2" pos="0 0 0.3">
        <joint name="j2" type="hinge" axis="0 1 0" range="-2 2"/>
        <geom type="capsule" fromto="0 0 0 0.3 0 0" size="0.03"/>
        <body name="l3" pos="0.3 0 0">
          <joint name="j3" type="hinge" axis="0 1 0" range="-2.5 2.5"/>
          <geom type="capsule" fromto="0 0 0 0.25 0 0" size="0.025"/>
          <site name="tip" pos="0.25 0 0"/>
        </body>
      </body>
    </body>
  </worldbody>
</mujoco>
"""


def test_end_effector_chunk_goes_through_ik_and_time_parameterization():
    mujoco = pytest.importorskip("mujoco")
    model = mujoco.MjModel.from_xml_string(ARM_XML)
    limits = JointLimits(("j1", "j2", "j3"), np.array([-3.0, -2.0, -2.5]), np.array([3.0, 2.0, 2.5]),
                         np.full(3, 2.0), np.full(3, 10.0))
    backend = EndEffectorBackend(model, "tip", limits=limits, config=CFG, gripper_joint=None)
    start = np.array([0.0, 0.3, -0.5])
    targets = np.array([[0.35, 0.05, 0.25], [0.3, 0.1, 0.2]])
    traj = backend.plan(start, targets)
    np.testing.assert_allclose(traj.positions[0], start, atol=1e-6)
    data = mujoco.MjData(model)
    data.qpos[:] = traj.positions[-1]
    mujoco.mj_kinematics(model, data)
    np.testing.assert_allclose(data.site("tip").xpos, targets[-1], atol=5e-3)
    assert_within_limits(traj, limits, CFG)
    with pytest.raises(MotionRejected, match="pose columns"):
        backend.plan(start, np.zeros((2, 5)))


def test_stop_trajectory_brakes_smoothly_within_limits_and_ends_at_rest():
    from fedvla_core.control.motion import stop_trajectory

    vel = np.array([1.0, -0.5, 0.0, 0.2, 0.0, 0.0, 0.0, 0.0])
    names = list(PANDA_LIMITS.names) + ["panda_finger_joint1"]
    traj = stop_trajectory(np.r_[HOME, 0.03], vel, names, PANDA_LIMITS, CFG, hold_s=0.2, deceleration_scale=0.2)
    assert np.allclose(traj.velocities[-1], 0.0) and np.allclose(traj.velocities[-2], 0.0, atol=1e-9)
    assert np.allclose(traj.velocities[0, :7], vel[:7])
    assert np.all(traj.positions[:, 7] == 0.03)  # the gripper stays
    # It keeps going the way it moved, and stops after v^2 / (2 a)-ish, never reversing.
    travel = traj.positions[-1, :7] - HOME
    assert np.all(np.sign(travel[[0, 1, 3]]) == np.sign(vel[[0, 1, 3]]))
    assert np.all(np.diff(traj.positions[:, 0]) >= -1e-12)
    amax = PANDA_LIMITS.max_acceleration * 0.2
    assert np.all(np.abs(traj.accelerations[:, :7]) <= amax * 1.0001)
    still = stop_trajectory(np.r_[HOME, 0.03], np.zeros(8), names, PANDA_LIMITS, CFG)
    assert np.all(still.velocities == 0) and np.all(still.positions == np.r_[HOME, 0.03])


def test_reference_tracker_plans_from_the_setpoint_not_the_lagging_arm():
    from fedvla_core.control.inputs import ReferenceTracker

    tracker = ReferenceTracker(max_deviation=0.15)
    measured, vel = HOME.copy(), np.zeros(7)
    assert tracker.state(0.0, measured, vel)[0] is measured  # nothing sent yet: measured
    traj = PlannedTrajectory(list(PANDA_LIMITS.names), np.array([0.0, 1.0]), np.vstack([HOME, HOME + 0.1]),
                             np.vstack([np.full(7, 0.1), np.full(7, 0.1)]), np.zeros((2, 7)))
    tracker.record(traj, sent_at=10.0)
    pos, v = tracker.state(10.5, HOME + 0.02, vel)  # the arm lags the setpoint HOME + 0.05
    np.testing.assert_allclose(pos, HOME + 0.05)
    np.testing.assert_allclose(v, 0.1)
    pos, v = tracker.state(12.0, HOME + 0.1, vel)  # finished: its last point, at rest
    np.testing.assert_allclose(pos, HOME + 0.1) and np.testing.assert_allclose(v, 0.0)
    pos, _ = tracker.state(10.5, HOME + 0.5, vel)  # the arm is somewhere else entirely: trust it
    np.testing.assert_allclose(pos, HOME + 0.5)
