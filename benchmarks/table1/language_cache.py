"""The tasks' instruction embeddings, computed once for every process the benchmark starts."""
from __future__ import annotations

import os

from .config import Table1Config


def ensure_language_cache(cfg: Table1Config) -> str:
    """Precompute the tasks' instruction embeddings once (FEDVLA_LANGUAGE_CACHE) for every process we start.

    Trainers, ServerApps and evaluation workers then skip loading MiniLM (seconds of CPU each, x every
    process); where the variable is already set (the GPU machine: no MiniLM there) it is used as is.
    """
    if os.environ.get("FEDVLA_LANGUAGE_CACHE"):
        return os.environ["FEDVLA_LANGUAGE_CACHE"]
    from fedvla_core.model import FedVLAConfig
    from fedvla_core.model.encoders import FrozenSentenceEncoder
    from fedvla_sim.metaworld_env import METAWORLD_TASKS

    path = cfg.work / "lang_cache.pt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        default = FedVLAConfig(**cfg.model)
        encoder = FrozenSentenceEncoder(default.language_model_path, default.max_instruction_tokens)
        texts = sorted({p for t in cfg.tasks for p in METAWORLD_TASKS[t]})
        encoder.save_cache(str(path) + ".tmp", texts)
        os.replace(str(path) + ".tmp", path)
    os.environ["FEDVLA_LANGUAGE_CACHE"] = str(path.resolve())
    return os.environ["FEDVLA_LANGUAGE_CACHE"]
