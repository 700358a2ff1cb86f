"""Precomputed instruction embeddings replace MiniLM exactly (for machines that cannot carry it)."""
import pytest
import torch

from fedvla_policy.model.encoders import LANGUAGE_CACHE_ENV, FrozenSentenceEncoder


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
