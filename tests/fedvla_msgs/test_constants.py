"""The constants of fedvla_msgs are the contract the code keeps: no state or code outside them, none unused.

The core cannot import fedvla_msgs (tests/test_layout.py), so the codes it defines are held equal to
the message constants here.
"""
from __future__ import annotations

import pytest

from fedvla_core.control import goal_refusal
from fedvla_core.federated.round_scheduler import RoundScheduler, ScheduleConfig
from fedvla_fed_client import client_node
from fedvla_msgs.action import ExecuteInstruction
from fedvla_msgs.msg import RoundStatus


def _constants(cls, prefix: str) -> dict[str, str]:
    return {name: getattr(cls, name) for name in dir(cls) if name.startswith(prefix) and name.isupper()}


def test_refusal_constants_are_the_core_refusal_codes():
    constants = _constants(ExecuteInstruction.Result, "REFUSAL_")
    assert sorted(constants.values()) == sorted(goal_refusal.REFUSAL_CODES)
    for code in goal_refusal.REFUSAL_CODES:
        assert constants[f"REFUSAL_{code.upper()}"] == code
    assert set(goal_refusal.RETRYABLE) <= set(goal_refusal.REFUSAL_CODES)


def test_round_states_are_exactly_the_states_the_fed_client_publishes():
    published = ({RoundStatus.STATE_OFF, RoundStatus.STATE_READY} | set(client_node.SCHEDULE_STATES)
                 | set(client_node.REPORT_STATES.values()))
    assert published == set(_constants(RoundStatus, "STATE_").values())


@pytest.mark.parametrize("interval_s,min_new,busy,new,expected", [
    (0.0, 0, True, 0, RoundStatus.STATE_WAITING_FOR_IDLE_ROBOT),
    (3600.0, 0, False, 0, RoundStatus.STATE_WAITING_FOR_INTERVAL),
    (0.0, 5, False, 2, RoundStatus.STATE_WAITING_FOR_EPISODES),
    (0.0, 5, False, 5, RoundStatus.STATE_READY),
])
def test_every_scheduler_decision_maps_to_a_round_state(interval_s, min_new, busy, new, expected):
    scheduler = RoundScheduler(ScheduleConfig(interval_s, min_new, True), now=0.0)
    scheduler.round_finished(0.0)
    open_, reason = scheduler.decide(1.0, new, robot_busy=busy)
    assert (RoundStatus.STATE_READY if open_ else client_node.gate_state(reason)) == expected


def test_an_unknown_scheduler_reason_is_an_error_not_a_new_state():
    with pytest.raises(ValueError, match="no RoundStatus state"):
        client_node.gate_state("training: soon")
