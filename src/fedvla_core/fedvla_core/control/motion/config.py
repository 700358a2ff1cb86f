"""``MotionConfig``: how the motion package turns a chunk into a trajectory (timing, scaling, margins)."""
from __future__ import annotations

from dataclasses import dataclass, field

from fedvla_core.embodiment import FINGER_MAX_M


@dataclass
class MotionConfig:
    """How chunks become trajectories. Every field has a default; see ``help`` metadata."""

    velocity_scale: float = field(default=0.5, metadata={
        "help": "Fraction of each joint's velocity limit the trajectory may use (0, 1]."})
    acceleration_scale: float = field(default=0.5, metadata={
        "help": "Fraction of each joint's acceleration limit the trajectory may use (0, 1]."})
    reject_margin: float = field(default=0.3, metadata={
        "help": "A target further than this (rad) outside a joint's range rejects the chunk; closer ones are clipped."})
    timing: str = field(default="chunk", metadata={
        "help": "'chunk': action k of a chunk is reached at (k + 1) * nominal_step_s, the timing of the "
                "demonstrations (a segment too fast for a velocity limit is lengthened); 'time_optimal': "
                "toppra (MoveIt's TOTG with moveit_py) along a spline through the actions, never faster "
                "than H * nominal_step_s."})
    min_lead_s: float = field(default=0.07, metadata={
        "help": "With timing 'chunk': an action due sooner than this after planning is skipped (the arm would have "
                "to jump to it); the next one becomes the first target. Measured (benchmarks/realtime_execution.py, "
                "12 episodes): at 40 ms of latency 50% -> 83%, at 70 ms 25% -> 58%."})
    nominal_step_s: float = field(default=0.1, metadata={
        "help": "Time the policy meant between two chunk actions (its control period); with timing "
                "'time_optimal', 0 = no lower bound on the duration."})
    sample_dt: float = field(default=0.05, metadata={
        "help": "Spacing (s) of the trajectory points sent to the controller."})
    max_points: int = field(default=100, metadata={"help": "Upper bound on trajectory points per chunk."})
    gripper_max: float = field(default=FINGER_MAX_M, metadata={
        "help": "Finger opening (m) that a gripper action of 1.0 maps to (0.0 maps to closed)."})
    tolerance: float = field(default=1e-3, metadata={
        "help": "Relative slack when verifying velocity/acceleration limits on the sampled trajectory."})

    def __post_init__(self):
        for name in ("velocity_scale", "acceleration_scale"):
            value = getattr(self, name)
            if not 0.0 < value <= 1.0:
                raise ValueError(f"MotionConfig.{name} must be in (0, 1], got {value}")
        if self.reject_margin < 0:
            raise ValueError(f"MotionConfig.reject_margin must be >= 0, got {self.reject_margin}")
        if self.min_lead_s < 0:
            raise ValueError(f"MotionConfig.min_lead_s must be >= 0, got {self.min_lead_s}")
        if self.timing not in ("chunk", "time_optimal"):
            raise ValueError(f"MotionConfig.timing must be 'chunk' or 'time_optimal', got {self.timing!r}")
        if self.nominal_step_s < 0 or (self.timing == "chunk" and self.nominal_step_s == 0):
            raise ValueError(f"MotionConfig.nominal_step_s must be > 0 (>= 0 with timing 'time_optimal'), "
                             f"got {self.nominal_step_s}")
        if self.sample_dt <= 0:
            raise ValueError(f"MotionConfig.sample_dt must be > 0, got {self.sample_dt}")
        if self.max_points < 2:
            raise ValueError(f"MotionConfig.max_points must be >= 2, got {self.max_points}")
        if self.gripper_max <= 0:
            raise ValueError(f"MotionConfig.gripper_max must be > 0, got {self.gripper_max}")

