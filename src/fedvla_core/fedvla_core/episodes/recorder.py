"""Turns what a robot's topics show during a goal into one logged episode (no rclpy here).

The fed client node feeds this from its subscriptions: camera frames, joint states, the
commanded JointTrajectory and the goal's start/end. At each record tick the step's action is
the position the controller is commanded to reach one tick later, taken from the active
trajectory with joint_trajectory_controller semantics (linear interpolation by
time_from_start, a newer trajectory replaces the old one, hold the last point after the end).
That is the same action a scripted expert records in `fedvla-sim record`, so demonstrations and
policy rollouts land in one format.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fedvla_core.embodiment import ARM_JOINTS, FINGER_MAX_M, GRIPPER_JOINT, finger_to_gripper
from fedvla_core.episodes import EpisodeWriter, apply_retention
from fedvla_core.episodes.input_checks import check_episode_id, check_trajectory


@dataclass
class ActionLayout:
    """How joint targets become the policy's action vector: arm joint targets + gripper in [0, 1].

    The embodiment's joints and gripper mapping by default. The gripper is not clipped: the action
    logged is what the trajectory commanded.
    """

    arm_joints: list[str] = field(default_factory=lambda: list(ARM_JOINTS))
    gripper_joint: str = GRIPPER_JOINT
    gripper_open_position: float = FINGER_MAX_M  # finger position (m) that maps to gripper action 1.0

    @property
    def joint_names(self) -> list[str]:
        return [*self.arm_joints, self.gripper_joint]

    @property
    def action_names(self) -> list[str]:
        return [*self.arm_joints, "gripper"]

    def to_action(self, positions: dict[str, float]) -> np.ndarray:
        arm = [positions[j] for j in self.arm_joints]
        gripper = finger_to_gripper(positions[self.gripper_joint], self.gripper_open_position, clip=False)
        return np.asarray([*arm, gripper], dtype=np.float32)


class TrajectoryTracker:
    """The commanded joint positions at any time, from the latest JointTrajectory."""

    def __init__(self):
        self._names: list[str] = []
        self._times = np.zeros(0)
        self._positions = np.zeros((0, 0))
        self._start_time = 0.0
        self._start_positions: np.ndarray | None = None
        self.last_trajectory: dict | None = None

    def set(self, joint_names, times_from_start, positions, start_time: float, current: dict[str, float]) -> None:
        """A new trajectory arrived at `start_time` (s); `current` gives the joints' positions then.

        A malformed one (ragged, non-finite, times not increasing) raises InputRejected and the
        tracker keeps the trajectory it had.
        """
        names, times, positions = check_trajectory(joint_names, times_from_start, positions)
        self._names, self._times, self._positions = names, times, positions
        self._start_time = start_time
        self._start_positions = np.asarray([current.get(n, p) for n, p in zip(self._names, self._positions[0])]) \
            if len(self._times) else None
        self.last_trajectory = {"joint_names": self._names, "positions": self._positions,
                                "time_from_start": self._times}

    def target(self, t: float, current: dict[str, float]) -> dict[str, float]:
        """Commanded positions at time `t` (s); joints the trajectory does not name keep `current`."""
        out = dict(current)
        if not len(self._times) or self._start_positions is None:
            return out
        dt = t - self._start_time
        knots_t = np.concatenate([[0.0], self._times])
        knots_q = np.vstack([self._start_positions, self._positions])
        for j, name in enumerate(self._names):
            out[name] = float(np.interp(dt, knots_t, knots_q[:, j]))
        return out


class GoalEpisodeRecorder:
    """Records one episode per goal into `episode_dir`, then applies the retention limits."""

    def __init__(self, episode_dir, camera_names, robot_id: str, layout: ActionLayout | None = None,
                 max_bytes: int | None = None, max_episodes: int | None = None):
        self.episode_dir = Path(episode_dir)
        self.camera_names = list(camera_names)
        self.robot_id = robot_id
        self.layout = layout or ActionLayout()
        self.max_bytes, self.max_episodes = max_bytes, max_episodes
        self.writer: EpisodeWriter | None = None

    @property
    def active(self) -> bool:
        return self.writer is not None

    @property
    def source(self) -> str:
        """Who the running episode records ('policy', 'scripted_expert', 'teleoperation'); '' when idle."""
        return str(self.writer.metadata.get("source", "")) if self.writer is not None else ""

    def start(self, episode_id: str | None, instruction: str, **metadata) -> None:
        """Begin an episode (aborting an unfinished one); a bad `episode_id` raises InputRejected first."""
        check_episode_id(episode_id or "")
        if self.writer is not None:
            self.writer.abort()
        self.writer = EpisodeWriter(self.episode_dir, episode_id=episode_id,
                                    metadata={"instruction": instruction, "robot_id": self.robot_id, **metadata},
                                    camera_names=self.camera_names, joint_names=self.layout.joint_names,
                                    action_names=self.layout.action_names)

    def step(self, stamp_ns: int, images: dict, joints: dict[str, float], commanded: dict[str, float],
             trajectory: dict | None = None) -> None:
        if self.writer is None:
            return
        q = [joints[n] for n in self.layout.joint_names]
        self.writer.add_step(stamp_ns, images=images, joint_positions=q,
                             action=self.layout.to_action(commanded), trajectory=trajectory)

    def finish(self, success: bool, reason: str) -> Path | None:
        """Close the episode (an episode with no step is discarded); returns the file or None."""
        return self.close(self.detach(), success, reason)

    def detach(self) -> EpisodeWriter | None:
        """Stop recording into the current episode and hand its writer over, still open.

        A goal's terminal status arrives before its result (a separate service call), and the next
        goal may start in between: the ended goal's writer is detached at once, so the next goal
        records into a fresh episode, and is closed by :meth:`close` when the result comes.
        """
        writer, self.writer = self.writer, None
        return writer

    def close(self, writer: EpisodeWriter | None, success: bool, reason: str) -> Path | None:
        """Close a detached episode writer (no step: discarded); returns the file or None."""
        if writer is None:
            return None
        if writer.num_steps == 0:
            writer.abort()
            return None
        path = writer.close(success=success, extra_metadata={"end_reason": reason})
        apply_retention(self.episode_dir, max_bytes=self.max_bytes, max_episodes=self.max_episodes)
        return path

    def abort(self) -> None:
        if self.writer is not None:
            self.writer.abort()
            self.writer = None
