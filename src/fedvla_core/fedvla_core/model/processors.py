"""What happens to the data before and after the network (LeRobot's "processors"), apart from the architecture.

  - :class:`Normalizer`: mean/std of actions and proprioception, and (un)normalizing with them;
  - :class:`RelativeActions`: the first N action dims as offsets from the chunk's starting proprio;
  - :func:`images_to_float`: camera images (uint8 or float) -> the encoder's float range and size;
  - :func:`observation_to_batch`: one robot observation (numpy, per camera) -> a batch of one;
  - :func:`compute_normalization`: the statistics the Normalizer holds, from a dataset.

Why the policy still holds the Normalizer as a submodule (``policy.normalizer``): its statistics are
persistent buffers, saved as ``normalizer.*`` in every checkpoint (e.g. checkpoints/panda_base), so
``from_pretrained``/``save_pretrained`` carry them with no change of format, ``.to(device)`` moves
them with the weights, and a checkpoint is a complete policy. They are in no federated group (see
fedvla_core.federated.split): a robot's statistics never leave it. The policy's forward, act and
predict_action_chunk call these processors on raw batches, so their callers are unchanged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

#: A standard deviation below this (a constant dimension) is replaced by 1 when statistics are stored.
MIN_STD = 1e-4


class Normalizer(nn.Module):
    """Mean/std of actions and proprioception as persistent buffers, so checkpoints carry them.

    Until :meth:`set_stats` is called they are the identity (mean 0, std 1) and ``is_set`` is False.
    """

    STAT_NAMES = ("action_mean", "action_std", "proprio_mean", "proprio_std")

    def __init__(self, action_dim: int, proprio_dim: int):
        super().__init__()
        self.register_buffer("action_mean", torch.zeros(action_dim))
        self.register_buffer("action_std", torch.ones(action_dim))
        self.register_buffer("proprio_mean", torch.zeros(proprio_dim))
        self.register_buffer("proprio_std", torch.ones(proprio_dim))
        self.register_buffer("is_set", torch.zeros((), dtype=torch.bool))

    @torch.no_grad()
    def set_stats(self, action_mean, action_std, proprio_mean, proprio_std) -> None:
        """Store dataset statistics (tensors or arrays); a std below MIN_STD is replaced by 1."""
        for name, value in zip(self.STAT_NAMES, (action_mean, action_std, proprio_mean, proprio_std)):
            buf = getattr(self, name)
            value = value.detach().cpu() if isinstance(value, torch.Tensor) else np.asarray(value)
            t = torch.as_tensor(value, dtype=buf.dtype).reshape(-1).to(buf.device)
            if t.numel() != buf.numel():
                raise ValueError(f"set_normalization: {name} has {t.numel()} values, expected {buf.numel()}")
            if name.endswith("std"):
                t = torch.where(t < MIN_STD, torch.ones_like(t), t)
            buf.copy_(t)
        self.is_set.fill_(True)

    @property
    def has_stats(self) -> bool:
        return bool(self.is_set)

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return (actions - self.action_mean) / self.action_std

    def unnormalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return actions * self.action_std + self.action_mean

    def normalize_proprio(self, proprio: torch.Tensor) -> torch.Tensor:
        return (proprio - self.proprio_mean) / self.proprio_std

    def unnormalize_proprio(self, proprio: torch.Tensor) -> torch.Tensor:
        return proprio * self.proprio_std + self.proprio_mean


@dataclass(frozen=True)
class RelativeActions:
    """The first ``dims`` action dims as offsets from the first ``dims`` proprio values at the chunk's start.

    ``proprio`` is (..., P) for actions (..., H, A): one base per chunk. dims = 0 is the identity
    (absolute actions; false in a boolean test). See FedVLAConfig.relative_action_dims for why.
    """

    dims: int = 0

    def __bool__(self) -> bool:
        return self.dims > 0

    def base(self, proprio: torch.Tensor) -> torch.Tensor:
        """(..., 1, dims): what the first dims actions of each chunk are offsets from."""
        return proprio[..., None, :self.dims]

    def to_model(self, actions: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        """Absolute actions -> what the model predicts (offsets in the first dims)."""
        if not self.dims:
            return actions
        n = self.dims
        return torch.cat([actions[..., :n] - self.base(proprio), actions[..., n:]], dim=-1)

    def from_model(self, actions: torch.Tensor, proprio: torch.Tensor) -> torch.Tensor:
        """Inverse of :meth:`to_model`."""
        if not self.dims:
            return actions
        n = self.dims
        return torch.cat([actions[..., :n] + self.base(proprio), actions[..., n:]], dim=-1)


def images_to_float(images: torch.Tensor, size: int) -> torch.Tensor:
    """(..., 3, H, W) uint8 in [0, 255] or float in [0, 1] -> float in [-1, 1] at size x size."""
    lead = images.shape[:-3]
    x = images.reshape(-1, *images.shape[-3:])
    x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
    if x.shape[-2:] != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return (x * 2.0 - 1.0).reshape(*lead, 3, size, size)


def observation_to_batch(observation: dict[str, Any], camera_names, image_size: int, with_masks: bool
                         ) -> dict[str, Any]:
    """One robot observation (HxWx3 uint8 per camera, instruction, proprio) -> a batch of one.

    Images come out as float in [0, 1], (1, n_cams, 3, S, S) in ``camera_names`` order, resized to
    ``image_size`` when they have another size; ``masks`` ({camera: HxW ids}) only when ``with_masks``.
    """
    size = image_size
    frames = []
    for cam in camera_names:
        if cam not in observation["images"]:
            raise KeyError(f"observation: no image for camera {cam!r} (have {sorted(observation['images'])})")
        img = torch.from_numpy(np.ascontiguousarray(observation["images"][cam])).permute(2, 0, 1)
        if img.shape[-2:] != (size, size):
            img = F.interpolate(img[None].float() / 255.0, size=(size, size), mode="bilinear",
                                align_corners=False, antialias=True)[0]
        frames.append(img.float() / 255.0 if img.dtype == torch.uint8 else img)
    batch = {
        "images": torch.stack(frames)[None],
        "instruction": [str(observation["instruction"])],
        "proprio": torch.as_tensor(np.asarray(observation["proprio"], dtype=np.float32)).reshape(1, -1),
    }
    masks = observation.get("masks")
    if masks is not None and with_masks:
        batch["masks"] = torch.stack([torch.as_tensor(np.asarray(masks[c])) for c in camera_names])[None]
    return batch


def compute_normalization(dataset: Dataset, relative_action_dims: int = 0) -> dict[str, torch.Tensor]:
    """Mean/std of the model's action targets (non-padded steps) and of proprioception.

    With ``relative_action_dims`` N > 0 the first N action dims are taken relative to the chunk's
    starting proprio (what the policy learns, see FedVLAConfig.relative_action_dims).
    Uses ``dataset.stats()`` when the dataset offers it (the episode dataset does, without decoding
    images); otherwise iterates the samples once.
    """
    stats = getattr(dataset, "stats", None)
    if callable(stats):
        return {k: torch.as_tensor(v, dtype=torch.float32)
                for k, v in stats(relative_action_dims=relative_action_dims).items()}
    relative = RelativeActions(relative_action_dims)
    actions, proprio = [], []
    for i in range(len(dataset)):
        sample = dataset[i]
        act = torch.as_tensor(sample["actions"], dtype=torch.float32)
        if relative:
            act = relative.to_model(act, torch.as_tensor(sample["proprio"], dtype=torch.float32).reshape(-1))
        if "action_is_pad" in sample:
            act = act[~torch.as_tensor(sample["action_is_pad"]).bool()]
        actions.append(act.reshape(-1, act.shape[-1]))
        proprio.append(torch.as_tensor(sample["proprio"], dtype=torch.float32).reshape(1, -1))
    a, p = torch.cat(actions), torch.cat(proprio)
    return {"action_mean": a.mean(0), "action_std": a.std(0, unbiased=False),
            "proprio_mean": p.mean(0), "proprio_std": p.std(0, unbiased=False)}
