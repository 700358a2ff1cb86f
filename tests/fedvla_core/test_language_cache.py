"""Precomputed instruction embeddings replace MiniLM exactly (for machines that cannot carry it)."""
import pytest
import torch

from fedvla_core.model.encoders import LANGUAGE_CACHE_ENV, FrozenSentenceEncoder


def test_saved_cache_serves_identical_embeddings_without_minilm(tmp_path, monkeypatch):
    texts = ["put the red block in the bowl", "open the window"]
    reference = FrozenSentenceEncoder("", 32)
    expected = reference.encode(texts)
    reference.save_cache(tmp_path / "lang.pt")
    monkeypatch.setenv(LANGUAGE_CACHE_ENV, str(tmp_path / "lang.pt"))
    monkeypatch.setenv("FEDVLA_LANGUAGE_MODEL", str(tmp_path / "no_model_here"))
    cached = FrozenSentenceEncoder(str(tmp_path / "no_model_here"), 32)
    assert cached.model is None and cached.dim == reference.dim
    for a, b in zip(expected, cached.encode(texts)):
        assert torch.equal(a, b)
    assert cached.model is None  # MiniLM was never needed
    with pytest.raises(FileNotFoundError, match=LANGUAGE_CACHE_ENV):
        cached.encode(["an instruction nobody cached"])


def test_random_shift_moves_content_and_keeps_shape():
    from fedvla_core.model.encoders import random_shift

    torch.manual_seed(0)
    img = torch.zeros(64, 2, 3, 16, 16)
    img[..., 8, 8] = 1.0
    out = random_shift(img, 3)
    assert out.shape == img.shape
    peaks = {tuple((o[0, 0] == 1).nonzero()[0].tolist()) for o in out}
    assert len(peaks) > 5 and all(abs(r - 8) <= 3 and abs(c - 8) <= 3 for r, c in peaks)
