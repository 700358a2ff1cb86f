"""Flower ServerApp: scheduled FedVLA rounds with a per-round checkpoint and resume.

The run configuration (``[tool.flwr.app.config]`` of src/fedvla_flower/pyproject.toml, overridable with
``flwr run -c``) is parsed into :class:`ServerRunConfig`. The round loop is our own rather than
``Strategy.start`` because it must (1) start from the last saved round after a restart and
(2) save the global model after every round; it still calls the strategy's
``configure_train`` / ``aggregate_train`` hooks, and pushes/pulls through the grid with the round
timeout (polling faster than ``Grid.send_and_receive`` does).
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
from flwr.app import ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from fedvla_core.federated import keys
from fedvla_core.federated.checkpoint_store import CheckpointStore
from fedvla_core.federated.local_round import round_default
from fedvla_core.federated.round_gate import DEFAULT_GATE_TIMEOUT_S
from fedvla_core.federated.wire import pack_arrays
from fedvla_flower.strategies import make_strategy
from fedvla_flower.task import initial_model, numpy_to_arrays

log = logging.getLogger("fedvla.federation")


def default_federation_dir() -> str:
    return os.environ.get("FEDVLA_FEDERATION_DIR", str(Path.home() / ".fedvla" / "federation"))


@dataclass
class ServerRunConfig:
    """What one federated run does; field names are the run-config keys with '-' for '_'.

    The clients' training settings (local-steps ... upload-dtype) default to LocalRoundConfig's, the
    gate timeout to the round gate's; the literal defaults of pyproject.toml's [tool.flwr.app.config]
    must equal these (tests/fedvla_flower/test_run_config.py).
    """

    num_server_rounds: int = field(default=2, metadata={"help": "Total rounds of the run (a resumed run continues up to this)."})
    strategy: str = field(default="eda", metadata={"help": "Aggregation: eda | fedavg | fedprox."})
    scope: str = field(default="trunk", metadata={"help": "What travels: trunk (FedVLA) or full (whole model, FedAvg baseline)."})
    proximal_mu: float = field(default=0.01, metadata={"help": "FedProx proximal coefficient (used by fedprox only)."})
    fedpart_layers: int = field(default=0, metadata={"help": "FedPart: layers trained per round, rotating (0 = off)."})
    min_nodes: int = field(default=2, metadata={"help": "Nodes that must be connected (and train) for a round."})
    round_timeout: float = field(default=600.0, metadata={"help": "Seconds to wait for replies in one round."})
    node_wait_timeout: float = field(default=600.0, metadata={"help": "Seconds to wait for min-nodes before skipping a round."})
    round_interval: float = field(default=0.0, metadata={"help": "Seconds to wait between rounds (the schedule)."})
    max_update_ratio: float = field(default=10.0, metadata={"help": "Reject updates farther than this x the global norm."})
    checkpoint_dir: str = field(default="", metadata={"help": "Where global checkpoints go ('' = $FEDVLA_FEDERATION_DIR/checkpoints)."})
    base_checkpoint: str = field(default="", metadata={"help": "save_pretrained folder of the initial policy ('' = model-config)."})
    model_config: str = field(default="", metadata={"help": "JSON FedVLAConfig kwargs for a fresh policy when there is no base checkpoint."})
    local_steps: int = field(default=round_default("local_steps"), metadata={"help": "Optimizer steps each client trains per round."})
    batch_size: int = field(default=round_default("batch_size"), metadata={"help": "Client batch size."})
    learning_rate: float = field(default=round_default("learning_rate"), metadata={"help": "Client learning rate."})
    seed: int = field(default=round_default("seed"), metadata={"help": "Seed of the initial model and of client sampling."})
    upload_dtype: str = field(default=round_default("upload_dtype"), metadata={"help": "Client upload: float32 weights, or float16 deltas (half the bytes)."})
    gate_timeout: float = field(default=DEFAULT_GATE_TIMEOUT_S, metadata={"help": "Seconds a client waits for its robot to be idle."})

    def __post_init__(self):
        def need(cond, name, why):
            if not cond:
                raise ValueError(f"ServerRunConfig.{name}: {why} (got {getattr(self, name)!r})")
        need(self.num_server_rounds >= 1, "num_server_rounds", "must be >= 1")
        need(self.strategy in ("eda", "fedavg", "fedprox"), "strategy", "must be eda, fedavg or fedprox")
        need(self.scope in ("trunk", "full"), "scope", "must be trunk or full")
        need(self.proximal_mu >= 0, "proximal_mu", "must be >= 0")
        need(self.fedpart_layers >= 0, "fedpart_layers", "must be >= 0")
        need(self.min_nodes >= 1, "min_nodes", "must be >= 1")
        need(self.round_timeout > 0, "round_timeout", "must be > 0")
        need(self.node_wait_timeout > 0, "node_wait_timeout", "must be > 0")
        need(self.round_interval >= 0, "round_interval", "must be >= 0")
        need(self.max_update_ratio > 0, "max_update_ratio", "must be > 0")
        need(self.local_steps >= 0, "local_steps", "must be >= 0")
        need(self.batch_size >= 1, "batch_size", "must be >= 1")
        need(self.learning_rate > 0, "learning_rate", "must be > 0")
        need(self.upload_dtype in ("float32", "float16"), "upload_dtype", "must be float32 or float16")
        need(self.gate_timeout >= 0, "gate_timeout", "must be >= 0")
        need(bool(self.base_checkpoint) or bool(self.model_config), "base_checkpoint",
             "set base-checkpoint or model-config so the server can build the initial model")

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> "ServerRunConfig":
        known = {f.name: f for f in fields(cls)}
        kwargs = {}
        for key, value in run_config.items():
            name = key.replace("-", "_")
            if name in known:
                kwargs[name] = type(known[name].default)(value)
        return cls(**kwargs)

    def client_config(self) -> dict:
        """Training settings every client receives in its ConfigRecord."""
        return {keys.LOCAL_STEPS: self.local_steps, keys.BATCH_SIZE: self.batch_size,
                keys.LEARNING_RATE: self.learning_rate, keys.BASE_CHECKPOINT: self.base_checkpoint,
                keys.MODEL_CONFIG: self.model_config, keys.SEED: self.seed,
                keys.GATE_TIMEOUT: self.gate_timeout, keys.UPLOAD_DTYPE: self.upload_dtype,
                keys.ROUND_TIMEOUT: self.round_timeout}


#: Seconds between reply polls. Grid.send_and_receive sleeps 3 s between polls (flwr 1.41), which
#: adds up to 3 s to every round; the SuperLink answers a poll in milliseconds on loopback.
REPLY_POLL_S = 0.2


def send_and_receive(grid, messages: list, timeout: float, poll_s: float = REPLY_POLL_S,
                     arrivals: list | None = None) -> list:
    """Grid.send_and_receive with a short poll interval: push, then pull until all replied or timeout.

    ``arrivals`` (optional) gets the wall-clock time (time.time()) each reply was pulled, in reply order.
    """
    pending = set(grid.push_messages(messages))
    replies: list = []
    deadline = time.monotonic() + timeout
    while pending:
        got = list(grid.pull_messages(pending))
        replies.extend(got)
        if arrivals is not None:
            arrivals.extend([time.time()] * len(got))
        pending.difference_update(m.metadata.reply_to_message_id for m in got)
        if not pending or time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    return replies


#: The push/reply timestamps of a round (see fedvla_core.federated.keys).
ROUND_PUSH_TIME_KEY = keys.ROUND_PUSH_TIME
REPLY_TIME_KEY = keys.REPLY_TIME


def stamp_push_time(messages: list) -> None:
    """Write the push time into each train message's config (ClientApps report delivery-s from it)."""
    now = time.time()
    for msg in messages:
        if keys.CONFIG in msg.content:
            msg.content[keys.CONFIG][ROUND_PUSH_TIME_KEY] = now


def reply_return_times(replies: list, arrivals: list[float]) -> list[float]:
    """Seconds from each ClientApp's reply to its arrival here; removes the reply-time metric from the replies."""
    out = []
    for msg, arrived in zip(replies, arrivals):
        if msg.has_error() or keys.METRICS not in msg.content:
            continue
        metrics = msg.content[keys.METRICS]
        if REPLY_TIME_KEY in metrics:
            out.append(max(arrived - float(metrics[REPLY_TIME_KEY]), 0.0))
            del metrics[REPLY_TIME_KEY]
    return out


def initial_model_arrays(cfg: ServerRunConfig) -> tuple[dict[str, np.ndarray], dict[str, tuple]]:
    """Global arrays (trunk or whole model) and the trunk layout of the initial policy."""
    return initial_model(cfg.base_checkpoint, cfg.model_config, cfg.scope, cfg.seed)


def run_rounds(grid, strategy, store: CheckpointStore, initial: Callable[[], tuple[dict, dict]],
               cfg: ServerRunConfig) -> dict:
    """Run rounds (last saved round + 1) .. num_server_rounds; save the global model after each."""
    resumed = store.latest()
    if resumed is not None:
        start, arrays, info = resumed
        strategy.layout = {k: tuple(v) for k, v in info.get("layout", {}).items()} or strategy.layout
        log.info("resuming from round %d (%s)", start, store.directory)
    else:
        start = 0
        arrays, layout = initial()
        strategy.layout = layout
        store.save(0, arrays, {"layout": layout, "strategy": strategy.name, "metrics": {}})
    summary = {"resumed_from": start, "rounds": []}
    for rnd in range(start + 1, cfg.num_server_rounds + 1):
        t0, start_time = time.monotonic(), time.time()
        log.info("[ROUND %d/%d] strategy=%s", rnd, cfg.num_server_rounds, strategy.name)
        record = numpy_to_arrays(pack_arrays(arrays))  # a few big arrays travel much faster than ~100 small ones
        messages = list(strategy.configure_train(rnd, record, ConfigRecord(cfg.client_config()), grid))
        stamp_push_time(messages)  # after configure_train, which may wait for nodes
        arrivals: list[float] = []
        replies = send_and_receive(grid, messages, cfg.round_timeout, arrivals=arrivals) if messages else []
        return_s = reply_return_times(replies, arrivals)
        t_agg = time.monotonic()
        new, metrics = strategy.aggregate_train(rnd, replies)
        if new is not None:
            arrays = {k: v.numpy() for k, v in new.items()}
        metrics = dict(metrics or {})
        metrics["bytes-down-per-client"] = int(record.count_bytes())
        metrics["round-wall-s"] = time.monotonic() - t0
        metrics["aggregate-s"] = time.monotonic() - t_agg
        metrics["round-start-time"] = start_time
        if return_s:
            metrics["return-s-max"] = max(return_s)
        metrics["sent"] = len(messages)
        metrics["replies"] = len(replies)
        store.save(rnd, arrays, {"layout": strategy.layout, "strategy": strategy.name,
                                 "metrics": {k: (list(v) if isinstance(v, list) else v) for k, v in metrics.items()},
                                 "rejected": [r for r in strategy.rejected if r[0] == rnd]})
        log.info("round %d done in %.1f s: %s", rnd, metrics["round-wall-s"], metrics)
        summary["rounds"].append({"round": rnd, **metrics})
        if rnd < cfg.num_server_rounds and cfg.round_interval > 0:
            time.sleep(cfg.round_interval)
    return summary


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Entry point run by the SuperLink for every `flwr run`."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    cfg = ServerRunConfig.from_run_config(dict(context.run_config))
    ckpt_dir = cfg.checkpoint_dir or str(Path(default_federation_dir()) / "checkpoints")
    store = CheckpointStore(ckpt_dir)
    strategy = make_strategy(cfg.strategy, scope=cfg.scope, min_train_nodes=cfg.min_nodes,
                             min_available_nodes=cfg.min_nodes, max_update_ratio=cfg.max_update_ratio,
                             fedpart_layers_per_round=cfg.fedpart_layers, node_wait_timeout=cfg.node_wait_timeout,
                             proximal_mu=cfg.proximal_mu)
    strategy.summary()
    summary = run_rounds(grid, strategy, store, lambda: initial_model_arrays(cfg), cfg)
    (Path(ckpt_dir) / "run_summary.json").write_text(json.dumps(summary, indent=1, default=float))
    log.info("federated run finished: %s", json.dumps(summary, default=float))
