"""Load a policy checkpoint all-or-nothing: a checkpoint that cannot serve this robot is refused whole.

Why: ``load_checkpoint`` used to swap in whatever ``from_pretrained`` returned. A checkpoint with
other camera names then rejected every goal, one with NaN weights had every chunk rejected (the old
policy was gone in both cases), missing weights were silently initialised at random, and a path
that did not exist fell through to a Hugging Face Hub lookup. Here a candidate must pass, in order:

1. the path is a local directory below the configured checkpoint root (symlinks resolved) holding
   ``config.json`` and safetensors weights; nothing is ever downloaded (``local_files_only``);
2. it loads with every weight present (no missing, unexpected or shape-mismatched key);
3. its cameras are ones the robot serves, its action and proprioception sizes are the robot's;
4. every weight and buffer is finite, and it carries its normalization statistics;
5. one dry ``act()`` on a synthetic observation returns a finite chunk of the expected shape.

Only then does the caller swap it in; on any failure ``CheckpointRefused`` says why and the running
policy keeps serving. Plain PyTorch, no rclpy.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fedvla_core.control.input_checks import bounded

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")


class CheckpointRefused(ValueError):
    """The checkpoint cannot serve this robot; the text says why."""


@dataclass(frozen=True)
class RobotSpec:
    """What the running robot offers a policy."""

    camera_names: tuple[str, ...] | None  # cameras the robot serves; None = not known yet (any)
    action_dim: int | None  # columns of an action chunk the motion backend takes (None: checked when planning)
    proprio_dim: int  # length of the proprioception vector the server builds


def resolve_checkpoint_dir(path: str, root: str) -> Path:
    """The checkpoint directory ``path`` names, resolved, or CheckpointRefused.

    A relative ``path`` is taken relative to ``root``. The resolved directory must lie below the
    resolved ``root``, so neither ``..`` nor a symlink leads out of it.
    """
    shown = bounded(repr(path), 160)
    if not path or not path.strip():
        raise CheckpointRefused("empty checkpoint path")
    if "\x00" in path:
        raise CheckpointRefused(f"checkpoint path {shown} contains a NUL character")
    root_dir = Path(root).resolve()
    if not root_dir.is_dir():
        raise CheckpointRefused(f"checkpoint root {str(root_dir)!r} is not a directory")
    candidate = Path(path)
    real = (candidate if candidate.is_absolute() else root_dir / candidate).resolve()
    if real != root_dir and root_dir not in real.parents:
        raise CheckpointRefused(f"checkpoint path {shown} is outside the checkpoint root {str(root_dir)!r} "
                                f"(parameter checkpoint_root)")
    if not real.exists():
        raise CheckpointRefused(f"no checkpoint directory at {shown} (only local directories are loaded; "
                                f"nothing is looked up on the Hub)")
    if not real.is_dir():
        raise CheckpointRefused(f"checkpoint path {shown} is not a directory")
    if not (real / "config.json").is_file():
        raise CheckpointRefused(f"checkpoint {shown} has no config.json")
    if not any((real / name).is_file() for name in WEIGHT_FILES):
        raise CheckpointRefused(f"checkpoint {shown} has no safetensors weights ({' or '.join(WEIGHT_FILES)})")
    return real


def load_checkpoint(directory: Path, device: str = "cpu"):
    """``FedVLAPolicy`` from a local directory in eval mode, refusing it when any weight is missing or extra."""
    from fedvla_core.model import FedVLAPolicy

    try:
        policy, info = FedVLAPolicy.from_pretrained(str(directory), local_files_only=True, output_loading_info=True)
    except Exception as exc:  # noqa: BLE001 - any load failure is a refusal with its text
        raise CheckpointRefused(f"could not load {str(directory)!r}: {bounded(exc, 240)}") from None
    for kind in ("missing_keys", "unexpected_keys", "mismatched_keys", "error_msgs"):
        keys = list(info.get(kind) or [])
        if keys:
            shown = ", ".join(str(k[0] if isinstance(k, tuple) else k) for k in keys[:3])
            raise CheckpointRefused(f"checkpoint {str(directory)!r}: {len(keys)} {kind.replace('_', ' ')} "
                                    f"({bounded(shown, 160)}{', ...' if len(keys) > 3 else ''})")
    policy.to(device)
    policy.eval()
    return policy


def check_policy(policy, robot: RobotSpec) -> str:
    """Refuse (CheckpointRefused) a loaded policy that cannot serve ``robot``; else a one-line summary."""
    cfg = policy.config
    cameras = list(cfg.camera_names)
    if robot.camera_names is not None:
        unknown = [c for c in cameras if c not in robot.camera_names]
        if unknown:
            raise CheckpointRefused(f"checkpoint reads cameras {unknown} that this robot does not serve "
                                    f"(it serves {list(robot.camera_names)})")
    if robot.action_dim is not None and int(cfg.action_dim) != robot.action_dim:
        raise CheckpointRefused(f"checkpoint acts in {cfg.action_dim} dimensions, this robot takes {robot.action_dim}")
    if int(cfg.proprio_dim) != robot.proprio_dim:
        raise CheckpointRefused(f"checkpoint reads {cfg.proprio_dim} proprioception values, this robot gives "
                                f"{robot.proprio_dim}")
    for name, tensor in [*policy.named_parameters(), *policy.named_buffers()]:
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointRefused(f"checkpoint weight {name} holds {bad} non-finite values")
    if not policy.has_normalization:
        raise CheckpointRefused("checkpoint carries no action/proprioception normalization statistics")
    size = int(cfg.image_size)
    observation = {"images": {c: np.full((size, size, 3), 127, np.uint8) for c in cameras},
                   "instruction": "dry run", "proprio": np.zeros(robot.proprio_dim, np.float32)}
    try:
        chunk = np.asarray(policy.act(observation))
    except Exception as exc:  # noqa: BLE001 - a model that cannot act is refused with the reason
        raise CheckpointRefused(f"dry act() failed: {bounded(exc, 240)}") from None
    expected = (int(cfg.chunk_size), int(cfg.action_dim))
    if chunk.shape != expected:
        raise CheckpointRefused(f"dry act() returned a chunk of shape {chunk.shape}, expected {expected}")
    if not np.all(np.isfinite(chunk)):
        raise CheckpointRefused("dry act() returned non-finite actions")
    if hasattr(policy, "reset_expert_stats"):
        policy.reset_expert_stats()
    return (f"{cfg.ffn_kind} policy, cameras {cameras}, chunk {cfg.chunk_size} x {cfg.action_dim}, "
            f"dry act finite")


def load_validated(path: str, root: str | None, robot: RobotSpec, device: str = "cpu"):
    """(policy, resolved directory, summary) of a checkpoint that passed every check, or CheckpointRefused.

    ``root`` None: the path is trusted (the node's own start-up parameter) and only needs to be a
    local checkpoint directory.
    """
    if root is None:
        directory = Path(path).resolve()
        if not (directory / "config.json").is_file():
            raise CheckpointRefused(f"no checkpoint directory (with config.json) at {bounded(repr(path), 160)}")
    else:
        directory = resolve_checkpoint_dir(path, root)
    policy = load_checkpoint(directory, device)
    return policy, directory, check_policy(policy, robot)
