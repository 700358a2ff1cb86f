"""`fedvla goal` pieces: the progress line, the command-line interface, and how GoalClient pairs answers.

The pairing test runs a stand-in action server in-process (real rclpy, no policy).
"""
import threading

import pytest
import rclpy
from rclpy.action import ActionServer
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import MultiThreadedExecutor

from fedvla_core.control.goal_refusal import BUSY, refusal_reason
from fedvla_msgs.action import ExecuteInstruction
from fedvla_policy.goal_client import GoalClient, build_parser, format_feedback


def test_progress_line_shows_bar_step_phase_experts_and_latency():
    fb = ExecuteInstruction.Feedback(step=12, phase="running", progress=0.25, mean_active_experts=1.75,
                                     inference_latency_ms=42.5)
    line = format_feedback(fb)
    assert line.startswith("[#####...............]")
    assert "25.0%" in line and "step   12" in line and "running" in line
    assert "experts/token 1.75" in line and "inference   42.5 ms" in line
    full = format_feedback(ExecuteInstruction.Feedback(step=1, phase="finishing", progress=1.5))
    assert full.startswith("[" + "#" * 20 + "]")  # clamped to 100 %


def test_parser_defaults_and_help(capsys):
    args = build_parser().parse_args(["put the red block in the bowl", "--ns", "robot1", "--max-steps", "50"])
    assert (args.instruction, args.ns, args.max_steps, args.time_limit) == ("put the red block in the bowl",
                                                                             "robot1", 50, 0.0)
    assert args.action == "execute_instruction" and args.server_node == "policy_server"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--help"])
    assert "Ctrl-C cancels the goal" in capsys.readouterr().out


def test_each_refusal_reaches_its_own_goal_even_with_the_same_instruction(rclpy_context):
    """Two goals with one instruction text, at once: the refused one and the one that runs are told apart by
    the goal itself (its own result), not by the text or the time of the answer."""
    release = threading.Event()

    def execute(handle):  # as the policy server: accept, then abort a goal it will not run, with "<code>: ..."
        if handle.request.max_steps == 1:
            release.wait(10.0)  # answer the refusal only after the other goal runs
            handle.abort()
            return ExecuteInstruction.Result(reason=refusal_reason(BUSY, "another goal is running"), steps=0)
        handle.publish_feedback(ExecuteInstruction.Feedback(step=1, phase="running", progress=0.5,
                                                            instruction=handle.request.instruction))
        release.set()
        handle.succeed()
        return ExecuteInstruction.Result(success=True, steps=1, reason="success", episode_id="ep-1")

    server_node = rclpy.create_node("fake_policy_server", context=rclpy_context)
    ActionServer(server_node, ExecuteInstruction, "execute_instruction", execute,
                 callback_group=ReentrantCallbackGroup())
    executor = MultiThreadedExecutor(num_threads=4, context=rclpy_context)
    executor.add_node(server_node)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    client = GoalClient(context=rclpy_context)
    try:
        assert client.wait_for_server(10.0)
        refused = client.send("put the red block in the bowl", max_steps=1)
        ran = client.send("put the red block in the bowl", max_steps=5)
        assert refused.wait(15.0) and ran.wait(15.0)
        assert (refused.accepted, refused.refusal, refused.retryable) == (False, BUSY, True)
        assert refused.rejection_reason.startswith("busy: ") and not refused.feedback
        assert (ran.accepted, ran.refusal, ran.result.success, ran.result.episode_id) == (True, None, True, "ep-1")
        assert ran.rejection_reason == "" and len(ran.feedback) == 1
    finally:
        client.close()
        executor.shutdown(timeout_sec=1.0)
        server_node.destroy_node()
