"""config/sim_robot.yaml holds every node parameter with the SimRobotConfig default."""
import dataclasses
from pathlib import Path

import pytest
import yaml

from fedvla_sim.sim_robot import SimRobotConfig

CONFIG = Path(__file__).resolve().parents[2] / "src" / "fedvla_sim" / "config" / "sim_robot.yaml"


def test_yaml_matches_config_defaults():
    params = yaml.safe_load(CONFIG.read_text())["/**"]["ros__parameters"]
    defaults = dataclasses.asdict(SimRobotConfig())
    assert params == defaults


def test_every_field_has_help_and_bad_values_name_the_field():
    for f in dataclasses.fields(SimRobotConfig):
        assert f.metadata.get("help"), f.name
    with pytest.raises(ValueError, match="camera_rate_hz"):
        SimRobotConfig(camera_rate_hz=0)
    with pytest.raises(ValueError, match="SimRobotConfig.task"):
        SimRobotConfig(task="nope")
