"""Is an instruction one the policy can ground? Nearest trained instruction in the language encoder's space.

Why: the policy maps any text to an action chunk, so "sing a song" used to drive the arm for a full
minute. A goal is refused (goal_refusal.UNGROUNDED) when the cosine similarity of its sentence
embedding (the policy's own frozen MiniLM, mean-pooled and L2-normalized) to the nearest instruction
the policy was trained on is below a threshold. The threshold is the server parameter
``min_instruction_similarity``; benchmarks/instruction_grounding.py measures it on held-out phrasings
(synonyms, polite forms, other word orders that training never saw) against off-task sentences.

Which instructions the policy was trained on, most specific first:
1. the checkpoint's own config, key ``trained_instructions`` (a list of strings);
2. the simulator's task table (fedvla_sim) whose cameras the checkpoint reads: the Meta-World table
   when every camera is a Meta-World one, else the Panda tabletop table (training draws from each
   task's ``phrasings``);
3. none known: the check is off (and the server says so in its log).
No rclpy import.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


def trained_instructions(config, task_table=None) -> tuple[list[str], str]:
    """(instructions, where they came from) for a policy config; ([], reason) when none are known.

    A checkpoint lists its training instructions in ``trained_instructions``. Older ones do not; then
    ``task_table(camera_names)`` (given by the caller, e.g. the policy server, which knows the sim's task
    tables; the core does not import the sim) returns ``(instructions, source)`` or raises ImportError.
    """
    known = getattr(config, "trained_instructions", None)
    if known:
        texts = [str(t) for t in known if str(t).strip()]
        if texts:
            return sorted(set(texts)), "the checkpoint config's trained_instructions"
    if task_table is None:
        return [], "no trained_instructions in the checkpoint and no task table"
    try:
        return task_table(list(getattr(config, "camera_names", []) or []))
    except ImportError as exc:  # a robot without the sim package and a checkpoint that lists nothing
        return [], f"no trained_instructions in the checkpoint and no task table ({exc})"


def sentence_embeddings(encoder, texts: list[str]) -> np.ndarray:
    """(N, D) L2-normalized sentence embeddings from a FrozenSentenceEncoder, without growing its cache.

    The encoder caches every text it encodes (training wants that); a refused instruction must not
    leave an entry behind, or a flood of distinct goals would grow the server's memory without bound.
    """
    embed = getattr(encoder, "_embed", None)
    if embed is None:
        return encoder.encode(list(texts), "cpu")[0].detach().cpu().numpy()
    with torch.no_grad():
        return torch.stack([pooled for pooled, _ in embed(list(texts), torch.device("cpu"))]).cpu().numpy()


@dataclass
class Grounding:
    similarity: float  # cosine similarity to the nearest trained instruction
    nearest: str  # that instruction


class InstructionGrounder:
    """Nearest trained instruction of a text, and the refusal when it is too far."""

    def __init__(self, encoder, instructions: list[str], threshold: float, source: str = ""):
        if not instructions:
            raise ValueError("InstructionGrounder needs at least one trained instruction")
        self.encoder, self.instructions, self.threshold, self.source = encoder, list(instructions), threshold, source
        self._table = sentence_embeddings(encoder, self.instructions)

    def ground(self, text: str) -> Grounding:
        query = sentence_embeddings(self.encoder, [text])[0]
        sims = self._table @ query
        best = int(np.argmax(sims))
        return Grounding(float(sims[best]), self.instructions[best])

    def problem(self, text: str) -> str | None:
        """Why ``text`` cannot be grounded, or None when it is close enough to a trained instruction."""
        g = self.ground(text)
        if g.similarity >= self.threshold:
            return None
        return (f"the policy was not trained on anything like this instruction: similarity {g.similarity:.2f} to the "
                f"nearest trained one ({g.nearest!r}) is below min_instruction_similarity {self.threshold:.2f}")
