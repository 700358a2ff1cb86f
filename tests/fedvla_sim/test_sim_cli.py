"""The sim CLI without ROS (that the sim core never imports rclpy is checked in tests/test_layout.py)."""
import subprocess
import sys


def test_cli_help_lists_the_record_flags():
    out = subprocess.run([sys.executable, "-m", "fedvla_sim.cli", "record", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0
    for flag in ("--suite", "--task", "--episodes", "--out", "--workers", "--seed-start", "--keep-failed"):
        assert flag in out.stdout
