"""EpisodeDataset: the robot's episode files as a map-style torch Dataset of action chunks.

Episodes are small (a robot keeps tens of them), so every episode is decoded once, resized
and stored in memory as compact uint8/float32 arrays; ``__getitem__`` only slices. Decoding once
matters more than anything else for training speed: a sample is then a few array views.

One bad episode never stops training and never reaches it: a file that cannot be decoded, lacks
a camera, holds a non-finite joint position or action, or whose dimensions differ from the
expected ones (the policy's, when given; else the first usable episode's) is skipped with a
warning and listed in ``skipped`` (path -> reason).
"""
from __future__ import annotations

import logging
from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .reader import list_episodes, read_episode

log = logging.getLogger(__name__)


def _resize(frames: np.ndarray, size: int | None) -> np.ndarray:
    """(T, H, W, 3) uint8 -> (T, 3, S, S) uint8 (no resize when size is None or already S)."""
    if size is not None and frames.shape[1:3] != (size, size):
        import cv2

        frames = np.stack([cv2.resize(f, (size, size), interpolation=cv2.INTER_AREA) for f in frames])
    return np.ascontiguousarray(frames.transpose(0, 3, 1, 2))


class EpisodeDataset(Dataset):
    """One sample per step of every (successful) episode.

    Sample: ``images`` uint8 (n_cams, 3, S, S); ``instruction`` str; ``proprio`` float32 (P,);
    ``actions`` float32 (chunk_size, A) = actions t..t+H-1, padded with the episode's last action;
    ``action_is_pad`` bool (H,); ``episode_id`` str.

    Args:
        dirs_or_files: episode folders and/or ``.mcap`` files.
        camera_names: cameras to stack, in order (None: the first episode's cameras).
        chunk_size: H, the action-chunk length.
        only_successful: skip episodes whose metadata says the task failed.
        image_size: S, resize frames to SxS (None: keep the recorded size).
        action_dim, proprio_dim: the lengths the consumer (the policy) needs; None: the first usable episode's.
    """

    def __init__(self, dirs_or_files, camera_names: Sequence[str] | None = None, chunk_size: int = 1,
                 only_successful: bool = True, image_size: int | None = None, action_dim: int | None = None,
                 proprio_dim: int | None = None):
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if image_size is not None and image_size < 1:
            raise ValueError(f"image_size must be >= 1 or None, got {image_size}")
        self.chunk_size = int(chunk_size)
        self.image_size = image_size
        self.paths = list_episodes(dirs_or_files, only_successful=only_successful)
        self.camera_names = list(camera_names) if camera_names is not None else None
        self.episode_ids: list[str] = []
        self.instructions: list[str] = []
        self.metadata: list[dict] = []
        self.skipped: dict[str, str] = {}  # episode file -> why it was left out
        self._expected = {"action": action_dim, "proprio": proprio_dim, "frame": None}
        self._images: list[np.ndarray] = []
        self._proprio: list[np.ndarray] = []
        self._actions: list[np.ndarray] = []
        index: list[tuple[int, int]] = []
        for path in self.paths:
            try:
                ep = read_episode(path, cameras=self.camera_names)
                if ep.num_steps == 0:
                    continue
                cameras = self.camera_names if self.camera_names is not None else list(
                    ep.metadata.get("camera_names", []))
                self._check(ep, cameras)
                cams = [_resize(ep.images[c], image_size) for c in cameras]
                frames = np.stack(cams, axis=1)  # (T, n_cams, 3, S, S); cameras of different sizes fail here
            except Exception as err:  # noqa: BLE001 - one bad file must not stop training
                self.skipped[str(path)] = f"{type(err).__name__}: {err}"
                log.warning("skipping episode %s: %s", path, self.skipped[str(path)])
                continue
            self.camera_names = cameras
            for key, value in (("action", ep.actions.shape[1]), ("proprio", ep.joint_positions.shape[1]),
                               ("frame", cams[0].shape[1:] if cams else ())):
                self._expected[key] = value if self._expected[key] is None else self._expected[key]
            e = len(self._actions)
            self._images.append(frames)
            self._proprio.append(ep.joint_positions.astype(np.float32))
            self._actions.append(ep.actions.astype(np.float32))
            self.episode_ids.append(ep.episode_id)
            self.instructions.append(ep.instruction)
            self.metadata.append(ep.metadata)
            index.extend((e, t) for t in range(ep.num_steps))
        self._index = np.asarray(index, dtype=np.int64).reshape(-1, 2)

    def _check(self, ep, cameras: list[str]) -> None:
        """Raise ValueError when `ep` must not be trained on (non-finite values, dimensions that do not fit)."""
        if not (np.all(np.isfinite(ep.actions)) and np.all(np.isfinite(ep.joint_positions))):
            raise ValueError("non-finite joint position or action")
        for key, value in (("action", ep.actions.shape[1]), ("proprio", ep.joint_positions.shape[1])):
            if self._expected[key] is not None and value != self._expected[key]:
                raise ValueError(f"{key} dim {value}, expected {self._expected[key]}")
        if not cameras:
            raise ValueError("no cameras")
        if self.image_size is None and self._expected["frame"] is not None:
            for c in cameras:
                shape = ep.images[c].shape[1:3]
                if (3, *shape) != tuple(self._expected["frame"]):
                    raise ValueError(f"camera {c} frames {shape}, earlier episodes {self._expected['frame'][1:]}")

    @property
    def num_episodes(self) -> int:
        return len(self._actions)

    @property
    def action_dim(self) -> int:
        return self._actions[0].shape[1] if self._actions else 0

    @property
    def proprio_dim(self) -> int:
        return self._proprio[0].shape[1] if self._proprio else 0

    def __len__(self) -> int:
        return int(self._index.shape[0])

    def __getitem__(self, i: int) -> dict:
        e, t = (int(v) for v in self._index[i])
        acts = self._actions[e]
        n = acts.shape[0]
        idx = np.minimum(np.arange(t, t + self.chunk_size), n - 1)
        return {
            "images": torch.from_numpy(self._images[e][t]),
            "instruction": self.instructions[e],
            "proprio": torch.from_numpy(self._proprio[e][t]),
            "actions": torch.from_numpy(acts[idx]),
            "action_is_pad": torch.from_numpy(np.arange(t, t + self.chunk_size) >= n),
            "episode_id": self.episode_ids[e],
        }

    def stats(self, relative_action_dims: int = 0) -> dict[str, torch.Tensor]:
        """Per-dimension mean and std of action targets and proprio over all steps (std floored at 1e-6).

        With ``relative_action_dims`` N > 0 the first N action dims are offsets from the proprio at
        the chunk's start, over every (start, chunk position) pair that is not padding: exactly the
        targets a policy with FedVLAConfig.relative_action_dims=N learns.
        """
        if not self._actions:
            raise ValueError("EpisodeDataset.stats(): the dataset has no episodes")
        n = int(relative_action_dims)
        if n:
            targets = []
            for acts, prop in zip(self._actions, self._proprio):
                steps = acts.shape[0]
                for k in range(min(self.chunk_size, steps)):
                    rel = acts[k:].copy()
                    rel[:, :n] -= prop[:steps - k, :n]
                    targets.append(rel)
            acts = np.concatenate(targets)
        else:
            acts = np.concatenate(self._actions)
        prop = np.concatenate(self._proprio)
        return {
            "action_mean": torch.from_numpy(acts.mean(0)),
            "action_std": torch.from_numpy(np.maximum(acts.std(0), 1e-6)),
            "proprio_mean": torch.from_numpy(prop.mean(0)),
            "proprio_std": torch.from_numpy(np.maximum(prop.std(0), 1e-6)),
        }
