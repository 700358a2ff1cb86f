"""Every custom interface type round-trips through rclpy.serialization (CDR) unchanged."""
import pytest
from rclpy.serialization import deserialize_message, serialize_message

from fedvla_msgs.action import ExecuteInstruction
from fedvla_msgs.msg import ExpertUsage, LayerExpertUsage, MetricValue, RoundStatus
from fedvla_msgs.srv import LoadCheckpoint, ResetTask, RunExpert, TriggerRound


def _filled_messages():
    layer0 = LayerExpertUsage(layer=0, expert_counts=[3, 0, 17, 2**40], mean_active_experts=1.25)
    layer1 = LayerExpertUsage(layer=1, expert_counts=[1, 1], mean_active_experts=1.0)
    usage = ExpertUsage(episode_id="ep-42", layers=[layer0, layer1], mean_active_experts=1.125)
    usage.header.frame_id = "policy"
    usage.header.stamp.sec = 12
    status = RoundStatus(robot_id="robot1", round=7, state="training", participants=2, new_episodes=5,
                         bytes_up=123456789, bytes_down=987654321,
                         metrics=[MetricValue(name="train_loss", value=0.125), MetricValue(name="num_examples", value=640.0)],
                         message="ünïcode ok")
    return [
        layer0, usage, status, MetricValue(name="x", value=-1.5),
        ExecuteInstruction.Goal(instruction="put the red block in the bowl", max_steps=200, time_limit_s=30.5),
        ExecuteInstruction.Result(success=True, steps=57, reason="success", episode_id="ep-42"),
        ExecuteInstruction.Feedback(step=3, phase="running", progress=0.25, mean_active_experts=1.5,
                                    inference_latency_ms=14.5),
        TriggerRound.Request(ignore_min_episodes=True), TriggerRound.Response(accepted=True, message="ok", round=3),
        LoadCheckpoint.Request(path="/tmp/ckpt"), LoadCheckpoint.Response(success=False, message="no such dir"),
        ResetTask.Request(task="stack_red_on_green", seed=-5),
        ResetTask.Response(success=True, instruction="stack the red block on the green one", message=""),
        RunExpert.Request(max_steps=300), RunExpert.Response(success=True, steps=120, message="done"),
    ]


@pytest.mark.parametrize("msg", _filled_messages(), ids=lambda m: type(m).__name__)
def test_roundtrip(msg):
    data = serialize_message(msg)
    assert isinstance(data, bytes) and len(data) > 4
    back = deserialize_message(data, type(msg))
    assert back == msg
    # (bytes are not compared: CDR alignment padding is not guaranteed to be zeroed)
    assert deserialize_message(serialize_message(back), type(msg)) == msg


def test_roundtrip_detects_difference():
    """The comparison above is meaningful: a changed field gives a different message and different bytes."""
    a = RoundStatus(robot_id="robot1", round=1)
    b = RoundStatus(robot_id="robot1", round=2)
    assert deserialize_message(serialize_message(a), RoundStatus) != b
