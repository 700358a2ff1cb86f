"""ROS 2 message schemas for episode files, built from the real .msg definitions (no rclpy).

MCAP files with the ``ros2`` profile embed each channel's schema as ``ros2msg`` text: the
top-level .msg file followed by one ``====...`` / ``MSG: pkg/Type`` block per nested type
(the layout rosbag2 writes). We read the .msg files that the ROS 2 wheels install under
``<prefix>/share/<pkg>/msg/`` so the schemas are exactly the distribution's, and we register the
same text in a rosbags typestore, which gives a fast pure-Python CDR encoder/decoder.
"""
from __future__ import annotations

import functools
import os
import re
import sys
from pathlib import Path

from rosbags.typesys import Stores, get_typestore, get_types_from_msg

#: Message types used by the episode format.
EPISODE_TYPES = (
    "sensor_msgs/msg/Image",
    "sensor_msgs/msg/JointState",
    "std_msgs/msg/Float32MultiArray",
    "std_msgs/msg/String",
    "trajectory_msgs/msg/JointTrajectory",
)

_PRIMITIVES = {
    "bool", "byte", "char", "float32", "float64", "int8", "uint8", "int16", "uint16",
    "int32", "uint32", "int64", "uint64", "string", "wstring", "time", "duration",
}
_SEPARATOR = "=" * 80


def _share_dirs() -> list[Path]:
    """Install prefixes' share/ folders: AMENT_PREFIX_PATH first, then this interpreter's prefix."""
    prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    prefixes += [sys.prefix, sys.base_prefix]
    seen, out = set(), []
    for prefix in prefixes:
        share = Path(prefix) / "share"
        if share.is_dir() and share not in seen:
            seen.add(share)
            out.append(share)
    return out


@functools.lru_cache(maxsize=None)
def msg_text(msgtype: str) -> str:
    """The .msg file text of ``pkg/msg/Type`` from an installed ROS 2 share folder."""
    pkg, _, name = msgtype.split("/")
    for share in _share_dirs():
        path = share / pkg / "msg" / f"{name}.msg"
        if path.is_file():
            return path.read_text()
    raise FileNotFoundError(
        f"ROS 2 message definition {msgtype}.msg not found under {[str(s) for s in _share_dirs()]}; "
        "install the ROS 2 interface packages (e.g. the rclpy wheels) or set AMENT_PREFIX_PATH")


def _field_types(text: str, own_pkg: str) -> list[str]:
    """Nested (non-primitive) types referenced by the fields of a .msg text, as pkg/msg/Type."""
    out = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        typ = line.split()[0]  # constants ("uint8 FOO=1") are always primitive, so skipped below
        base = re.sub(r"\[.*\]$", "", typ)
        base = re.sub(r"<=\d+$", "", base)
        if base in _PRIMITIVES:
            continue
        if base == "Header":
            base = "std_msgs/Header"
        parts = base.split("/")
        if len(parts) == 1:
            parts = [own_pkg, parts[0]]
        if len(parts) == 2:
            parts = [parts[0], "msg", parts[1]]
        full = "/".join(parts)
        if full not in out:
            out.append(full)
    return out


@functools.lru_cache(maxsize=None)
def schema_text(msgtype: str) -> str:
    """The ros2msg schema of ``msgtype``: its .msg text plus every nested type's block, depth first."""
    order: list[str] = []

    def visit(typ: str) -> None:
        for dep in _field_types(msg_text(typ), typ.split("/")[0]):
            if dep not in order:
                order.append(dep)
                visit(dep)

    visit(msgtype)
    parts = [msg_text(msgtype).rstrip("\n")]
    for dep in order:
        pkg, _, name = dep.split("/")
        # "MSG: pkg/Type" (without /msg/) as rosbag2 writes it; Foxglove's parser rejects the long form.
        parts.append(f"{_SEPARATOR}\nMSG: {pkg}/{name}\n{msg_text(dep).rstrip(chr(10))}")
    return "\n".join(parts) + "\n"


@functools.lru_cache(maxsize=1)
def typestore():
    """A rosbags typestore holding exactly the installed definitions of :data:`EPISODE_TYPES`."""
    store = get_typestore(Stores.EMPTY)
    types = {}
    for typ in EPISODE_TYPES:
        types.update(get_types_from_msg(schema_text(typ), typ))
    store.register(types)
    return store
