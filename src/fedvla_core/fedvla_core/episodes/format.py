"""The episode file format: topic names, metadata keys and how metadata values are encoded.

One MCAP file (profile ``ros2``, CDR messages, ``ros2msg`` schemas) per episode:

===================================  =================================  =====================================
topic                                type                               one message per
===================================  =================================  =====================================
``/camera/<name>/image_raw``         sensor_msgs/msg/Image (rgb8)       step and camera
``/joint_states``                    sensor_msgs/msg/JointState         step (position = proprioception)
``/action``                          std_msgs/msg/Float32MultiArray     step (dim label = comma-joined names)
``/instruction``                     std_msgs/msg/String                episode (at the first step)
``/commanded_trajectory``            trajectory_msgs/msg/JointTrajectory step where the controller got one
===================================  =================================  =====================================

All messages of one step share its log time. A metadata record named ``episode`` holds the
episode's description (MCAP metadata is a str->str map: strings are stored as they are, every
other value as JSON). Finished files are ``<episode_id>.mcap``; a file being written is
``.<episode_id>.mcap.partial`` and is never read.
"""
from __future__ import annotations

import json
from typing import Any

FORMAT_VERSION = "1"
METADATA_NAME = "episode"
SUFFIX = ".mcap"
PARTIAL_SUFFIX = ".mcap.partial"

JOINT_STATES_TOPIC = "/joint_states"
ACTION_TOPIC = "/action"
INSTRUCTION_TOPIC = "/instruction"
TRAJECTORY_TOPIC = "/commanded_trajectory"

#: Metadata keys whose values are always plain strings (never JSON-decoded on read).
STRING_KEYS = frozenset({"instruction", "task", "suite", "robot_id", "episode_id", "format_version"})
#: Keys every finished episode carries.
REQUIRED_KEYS = ("instruction", "success", "task", "seed", "suite", "robot_id", "episode_id",
                 "num_steps", "camera_names", "joint_names", "action_names")


def camera_topic(name: str) -> str:
    """Topic of camera ``name``: ``/camera/<name>/image_raw``."""
    return f"/camera/{name}/image_raw"


def encode_metadata(values: dict[str, Any]) -> dict[str, str]:
    """Encode a metadata dict for MCAP: strings raw, everything else JSON."""
    out = {}
    for key, value in values.items():
        if isinstance(value, str):
            out[str(key)] = value
        else:
            if hasattr(value, "tolist"):  # numpy scalars / arrays
                value = value.tolist()
            out[str(key)] = json.dumps(value)
    return out


def decode_metadata(values: dict[str, str]) -> dict[str, Any]:
    """Inverse of :func:`encode_metadata` (string keys stay strings; others are JSON when they parse)."""
    out: dict[str, Any] = {}
    for key, raw in values.items():
        if key in STRING_KEYS:
            out[key] = raw
            continue
        try:
            out[key] = json.loads(raw)
        except (ValueError, TypeError):
            out[key] = raw
    return out
