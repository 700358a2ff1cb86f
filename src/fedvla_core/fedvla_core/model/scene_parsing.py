"""Instruction-Oriented Scene Parsing (IOSP): keep the image tokens the instruction is about.

1. Cross-attention from every image token to the instruction's tokens gives an instruction-aware
   token and a relevance score (the attention-weighted query-key logit).
2. Proposals: each token's score is its own relevance, or, when object masks are given (e.g. the
   simulator's segmentation), the mean relevance of the object it lies on, so whole objects move
   together. Tokens ranked by proposal score are split into three equal tiers: Target (most
   relevant), Surrounding, Background.
3. Each tier keeps its top-k tokens by relevance (k = iosp_topk), scaled by 2*sigmoid(relevance) so
   the scorer learns from the task loss through the selection, and tagged with a group embedding.
4. Each group is refined by its own small expert layer (same FFN kind as the trunk).
The 3k tokens then join the instruction and proprioception tokens in the trunk.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from .experts import ExpertFFN, ExpertStat

GROUPS = ("target", "surrounding", "background")


class SceneParse(NamedTuple):
    tokens: torch.Tensor  # (B, 3k, d): Target k, Surrounding k, Background k
    aux_loss: torch.Tensor  # scalar: mean load-balance loss of the three refiners
    relevance: torch.Tensor  # (B, N) relevance of every image token
    selected: torch.Tensor  # (B, 3, k) indices of the kept tokens per group
    stats: tuple = ()  # per refiner: ExpertStat (routing counts of this call)


def patch_ids_from_masks(masks: torch.Tensor, image_size: int, patch_size: int) -> torch.Tensor:
    """Per-pixel object ids (B, n_cams, H, W) -> the id at each patch centre, (B, n_cams * P) camera-major."""
    m = masks
    if m.shape[-2:] != (image_size, image_size):
        m = F.interpolate(m.float().flatten(0, 1).unsqueeze(1), size=(image_size, image_size), mode="nearest")
        m = m.squeeze(1).reshape(*masks.shape[:2], image_size, image_size).long()
    centre = patch_size // 2
    return m[..., centre::patch_size, centre::patch_size].long().flatten(1)


def proposal_scores(relevance: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Mean relevance of each token's proposal (tokens sharing an id in one sample): (B, N) -> (B, N)."""
    b, n = relevance.shape
    key = ids - ids.min()
    key = key + torch.arange(b, device=ids.device)[:, None] * (key.max() + 1)
    _, segment = torch.unique(key.flatten(), return_inverse=True)
    n_seg = int(segment.max()) + 1
    total = relevance.new_zeros(n_seg).index_add_(0, segment, relevance.flatten())
    count = relevance.new_zeros(n_seg).index_add_(0, segment, torch.ones_like(relevance.flatten()))
    return (total / count)[segment].reshape(b, n)


def split_into_groups(relevance: torch.Tensor, score: torch.Tensor, k: int) -> torch.Tensor:
    """Tier tokens by score (ties broken by relevance), then keep the top-k relevance per tier.

    relevance, score: (B, N). Returns indices (B, 3, k): group 0 Target, 1 Surrounding, 2 Background.
    """
    b, n = relevance.shape
    by_relevance = torch.argsort(relevance, dim=1, descending=True, stable=True)
    by_score = torch.argsort(score.gather(1, by_relevance), dim=1, descending=True, stable=True)
    order = by_relevance.gather(1, by_score)  # tokens, best first
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(n, device=order.device).expand(b, n))
    tier = (rank * 3) // n  # 0, 1, 2
    picks = []
    for g in range(3):
        masked = relevance.masked_fill(tier != g, float("-inf"))
        picks.append(masked.topk(k, dim=1).indices)
    return torch.stack(picks, dim=1)


class InstructionSceneParser(nn.Module):
    """IOSP as one module: relevance by cross-attention, grouping, per-group refinement (see the module doc)."""

    def __init__(self, d_model: int, topk: int, refiners: list[ExpertFFN]):
        super().__init__()
        self.topk = topk
        self.scale = d_model ** -0.5
        self.query = nn.Linear(d_model, d_model)
        self.key = nn.Linear(d_model, d_model)
        self.value = nn.Linear(d_model, d_model)
        self.out = nn.Linear(d_model, d_model)
        self.norm = nn.LayerNorm(d_model)
        self.group_embedding = nn.Parameter(torch.zeros(len(GROUPS), d_model))
        self.refine_norms = nn.ModuleList([nn.LayerNorm(d_model) for _ in GROUPS])
        self.refiners = nn.ModuleList(refiners)

    def relevance(self, image_tokens: torch.Tensor, lang_tokens: torch.Tensor, lang_mask: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """(instruction-aware image tokens (B, N, d), relevance (B, N))."""
        q = self.query(self.norm(image_tokens))
        k = self.key(lang_tokens)
        logits = torch.einsum("bnd,btd->bnt", q, k) * self.scale
        logits = logits.masked_fill(~lang_mask[:, None, :], float("-inf"))
        attn = logits.softmax(-1)
        context = torch.einsum("bnt,btd->bnd", attn, self.value(lang_tokens))
        relevance = (attn * logits.masked_fill(~lang_mask[:, None, :], 0.0)).sum(-1)
        return image_tokens + self.out(context), relevance

    def forward(self, image_tokens: torch.Tensor, lang_tokens: torch.Tensor, lang_mask: torch.Tensor,
                proposal_ids: torch.Tensor | None = None) -> SceneParse:
        tokens, relevance = self.relevance(image_tokens, lang_tokens, lang_mask)
        with torch.no_grad():
            score = relevance if proposal_ids is None else proposal_scores(relevance, proposal_ids)
            selected = split_into_groups(relevance.detach(), score, self.topk)  # (B, 3, k)
        groups, aux, stats = [], [], []
        for g in range(len(GROUPS)):
            idx = selected[:, g]
            tok = tokens.gather(1, idx[..., None].expand(-1, -1, tokens.shape[-1]))
            gate = 2.0 * torch.sigmoid(relevance.gather(1, idx))
            tok = tok * gate[..., None].to(tok.dtype) + self.group_embedding[g]
            out = self.refiners[g](self.refine_norms[g](tok))
            groups.append(tok + out.y)
            aux.append(out.aux_loss)
            stats.append(ExpertStat(out.counts, out.tokens))
        return SceneParse(torch.cat(groups, dim=1), torch.stack(aux).mean(), relevance, selected, tuple(stats))
