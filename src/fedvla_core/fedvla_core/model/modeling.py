"""FedVLAPolicy: stem (local encoders + IOSP) -> shared MoE trunk -> local action head.

Parameters live under three top-level names, which are also the federated split:
  stem.*   vision, language projection, proprioception, IOSP   (stays on the robot)
  trunk.*  transformer blocks with expert FFNs                  (aggregated: trunk.layers.{l}.ffn.experts.{e}.*)
  head.*   action queries and the action projection             (stays on the robot)
Normalization statistics are buffers under normalizer.* (saved, never aggregated). The frozen
MiniLM is not a submodule: it is reloaded from its pip package, so checkpoints stay small.

The head is ACT-style: H learned query tokens join the sequence and are read out as the action chunk.
"""
from __future__ import annotations

import re
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init

from .configuration import FedVLAConfig
from .encoders import (FrozenSentenceEncoder, InstructionProjector, ProprioEncoder, SpatialKeypoints,
                       VisionPatchEncoder, images_to_float, random_shift)
from .experts import AdaMoE, DGMoE, ExpertFFN, ExpertStat, FFNOutput, build_ffn
from .scene_parsing import GROUPS, InstructionSceneParser, patch_ids_from_masks

GROUP_NAMES = ("stem", "trunk", "head")
_LAYER = re.compile(r"^trunk\.layers\.(\d+)\.")
_EXPERT = re.compile(r"\.ffn\.experts\.(\d+)\.")


def _ffn_for(config: FedVLAConfig, n_experts: int, expert_hidden: int, dense_hidden: int, shared_hidden: int
             ) -> ExpertFFN:
    """One FFN of the configured kind (trunk blocks and IOSP refiners differ only in their sizes)."""
    return build_ffn(
        config.ffn_kind, config.d_model, n_experts, expert_hidden, dense_hidden=dense_hidden,
        shared_hidden=shared_hidden, top_k=min(config.top_k, n_experts), lam=config.dgmoe_lambda,
        residual_gate=config.dgmoe_residual_gate, temperature=config.dgmoe_threshold_temperature,
        dropout=config.dropout, threshold_init=config.dgmoe_threshold_init)


class Stem(nn.Module):
    """Observation -> the token sequence the trunk reads (without the action queries)."""

    def __init__(self, config: FedVLAConfig):
        super().__init__()
        d = config.d_model
        self.vision = VisionPatchEncoder(d, config.patch_size, config.n_cameras, config.patches_per_camera,
                                         stem=config.vision_stem, n_keypoints=config.spatial_keypoints)
        self.language = InstructionProjector(config.language_dim, d)
        self.proprio = ProprioEncoder(config.proprio_dim, d)
        self.token_type = nn.Parameter(torch.zeros(2, d))  # instruction, proprioception
        self.iosp = None
        if config.use_iosp:
            n, h = config.iosp_n_experts, config.iosp_expert_hidden
            refiners = [_ffn_for(config, n, h, dense_hidden=n * h, shared_hidden=h) for _ in GROUPS]
            self.iosp = InstructionSceneParser(d, config.iosp_topk, refiners)


class TrunkBlock(nn.Module):
    """Pre-norm transformer block: x + Attn(LN x); x + FFN(LN x), the FFN being one of the expert kinds."""

    def __init__(self, config: FedVLAConfig):
        super().__init__()
        d = config.d_model
        self.n_heads = config.n_heads
        self.dropout = config.dropout
        self.attn_norm = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ffn_norm = nn.LayerNorm(d)
        self.ffn = _ffn_for(config, config.n_experts, config.expert_hidden, config.resolved_dense_hidden,
                            config.resolved_shared_expert_hidden)

    def forward(self, x: torch.Tensor, prior_logits: torch.Tensor | None) -> tuple[torch.Tensor, FFNOutput]:
        """(x after the block, the FFN's output: gate logits for the next block, aux loss, routing counts)."""
        b, n, d = x.shape
        q, k, v = self.qkv(self.attn_norm(x)).view(b, n, 3, self.n_heads, d // self.n_heads).permute(2, 0, 3, 1, 4)
        dropout = self.dropout if self.training else 0.0
        if not x.is_cuda and torch.is_autocast_enabled("cpu"):
            # The CPU's bf16 flash-attention backward is 4x slower than its fp32 one (measured): attend in fp32.
            with torch.autocast("cpu", enabled=False):
                att = F.scaled_dot_product_attention(q.float(), k.float(), v.float(), dropout_p=dropout)
        else:
            att = F.scaled_dot_product_attention(q, k, v, dropout_p=dropout)
        x = x + self.proj(att.transpose(1, 2).reshape(b, n, d))
        out = self.ffn(self.ffn_norm(x), prior_logits)
        return x + out.y, out


class TrunkOutput(NamedTuple):
    hidden: torch.Tensor  # (B, N, d)
    aux_loss: torch.Tensor  # mean load-balance loss over the blocks
    stats: tuple  # per block: ExpertStat of its FFN


class Trunk(nn.Module):
    """The shared part: L blocks; each DGMoE gate gets the previous block's gate logits as its prior."""

    def __init__(self, config: FedVLAConfig):
        super().__init__()
        self.layers = nn.ModuleList([TrunkBlock(config) for _ in range(config.n_layers)])

    def forward(self, x: torch.Tensor) -> TrunkOutput:
        prior, aux, stats = None, [], []
        for layer in self.layers:
            x, out = layer(x, prior)
            prior = out.gate_logits
            aux.append(out.aux_loss)
            stats.append(ExpertStat(out.counts, out.tokens))
        return TrunkOutput(x, torch.stack(aux).mean(), tuple(stats))


class ActionHead(nn.Module):
    """H learned query tokens (in the sequence) and their read-out to normalized actions."""

    def __init__(self, config: FedVLAConfig):
        super().__init__()
        self.queries = nn.Parameter(torch.zeros(config.chunk_size, config.d_model))
        self.norm = nn.LayerNorm(config.d_model)
        self.out = nn.Linear(config.d_model, config.action_dim)

    def forward(self, query_states: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(query_states))


class Normalizer(nn.Module):
    """Mean/std of actions and proprioception as persistent buffers, so checkpoints carry them."""

    def __init__(self, config: FedVLAConfig):
        super().__init__()
        self.register_buffer("action_mean", torch.zeros(config.action_dim))
        self.register_buffer("action_std", torch.ones(config.action_dim))
        self.register_buffer("proprio_mean", torch.zeros(config.proprio_dim))
        self.register_buffer("proprio_std", torch.ones(config.proprio_dim))
        self.register_buffer("is_set", torch.zeros((), dtype=torch.bool))


class FedVLAPolicy(PreTrainedModel):
    """The FedVLA policy. ``forward(batch)`` -> losses; ``act(observation)`` -> one action chunk (H, action_dim)."""

    config_class = FedVLAConfig
    base_model_prefix = "fedvla"
    main_input_name = "images"

    def __init__(self, config: FedVLAConfig):
        super().__init__(config)
        self.stem = Stem(config)
        self.trunk = Trunk(config)
        self.head = ActionHead(config)
        self.normalizer = Normalizer(config)
        self.post_init()

    # ------------------------------------------------------------------ init
    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.initializer_range
        if isinstance(module, (nn.Linear, nn.Conv2d)):
            init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, DGMoE):
            init.constant_(module.threshold, module.threshold_init)  # w_e = config.dgmoe_threshold_init
            if module.prior is not None:
                init.eye_(module.prior.weight)  # the previous layer's logits pass through at first
        elif isinstance(module, AdaMoE):
            init.zeros_(module.scale_adapter.weight)  # starts as the vanilla router's weighting
        elif isinstance(module, VisionPatchEncoder):
            init.normal_(module.position, std=std)
        elif isinstance(module, SpatialKeypoints):
            init.normal_(module.camera, std=std)
        elif isinstance(module, Stem):
            init.normal_(module.token_type, std=std)
        elif isinstance(module, InstructionSceneParser):
            init.normal_(module.group_embedding, std=std)
        elif isinstance(module, ActionHead):
            init.normal_(module.queries, std=std)
        elif isinstance(module, Normalizer):
            init.zeros_(module.action_mean)
            init.ones_(module.action_std)
            init.zeros_(module.proprio_mean)
            init.ones_(module.proprio_std)
            init.zeros_(module.is_set)

    # ------------------------------------------------------------- language
    @property
    def language_encoder(self) -> FrozenSentenceEncoder:
        """The frozen MiniLM (process-wide, shared by every policy with the same language_model_path)."""
        return FrozenSentenceEncoder.shared(self.config.language_model_path, self.config.max_instruction_tokens)

    # -------------------------------------------------------- normalization
    @torch.no_grad()
    def set_normalization(self, action_mean, action_std, proprio_mean, proprio_std) -> None:
        """Store dataset statistics; a std below 1e-4 (a constant dimension) is replaced by 1."""
        norm = self.normalizer
        for name, value in (("action_mean", action_mean), ("action_std", action_std),
                            ("proprio_mean", proprio_mean), ("proprio_std", proprio_std)):
            buf = getattr(norm, name)
            value = value.detach().cpu() if isinstance(value, torch.Tensor) else np.asarray(value)
            t = torch.as_tensor(value, dtype=buf.dtype).reshape(-1).to(buf.device)
            if t.numel() != buf.numel():
                raise ValueError(f"set_normalization: {name} has {t.numel()} values, expected {buf.numel()}")
            if name.endswith("std"):
                t = torch.where(t < 1e-4, torch.ones_like(t), t)
            buf.copy_(t)
        norm.is_set.fill_(True)

    @property
    def has_normalization(self) -> bool:
        return bool(self.normalizer.is_set)

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return (actions - self.normalizer.action_mean) / self.normalizer.action_std

    def unnormalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return actions * self.normalizer.action_std + self.normalizer.action_mean

    def normalize_proprio(self, proprio: torch.Tensor) -> torch.Tensor:
        return (proprio - self.normalizer.proprio_mean) / self.normalizer.proprio_std

    # -------------------------------------------------------------- forward
    def encode(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch -> (trunk input (B, H + 2 + n_scene, d), stem aux loss). Query tokens come first."""
        seq, aux, _ = self._encode(batch)
        return seq, aux

    def _encode(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, dict[str, ExpertStat]]:
        """encode() plus the IOSP refiners' routing counts.

        The language features come from the batch when it carries them (``lang_pooled`` (B, D),
        ``lang_tokens`` (B, T, D), ``lang_mask`` (B, T): computed once per instruction by the
        training data, see fedvla_core.device_data), otherwise from the instructions through MiniLM.
        """
        cfg = self.config
        device = self.head.queries.device  # not self.device: that walks the parameters (and breaks graphs)
        images = images_to_float(batch["images"].to(device, non_blocking=True), cfg.image_size)
        if self.training and cfg.image_shift_aug:
            images = random_shift(images, cfg.image_shift_aug)
        b = images.shape[0]
        if batch.get("lang_tokens") is not None:
            sentence, lang_tokens, lang_mask = batch["lang_pooled"], batch["lang_tokens"], batch["lang_mask"]
            if sentence.shape[0] != b:
                raise ValueError(f"batch: {sentence.shape[0]} instruction embeddings for {b} image stacks")
        else:
            instructions = list(batch["instruction"])
            if len(instructions) != b:
                raise ValueError(f"batch: {len(instructions)} instructions for {b} image stacks")
            sentence, lang_tokens, lang_mask = self.language_encoder.encode(instructions, device)
        instr_token, lang_tokens = self.stem.language(sentence, lang_tokens)
        proprio = self.normalize_proprio(batch["proprio"].to(device, dtype=torch.float32))
        if self.training and cfg.proprio_dropout:
            keep = torch.rand(b, 1, device=device) >= cfg.proprio_dropout
            proprio = proprio * keep
        proprio_token = self.stem.proprio(proprio)
        scene, keypoints = self.stem.vision(images)
        aux = scene.new_zeros(())
        stats: dict[str, ExpertStat] = {}
        if self.stem.iosp is not None:
            ids = None
            if batch.get("masks") is not None:
                ids = patch_ids_from_masks(batch["masks"].to(device), cfg.image_size, cfg.patch_size)
            parsed = self.stem.iosp(scene, lang_tokens, lang_mask, ids)
            scene, aux = parsed.tokens, parsed.aux_loss
            stats = {f"stem.iosp.refiners.{g}": st for g, st in enumerate(parsed.stats)}
        queries = self.head.queries.expand(b, -1, -1)
        parts = [queries, instr_token + self.stem.token_type[0], proprio_token + self.stem.token_type[1], scene]
        if keypoints is not None:
            parts.append(keypoints)
        seq = torch.cat(parts, dim=1)
        return seq, aux, stats

    def predict_normalized(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """(normalized action chunk (B, H, A), total unweighted aux loss of stem and trunk)."""
        pred, aux, _ = self._predict(batch)
        return pred, aux

    def _predict(self, batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, dict[str, ExpertStat]]:
        seq, stem_aux, stats = self._encode(batch)
        trunk = self.trunk(seq)
        pred = self.head(trunk.hidden[:, :self.config.chunk_size])
        aux = trunk.aux_loss if self.stem.iosp is None else 0.5 * (trunk.aux_loss + stem_aux)
        stats.update({f"trunk.layers.{l}.ffn": st for l, st in enumerate(trunk.stats)})
        return pred, aux, stats

    def _relative_base(self, batch: dict[str, Any]) -> torch.Tensor | None:
        """(B, 1, N) raw proprio the first N actions are offsets from (None for absolute actions)."""
        n = self.config.relative_action_dims
        if not n:
            return None
        return batch["proprio"].to(self.head.queries.device, dtype=torch.float32)[:, None, :n]

    def to_model_actions(self, actions: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """Absolute actions (B, H, A) -> what the model predicts (offsets in the first relative_action_dims)."""
        base = self._relative_base(batch)
        if base is None:
            return actions
        n = base.shape[-1]
        return torch.cat([actions[..., :n] - base, actions[..., n:]], dim=-1)

    def from_model_actions(self, actions: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """Inverse of :meth:`to_model_actions`."""
        base = self._relative_base(batch)
        if base is None:
            return actions
        n = base.shape[-1]
        return torch.cat([actions[..., :n] + base, actions[..., n:]], dim=-1)

    def forward(self, batch: dict[str, Any]) -> dict[str, Any]:
        """Training loss: Huber on normalized actions (padded steps masked out) + aux_loss_coef * load balance.

        Returns loss, action_loss, aux_loss, pred and expert_stats ({FFN module name: ExpertStat});
        in eager mode the FFNs have already counted themselves, a compiled caller passes
        expert_stats to :meth:`record_expert_stats`.
        """
        pred, aux, stats = self._predict(batch)
        device = pred.device
        actions = batch["actions"].to(device, dtype=torch.float32)
        target = self.normalize_actions(self.to_model_actions(actions, batch))
        err = F.huber_loss(pred.float(), target, delta=self.config.huber_delta, reduction="none")
        if batch.get("action_is_pad") is not None:
            keep = (~batch["action_is_pad"].to(device).bool()).unsqueeze(-1).float()
            action_loss = (err * keep).sum() / (keep.sum() * err.shape[-1]).clamp_min(1.0)
        else:
            action_loss = err.mean()
        aux_loss = self.config.aux_loss_coef * aux.float()
        return {"loss": action_loss + aux_loss, "action_loss": action_loss.detach(), "aux_loss": aux_loss.detach(),
                "pred": pred.detach(), "expert_stats": stats}

    def record_expert_stats(self, stats: dict[str, ExpertStat]) -> None:
        """Add one step's routing counts (forward()'s expert_stats) to the FFNs' activation counts."""
        for name, stat in stats.items():
            self.get_submodule(name).record(stat.counts, stat.tokens)

    def use_channels_last(self, enabled: bool = True) -> None:
        """Convolution weights (and the vision encoder's inputs) in channels_last memory format, or back.

        cuDNN runs bf16 convolutions fastest on NHWC tensors. Call with False before saving:
        checkpoints hold contiguous tensors.
        """
        fmt = torch.channels_last if enabled else torch.contiguous_format
        self.stem.vision.to(memory_format=fmt)
        self.stem.vision.channels_last = enabled

    @torch.no_grad()
    def predict_action_chunk(self, batch: dict[str, Any]) -> torch.Tensor:
        """Unnormalized action chunks (B, H, A) for a batch (eval mode is the caller's business)."""
        pred, _ = self.predict_normalized(batch)
        return self.from_model_actions(self.unnormalize_actions(pred.float()), batch)

    def observation_to_batch(self, observation: dict[str, Any]) -> dict[str, Any]:
        """One robot observation (HxWx3 uint8 per camera, instruction, proprio) -> a batch of one."""
        cfg = self.config
        size = cfg.image_size
        frames = []
        for cam in cfg.camera_names:
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
        if masks is not None and cfg.use_iosp:
            batch["masks"] = torch.stack([torch.as_tensor(np.asarray(masks[c])) for c in cfg.camera_names])[None]
        return batch

    def act(self, observation: dict[str, Any], cpu_threads: int | None = 1) -> np.ndarray:
        """One observation -> the unnormalized action chunk (H, action_dim) as float32 numpy.

        observation: {"images": {camera: HxWx3 uint8}, "instruction": str, "proprio": 1-D array,
        optional "masks": {camera: HxW int ids}}. Images of another size are resized.
        On the CPU a single request is a chain of tiny ops, where intra-op threads only add
        synchronization (measured on a busy 2-core box: 14 ms with 1 thread, 90-500 ms with 2), so
        by default it runs with `cpu_threads`=1 and restores the previous setting; None keeps it.
        """
        was_training = self.training
        threads = torch.get_num_threads()
        use_threads = cpu_threads is not None and self.device.type == "cpu" and cpu_threads != threads
        self.eval()
        try:
            if use_threads:
                torch.set_num_threads(cpu_threads)
            chunk = self.predict_action_chunk(self.observation_to_batch(observation))
        finally:
            if use_threads:
                torch.set_num_threads(threads)
            self.train(was_training)
        return chunk[0].cpu().numpy().astype(np.float32)

    # ------------------------------------------------------ parameter groups
    def parameter_group(self, name: str) -> dict[str, nn.Parameter]:
        """Parameters of one federated group ("stem", "trunk" or "head") by full name."""
        if name not in GROUP_NAMES:
            raise ValueError(f"parameter_group: unknown group {name!r}; use one of {GROUP_NAMES}")
        return {n: p for n, p in self.named_parameters() if n.startswith(name + ".")}

    def trunk_layout(self) -> dict[str, tuple[int, int | None]]:
        """Each trunk tensor name -> (layer index, expert index or None for attention, norms, gates)."""
        layout = {}
        for name in self.parameter_group("trunk"):
            layer = int(_LAYER.match(name).group(1))
            expert = _EXPERT.search(name)
            layout[name] = (layer, int(expert.group(1)) if expert else None)
        return layout

    def export_trunk(self) -> dict[str, torch.Tensor]:
        """The shared trunk as detached CPU tensors (what a client uploads)."""
        return {n: p.detach().to("cpu", copy=True) for n, p in self.parameter_group("trunk").items()}

    def export_experts(self, layer: int, expert_ids) -> dict[str, torch.Tensor]:
        """Only the given experts of one trunk layer, as detached CPU tensors."""
        wanted = {int(e) for e in expert_ids}
        if not 0 <= layer < self.config.n_layers:
            raise IndexError(f"export_experts: layer {layer} not in [0, {self.config.n_layers})")
        layout = self.trunk_layout()
        return {n: p.detach().to("cpu", copy=True) for n, p in self.parameter_group("trunk").items()
                if layout[n][0] == layer and layout[n][1] in wanted}

    @torch.no_grad()
    def load_trunk(self, state: dict[str, torch.Tensor]) -> list[str]:
        """Copy trunk tensors in place (all or a subset, e.g. some experts); returns the names loaded.

        Any name outside the trunk, or a shape mismatch, raises before anything is changed.
        """
        params = self.parameter_group("trunk")
        for name, value in state.items():
            if name not in params:
                raise KeyError(f"load_trunk: {name!r} is not a trunk parameter")
            if tuple(value.shape) != tuple(params[name].shape):
                raise ValueError(f"load_trunk: {name} has shape {tuple(value.shape)}, "
                                 f"expected {tuple(params[name].shape)}")
        for name, value in state.items():
            params[name].copy_(torch.as_tensor(value).to(params[name].device, params[name].dtype))
        return list(state)

    # ------------------------------------------------------------ expert stats
    def trunk_ffns(self) -> list[ExpertFFN]:
        return [layer.ffn for layer in self.trunk.layers]

    def expert_counts(self) -> list[list[int]]:
        """Per trunk layer, per expert: tokens routed since the last reset (the input of Expert-Driven Aggregation)."""
        return [ffn.expert_counts() for ffn in self.trunk_ffns()]

    def reset_expert_stats(self) -> None:
        for module in self.modules():
            if isinstance(module, ExpertFFN):
                module.reset_stats()

    def mean_active_experts(self) -> float:
        """Routed experts per token in the trunk since the last reset, averaged over layers (0.0 if none seen)."""
        tokens = sum(ffn.tokens_seen() for ffn in self.trunk_ffns())
        routed = sum(sum(ffn.expert_counts()) for ffn in self.trunk_ffns())
        return routed / tokens if tokens else 0.0

    def iosp_mean_active_experts(self) -> dict[str, float]:
        """Per IOSP group (target, surrounding, background): routed experts per token since the last reset."""
        if self.stem.iosp is None:
            return {}
        return {g: ffn.mean_active_experts() for g, ffn in zip(GROUPS, self.stem.iosp.refiners)}

    def trunk_ffn_flops_per_token(self) -> float:
        """Trunk FFN FLOPs per token (mean over layers), using the measured mean active experts of DGMoE."""
        flops = [ffn.flops_per_token() for ffn in self.trunk_ffns()]
        return float(sum(flops) / len(flops))
