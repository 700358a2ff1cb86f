"""fedvla_ros.params: a config dataclass as declared ROS parameters, on a real rclpy node in-process.

The descriptors carry the field's type, help and range and are read-only; a value of the wrong type,
out of range or refused by the dataclass's checks stops the node with an error naming the parameter;
and each node's YAML file holds exactly its dataclass's fields and defaults, in types the node accepts.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import rclpy
import yaml
from rcl_interfaces.msg import ParameterType
from rclpy.parameter import Parameter

from fedvla_core.config_fields import check_ranges
from fedvla_core.control.server_config import ServerConfig
from fedvla_fed_client.node_config import FedClientConfig
from fedvla_ros.params import ParameterError, declare_config
from fedvla_sim.sim_robot import SimRobotConfig

SRC = Path(__file__).resolve().parents[2] / "src"
#: Each node's parameter file and the dataclass it mirrors.
CONFIGS = {"fed_client": (SRC / "fedvla_fed_client/config/fed_client.yaml", FedClientConfig),
           "sim_robot": (SRC / "fedvla_sim/config/sim_robot.yaml", SimRobotConfig),
           "policy_server": (SRC / "fedvla_policy/config/policy_server.yaml", ServerConfig)}


@dataclass
class Toy:
    rate_hz: float = field(default=2, metadata={"help": "Ticks per second.", "range": (0.5, None)})
    count: int = field(default=3, metadata={"help": "How many.", "range": (1, 10)})
    names: list[str] = field(default_factory=list, metadata={"help": "Names; none by default."})
    mode: str = field(default="a", metadata={"help": "'a' or 'b'."})
    needs_b: bool = field(default=False, metadata={"help": "Only with mode 'b'."})
    gain: float = field(default=1.0, metadata={"help": "Changeable while running.", "dynamic": True})

    def __post_init__(self):
        if self.mode not in ("a", "b"):
            raise ValueError(f"Toy.mode must be 'a' or 'b', got {self.mode!r}")
        if self.needs_b and self.mode != "b" and self.count > 5:
            raise ValueError("Toy.needs_b with count > 5 needs mode 'b'")
        check_ranges(self)


@pytest.fixture
def make_node(rclpy_context):
    nodes = []

    def make(overrides=(), cli_args=None):
        node = rclpy.create_node(f"params_test_{len(nodes)}", context=rclpy_context,
                                 parameter_overrides=[Parameter(k, value=v) for k, v in dict(overrides).items()],
                                 cli_args=cli_args)
        nodes.append(node)
        return node

    yield make
    for node in nodes:
        node.destroy_node()


@pytest.mark.parametrize("cls", [FedClientConfig, SimRobotConfig, ServerConfig, Toy])
def test_every_descriptor_holds_the_field_help_and_its_type(make_node, cls):
    node = make_node()
    config = declare_config(node, cls)
    assert config == cls()
    for f in dataclasses.fields(cls):
        d = node.describe_parameter(f.name)
        assert f.metadata["help"] and d.description == f.metadata["help"], f.name
        assert d.read_only == (not f.metadata.get("dynamic", False)), f.name
        assert not d.dynamic_typing


def test_types_come_from_the_annotation_and_ranges_from_the_metadata(make_node):
    node = make_node()
    config = declare_config(node, Toy)
    assert config.rate_hz == 2.0 and isinstance(config.rate_hz, float) and config.names == []
    types = {n: node.describe_parameter(n).type for n in ("rate_hz", "count", "names", "mode", "needs_b")}
    assert types == {"rate_hz": ParameterType.PARAMETER_DOUBLE, "count": ParameterType.PARAMETER_INTEGER,
                     "names": ParameterType.PARAMETER_STRING_ARRAY, "mode": ParameterType.PARAMETER_STRING,
                     "needs_b": ParameterType.PARAMETER_BOOL}
    count = node.describe_parameter("count")
    assert (count.integer_range[0].from_value, count.integer_range[0].to_value) == (1, 10)
    assert node.describe_parameter("rate_hz").floating_point_range[0].from_value == 0.5
    sim = make_node()  # the sim's camera_size range comes from SimRobotConfig's metadata
    declare_config(sim, SimRobotConfig)
    size = sim.describe_parameter("camera_size")
    assert (size.integer_range[0].from_value, size.integer_range[0].to_value) == (16, 1024)
    assert "[16, 1024]" in size.additional_constraints


def test_read_only_parameters_refuse_a_set_dynamic_ones_take_it(make_node):
    node = make_node()
    declare_config(node, Toy)
    refused, taken = node.set_parameters([Parameter("count", value=4), Parameter("gain", value=2.0)])
    assert not refused.successful and "read-only" in refused.reason
    assert taken.successful and node.get_parameter("gain").value == 2.0


def test_overrides_reach_the_config_and_empty_strings_drop_out_of_string_arrays(make_node):
    config = declare_config(make_node({"count": 7, "names": ["x", "", "y"], "rate_hz": 0.5}), Toy)
    assert (config.count, config.names, config.rate_hz) == (7, ["x", "y"], 0.5)
    assert declare_config(make_node({"names": [""]}), Toy).names == []  # YAML's way to write "none"


@pytest.mark.parametrize("cls,name,value,words", [
    (Toy, "rate_hz", 3, ["a double", "decimal point"]),  # an int where a double is declared
    (Toy, "count", "four", ["an integer"]),
    (FedClientConfig, "record_rate_hz", 10, ["a double"]),
    (FedClientConfig, "camera_names", "agentview", ["a string array"]),
    (SimRobotConfig, "seed", 1.5, ["an integer"]),
])
def test_a_wrong_type_is_refused_naming_the_parameter(make_node, cls, name, value, words):
    with pytest.raises(ParameterError) as err:
        declare_config(make_node({name: value}), cls)
    assert err.value.names == [name] and f"'{name}'" in str(err.value)
    for word in words:
        assert word in str(err.value)
    help_text = next(f for f in dataclasses.fields(cls) if f.name == name).metadata["help"]
    assert help_text in str(err.value)


@pytest.mark.parametrize("cls,name,value,says", [
    (Toy, "count", 11, "out of range"),  # the descriptor's range, enforced by rclpy
    (Toy, "rate_hz", 0.1, "out of range"),
    (Toy, "mode", "c", "must be 'a' or 'b'"),  # __post_init__
    (SimRobotConfig, "camera_size", 8, "out of range"),
    (SimRobotConfig, "task", "no_such_task", "unknown task"),
    (SimRobotConfig, "camera_names", ["agentview", "thermal"], "unknown camera"),
    (FedClientConfig, "record_rate_hz", 0.0, "must be > 0"),
    (FedClientConfig, "camera_names", [""], "at least one camera"),
    (FedClientConfig, "trainer_threads", -1, "out of range"),
    (FedClientConfig, "supernode_port", 70000, "out of range"),
])
def test_an_invalid_value_is_refused_naming_the_parameter(make_node, cls, name, value, says):
    with pytest.raises(ParameterError) as err:
        declare_config(make_node({name: value}), cls)
    assert err.value.names == [name] and f"'{name}'" in str(err.value) and says in str(err.value)
    assert isinstance(err.value, ValueError)


def test_a_refused_combination_names_the_parameters_of_it(make_node):
    with pytest.raises(ParameterError) as err:
        declare_config(make_node({"needs_b": True, "count": 6, "rate_hz": 1.0}), Toy)
    assert sorted(err.value.names) == ["count", "needs_b"]  # rate_hz is fine in any combination
    assert "needs mode 'b'" in str(err.value)


def test_ranges_are_checked_without_ros_too():
    with pytest.raises(ValueError, match=r"SimRobotConfig.camera_size must be in \[16, 1024\]"):
        SimRobotConfig(camera_size=2000)
    with pytest.raises(ValueError, match="trainer_threads"):
        FedClientConfig(trainer_threads=-2)


def _without_empty_strings(value):
    return [v for v in value if v != ""] if isinstance(value, list) else value


@pytest.mark.parametrize("node_name", sorted(CONFIGS))
def test_each_yaml_holds_exactly_the_dataclass_fields_and_defaults(node_name):
    path, cls = CONFIGS[node_name]
    params = yaml.safe_load(path.read_text())["/**"]["ros__parameters"]
    assert set(params) == {f.name for f in dataclasses.fields(cls)}
    defaults = cls()
    for name, value in params.items():
        assert _without_empty_strings(value) == getattr(defaults, name), name


@pytest.mark.parametrize("node_name", sorted(CONFIGS))
def test_each_yaml_loads_through_rclpy_into_the_default_config(make_node, node_name):
    """The YAML's values have the declared types (10.0, not 10), as the node reads the file."""
    path, cls = CONFIGS[node_name]
    node = make_node(cli_args=["--ros-args", "--params-file", str(path)])
    assert declare_config(node, cls) == cls()
