"""EpisodeWriter: records one episode into one crash-safe MCAP file.

Why the temporary name: a robot can lose power or be SIGKILLed at any moment. The writer
streams into ``.<episode_id>.mcap.partial``; only :meth:`EpisodeWriter.close` finishes the MCAP
(summary + footer), fsyncs the file, renames it to ``<episode_id>.mcap`` (atomic on POSIX)
and fsyncs the directory. Readers only ever list ``*.mcap`` names that do not start with a
dot, so a half-written episode is never used, and a finished one is never touched again.
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from mcap.writer import CompressionType, Writer

from . import format as fmt
from .ros_schemas import schema_text, typestore


def new_episode_id(prefix: str = "") -> str:
    """A unique id that sorts by creation time: ``[prefix_]YYYYmmddTHHMMSS_<ns>_<rand>``."""
    now = time.time_ns()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now / 1e9))
    core = f"{stamp}_{now % 1_000_000_000:09d}_{uuid.uuid4().hex[:6]}"
    safe = "".join(c if c.isalnum() or c in "-_" else "-" for c in prefix)
    return f"{safe}_{core}" if safe else core


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class EpisodeWriter:
    """Writes one episode: ``add_step`` per control step, then ``close(success)`` or ``abort()``.

    Args:
        out_dir: folder of the robot's episodes (created if missing).
        episode_id: file stem; a time-sortable unique id when None.
        metadata: episode description stored in the ``episode`` metadata record; should hold
            ``instruction``, ``task``, ``seed``, ``suite``, ``robot_id`` (missing ones are stored empty).
        camera_names: cameras, in the order the policy sees them.
        joint_names: names of the proprioceptive joint positions.
        action_names: names of the action dimensions.
        compression: MCAP chunk compression, "lz4" (fast to decode, the default), "zstd" or "none".
    """

    def __init__(self, out_dir, episode_id: str | None = None, metadata: Mapping[str, Any] | None = None,
                 camera_names: Sequence[str] = (), joint_names: Sequence[str] = (),
                 action_names: Sequence[str] = (), compression: str = "lz4"):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        metadata = dict(metadata or {})
        self.episode_id = episode_id or new_episode_id(str(metadata.get("robot_id", "")))
        if "/" in self.episode_id or self.episode_id.startswith("."):
            raise ValueError(f"episode_id {self.episode_id!r} must be a plain file stem")
        self.camera_names = [str(c) for c in camera_names]
        self.joint_names = [str(j) for j in joint_names]
        self.action_names = [str(a) for a in action_names]
        self.metadata = metadata
        self.final_path = self.out_dir / f"{self.episode_id}{fmt.SUFFIX}"
        self.partial_path = self.out_dir / f".{self.episode_id}{fmt.PARTIAL_SUFFIX}"
        if self.final_path.exists():
            raise FileExistsError(f"episode {self.final_path} already exists")
        try:
            codec = {"lz4": CompressionType.LZ4, "zstd": CompressionType.ZSTD,
                     "none": CompressionType.NONE}[compression]
        except KeyError:
            raise ValueError(f"compression must be lz4, zstd or none, got {compression!r}") from None

        self._ts = typestore()
        self._types = self._ts.types
        self._file = open(self.partial_path, "wb")
        self._mcap = Writer(self._file, compression=codec)
        self._mcap.start(profile="ros2", library="fedvla_core.episodes")
        self._channels: dict[str, tuple[int, str]] = {}
        self._schema_ids: dict[str, int] = {}
        for cam in self.camera_names:
            self._channel(fmt.camera_topic(cam), "sensor_msgs/msg/Image")
        self._channel(fmt.JOINT_STATES_TOPIC, "sensor_msgs/msg/JointState")
        self._channel(fmt.ACTION_TOPIC, "std_msgs/msg/Float32MultiArray")
        self._channel(fmt.INSTRUCTION_TOPIC, "std_msgs/msg/String")
        self._channel(fmt.TRAJECTORY_TOPIC, "trajectory_msgs/msg/JointTrajectory")
        self.num_steps = 0
        self._image_shapes: dict[str, tuple] = {}  # camera -> frame shape of the first step
        self._sequence = 0
        self._done = False

    # -- channels and messages ------------------------------------------------------------
    def _channel(self, topic: str, msgtype: str) -> None:
        schemas = self._schema_ids
        if msgtype not in schemas:
            schemas[msgtype] = self._mcap.register_schema(
                name=msgtype, encoding="ros2msg", data=schema_text(msgtype).encode())
        cid = self._mcap.register_channel(topic=topic, message_encoding="cdr",
                                          schema_id=schemas[msgtype],
                                          metadata={"offered_qos_profiles": ""})
        self._channels[topic] = (cid, msgtype)

    def _write(self, topic: str, msg: Any, stamp_ns: int) -> None:
        cid, msgtype = self._channels[topic]
        data = self._ts.serialize_cdr(msg, msgtype)
        self._mcap.add_message(channel_id=cid, log_time=stamp_ns, publish_time=stamp_ns,
                               data=bytes(data), sequence=self._sequence)
        self._sequence += 1

    def _header(self, stamp_ns: int, frame_id: str):
        t = self._types
        stamp = t["builtin_interfaces/msg/Time"](sec=int(stamp_ns // 1_000_000_000),
                                                  nanosec=int(stamp_ns % 1_000_000_000))
        return t["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)

    # -- public API -------------------------------------------------------------------------
    def add_step(self, stamp_ns: int, images: Mapping[str, np.ndarray], joint_positions,
                 action, trajectory: Mapping[str, Any] | None = None) -> None:
        """Record one control step.

        Args:
            stamp_ns: time of the observation (ns); also the MCAP log time of every message of the step.
            images: camera name -> HxWx3 uint8 RGB array, one per ``camera_names``.
            joint_positions: proprioception vector, ``len(joint_names)`` long when names were given.
            action: the action the policy/expert took at this step, ``len(action_names)`` long.
            trajectory: optional commanded joint trajectory: ``{"joint_names": [...],
                "positions": (N, J), "time_from_start": (N,) seconds, "velocities": (N, J) optional}``.
        """
        if self._done:
            raise RuntimeError("episode already closed")
        self._check_step(images, joint_positions, action)  # before writing anything: a refused step leaves no trace
        t = self._types
        stamp_ns = int(stamp_ns)
        if self.num_steps == 0:
            self._write(fmt.INSTRUCTION_TOPIC,
                        t["std_msgs/msg/String"](data=str(self.metadata.get("instruction", ""))), stamp_ns)
        missing = set(self.camera_names) - set(images)
        if missing:
            raise ValueError(f"images is missing cameras {sorted(missing)}")
        for cam in self.camera_names:
            img = np.ascontiguousarray(images[cam])
            if img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
                raise ValueError(f"images[{cam!r}] must be HxWx3 uint8, got {img.dtype} {img.shape}")
            h, w, _ = img.shape
            msg = t["sensor_msgs/msg/Image"](
                header=self._header(stamp_ns, cam), height=h, width=w, encoding="rgb8",
                is_bigendian=0, step=w * 3, data=img.reshape(-1))
            self._write(fmt.camera_topic(cam), msg, stamp_ns)

        q = np.asarray(joint_positions, dtype=np.float64).reshape(-1)
        if self.joint_names and q.size != len(self.joint_names):
            raise ValueError(f"joint_positions has {q.size} values, joint_names {len(self.joint_names)}")
        empty = np.zeros(0, dtype=np.float64)
        self._write(fmt.JOINT_STATES_TOPIC, t["sensor_msgs/msg/JointState"](
            header=self._header(stamp_ns, ""), name=list(self.joint_names), position=q,
            velocity=empty, effort=empty), stamp_ns)

        a = np.asarray(action, dtype=np.float32).reshape(-1)
        if self.action_names and a.size != len(self.action_names):
            raise ValueError(f"action has {a.size} values, action_names {len(self.action_names)}")
        dim = t["std_msgs/msg/MultiArrayDimension"](label=",".join(self.action_names), size=a.size,
                                                      stride=a.size)
        layout = t["std_msgs/msg/MultiArrayLayout"](dim=[dim], data_offset=0)
        self._write(fmt.ACTION_TOPIC, t["std_msgs/msg/Float32MultiArray"](layout=layout, data=a), stamp_ns)

        if trajectory is not None:
            self._write(fmt.TRAJECTORY_TOPIC, self._trajectory_msg(stamp_ns, trajectory), stamp_ns)
        self.num_steps += 1

    def _check_step(self, images: Mapping[str, np.ndarray], joint_positions, action) -> None:
        """Refuse (ValueError) a step that would poison training: non-finite numbers, cameras changing size."""
        missing = set(self.camera_names) - set(images)
        if missing:
            raise ValueError(f"images is missing cameras {sorted(missing)}")
        shapes = {cam: tuple(np.shape(images[cam])) for cam in self.camera_names}
        for cam, shape in shapes.items():
            first = self._image_shapes.get(cam, shape)
            if shape != first:
                raise ValueError(f"images[{cam!r}] is {shape}, earlier steps of this episode {first}")
        if not np.all(np.isfinite(np.asarray(joint_positions, dtype=np.float64))):
            raise ValueError("joint_positions holds a non-finite value")
        if not np.all(np.isfinite(np.asarray(action, dtype=np.float64))):
            raise ValueError("action holds a non-finite value")
        self._image_shapes = shapes

    def _trajectory_msg(self, stamp_ns: int, traj: Mapping[str, Any]):
        t = self._types
        pos = np.asarray(traj["positions"], dtype=np.float64)
        if pos.ndim != 2:
            raise ValueError("trajectory['positions'] must be (N, J)")
        tfs = np.asarray(traj["time_from_start"], dtype=np.float64).reshape(-1)
        vel = traj.get("velocities")
        vel = None if vel is None else np.asarray(vel, dtype=np.float64)
        empty = np.zeros(0, dtype=np.float64)
        points = []
        for k in range(pos.shape[0]):
            sec = int(np.floor(tfs[k]))
            points.append(t["trajectory_msgs/msg/JointTrajectoryPoint"](
                positions=pos[k], velocities=empty if vel is None else vel[k], accelerations=empty,
                effort=empty, time_from_start=t["builtin_interfaces/msg/Duration"](
                    sec=sec, nanosec=int(round((tfs[k] - sec) * 1e9)) % 1_000_000_000)))
        return t["trajectory_msgs/msg/JointTrajectory"](
            header=self._header(stamp_ns, ""), joint_names=list(traj.get("joint_names", self.joint_names)),
            points=points)

    def close(self, success: bool, extra_metadata: Mapping[str, Any] | None = None) -> Path:
        """Finish the episode: write metadata, close, fsync, rename to ``<episode_id>.mcap``; returns its path."""
        if self._done:
            raise RuntimeError("episode already closed")
        meta = {key: "" for key in ("instruction", "task", "suite", "robot_id")}
        meta["seed"] = -1
        meta.update(self.metadata)
        meta.update(extra_metadata or {})
        meta.update(success=bool(success), episode_id=self.episode_id, num_steps=self.num_steps,
                    camera_names=self.camera_names, joint_names=self.joint_names,
                    action_names=self.action_names, format_version=fmt.FORMAT_VERSION)
        self._mcap.add_metadata(fmt.METADATA_NAME, fmt.encode_metadata(meta))
        self._mcap.finish()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        self._done = True
        os.replace(self.partial_path, self.final_path)
        _fsync_dir(self.out_dir)
        return self.final_path

    def abort(self) -> None:
        """Drop the episode: close and delete the temporary file (nothing is ever renamed)."""
        if self._done:
            return
        self._done = True
        try:
            self._file.close()
        finally:
            self.partial_path.unlink(missing_ok=True)

    def __enter__(self) -> "EpisodeWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._done:
            self.abort()  # leaving the block without close() (or on an error) drops the episode
