"""Measure the policy server's instruction-grounding threshold (min_instruction_similarity).

For each task table (Panda tabletop, Meta-World) it embeds, with the policy's frozen MiniLM
(FrozenSentenceEncoder, mean-pooled, L2-normalized):
- the trained instructions: every task's ``phrasings`` (what training draws from);
- held-out phrasings: every task's ``held_out_phrasings`` (synonyms, polite forms, other word orders
  training never sees): these must be ACCEPTED;
- off-task sentences (OFF_TASK below, chit-chat, household chores, other robot jobs): these must be REFUSED;
and records each sentence's cosine similarity to its nearest trained instruction, then picks the
threshold: midway between the lowest held-out and the highest off-task similarity over both tables
when the two sets are separated, else the value with the fewest errors (held-out refusals count
double, a refused legitimate goal being the costlier mistake). Writes
benchmarks/results/instruction_grounding.json.

    python benchmarks/instruction_grounding.py [--out benchmarks/results/instruction_grounding.json]
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
from pathlib import Path

import numpy as np

from fedvla_bringup.provenance import git_commit
from fedvla_core.control.instruction_grounding import sentence_embeddings
from fedvla_core.model.encoders import FrozenSentenceEncoder
from fedvla_sim.metaworld_env import METAWORLD_HELD_OUT_PHRASINGS, METAWORLD_TASKS
from fedvla_sim.tasks import TASKS

RESULT = Path(__file__).resolve().parent / "results" / "instruction_grounding.json"

OFF_TASK = (
    "sing a song", "tell me a joke", "what is the weather like today", "what time is it", "how old are you",
    "hello there", "good morning robot", "play some music", "write a poem about the sea",
    "translate this sentence into French", "book a flight to Paris", "order a pizza", "call my mother",
    "turn off the lights", "make me a cup of coffee", "water the plants", "walk the dog", "wash the dishes",
    "fold the laundry", "vacuum the living room", "drive to the airport", "dance for me",
    "delete all the files", "shut down the computer", "open the fridge", "cook some pasta",
    "sweep the floor of the kitchen", "paint the wall blue", "throw the ball to me", "wave your hand",
)


def nearest(table: np.ndarray, queries: np.ndarray) -> np.ndarray:
    return (queries @ table.T).max(axis=1)


def choose_threshold(held_out: np.ndarray, off_task: np.ndarray) -> tuple[float, str]:
    lo, hi = float(held_out.min()), float(off_task.max())
    if lo > hi:
        return round((lo + hi) / 2, 3), f"separated: midway between the lowest held-out {lo:.3f} and highest off-task {hi:.3f}"
    candidates = np.unique(np.r_[held_out, off_task])
    cost = [2 * np.sum(held_out < t) + np.sum(off_task >= t) for t in candidates]
    best = float(candidates[int(np.argmin(cost))])
    return round(best, 3), (f"overlapping (lowest held-out {lo:.3f} <= highest off-task {hi:.3f}): fewest errors, "
                            f"a held-out refusal counting double")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=str(RESULT), help="where to write the JSON result")
    args = parser.parse_args(argv)
    encoder = FrozenSentenceEncoder.shared("")
    off = sentence_embeddings(encoder, list(OFF_TASK))
    suites = {
        "panda": ([p for t in TASKS.values() for p in t.phrasings],
                  {t.name: list(t.held_out_phrasings) for t in TASKS.values()}),
        "metaworld": ([p for ps in METAWORLD_TASKS.values() for p in ps],
                      {k: list(v) for k, v in METAWORLD_HELD_OUT_PHRASINGS.items()}),
    }
    per_suite, all_held, all_off = {}, [], []
    for suite, (trained, held_out) in suites.items():
        table = sentence_embeddings(encoder, trained)
        held_texts = [p for ps in held_out.values() for p in ps]
        held_sims = nearest(table, sentence_embeddings(encoder, held_texts))
        off_sims = nearest(table, off)
        all_held.append(held_sims)
        all_off.append(off_sims)
        per_suite[suite] = {
            "trained_instructions": len(trained),
            "held_out": {t: round(float(s), 4) for t, s in zip(held_texts, held_sims)},
            "off_task": {t: round(float(s), 4) for t, s in zip(OFF_TASK, off_sims)},
            "held_out_min": round(float(held_sims.min()), 4), "held_out_mean": round(float(held_sims.mean()), 4),
            "off_task_max": round(float(off_sims.max()), 4), "off_task_mean": round(float(off_sims.mean()), 4),
        }
    held, offs = np.concatenate(all_held), np.concatenate(all_off)
    threshold, how = choose_threshold(held, offs)
    for suite, entry in per_suite.items():
        h = np.array(list(entry["held_out"].values()))
        o = np.array(list(entry["off_task"].values()))
        entry["at_threshold"] = {"held_out_refused": int(np.sum(h < threshold)), "held_out": len(h),
                                 "off_task_accepted": int(np.sum(o >= threshold)), "off_task": len(o)}
    result = {
        "benchmark": "instruction_grounding",
        "what": "cosine similarity (MiniLM sentence embedding) of each sentence to its nearest trained instruction",
        "encoder": encoder.path, "threshold": threshold, "threshold_rule": how,
        "parameter": "policy_server min_instruction_similarity", "suites": per_suite,
        "git_commit": git_commit(), "host": platform.node(), "date": dt.datetime.now(dt.timezone.utc).isoformat(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    for suite, entry in per_suite.items():
        print(f"{suite}: held-out min {entry['held_out_min']:.3f} mean {entry['held_out_mean']:.3f}; off-task max "
              f"{entry['off_task_max']:.3f} mean {entry['off_task_mean']:.3f}; at {threshold}: {entry['at_threshold']}")
    print(f"threshold {threshold} ({how}) -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
