"""One robot's part of a federated round, without Flower or ROS (the ClientApp is a thin shell on it).

ClientApps are stateless processes (Flower starts a fresh one per message), so everything the
robot keeps between rounds lives on disk next to its episodes (the FedPer pattern):

    <episode-dir>/                    the robot's MCAP episodes (training data, never uploaded)
    <episode-dir>/policy/round_NNNN/  the robot's full policy after round NNNN (save_pretrained);
                                      its stem, head and normalization never leave the robot
    <episode-dir>/policy/latest.json  {"round": N, "path": ".../round_NNNN"}: what the policy server loads

A round: load the local policy (latest local round, else the base checkpoint, else a fresh model
from the run's model-config), copy in the global tensors the server sent, train with the shared
loop (``fedvla_core.training.train``) on the robot's successful episodes, save the new local
policy, and return the tensors to upload (the whole trunk: ALL experts, unused ones included, so
the reply always has the same keys) plus per-layer expert activation counts.

A long-lived process (the robot's warm local trainer, :mod:`fedvla_flower.local_trainer`)
passes a :class:`WarmState`: the policy it saved last round and the decoded episodes stay in
memory, so a round skips from_pretrained and MCAP decoding when nothing changed on disk. The
disk stays the source of truth: the in-memory copy is used only while latest.json still names
the checkpoint it was saved as, and the episode cache only while the episode files are the same.

A round that goes wrong changes nothing on the robot: global tensors that are not finite or do
not fit, a non-finite training loss, or trained weights that are not all finite stop the round
with :class:`RoundFailed` (the reason in its message) before anything is saved, so the robot's
local policy, its ``latest.json`` and the checkpoint its policy server runs stay as they were. Bad
episodes are skipped by the dataset (see EpisodeDataset) and counted in the metrics.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from fedvla_core.federated import keys

log = logging.getLogger("fedvla.client")

POLICY_SUBDIR = "policy"
LATEST_FILE = "latest.json"


class RoundFailed(RuntimeError):
    """The local round was stopped before it saved anything; the message says why."""


def _non_finite(tensors: Mapping[str, Any]) -> list[str]:
    """Names of the tensors/arrays holding a NaN or an infinity."""
    import torch

    bad = []
    for name, value in tensors.items():
        if isinstance(value, torch.Tensor):
            ok = bool(torch.isfinite(value).all()) if value.is_floating_point() else True
        else:
            arr = np.asarray(value)
            ok = bool(np.isfinite(arr).all()) if np.issubdtype(arr.dtype, np.inexact) else True
        if not ok:
            bad.append(name)
    return bad


def check_finite(tensors: Mapping[str, Any], what: str) -> None:
    """Raise RoundFailed naming the first few non-finite tensors of `what`."""
    bad = _non_finite(tensors)
    if bad:
        raise RoundFailed(f"{what}: {len(bad)} tensor(s) not finite, e.g. {bad[:3]}")


@dataclass
class LocalRoundConfig:
    """Everything one local round needs (from the node config and the server's ConfigRecord).

    Its defaults are the fleet's local-round defaults: the ServerApp's run config, the ClientApp's
    fallbacks and the federation CLI take them from here (:func:`round_default`); the literal values
    in src/fedvla_flower/pyproject.toml, which Flower reads, are checked against them by a test.
    """

    episode_dir: str = field(default="", metadata={"help": "The robot's episode folder (node-config episode-dir)."})
    policy_dir: str = field(default="", metadata={"help": "Local policy state ('' = <episode-dir>/policy)."})
    robot_id: str = field(default="", metadata={"help": "The robot's id (node-config robot-id), for logs."})
    base_checkpoint: str = field(default="", metadata={"help": "save_pretrained folder used before the first local round."})
    model_config: str = field(default="", metadata={"help": "JSON FedVLAConfig kwargs when there is no checkpoint at all."})
    server_round: int = field(default=0, metadata={"help": "The server's round number."})
    scope: str = field(default="trunk", metadata={"help": "trunk: load/upload the trunk; full: the whole model."})
    proximal_mu: float = field(default=0.0, metadata={"help": "FedProx mu (0 = plain local training)."})
    train_layers: list = field(default_factory=list, metadata={"help": "FedPart: trunk layers to train/upload ([] = all)."})
    local_steps: int = field(default=20, metadata={"help": "Optimizer steps of local training."})
    batch_size: int = field(default=8, metadata={"help": "Local batch size."})
    learning_rate: float = field(default=3e-4, metadata={"help": "Local learning rate."})
    seed: int = field(default=0, metadata={"help": "Base seed (the round number is added)."})
    upload_dtype: str = field(default="float32", metadata={"help": "float32 weights, or float16 deltas to the global model."})
    keep_rounds: int = field(default=2, metadata={"help": "Local policy rounds kept on disk."})
    fault_injection: str = field(default="", metadata={"help": "Chaos testing only: 'nan' corrupts the upload."})

    def __post_init__(self):
        if not self.episode_dir:
            raise ValueError("LocalRoundConfig.episode_dir: required (node-config 'episode-dir')")
        if self.scope not in ("trunk", "full"):
            raise ValueError(f"LocalRoundConfig.scope: must be trunk or full (got {self.scope!r})")
        if self.proximal_mu < 0:
            raise ValueError(f"LocalRoundConfig.proximal_mu: must be >= 0 (got {self.proximal_mu})")
        if self.local_steps < 0 or self.batch_size < 1 or self.learning_rate <= 0:
            raise ValueError("LocalRoundConfig.local_steps/batch_size/learning_rate: must be >= 0 / >= 1 / > 0")
        if self.upload_dtype not in ("float32", "float16"):
            raise ValueError(f"LocalRoundConfig.upload_dtype: float32 or float16 (got {self.upload_dtype!r})")
        if self.keep_rounds < 1:
            raise ValueError(f"LocalRoundConfig.keep_rounds: must be >= 1 (got {self.keep_rounds})")
        if self.fault_injection not in ("", "nan"):
            raise ValueError(f"LocalRoundConfig.fault_injection: '' or 'nan' (got {self.fault_injection!r})")
        self.train_layers = [int(x) for x in self.train_layers]

    @property
    def resolved_policy_dir(self) -> Path:
        return Path(self.policy_dir) if self.policy_dir else Path(self.episode_dir) / POLICY_SUBDIR


def round_default(name: str):
    """The default of LocalRoundConfig field `name` (e.g. "local_steps"): the one place it is written."""
    f = LocalRoundConfig.__dataclass_fields__[name]
    return f.default_factory() if f.default_factory is not MISSING else f.default


@dataclass
class LocalRoundResult:
    upload: dict[str, np.ndarray]
    metrics: dict[str, Any]
    checkpoint: str = ""
    episode_ids: list[str] = field(default_factory=list)


@dataclass
class WarmState:
    """What a long-lived trainer keeps between rounds (never needed for correctness, only for speed)."""

    policy: Any = None
    policy_checkpoint: str = ""          # the folder `policy` equals (valid while it is still the one to load)
    dataset: Any = None
    dataset_key: tuple = ()              # episode files (path, mtime, size) + decoding settings
    hits: dict = field(default_factory=lambda: {"policy": 0, "dataset": 0})

    def take_policy(self, checkpoint: str):
        """The cached policy if `checkpoint` (what would be loaded from disk) is the one it equals; empties the cache."""
        policy, saved = self.policy, self.policy_checkpoint
        self.policy, self.policy_checkpoint = None, ""
        if policy is not None and checkpoint and saved == checkpoint:
            self.hits["policy"] += 1
            return policy
        return None


def latest_local_checkpoint(policy_dir) -> str:
    """Path of the robot's newest local policy, or '' when none was saved yet."""
    marker = Path(policy_dir) / LATEST_FILE
    try:
        path = json.loads(marker.read_text())["path"]
    except (FileNotFoundError, KeyError, TypeError, ValueError):
        return ""
    return path if isinstance(path, str) and Path(path).is_dir() else ""


def load_local_policy(cfg: LocalRoundConfig, warm: WarmState | None = None):
    """The robot's policy: latest local round > base checkpoint > fresh model from model-config."""
    from fedvla_core.model import FedVLAConfig, FedVLAPolicy

    path = latest_local_checkpoint(cfg.resolved_policy_dir) or cfg.base_checkpoint
    if warm is not None:
        cached = warm.take_policy(path)
        if cached is not None:
            return cached, path
    if path:
        policy = FedVLAPolicy.from_pretrained(path)
        _materialize_expert_stats(policy)
        return policy, path
    if not cfg.model_config:
        raise ValueError("no local policy, no base-checkpoint and no model-config: nothing to train")
    import torch

    torch.manual_seed(cfg.seed)
    return FedVLAPolicy(FedVLAConfig(**json.loads(cfg.model_config))), "model-config"


def _materialize_expert_stats(policy) -> None:
    """Workaround: from_pretrained (meta-device init) can leave the experts' count tensors on 'meta'.

    They are plain tensors, not buffers, so loading weights never fills them; give them real zeros.
    Harmless once the model fixes this itself.
    """
    import torch

    for module in policy.modules():
        counts = getattr(module, "_counts", None)
        if isinstance(counts, torch.Tensor) and counts.is_meta:
            module._counts = torch.zeros(counts.shape, dtype=counts.dtype)
            module._tokens = torch.zeros((), dtype=torch.long)


def load_global(policy, arrays: Mapping[str, np.ndarray], scope: str) -> None:
    """Copy the server's tensors into the local policy (trunk via load_trunk, or the whole model)."""
    import torch

    tensors = {k: torch.from_numpy(np.array(v)) for k, v in arrays.items()}
    if scope == "trunk":
        policy.load_trunk(tensors)
        return
    params = dict(policy.named_parameters())
    unknown = set(tensors) - set(params)
    if unknown:
        raise KeyError(f"global model has tensors the local policy lacks: {sorted(unknown)[:5]}")
    with torch.no_grad():
        for name, value in tensors.items():
            if tuple(value.shape) != tuple(params[name].shape):
                raise ValueError(f"{name}: global shape {tuple(value.shape)} != local {tuple(params[name].shape)}")
            params[name].copy_(value.to(params[name].dtype))


def tensors_to_upload(policy, scope: str, train_layers: list[int]) -> dict[str, np.ndarray]:
    """The trunk (all experts) or the whole model; with FedPart only the trained trunk layers."""
    layout = policy.trunk_layout()
    if scope == "trunk":
        tensors = policy.export_trunk()
    else:
        tensors = {n: p.detach().cpu() for n, p in policy.named_parameters()}
    if train_layers:
        keep = set(train_layers)
        tensors = {n: t for n, t in tensors.items() if n not in layout or layout[n][0] in keep}
    return {n: t.numpy().copy() for n, t in tensors.items()}


def save_local_policy(policy, cfg: LocalRoundConfig) -> str:
    """save_pretrained into policy/round_NNNN, then point latest.json at it (atomically); prune old rounds.

    Refuses (RoundFailed) a policy with a non-finite weight or buffer: it would replace a working one.
    """
    check_finite(dict(policy.state_dict()), "local policy to save")
    root = cfg.resolved_policy_dir
    root.mkdir(parents=True, exist_ok=True)
    target = root / f"round_{cfg.server_round:04d}"
    tmp = root / f".round_{cfg.server_round:04d}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    policy.save_pretrained(str(tmp))
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
    marker_tmp = root / f".{LATEST_FILE}.tmp"
    marker_tmp.write_text(json.dumps({"round": cfg.server_round, "path": str(target.resolve()),
                                      "saved": time.time()}))
    with open(marker_tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(marker_tmp, root / LATEST_FILE)
    rounds = sorted(p for p in root.glob("round_*") if p.is_dir())
    for old in rounds[:-cfg.keep_rounds]:
        shutil.rmtree(old, ignore_errors=True)
    return str(target.resolve())


def load_dataset(cfg: LocalRoundConfig, policy_config, warm: WarmState | None = None):
    """The robot's successful episodes, decoded (reused from `warm` while the episode files are unchanged)."""
    from fedvla_core.episodes import EpisodeDataset, list_episodes

    c = policy_config
    paths = list_episodes(cfg.episode_dir)
    key = (tuple((str(p), p.stat().st_mtime_ns, p.stat().st_size) for p in paths),
           tuple(c.camera_names), int(c.chunk_size), c.image_size, int(c.action_dim), int(c.proprio_dim))
    if warm is not None and warm.dataset is not None and warm.dataset_key == key:
        warm.hits["dataset"] += 1
        return warm.dataset
    # the policy's own cameras and dimensions: an episode that does not fit them is skipped, not trained on
    dataset = EpisodeDataset(paths, camera_names=c.camera_names, chunk_size=c.chunk_size,
                             only_successful=True, image_size=c.image_size, action_dim=int(c.action_dim),
                             proprio_dim=int(c.proprio_dim))
    if warm is not None:
        warm.dataset, warm.dataset_key = dataset, key
    return dataset


def run_local_round(cfg: LocalRoundConfig, global_arrays: Mapping[str, np.ndarray],
                    warm: WarmState | None = None) -> LocalRoundResult:
    """Load, merge the global tensors, train on the robot's episodes, save, and return the upload.

    With `warm` (a long-lived trainer), the policy and the decoded episodes of the previous round
    are reused when the disk still matches them, and the saved policy is kept for the next round.
    """
    import torch

    from fedvla_core.training import TrainConfig, train

    try:
        from fedvla_core.training import NonFiniteLossError
    except ImportError:  # a training loop without the guard: the loss and weights are checked below anyway
        class NonFiniteLossError(RuntimeError):
            pass

    t0 = time.monotonic()
    check_finite(global_arrays, "global model from the server")
    policy, source = load_local_policy(cfg, warm)
    load_global(policy, global_arrays, cfg.scope)
    dataset = load_dataset(cfg, policy.config, warm)
    load_s = time.monotonic() - t0
    skipped = len(getattr(dataset, "skipped", {}))
    if len(dataset) == 0 or cfg.local_steps == 0:
        log.warning("robot %s round %d: no usable successful episodes (or 0 steps; %d skipped); nothing to train",
                    cfg.robot_id, cfg.server_round, skipped)
        return LocalRoundResult(upload={}, metrics={keys.NUM_EXAMPLES: 0, keys.NUM_EPISODES: 0, "load-s": load_s,
                                                    "skipped-episodes": skipped})

    trainable = None
    if cfg.train_layers:
        trainable = ["stem", "head", *cfg.train_layers] if cfg.scope == "trunk" else [*cfg.train_layers, "stem", "head"]
    reference = None
    if cfg.proximal_mu > 0:
        reference = {n: t.clone() for n, t in policy.export_trunk().items()}
    tcfg = TrainConfig(max_steps=cfg.local_steps, batch_size=cfg.batch_size, lr=cfg.learning_rate,
                       warmup=min(20, cfg.local_steps // 5), seed=cfg.seed + cfg.server_round,
                       prox_mu=cfg.proximal_mu, progress=False, device="cpu" if not torch.cuda.is_available() else "auto")
    try:
        stats = train(policy, dataset, tcfg, reference_trunk=reference, trainable_groups=trainable)
    except (NonFiniteLossError, FloatingPointError) as err:
        raise RoundFailed(f"robot {cfg.robot_id} round {cfg.server_round}: training stopped, non-finite loss "
                          f"({type(err).__name__}: {err}); the local policy is unchanged") from err
    policy.to("cpu")
    if not (np.isfinite(stats["loss"]) and np.isfinite(stats["first_loss"])):
        raise RoundFailed(f"robot {cfg.robot_id} round {cfg.server_round}: non-finite training loss "
                          f"(first {stats['first_loss']}, last {stats['loss']}); the local policy is unchanged")
    check_finite(dict(policy.state_dict()), "trained local policy")
    upload = tensors_to_upload(policy, cfg.scope, cfg.train_layers)
    if cfg.upload_dtype == "float16":  # deltas are small, so half precision loses little and halves the bytes
        upload = {k: (v.astype(np.float64) - np.asarray(global_arrays[k], np.float64)).astype(np.float16)
                  if k in global_arrays else v for k, v in upload.items()}
    check_finite(upload, "upload")  # (a float16 delta beyond 65504 would be inf)
    if cfg.fault_injection == "nan":
        first = next(iter(upload))
        upload[first] = upload[first].copy()
        upload[first].reshape(-1)[0] = np.nan
        log.warning("fault injection: NaN written into %s", first)
    checkpoint = save_local_policy(policy, cfg)
    if warm is not None:
        warm.policy, warm.policy_checkpoint = policy, checkpoint
    metrics: dict[str, Any] = {
        keys.NUM_EXAMPLES: int(stats["num_examples"]),
        keys.NUM_EPISODES: int(dataset.num_episodes),
        keys.TRAIN_LOSS: float(stats["loss"]),
        "first-loss": float(stats["first_loss"]),
        "train-steps": int(stats["steps"]),
        "train-time-s": float(stats["wall_time_s"]),
        "mean-active-experts": float(stats["mean_active_experts"]),
        "load-s": load_s,
        keys.UPLOAD_DELTA: int(cfg.upload_dtype == "float16"),
        "skipped-episodes": skipped,
    }
    for layer, counts in enumerate(stats["expert_counts"]):
        metrics[keys.expert_counts_key(layer)] = [int(v) for v in counts]
    log.info("robot %s round %d: trained %d steps on %d samples from %s (loss %.4f -> %.4f)", cfg.robot_id,
             cfg.server_round, stats["steps"], stats["num_examples"], source, stats["first_loss"], stats["loss"])
    return LocalRoundResult(upload=upload, metrics=metrics, checkpoint=checkpoint, episode_ids=dataset.episode_ids)
