"""The one split of seeds between evaluation and demonstrations (every recorder and evaluator uses it).

A seed fixes an episode's initial state (object layout, Meta-World task variation) and the
instruction drawn for it. Evaluation seeds are ``[0, DEMO_SEED_START)``; demonstration seeds start
at ``DEMO_SEED_START``. A policy is therefore never scored on a layout it was trained on.
"""
from __future__ import annotations

DEMO_SEED_START = 1000  # first seed of scripted demonstrations; evaluation seeds lie below it


def check_eval_seeds(start: int, count: int, what: str = "evaluation seeds") -> None:
    """Raise ValueError unless seeds start..start+count-1 are all evaluation seeds."""
    if start < 0 or count < 1 or start + count > DEMO_SEED_START:
        raise ValueError(f"{what} {start}..{start + count - 1} must lie in [0, {DEMO_SEED_START}): seeds from "
                         f"{DEMO_SEED_START} on are demonstration seeds (fedvla_sim.seeds)")


def check_demo_seeds(start: int, what: str = "demonstration seeds") -> None:
    """Raise ValueError unless seeds from `start` on are demonstration seeds (never evaluated)."""
    if start < DEMO_SEED_START:
        raise ValueError(f"{what} start at {start}, but seeds below {DEMO_SEED_START} are evaluation seeds "
                         f"(fedvla_sim.seeds); use --seed-start >= {DEMO_SEED_START}")
