"""Flower ClientApp of a robot: a thin shell around :func:`fedvla_core.federated.local_round.run_local_round`.

The SuperNode that runs it is started with ``--node-config 'robot-id=... episode-dir=...'``
(optionally ``policy-dir``, ``base-checkpoint``); the server's ConfigRecord carries the round's
settings (scope, proximal-mu, train-layers, local-steps, ...; see fedvla_flower.strategies), turned
into the core's LocalRoundConfig by :func:`fedvla_flower.task.local_round_config`.

Before training the app waits for the robot's round gate (written by the fed client node: the
robot is idle and has new episodes); after training it writes the round report that the node
publishes as RoundStatus, naming the new local checkpoint for the policy server. A robot that
is busy or has no data answers with an empty update (num-examples 0) instead of an error reply,
because error replies have been seen to wedge SuperNodes (flower#4844).

Training itself goes to the robot's warm local trainer when one runs
(:mod:`fedvla_flower.local_trainer`, started next to the SuperNode by SuperNodeSupervisor):
this process then imports only flwr + numpy, hands the global arrays over a local Unix socket
(:mod:`fedvla_flower.trainer_ipc`) and waits. Without a trainer (the simulation engine, tests, node-config ``local-trainer="off"``)
or when it dies mid-round, the round runs in this process as before. Arrays travel packed (one
flat array per dtype, see fedvla_core.federated.wire): Flower moves each array as separate
HTTP objects, and ~100 small ones per message cost far more than the bytes.
"""
from __future__ import annotations

import logging
import os
import time
import traceback
from collections import OrderedDict

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from fedvla_core.episodes.input_checks import bounded
from fedvla_core.federated import keys
from fedvla_core.federated.local_round import LocalRoundConfig, LocalRoundResult, WarmState, run_local_round
from fedvla_core.federated.round_gate import DEFAULT_GATE_TIMEOUT_S, RoundReport, wait_and_take_gate, write_report
from fedvla_core.federated.wire import pack_arrays
from fedvla_flower.task import (SIM_WARM_NODES_ENV, arrays_to_numpy, local_round_config, node_config_of,
                                numpy_to_arrays, simulated)
from fedvla_flower.trainer_ipc import DEFAULT_REQUEST_TIMEOUT_S, TrainerError, TrainerUnavailable, request_round

log = logging.getLogger("fedvla.client")

#: Set by the ServerApp (fedvla_flower.server_app): when it pushed the round, and (ours) when we replied.
ROUND_PUSH_TIME_KEY = keys.ROUND_PUSH_TIME
REPLY_TIME_KEY = keys.REPLY_TIME


def process_age_s() -> float | None:
    """Seconds since this process started (Linux /proc), i.e. what flwr-clientapp spent before calling us."""
    try:
        start_ticks = int(open("/proc/self/stat").read().rsplit(")", 1)[1].split()[19])
        uptime_s = float(open("/proc/uptime").read().split()[0])
        return max(uptime_s - start_ticks / os.sysconf("SC_CLK_TCK"), 0.0)
    except (OSError, ValueError, IndexError):
        return None


def _timing_metrics(conf: dict, entered: float, age: float | None) -> dict:
    """How the message reached this ClientApp: delivery-s (server push -> here), clientapp-start-s (process start -> here)."""
    out = {}
    if ROUND_PUSH_TIME_KEY in conf:
        out["delivery-s"] = max(entered - float(conf[ROUND_PUSH_TIME_KEY]), 0.0)
    if age is not None:
        out["clientapp-start-s"] = age
    return out

app = ClientApp()


def _round_config(msg: Message, node: dict) -> tuple[LocalRoundConfig, float, float]:
    """The local round's config, the gate timeout and how long to wait for the warm trainer."""
    conf = dict(msg.content[keys.CONFIG]) if keys.CONFIG in msg.content else {}
    cfg = local_round_config(node, conf)
    return (cfg, float(conf.get(keys.GATE_TIMEOUT, DEFAULT_GATE_TIMEOUT_S)),
            float(conf.get(keys.ROUND_TIMEOUT, DEFAULT_REQUEST_TIMEOUT_S)))


#: Simulation engine only: a Ray actor runs this ClientApp for many rounds and robots, so it keeps the last
#: few robots' WarmState (checked against the disk before reuse), like a robot's warm trainer does.
#: A SuperNode's flwr-clientapp process serves one message and exits: nothing to keep there.
_SIM_WARM: "OrderedDict[str, WarmState]" = OrderedDict()


def _sim_warm_state(episode_dir: str) -> WarmState | None:
    size = int(os.environ.get(SIM_WARM_NODES_ENV, "0") or 0)
    if size <= 0:
        return None
    warm = _SIM_WARM.pop(episode_dir, None) or WarmState()
    _SIM_WARM[episode_dir] = warm
    while len(_SIM_WARM) > size:
        _SIM_WARM.popitem(last=False)
    return warm


def _train(cfg: LocalRoundConfig, global_arrays: dict, mode: str, timeout_s: float,
           warm: WarmState | None = None) -> tuple[LocalRoundResult, dict]:
    """Run the round in the warm trainer if one answers, else here; returns (result, hand-off metrics)."""
    if mode != "off":
        t0 = time.monotonic()
        try:
            result, trainer_s = request_round(cfg, global_arrays, timeout_s=timeout_s)
            return result, {"warm-trainer": 1, "trainer-s": trainer_s,
                            "handoff-s": max(time.monotonic() - t0 - trainer_s, 0.0)}
        except TrainerError as err:
            raise RuntimeError(f"local trainer: {err}") from err
        except TrainerUnavailable as err:
            log.info("no warm local trainer (%s); training in the ClientApp process", err)
    return run_local_round(cfg, global_arrays, warm=warm), {"warm-trainer": 0}


def failure_reason(err: BaseException) -> str:
    """One line for RoundStatus: the error's type and its first line (a trainer's traceback stays in the log)."""
    first = (str(err).strip().splitlines() or [""])[0]
    return bounded(f"{type(err).__name__}: {first}", 500)


def _record(arrays: dict) -> ArrayRecord:
    return numpy_to_arrays(arrays)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One federated round on this robot."""
    entered, age = time.time(), process_age_s()
    logging.basicConfig(level=logging.INFO)
    logging.getLogger("httpx").setLevel(logging.WARNING)
    node = node_config_of(context.node_config)  # a SuperNode's as is; a simulated node's from the fleet file
    cfg, gate_timeout, trainer_timeout = _round_config(msg, node)
    bytes_down = msg.content[keys.ARRAYS].count_bytes() if keys.ARRAYS in msg.content else 0
    t0 = time.monotonic()
    try:
        wait_and_take_gate(cfg.episode_dir, cfg.server_round, gate_timeout)
    except TimeoutError as err:
        log.warning("%s", err)
        write_report(cfg.episode_dir, RoundReport(server_round=cfg.server_round, state="skipped",
                                                  bytes_down=bytes_down, message=str(err)))
        return Message(RecordDict({keys.ARRAYS: ArrayRecord(), keys.METRICS: MetricRecord(
            {keys.NUM_EXAMPLES: 0, keys.BYTES_DOWN: bytes_down})}), reply_to=msg)
    try:
        global_arrays = arrays_to_numpy(msg.content[keys.ARRAYS])
        mode = str(node.get(keys.NODE_LOCAL_TRAINER, "auto"))
        warm = _sim_warm_state(cfg.episode_dir) if simulated(context.node_config) else None
        result, handoff = _train(cfg, global_arrays, mode, trainer_timeout, warm)
    except Exception as err:  # noqa: BLE001 - report the failure to the robot, send an empty update
        log.error("local round failed: %s\n%s", err, traceback.format_exc())
        write_report(cfg.episode_dir, RoundReport(server_round=cfg.server_round, state="failed",
                                                  bytes_down=bytes_down, message=failure_reason(err)))
        return Message(RecordDict({keys.ARRAYS: ArrayRecord(), keys.METRICS: MetricRecord(
            {keys.NUM_EXAMPLES: 0, keys.BYTES_DOWN: bytes_down, keys.FAILED: 1})}), reply_to=msg)
    record = _record(pack_arrays(result.upload))  # one flat array per dtype: far fewer Flower objects
    bytes_up = record.count_bytes()
    timing = _timing_metrics(dict(msg.content[keys.CONFIG]) if keys.CONFIG in msg.content else {}, entered, age)
    metrics = dict(result.metrics, **handoff, **timing, **{keys.BYTES_UP: bytes_up, keys.BYTES_DOWN: bytes_down,
                                                          "round-client-s": time.monotonic() - t0})
    scalar = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
    write_report(cfg.episode_dir, RoundReport(
        server_round=cfg.server_round, state="done" if result.upload else "skipped", bytes_up=bytes_up,
        bytes_down=bytes_down, num_examples=int(metrics.get(keys.NUM_EXAMPLES, 0)),
        num_episodes=int(metrics.get(keys.NUM_EPISODES, 0)), episode_ids=result.episode_ids,
        metrics=scalar, checkpoint=result.checkpoint,
        message="" if result.upload else "no successful episodes to train on"))
    metrics[REPLY_TIME_KEY] = time.time()
    return Message(RecordDict({keys.ARRAYS: record, keys.METRICS: MetricRecord(metrics)}), reply_to=msg)
