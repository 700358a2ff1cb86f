"""Reading finished episodes: listing, metadata, and full decoding into numpy arrays.

Only ``<id>.mcap`` files are episodes; ``.<id>.mcap.partial`` (being written, or left by a
killed writer) and any other dot-file are ignored. A finished file that cannot be read (which
the write protocol prevents, but disks fail) is skipped with a warning instead of stopping training.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from mcap.reader import make_reader

from . import format as fmt
from .ros_schemas import typestore

log = logging.getLogger(__name__)


@dataclass
class Episode:
    """A decoded episode. Arrays are indexed by step."""

    path: Path
    metadata: dict[str, Any]
    stamps_ns: np.ndarray                      # (T,) int64
    images: dict[str, np.ndarray]              # camera -> (T, H, W, 3) uint8
    joint_positions: np.ndarray                # (T, P) float32
    actions: np.ndarray                        # (T, A) float32
    trajectories: dict[int, dict] = field(default_factory=dict)  # step -> commanded trajectory

    @property
    def episode_id(self) -> str:
        return self.metadata["episode_id"]

    @property
    def instruction(self) -> str:
        return self.metadata.get("instruction", "")

    @property
    def success(self) -> bool:
        return bool(self.metadata.get("success", False))

    @property
    def num_steps(self) -> int:
        return int(self.actions.shape[0])


def _as_paths(dirs_or_files) -> list[Path]:
    if isinstance(dirs_or_files, (str, Path)):
        dirs_or_files = [dirs_or_files]
    return [Path(p) for p in dirs_or_files]


def _is_episode_file(path: Path) -> bool:
    return path.is_file() and path.name.endswith(fmt.SUFFIX) and not path.name.startswith(".")


def read_metadata(path) -> dict[str, Any]:
    """The decoded ``episode`` metadata record of a finished episode file."""
    with open(path, "rb") as f:
        reader = make_reader(f)
        for record in reader.iter_metadata():
            if record.name == fmt.METADATA_NAME:
                return fmt.decode_metadata(dict(record.metadata))
    raise ValueError(f"{path}: no '{fmt.METADATA_NAME}' metadata record")


def list_episodes(dirs_or_files, only_successful: bool = False) -> list[Path]:
    """Finished episode files under the given folders/files, oldest first (mtime, then name).

    Unreadable files are skipped with a warning; with ``only_successful`` episodes whose
    metadata says ``success: false`` are left out.
    """
    found: list[Path] = []
    for p in _as_paths(dirs_or_files):
        if p.is_dir():
            found.extend(c for c in p.iterdir() if _is_episode_file(c))
        elif _is_episode_file(p):
            found.append(p)
    out = []
    for path in found:
        if only_successful:
            try:
                if not read_metadata(path).get("success", False):
                    continue
            except Exception as err:  # noqa: BLE001 - a bad file must not stop the fleet
                log.warning("skipping unreadable episode %s: %s", path, err)
                continue
        out.append(path)
    out.sort(key=lambda q: (q.stat().st_mtime_ns, q.name))
    return out


def read_episode(path, cameras: Iterable[str] | None = None, with_trajectories: bool = False) -> Episode:
    """Decode a whole episode (only ``cameras`` when given) into numpy arrays."""
    path = Path(path)
    ts = typestore()
    meta = read_metadata(path)
    cams = list(meta.get("camera_names", [])) if cameras is None else list(cameras)
    unknown = set(cams) - set(meta.get("camera_names", []))
    if unknown:
        raise KeyError(f"{path}: no cameras {sorted(unknown)} (has {meta.get('camera_names')})")
    topic_to_cam = {fmt.camera_topic(c): c for c in cams}
    topics = list(topic_to_cam) + [fmt.JOINT_STATES_TOPIC, fmt.ACTION_TOPIC]
    if with_trajectories:
        topics.append(fmt.TRAJECTORY_TOPIC)

    frames: dict[str, list[np.ndarray]] = {c: [] for c in cams}
    joints: list[np.ndarray] = []
    actions: list[np.ndarray] = []
    stamps: list[int] = []
    traj_msgs: list[tuple[int, Any]] = []
    with open(path, "rb") as f:
        reader = make_reader(f)
        for schema, channel, message in reader.iter_messages(topics=topics, log_time_order=True):
            topic = channel.topic
            if topic in topic_to_cam:
                msg = ts.deserialize_cdr(message.data, schema.name)
                if msg.encoding != "rgb8":
                    raise ValueError(f"{path}: {topic} has encoding {msg.encoding}, expected rgb8")
                frames[topic_to_cam[topic]].append(
                    np.asarray(msg.data, dtype=np.uint8).reshape(msg.height, msg.width, 3))
            elif topic == fmt.JOINT_STATES_TOPIC:
                msg = ts.deserialize_cdr(message.data, schema.name)
                joints.append(np.asarray(msg.position, dtype=np.float32))
                stamps.append(message.log_time)
            elif topic == fmt.ACTION_TOPIC:
                msg = ts.deserialize_cdr(message.data, schema.name)
                actions.append(np.asarray(msg.data, dtype=np.float32))
            else:
                traj_msgs.append((message.log_time, ts.deserialize_cdr(message.data, schema.name)))

    n = len(actions)
    if len(joints) != n or any(len(v) != n for v in frames.values()):
        raise ValueError(f"{path}: per-step message counts differ (actions {n}, joint_states {len(joints)}, "
                         f"images {[len(v) for v in frames.values()]})")
    if int(meta.get("num_steps", n)) != n:
        raise ValueError(f"{path}: metadata num_steps {meta.get('num_steps')} but {n} steps stored")
    trajectories = {}
    if traj_msgs:
        index = {s: i for i, s in enumerate(stamps)}
        for stamp, msg in traj_msgs:
            trajectories[index.get(stamp, -1)] = {
                "joint_names": list(msg.joint_names),
                "positions": np.array([p.positions for p in msg.points], dtype=np.float64),
                "velocities": np.array([p.velocities for p in msg.points], dtype=np.float64),
                "time_from_start": np.array([p.time_from_start.sec + p.time_from_start.nanosec * 1e-9
                                             for p in msg.points]),
            }
    a_dim = len(meta.get("action_names", [])) or (actions[0].size if actions else 0)
    p_dim = len(meta.get("joint_names", [])) or (joints[0].size if joints else 0)
    return Episode(
        path=path, metadata=meta, stamps_ns=np.asarray(stamps, dtype=np.int64),
        images={c: (np.stack(v) if v else np.zeros((0, 0, 0, 3), np.uint8)) for c, v in frames.items()},
        joint_positions=np.stack(joints) if joints else np.zeros((0, p_dim), np.float32),
        actions=np.stack(actions) if actions else np.zeros((0, a_dim), np.float32),
        trajectories=trajectories)
