"""The federated split of the FedVLA policy: which parameters federation ships and how they are named.

The policy's parameters live under three top-level names, and those names are the split:
  stem.*   vision, language projection, proprioception, IOSP   (stays on the robot)
  trunk.*  transformer blocks with expert FFNs                  (aggregated)
  head.*   action queries and the action projection             (stays on the robot)
A trunk tensor is named ``trunk.layers.{l}.…``, and an expert's tensor ``….ffn.experts.{e}.…``:
Expert-Driven Aggregation weighs each expert's tensors by the clients' counts of that (l, e), so
:func:`trunk_layout` is the contract between the model's module names and the aggregation.
Buffers (the normalization statistics under ``normalizer.*``) are in no group: never shipped.

Plain functions of any ``nn.Module`` with these names (FedVLAPolicy keeps methods that delegate here).
"""
from __future__ import annotations

import re
from collections.abc import Iterable

import torch
from torch import nn

GROUP_NAMES = ("stem", "trunk", "head")
_LAYER = re.compile(r"^trunk\.layers\.(\d+)\.")
_EXPERT = re.compile(r"\.ffn\.experts\.(\d+)\.")


def parameter_group(model: nn.Module, name: str) -> dict[str, nn.Parameter]:
    """Parameters of one federated group ("stem", "trunk" or "head") by full name."""
    if name not in GROUP_NAMES:
        raise ValueError(f"parameter_group: unknown group {name!r}; use one of {GROUP_NAMES}")
    return {n: p for n, p in model.named_parameters() if n.startswith(name + ".")}


def layer_and_expert(name: str) -> tuple[int, int | None]:
    """A trunk tensor's (layer index, expert index or None for attention, norms, gates)."""
    layer = int(_LAYER.match(name).group(1))
    expert = _EXPERT.search(name)
    return layer, int(expert.group(1)) if expert else None


def trunk_layout(model: nn.Module) -> dict[str, tuple[int, int | None]]:
    """Each trunk tensor name -> (layer index, expert index or None for attention, norms, gates)."""
    return {name: layer_and_expert(name) for name in parameter_group(model, "trunk")}


def export_trunk(model: nn.Module) -> dict[str, torch.Tensor]:
    """The shared trunk as detached CPU tensors (what a client uploads)."""
    return {n: p.detach().to("cpu", copy=True) for n, p in parameter_group(model, "trunk").items()}


def export_experts(model: nn.Module, layer: int, expert_ids: Iterable[int], n_layers: int) -> dict[str, torch.Tensor]:
    """Only the given experts of one trunk layer (of `n_layers`), as detached CPU tensors."""
    wanted = {int(e) for e in expert_ids}
    if not 0 <= layer < n_layers:
        raise IndexError(f"export_experts: layer {layer} not in [0, {n_layers})")
    layout = trunk_layout(model)
    return {n: p.detach().to("cpu", copy=True) for n, p in parameter_group(model, "trunk").items()
            if layout[n][0] == layer and layout[n][1] in wanted}


@torch.no_grad()
def load_trunk(model: nn.Module, state: dict[str, torch.Tensor]) -> list[str]:
    """Copy trunk tensors in place (all or a subset, e.g. some experts); returns the names loaded.

    Any name outside the trunk, or a shape mismatch, raises before anything is changed.
    """
    params = parameter_group(model, "trunk")
    for name, value in state.items():
        if name not in params:
            raise KeyError(f"load_trunk: {name!r} is not a trunk parameter")
        if tuple(value.shape) != tuple(params[name].shape):
            raise ValueError(f"load_trunk: {name} has shape {tuple(value.shape)}, "
                             f"expected {tuple(params[name].shape)}")
    for name, value in state.items():
        params[name].copy_(torch.as_tensor(value).to(params[name].device, params[name].dtype))
    return list(state)
