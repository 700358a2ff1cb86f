"""The names the ServerApp and the ClientApps exchange: record names, node-config, ConfigRecord and MetricRecord keys.

Why one module: the server, the client, the warm trainer, the validation and the aggregation each
read or write these strings, and a key typed twice drifts (a renamed metric the server no longer
finds is not an error, only a silently wrong average). Plain strings, no Flower: the core and the
robot's processes import this.
"""
from __future__ import annotations

# -- RecordDict entries of a train message and of its reply (Flower's FedAvg defaults) ----------------
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"

# -- node config of a robot's SuperNode (``--node-config``, set by its fed client node) ----------------
NODE_ROBOT_ID = "robot-id"
NODE_EPISODE_DIR = "episode-dir"
NODE_POLICY_DIR = "policy-dir"
NODE_BASE_CHECKPOINT = "base-checkpoint"   # the robot's own base policy (wins over the run's)
NODE_LOCAL_TRAINER = "local-trainer"       # "auto" (use the warm trainer when one answers) | "off"
NODE_FAULT_INJECTION = "fault-injection"   # chaos testing only

# -- ConfigRecord, server -> client (per round) ------------------------------------------------------
SERVER_ROUND = "server-round"
SCOPE = "scope"
PROXIMAL_MU = "proximal-mu"
TRAIN_LAYERS = "train-layers"         # FedPart: the trunk layers trained this round ([] = all)
LOCAL_STEPS = "local-steps"
BATCH_SIZE = "batch-size"
LEARNING_RATE = "learning-rate"
BASE_CHECKPOINT = "base-checkpoint"
MODEL_CONFIG = "model-config"
SEED = "seed"
UPLOAD_DTYPE = "upload-dtype"
GATE_TIMEOUT = "gate-timeout"
ROUND_TIMEOUT = "round-timeout"
#: Wall-clock time (time.time()) the server pushed the round; the ClientApp reports how long the
#: message took to reach it ("delivery-s"; meaningful where clocks agree, e.g. loopback).
ROUND_PUSH_TIME = "round-push-time"

# -- MetricRecord, client -> server -----------------------------------------------------------------
NUM_EXAMPLES = "num-examples"         # the FedAvg weight; 0 with no arrays = "nothing to train on"
NUM_EPISODES = "num-episodes"
TRAIN_LOSS = "train-loss"             # last training loss (the server averages it, the CLI prints it)
#: Per-layer expert activation counts: ``expert-counts.<layer>`` = [count of expert 0, 1, ...].
EXPERT_COUNTS_PREFIX = "expert-counts."
UPLOAD_DELTA = "upload-delta"         # 1: the arrays are float16 (local - global) deltas, not weights
BYTES_UP = "bytes-up"
BYTES_DOWN = "bytes-down"
FAILED = "failed"                     # 1: the round failed on the robot (an empty update)
#: Wall-clock time the ClientApp returned its reply; the server turns it into "return-s-max"
#: (reply path: ClientApp -> SuperNode -> SuperLink -> ServerApp) and drops it.
REPLY_TIME = "reply-time"


def expert_counts_key(layer: int) -> str:
    """``expert-counts.<layer>``."""
    return f"{EXPERT_COUNTS_PREFIX}{int(layer)}"
