"""Training data that lives where the model trains: a batch is a handful of index gathers.

A map-style dataset of single samples (the episode dataset, a benchmark's synthetic set) is read
once, in blocks, into a few big tensors on the training device: camera images as uint8
(N, n_cams, 3, S, S), proprioception, action chunks and their padding masks, and one instruction id
per sample. Instructions are embedded once per unique text (a table of MiniLM features, padded to
the longest text, so every batch has the same token length). A training step then gathers rows by
index; there is no per-sample Python, no collation, no host-to-device copy, and no host
synchronisation, so the step can run ahead of the host and its shapes never change (what
torch.compile and CUDA graphs need). Image augmentation stays in the model's forward (on the same
device, see FedVLAConfig.image_shift_aug).

When the images do not fit in the GPU's free memory, they stay in pinned host memory and each
batch is gathered there and copied asynchronously (slower, but the same batches).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from typing import Any

import torch

from .model.processors import RelativeActions

log = logging.getLogger(__name__)

#: Sample keys stored as tensors (any other key, e.g. episode_id, is not needed for training).
TENSOR_KEYS = ("images", "proprio", "actions", "action_is_pad", "masks")
#: Fraction of the GPU's free memory the stored samples may take (the model and activations need the rest).
GPU_MEMORY_SHARE = 0.6


def concrete_device(device: torch.device | str) -> torch.device:
    """`device` with its index ("cuda" -> "cuda:0"), as tensors report it: the storage-vs-training device test in
    gather() compares the two, and torch.device("cuda") != torch.device("cuda:0")."""
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


class DeviceDataset:
    """Samples as stacked tensors on one device; :meth:`gather` turns an index tensor into a batch.

    Build it with :meth:`from_dataset`. A batch holds ``images``, ``proprio``, ``actions``,
    ``action_is_pad`` (and ``masks`` when the samples have them) plus the instruction features
    ``lang_pooled`` (B, D), ``lang_tokens`` (B, T, D), ``lang_mask`` (B, T) and ``instruction_id`` (B,):
    exactly what FedVLAPolicy.forward reads.
    """

    def __init__(self, tensors: dict[str, torch.Tensor], instruction_ids: torch.Tensor, instructions: Sequence[str],
                 language: tuple[torch.Tensor, torch.Tensor, torch.Tensor], device: torch.device):
        n = int(instruction_ids.shape[0])
        for key, t in tensors.items():
            if t.shape[0] != n:
                raise ValueError(f"DeviceDataset: {key} has {t.shape[0]} rows, expected {n}")
        if "images" not in tensors or "actions" not in tensors or "proprio" not in tensors:
            raise ValueError("DeviceDataset: samples need images, proprio and actions")
        if language[0].shape[0] != len(instructions):
            raise ValueError("DeviceDataset: one language row per unique instruction is needed")
        self.device = concrete_device(device)
        self.tensors = dict(tensors)
        if "action_is_pad" not in self.tensors:
            self.tensors["action_is_pad"] = torch.zeros(self.tensors["actions"].shape[:2], dtype=torch.bool,
                                                        device=self.tensors["actions"].device)
        self.instruction_ids = instruction_ids
        self.instructions = list(instructions)
        self.lang_pooled, self.lang_tokens, self.lang_mask = (t.to(self.device) for t in language)

    # ------------------------------------------------------------------ building
    @classmethod
    def from_dataset(cls, dataset, device: torch.device | str, language_encoder, block: int = 512
                     ) -> "DeviceDataset":
        """Read every sample of a map-style dataset once (``block`` samples at a time) onto `device`.

        language_encoder: anything with ``table(texts, device) -> (pooled, tokens, mask)``
        (FrozenSentenceEncoder; the policy's ``language_encoder``).
        """
        device = concrete_device(device)
        n = len(dataset)
        if n == 0:
            raise ValueError("DeviceDataset: the dataset is empty")
        first = dataset[0]
        missing = [k for k in ("images", "proprio", "actions", "instruction") if k not in first]
        if missing:
            raise ValueError(f"DeviceDataset: samples lack {missing} (have {sorted(first)})")
        keys = [k for k in TENSOR_KEYS if first.get(k) is not None]
        shapes = {k: tuple(torch.as_tensor(first[k]).shape) for k in keys}
        dtypes = {k: _storage_dtype(k, torch.as_tensor(first[k]).dtype) for k in keys}
        nbytes = sum(n * math.prod(shapes[k]) * torch.empty((), dtype=dtypes[k]).element_size() for k in keys)
        storage = device
        if device.type == "cuda":
            free, _ = torch.cuda.mem_get_info(device)
            if nbytes > GPU_MEMORY_SHARE * free:
                log.warning("DeviceDataset: %.1f GB of samples do not fit in %.0f%% of the GPU's %.1f GB free; "
                            "keeping them in pinned host memory", nbytes / 1e9, 100 * GPU_MEMORY_SHARE, free / 1e9)
                storage = torch.device("cpu")
        pin = storage.type == "cpu" and device.type == "cuda"
        tensors = {k: torch.empty((n, *shapes[k]), dtype=dtypes[k], device=storage, pin_memory=pin) for k in keys}
        ids: list[int] = []
        vocabulary: dict[str, int] = {}
        for start in range(0, n, block):
            samples = [first if i == 0 else dataset[i] for i in range(start, min(n, start + block))]
            for k in keys:
                values = [torch.as_tensor(s[k]) for s in samples]
                bad = [start + j for j, v in enumerate(values) if tuple(v.shape) != shapes[k]]
                if bad:
                    raise ValueError(f"DeviceDataset: sample {bad[0]} has {k} of shape "
                                     f"{tuple(torch.as_tensor(dataset[bad[0]][k]).shape)}, expected {shapes[k]}")
                tensors[k][start:start + len(samples)].copy_(torch.stack(values).to(dtypes[k]))
            for s in samples:
                text = str(s["instruction"])
                ids.append(vocabulary.setdefault(text, len(vocabulary)))
        instructions = sorted(vocabulary, key=vocabulary.get)
        language = language_encoder.table(instructions, device)
        instruction_ids = torch.tensor(ids, dtype=torch.long, device=storage)
        return cls(tensors, instruction_ids, instructions, language, device)

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return int(self.instruction_ids.shape[0])

    @property
    def storage_device(self) -> torch.device:
        return self.tensors["images"].device

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def gather(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """The batch of samples `idx` (a long tensor on the training device): index gathers only."""
        if self.storage_device != self.device and self.storage_device.type == "cpu":  # host-resident fallback: gather on the host, copy async
            host_idx = idx.to(self.storage_device)
            batch = {k: t.index_select(0, host_idx).pin_memory().to(self.device, non_blocking=True)
                     for k, t in self.tensors.items()}
            ids = self.instruction_ids.index_select(0, host_idx).to(self.device, non_blocking=True)
        else:
            batch = {k: t.index_select(0, idx) for k, t in self.tensors.items()}
            ids = self.instruction_ids.index_select(0, idx)
        batch["instruction_id"] = ids
        batch["lang_pooled"] = self.lang_pooled.index_select(0, ids)
        batch["lang_tokens"] = self.lang_tokens.index_select(0, ids)
        batch["lang_mask"] = self.lang_mask.index_select(0, ids)
        return batch

    def instruction_texts(self, batch: dict[str, Any]) -> list[str]:
        """The instruction strings of a gathered batch (host sync: for logging and tests, not the step)."""
        return [self.instructions[i] for i in batch["instruction_id"].tolist()]

    def stats(self, relative_action_dims: int = 0) -> dict[str, torch.Tensor]:
        """Mean/std of the non-padded action targets and of proprio (as training.compute_normalization)."""
        actions = self.tensors["actions"].float()
        proprio = self.tensors["proprio"].float().reshape(len(self), -1)
        actions = RelativeActions(int(relative_action_dims)).to_model(actions, proprio)
        keep = ~self.tensors["action_is_pad"].bool()
        a = actions[keep]
        return {"action_mean": a.mean(0).cpu(), "action_std": a.std(0, unbiased=False).cpu(),
                "proprio_mean": proprio.mean(0).cpu(), "proprio_std": proprio.std(0, unbiased=False).cpu()}


def _storage_dtype(key: str, dtype: torch.dtype) -> torch.dtype:
    if key == "action_is_pad":
        return torch.bool
    if key == "masks":
        return torch.int16 if not dtype.is_floating_point else dtype  # object ids: small integers
    if key in ("proprio", "actions") and dtype.is_floating_point:
        return torch.float32
    return dtype


class IndexStream:
    """Full batches of sample indices, on the device, from a stream of seeded epoch permutations.

    Every batch has the same size (min(batch_size, n)), so shapes are static; a batch that crosses an
    epoch boundary finishes the old permutation and starts the next, so over time every sample is
    drawn equally often. Permutations are drawn on the device: no host-to-device copy per step.
    """

    def __init__(self, n: int, batch_size: int, seed: int, device: torch.device | str):
        self.n = int(n)
        self.batch_size = min(int(batch_size), self.n)
        self.device = torch.device(device)
        self.generator = torch.Generator(device=self.device).manual_seed(int(seed))
        self._perm = self._draw()
        self._pos = 0

    def _draw(self) -> torch.Tensor:
        return torch.randperm(self.n, generator=self.generator, device=self.device)

    def next(self) -> torch.Tensor:
        end = self._pos + self.batch_size
        if end <= self.n:
            idx = self._perm[self._pos:end]
            self._pos = end
            return idx
        head = self._perm[self._pos:]
        self._perm = self._draw()
        self._pos = self.batch_size - head.shape[0]
        return torch.cat([head, self._perm[:self._pos]])
