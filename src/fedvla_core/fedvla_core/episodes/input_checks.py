"""What the fed client accepts from its topics and services, checked before anything is kept (no rclpy).

Why: the fed client listens to topics any process on the robot's ROS graph can publish on. One
malformed message (two joint names with one position, a NaN joint, an episode id with a '/')
used to raise inside a callback, and rclpy's executor then ended the whole node; with
`fedvla up robot` the robot stopped with it. Every check here raises :class:`InputRejected` with a
reason short enough for one log line (:func:`bounded`); the node logs it and keeps the last good
input. Values are checked as plain Python sequences, so the rules are unit-testable without ROS.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

import numpy as np

from fedvla_core.control.input_checks import bounded as _bounded

#: Longest text put into one log line or service answer that quotes what a sender sent.
MAX_LOG_CHARS = 240
#: More joints than this in one message is not an arm (and would make every recorded step huge).
MAX_JOINTS = 64
#: Points of one JointTrajectory (the policy server sends tens; a teleoperator one).
MAX_TRAJECTORY_POINTS = 10_000
#: Largest camera side accepted (pixels).
MAX_IMAGE_SIDE = 4096
#: Longest instruction kept (characters); the policy server's max_instruction_length default.
MAX_INSTRUCTION_CHARS = 256
#: An episode id is a file stem: letters, digits, '-', '_', '.', not starting with '.', at most 128 characters.
EPISODE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_IMAGE_CHANNELS = {"rgb8": 3, "bgr8": 3, "mono8": 1}


class InputRejected(ValueError):
    """A message or request the fed client refuses; the message says why (bounded)."""

    def __init__(self, reason: str):
        super().__init__(bounded(reason))


def bounded(text, limit: int = MAX_LOG_CHARS) -> str:
    """`text` on one line and at most `limit` characters (the policy server's helper, this node's limit)."""
    return _bounded(text, limit)


def _finite(values) -> bool:
    return all(math.isfinite(v) for v in values)


def _check_names(names: Sequence[str], what: str) -> list[str]:
    names = [str(n) for n in names]
    if len(names) > MAX_JOINTS:
        raise InputRejected(f"{what}: {len(names)} joint names (at most {MAX_JOINTS})")
    if any(not n for n in names):
        raise InputRejected(f"{what}: empty joint name")
    if len(set(names)) != len(names):
        raise InputRejected(f"{what}: repeated joint names {names}")
    return names


def check_joint_state(names: Sequence[str], positions: Sequence[float], velocities: Sequence[float] = (),
                      efforts: Sequence[float] = ()) -> dict[str, float]:
    """name -> position of a sensor_msgs/JointState, or InputRejected (ragged, non-finite, repeated names)."""
    names = _check_names(names, "joint_states")
    positions = [float(v) for v in positions]
    if len(positions) != len(names):
        raise InputRejected(f"joint_states: {len(names)} names but {len(positions)} positions")
    for label, values in (("velocities", velocities), ("efforts", efforts)):
        if len(values) not in (0, len(names)):
            raise InputRejected(f"joint_states: {len(values)} {label} for {len(names)} names (0 or one each)")
    if not _finite(positions):
        bad = [n for n, v in zip(names, positions) if not math.isfinite(v)]
        raise InputRejected(f"joint_states: non-finite position of {bad}")
    return dict(zip(names, positions))


def check_trajectory(names: Sequence[str], times_from_start: Sequence[float],
                     positions: Sequence[Sequence[float]]) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(names, times (N,), positions (N, J)) of a JointTrajectory, or InputRejected.

    The rules of the sim's controller and of joint_trajectory_controller: one position per joint
    name in every point, finite numbers, time_from_start >= 0 and strictly increasing. No points is
    valid (it means: stop).
    """
    names = _check_names(names, "trajectory")
    if len(positions) != len(times_from_start):
        raise InputRejected(f"trajectory: {len(positions)} position rows for {len(times_from_start)} points")
    if len(positions) > MAX_TRAJECTORY_POINTS:
        raise InputRejected(f"trajectory: {len(positions)} points (at most {MAX_TRAJECTORY_POINTS})")
    if len(positions) and not names:
        raise InputRejected("trajectory: points but no joint names")
    for k, row in enumerate(positions):
        if len(row) != len(names):
            raise InputRejected(f"trajectory: point {k} has {len(row)} positions for {len(names)} joint names")
    times = np.asarray([float(t) for t in times_from_start], dtype=np.float64)
    q = np.asarray([[float(v) for v in row] for row in positions], dtype=np.float64).reshape(len(times), len(names))
    if not (np.all(np.isfinite(times)) and np.all(np.isfinite(q))):
        raise InputRejected("trajectory: non-finite time_from_start or position")
    if len(times) and times[0] < 0:
        raise InputRejected(f"trajectory: time_from_start {times[0]:.3f} s < 0")
    if np.any(np.diff(times) <= 0):
        raise InputRejected("trajectory: time_from_start must increase strictly")
    return names, times, q


def check_image_header(encoding: str, height: int, width: int, step: int, data_bytes: int) -> None:
    """The cheap part of decoding a sensor_msgs/Image: known encoding, sane size, enough bytes."""
    if encoding not in _IMAGE_CHANNELS:
        raise InputRejected(f"image: unsupported encoding {bounded(encoding, 40)!r} (supported: "
                            f"{', '.join(_IMAGE_CHANNELS)})")
    if not (0 < height <= MAX_IMAGE_SIDE and 0 < width <= MAX_IMAGE_SIDE):
        raise InputRejected(f"image: size {width}x{height} outside 1..{MAX_IMAGE_SIDE} pixels")
    row = width * _IMAGE_CHANNELS[encoding]
    if step < row:
        raise InputRejected(f"image: step {step} < width * channels = {row}")
    if data_bytes < step * height:
        raise InputRejected(f"image: {data_bytes} data bytes, step * height needs {step * height}")


def check_episode_id(episode_id: str) -> str:
    """`episode_id` when it is a plain file stem ('' stays '': the recorder then makes one), else InputRejected."""
    if episode_id and not EPISODE_ID_PATTERN.fullmatch(episode_id):
        raise InputRejected(f"episode_id {bounded(episode_id, 80)!r} is not a plain file stem "
                            f"({EPISODE_ID_PATTERN.pattern})")
    return episode_id


def check_instruction(text: str, required: bool = True) -> str:
    """A printable instruction of at most MAX_INSTRUCTION_CHARS characters (surrounding space removed)."""
    text = str(text).strip()
    if required and not text:
        raise InputRejected("instruction is empty")
    if len(text) > MAX_INSTRUCTION_CHARS:
        raise InputRejected(f"instruction has {len(text)} characters (at most {MAX_INSTRUCTION_CHARS})")
    if not text.isprintable():
        raise InputRejected(f"instruction {bounded(text, 60)!r} holds non-printable characters")
    return text
