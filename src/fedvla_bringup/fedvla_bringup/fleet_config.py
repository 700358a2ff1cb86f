"""The fleet description (config/fleet_sim.yaml) as typed objects, shared by the launch files and the CLI."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import yaml

from fedvla_bringup.paths import config_file


@dataclass
class RobotEntry:
    namespace: str = field(default="robot1", metadata={"help": "ROS namespace and federation robot id"})
    domain_id: int = field(default=0, metadata={"help": "ROS_DOMAIN_ID of this robot's nodes"})
    tasks: list[str] = field(default_factory=list, metadata={"help": "sim tasks this robot sees"})

    def __post_init__(self):
        if not self.namespace or "/" in self.namespace.strip("/"):
            raise ValueError(f"namespace must be one plain name, got {self.namespace!r}")
        if not 0 <= int(self.domain_id) <= 101:
            raise ValueError(f"domain_id must be in 0..101, got {self.domain_id}")


@dataclass
class FleetConfig:
    robots: list[RobotEntry] = field(default_factory=list, metadata={"help": "the robots of the fleet"})
    federation: dict = field(default_factory=dict, metadata={"help": "SuperLink address, certs, rounds"})

    def __post_init__(self):
        self.robots = [r if isinstance(r, RobotEntry) else RobotEntry(**r) for r in self.robots]
        names = [r.namespace for r in self.robots]
        if len(set(names)) != len(names):
            raise ValueError(f"robots: namespaces must be unique, got {names}")


def load_fleet_config(path: str | Path | None = None) -> FleetConfig:
    """Read a fleet YAML (default: fedvla_bringup's config/fleet_sim.yaml)."""
    path = Path(path) if path else config_file("fedvla_bringup", "fleet_sim.yaml")
    data = yaml.safe_load(Path(path).read_text()) or {}
    return FleetConfig(**data)
