"""When may this robot take part in a federated round? (No rclpy: the node asks it every tick.)

Three conditions, all configurable: at least `interval_s` since the last round, at least
`min_new_episodes` episodes logged since then, and (when `only_while_idle`) no goal running.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class ScheduleConfig:
    interval_s: float = field(default=300.0, metadata={"help": "minimum seconds between two rounds of this robot"})
    min_new_episodes: int = field(default=5, metadata={"help": "new finished episodes needed before a round"})
    only_while_idle: bool = field(default=True, metadata={"help": "never train while a goal is running"})

    def __post_init__(self):
        if self.interval_s < 0:
            raise ValueError(f"interval_s must be >= 0, got {self.interval_s}")
        if self.min_new_episodes < 0:
            raise ValueError(f"min_new_episodes must be >= 0, got {self.min_new_episodes}")


class RoundScheduler:
    """Decides, from the robot's state, whether the round gate should be open."""

    def __init__(self, config: ScheduleConfig, now: float):
        self.config = config
        self.last_round_end = now - config.interval_s  # the first round may start at once
        self.forced = False

    def force(self) -> None:
        """TriggerRound: open at the next check regardless of interval and episode count (idle still required)."""
        self.forced = True

    def round_finished(self, now: float) -> None:
        self.last_round_end = now
        self.forced = False

    def decide(self, now: float, new_episodes: int, robot_busy: bool) -> tuple[bool, str]:
        """(open?, reason). The reason is what RoundStatus and the ClientApp report when closed."""
        cfg = self.config
        if robot_busy and cfg.only_while_idle:
            return False, "waiting_for_idle_robot: a goal is running"
        if self.forced:
            return True, "round triggered"
        wait = self.last_round_end + cfg.interval_s - now
        if wait > 0:
            return False, f"waiting_for_interval: {wait:.0f} s until the next round"
        if new_episodes < cfg.min_new_episodes:
            return False, f"waiting_for_episodes: {new_episodes}/{cfg.min_new_episodes} new episodes"
        return True, f"ready: {new_episodes} new episodes"
