"""The sim core (tasks, env, experts, recorder, Meta-World adapter, sim robot, CLI) never imports rclpy."""
import subprocess
import sys


def test_core_modules_do_not_import_rclpy():
    code = ("import sys\n"
            "import fedvla_sim.env, fedvla_sim.experts, fedvla_sim.tasks, fedvla_sim.recorder, fedvla_sim.cli\n"
            "import fedvla_sim.metaworld_env, fedvla_sim.sim_robot, fedvla_sim.trajectory\n"
            "print('rclpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_cli_help_lists_the_record_flags():
    out = subprocess.run([sys.executable, "-m", "fedvla_sim.cli", "record", "--help"], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0
    for flag in ("--suite", "--task", "--episodes", "--out", "--workers", "--seed-start", "--keep-failed"):
        assert flag in out.stdout
