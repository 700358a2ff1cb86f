"""The rows of Table 1: each method's ServerApp strategy, scope and model overrides, and its run config."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .config import Table1Config


@dataclass(frozen=True)
class MethodSpec:
    """How one row of the table is trained: ServerApp strategy/scope and model overrides."""

    label: str
    strategy: str
    scope: str
    model: dict = field(default_factory=dict)
    centralized: bool = False
    fedpart: bool = False


METHODS: dict[str, MethodSpec] = {
    "centralized": MethodSpec("Centralized (1 node, all tasks)", "fedavg", "full", centralized=True),
    "fedavg": MethodSpec("FedAvg (full model)", "fedavg", "full"),
    "fedprox": MethodSpec("FedProx (full model)", "fedprox", "full"),
    "fedvla": MethodSpec("FedVLA (EDA + DGMoE + IOSP)", "eda", "trunk"),
    "fedvla-fedavg-agg": MethodSpec("Ablation: EDA -> FedAvg", "fedavg", "trunk"),
    "fedvla-top2": MethodSpec("Ablation: DGMoE -> top-2", "eda", "trunk", model={"ffn_kind": "topk", "top_k": 2}),
    "fedvla-no-iosp": MethodSpec("Ablation: IOSP off", "eda", "trunk", model={"use_iosp": False}),
    "fedpart": MethodSpec("FedPart (EDA, trunk, layer groups)", "eda", "trunk", fedpart=True),
}


def clients_of(cfg: Table1Config, method: str) -> list[dict]:
    """[{"id", "tasks"}] of a method: one client per task, or one centralized client with all tasks."""
    if METHODS[method].centralized:
        return [{"id": "central", "tasks": list(cfg.tasks)}]
    return [{"id": f"client{i}-{task}", "tasks": [task]} for i, task in enumerate(cfg.tasks)]


def model_config(cfg: Table1Config, method: str) -> dict:
    return {**cfg.model, **METHODS[method].model}


def run_config(cfg: Table1Config, method: str, checkpoint_dir: Path) -> dict:
    """The ServerApp run config (ServerRunConfig keys) of one method."""
    spec = METHODS[method]
    n_clients = len(clients_of(cfg, method))
    steps = cfg.local_steps * (len(cfg.tasks) if spec.centralized else 1)  # same optimizer steps in total
    return {"num-server-rounds": cfg.rounds, "strategy": spec.strategy, "scope": spec.scope,
            "proximal-mu": cfg.proximal_mu if spec.strategy == "fedprox" else 0.0,
            "fedpart-layers": cfg.fedpart_layers if spec.fedpart else 0, "min-nodes": n_clients,
            "model-config": json.dumps(model_config(cfg, method), sort_keys=True), "local-steps": steps,
            "batch-size": cfg.batch_size, "learning-rate": cfg.learning_rate, "seed": cfg.seed,
            "upload-dtype": cfg.upload_dtype, "round-timeout": cfg.round_timeout,
            "node-wait-timeout": cfg.round_timeout, "checkpoint-dir": str(checkpoint_dir.resolve())}
