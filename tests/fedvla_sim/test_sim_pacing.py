"""The sim's physics thread keeps real time, and when it falls behind it gives the lag up instead of
stepping flat out (which starved the camera and joint-state threads for ~1 s on a 2-core machine)."""
import threading
import time

import pytest

from fedvla_sim.sim_robot import SimRobot, SimRobotConfig


@pytest.fixture
def robot():
    r = SimRobot(SimRobotConfig(task="pick_up_green_block", max_catch_up_s=0.1))
    r.start()
    yield r
    r.stop()


def test_physics_runs_at_real_time_and_a_reset_is_not_lag(robot):
    time.sleep(0.3)
    t0, w0 = robot.sim_time, time.monotonic()
    time.sleep(1.0)
    rate = (robot.sim_time - t0) / (time.monotonic() - w0)
    assert rate == pytest.approx(1.0, abs=0.15)
    dropped = robot.dropped_lag_s
    robot.reset("pick_up_green_block", 3)  # sim time jumps back to the settle time
    time.sleep(0.5)
    assert robot.dropped_lag_s == pytest.approx(dropped, abs=0.05)
    assert robot.sim_time == pytest.approx(robot.env.config.settle_time + 0.5, abs=0.15)


def test_a_stall_longer_than_max_catch_up_is_dropped_not_caught_up(robot):
    time.sleep(0.2)
    stall = threading.Thread(target=lambda: (robot.lock.acquire(), time.sleep(0.6), robot.lock.release()))
    before = robot.dropped_lag_s
    stall.start()
    stall.join()
    # Right after the stall the physics must not sprint through 0.6 s of sim time while holding the lock:
    # a reader gets the lock promptly and the lag is written off.
    t = time.monotonic()
    _ = robot.joint_state()
    assert time.monotonic() - t < 0.05
    time.sleep(0.1)
    assert robot.dropped_lag_s - before == pytest.approx(0.6, abs=0.15)
