"""`fedvla goal` pieces that need no server: the progress line and the command-line interface."""
import pytest

from fedvla_msgs.action import ExecuteInstruction
from fedvla_policy.goal_client import build_parser, format_feedback


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
