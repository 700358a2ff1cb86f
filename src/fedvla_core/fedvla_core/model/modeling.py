"""FedVLAPolicy: stem (local encoders + IOSP) -> shared MoE trunk -> local action head.

Parameters live under three top-level names, which are also the federated split:
  stem.*   vision, language projection, proprioception, IOSP   (stays on the robot)
  trunk.*  transformer blocks with expert FFNs                  (aggregated: trunk.layers.{l}.ffn.experts.{e}.*)
  head.*   action queries and the action projection             (stays on the robot)
Normalization statistics are buffers under normalizer.* (saved, never aggregated). The frozen
MiniLM is not a submodule: it is reloaded from its pip package, so checkpoints stay small.

The head is ACT-style: H learned query tokens join the sequence and are read out as the action chunk.

This module is the architecture. What is not lives beside it, and the policy's methods of the same
names delegate there (their callers stay as they were):
  processors.py              normalization (the ``normalizer`` submodule), relative actions, image
                             conversion, observation -> batch
  fedvla_core.federated.split the stem/trunk/head groups, trunk layout, trunk export/load
  expert_stats.py            routing counts: reset, record, per layer, mean active experts, FLOPs
  threads.py                 act()'s CPU thread count
"""
from __future__ import annotations

import time
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init

from ..federated import split
from ..federated.split import GROUP_NAMES  # noqa: F401  (re-exported: fedvla_core.model.GROUP_NAMES)
from . import expert_stats
from .configuration import FedVLAConfig
from .encoders import (FrozenSentenceEncoder, InstructionProjector, ProprioEncoder, SpatialKeypoints,
                       VisionPatchEncoder, random_shift)
from .experts import AdaMoE, DGMoE, ExpertFFN, ExpertStat, FFNOutput, build_ffn
from .processors import Normalizer, RelativeActions, images_to_float, observation_to_batch
from .scene_parsing import GROUPS, InstructionSceneParser, patch_ids_from_masks
from .threads import cpu_threads as _cpu_threads


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
        self.normalizer = Normalizer(config.action_dim, config.proprio_dim)
        self.relative_actions = RelativeActions(config.relative_action_dims)
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

    # -------------------------------------------------------- normalization (processors.Normalizer)
    def set_normalization(self, action_mean, action_std, proprio_mean, proprio_std) -> None:
        """Store dataset statistics; a std below processors.MIN_STD (a constant dimension) is replaced by 1."""
        self.normalizer.set_stats(action_mean, action_std, proprio_mean, proprio_std)

    @property
    def has_normalization(self) -> bool:
        return self.normalizer.has_stats

    def normalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return self.normalizer.normalize_actions(actions)

    def unnormalize_actions(self, actions: torch.Tensor) -> torch.Tensor:
        return self.normalizer.unnormalize_actions(actions)

    def normalize_proprio(self, proprio: torch.Tensor) -> torch.Tensor:
        return self.normalizer.normalize_proprio(proprio)

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

    def _raw_proprio(self, batch: dict[str, Any]) -> torch.Tensor:
        return batch["proprio"].to(self.head.queries.device, dtype=torch.float32)

    def to_model_actions(self, actions: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """Absolute actions (B, H, A) -> what the model predicts (offsets in the first relative_action_dims)."""
        if not self.relative_actions:
            return actions
        return self.relative_actions.to_model(actions, self._raw_proprio(batch))

    def from_model_actions(self, actions: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        """Inverse of :meth:`to_model_actions`."""
        if not self.relative_actions:
            return actions
        return self.relative_actions.from_model(actions, self._raw_proprio(batch))

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
        expert_stats.record(self, stats)

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
        return observation_to_batch(observation, cfg.camera_names, cfg.image_size, with_masks=cfg.use_iosp)

    def act(self, observation: dict[str, Any], cpu_threads: int | None = 1) -> np.ndarray:
        """One observation -> the unnormalized action chunk (H, action_dim) as float32 numpy.

        observation: {"images": {camera: HxWx3 uint8}, "instruction": str, "proprio": 1-D array,
        optional "masks": {camera: HxW int ids}}. Images of another size are resized.
        On the CPU it runs with `cpu_threads` intra-op threads (default 1: why in threads.py) and
        restores the previous setting; None keeps it.

        Runs under torch.inference_mode, and switches to eval (and back) only when the policy is
        training: ``train()``/``eval()`` walk every submodule, 0.4 ms each on a 2-core CPU. After
        :meth:`compile_act` it runs the compiled graph (same chunk within float tolerance).
        """
        was_training = self.training
        if was_training:
            self.eval()
        try:
            with _cpu_threads(cpu_threads, self.head.queries.device), torch.inference_mode():
                batch = self.observation_to_batch(observation)
                if self._compiled_act is not None and batch.get("masks") is None:
                    chunk = self._act_compiled(batch)
                else:
                    chunk = self.predict_action_chunk(batch)
                return chunk[0].to("cpu", torch.float32).numpy()
        finally:
            if was_training:
                self.train(True)

    # ------------------------------------------------------- compiled act (static inference path)
    _compiled_act = None  # torch.compile'd _act_graph, set by compile_act

    def _act_graph(self, images: torch.Tensor, proprio: torch.Tensor, lang_pooled: torch.Tensor,
                   lang_tokens: torch.Tensor, lang_mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, ExpertStat]]:
        """The static-shape inference path: tensors in, (unnormalized chunk (B, H, A), routing stats) out."""
        batch = {"images": images, "proprio": proprio, "lang_pooled": lang_pooled, "lang_tokens": lang_tokens,
                 "lang_mask": lang_mask}
        pred, _, stats = self._predict(batch)
        return self.from_model_actions(self.unnormalize_actions(pred.float()), batch), stats

    def _act_compiled(self, batch: dict[str, Any], record: bool = True) -> torch.Tensor:
        """The compiled graph on one batch: instruction features from the cache, padded to
        max_instruction_tokens (masked out, so the result is unchanged) so that every instruction has
        the same shapes and the graph is never recompiled."""
        device = self.head.queries.device
        if batch.get("lang_tokens") is not None:
            pooled, tokens, mask = batch["lang_pooled"], batch["lang_tokens"], batch["lang_mask"]
        else:
            pooled, tokens, mask = self.language_encoder.encode(list(batch["instruction"]), device)
        pad = self.config.max_instruction_tokens - tokens.shape[1]
        if pad > 0:
            tokens, mask = F.pad(tokens, (0, 0, 0, pad)), F.pad(mask, (0, pad))
        chunk, stats = self._compiled_act(batch["images"].to(device), batch["proprio"].to(device, torch.float32),
                                          pooled, tokens, mask)
        if record:
            self.record_expert_stats(stats)  # eager FFNs count themselves; the compiled ones cannot
        return chunk

    def compile_act(self, enabled: bool = True, warmup: bool = True, cpu_threads: int | None = 1,
                    mode: str | None = None) -> float:
        """Make :meth:`act` run a ``torch.compile``'d graph of the inference path (False: eager again).

        Measured on a 2-core CPU: 5.5 ms instead of 10 ms per act, after about 40 s of compiling
        (the first call), hence a warm-up here, meant for server start, and off unless asked for.
        The graph uses the dense MoE dispatch (no data-dependent shapes, no host sync), reads the
        parameters at each call (in-place weight updates are seen) and is only used in eval mode
        without segmentation masks (the eager path handles those). Compile with the thread count
        act() will use: the CPU kernels fix theirs when they are generated.
        Returns the warm-up's seconds (0.0 without one).
        """
        if not enabled:
            self._compiled_act = None
            return 0.0
        self._compiled_act = torch.compile(self._act_graph, dynamic=False, mode=mode)
        if not warmup:
            return 0.0
        cfg, device = self.config, self.head.queries.device
        mask = torch.zeros(1, cfg.max_instruction_tokens, dtype=torch.bool, device=device)
        mask[:, 0] = True
        batch = {"images": torch.zeros(1, cfg.n_cameras, 3, cfg.image_size, cfg.image_size, device=device),
                 "proprio": torch.zeros(1, cfg.proprio_dim, device=device),
                 "lang_pooled": torch.zeros(1, cfg.language_dim, device=device),
                 "lang_tokens": torch.zeros(1, cfg.max_instruction_tokens, cfg.language_dim, device=device),
                 "lang_mask": mask}  # no MiniLM needed (a machine may only have a cache file)
        was_training = self.training
        start = time.perf_counter()
        try:
            self.eval()
            with _cpu_threads(cpu_threads, device), torch.inference_mode():
                self._act_compiled(batch, record=False)  # the warm-up is no routing evidence
        finally:
            self.train(was_training)
        return time.perf_counter() - start

    # ------------------------------------------------------ parameter groups (federated.split)
    def parameter_group(self, name: str) -> dict[str, nn.Parameter]:
        """Parameters of one federated group ("stem", "trunk" or "head") by full name."""
        return split.parameter_group(self, name)

    def trunk_layout(self) -> dict[str, tuple[int, int | None]]:
        """Each trunk tensor name -> (layer index, expert index or None for attention, norms, gates)."""
        return split.trunk_layout(self)

    def export_trunk(self) -> dict[str, torch.Tensor]:
        """The shared trunk as detached CPU tensors (what a client uploads)."""
        return split.export_trunk(self)

    def export_experts(self, layer: int, expert_ids) -> dict[str, torch.Tensor]:
        """Only the given experts of one trunk layer, as detached CPU tensors."""
        return split.export_experts(self, layer, expert_ids, self.config.n_layers)

    def load_trunk(self, state: dict[str, torch.Tensor]) -> list[str]:
        """Copy trunk tensors in place (all or a subset, e.g. some experts); returns the names loaded.

        Any name outside the trunk, or a shape mismatch, raises before anything is changed.
        """
        return split.load_trunk(self, state)

    # ------------------------------------------------------------ expert stats (expert_stats)
    def trunk_ffns(self) -> list[ExpertFFN]:
        return [layer.ffn for layer in self.trunk.layers]

    def expert_counts(self) -> list[list[int]]:
        """Per trunk layer, per expert: tokens routed since the last reset (the input of Expert-Driven Aggregation)."""
        return expert_stats.counts(self.trunk_ffns())

    def reset_expert_stats(self) -> None:
        expert_stats.reset(self)

    def mean_active_experts(self) -> float:
        """Routed experts per token in the trunk since the last reset, averaged over layers (0.0 if none seen)."""
        return expert_stats.mean_active(self.trunk_ffns())

    def iosp_mean_active_experts(self) -> dict[str, float]:
        """Per IOSP group (target, surrounding, background): routed experts per token since the last reset."""
        if self.stem.iosp is None:
            return {}
        return expert_stats.mean_active_by_name(dict(zip(GROUPS, self.stem.iosp.refiners)))

    def trunk_ffn_flops_per_token(self) -> float:
        """Trunk FFN FLOPs per token (mean over layers), using the measured mean active experts of DGMoE."""
        return expert_stats.mean_flops_per_token(self.trunk_ffns())
