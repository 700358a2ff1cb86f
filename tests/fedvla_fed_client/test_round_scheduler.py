"""The robot-side round schedule and the gate its ClientApp waits on."""
import threading
import time

import pytest

from fedvla_core.federated.round_gate import RoundReport, read_gate, read_report, wait_and_take_gate, write_gate, write_report
from fedvla_core.federated.round_scheduler import RoundScheduler, ScheduleConfig


def test_schedule_needs_interval_episodes_and_idle():
    sched = RoundScheduler(ScheduleConfig(interval_s=60, min_new_episodes=3, only_while_idle=True), now=1000.0)
    assert sched.decide(1000.0, new_episodes=3, robot_busy=False)[0]  # first round may start at once
    open_, reason = sched.decide(1000.0, new_episodes=2, robot_busy=False)
    assert not open_ and "2/3" in reason
    open_, reason = sched.decide(1000.0, new_episodes=10, robot_busy=True)
    assert not open_ and reason.startswith("waiting_for_idle_robot")
    sched.round_finished(now=1000.0)
    open_, reason = sched.decide(1030.0, new_episodes=10, robot_busy=False)
    assert not open_ and reason.startswith("waiting_for_interval") and "30 s" in reason
    assert sched.decide(1060.0, new_episodes=3, robot_busy=False)[0]


def test_trigger_skips_interval_and_episodes_but_not_idle():
    sched = RoundScheduler(ScheduleConfig(interval_s=600, min_new_episodes=50), now=0.0)
    sched.round_finished(now=0.0)
    sched.force()
    assert not sched.decide(1.0, new_episodes=0, robot_busy=True)[0]
    assert sched.decide(1.0, new_episodes=0, robot_busy=False)[0]
    sched.round_finished(now=2.0)
    assert not sched.decide(3.0, new_episodes=0, robot_busy=False)[0]


def test_schedule_config_validation_names_the_field():
    with pytest.raises(ValueError, match="min_new_episodes"):
        ScheduleConfig(min_new_episodes=-1)


def test_gate_blocks_until_node_opens_it(tmp_path):
    write_gate(tmp_path, False, "waiting_for_idle_robot: a goal is running")
    with pytest.raises(TimeoutError, match="a goal is running"):
        wait_and_take_gate(tmp_path, server_round=1, timeout_s=0.3, poll_s=0.05)
    opener = threading.Timer(0.3, lambda: write_gate(tmp_path, True, "ready"))
    opener.start()
    t0 = time.monotonic()
    gate = wait_and_take_gate(tmp_path, server_round=4, timeout_s=5, poll_s=0.05)
    assert time.monotonic() - t0 >= 0.25
    assert gate.taken_by_round == 4
    after = read_gate(tmp_path)
    assert not after.open and after.taken_by_round == 4  # taken: a second message must wait again


def test_no_gate_file_means_unmanaged_robot(tmp_path):
    assert wait_and_take_gate(tmp_path, server_round=1, timeout_s=0.1).open


def test_report_roundtrip(tmp_path):
    assert read_report(tmp_path) is None
    write_report(tmp_path, RoundReport(server_round=3, state="done", bytes_up=10, metrics={"train_loss": 0.5}))
    report = read_report(tmp_path)
    assert report.server_round == 3 and report.metrics == {"train_loss": 0.5} and report.bytes_up == 10
