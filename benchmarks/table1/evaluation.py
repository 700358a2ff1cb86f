"""Phase eval: held-out rollouts of every method x round x client policy in one process pool."""
from __future__ import annotations

import time

import numpy as np

from .config import Table1Config
from .language_cache import ensure_language_cache
from .layout import eval_path, method_dir, read_json, write_json
from .methods import clients_of
from .runtime import Deadline, log


def eval_jobs(cfg: Table1Config, method: str, rnd: int) -> list:
    """Every (client policy, task, seed) of one method's round: client i on its task, centralized on all."""
    from fedvla_sim.policy_eval import EvalJob, PolicySource

    snap = method_dir(cfg, method) / "snapshots" / f"round_{rnd:04d}"
    info = read_json(snap / "snapshot.json")
    if info is None:
        return []
    jobs = []
    seeds = range(cfg.eval_seed_start, cfg.eval_seed_start + cfg.episodes_for_round(rnd))
    for c in clients_of(cfg, method):
        if c["id"] not in info["local_rounds"]:
            continue
        source = PolicySource(str((snap / c["id"]).resolve()), str((snap / "global.safetensors").resolve()),
                              info["scope"])
        jobs += [EvalJob(source, task, s, tag=f"{method}|{rnd}|{c['id']}") for task in c["tasks"] for s in seeds]
    return jobs


class _StopEval(Exception):
    pass


def phase_eval(cfg: Table1Config, deadline: Deadline) -> None:
    from fedvla_sim.policy_eval import evaluate_jobs

    ensure_language_cache(cfg)
    units = [(m, r) for m in cfg.methods for r in cfg.eval_rounds() if not eval_path(cfg, m, r).is_file()]
    final_first = sorted(units, key=lambda u: (u[1] != cfg.rounds, u[0], u[1]))  # the table first, then the curve
    for batch in ([u for u in final_first if u[1] == cfg.rounds], [u for u in final_first if u[1] != cfg.rounds]):
        jobs, expected = [], {}
        for m, r in batch:
            unit_jobs = eval_jobs(cfg, m, r)
            if not unit_jobs:
                log(f"eval {m} round {r}: no snapshot (run --phase train first)")
                continue
            jobs += unit_jobs
            expected[(m, r)] = len(unit_jobs)
        if not jobs:
            continue
        if deadline.passed:
            log("eval: time budget spent; run the phase again")
            return
        rows: dict[tuple, list] = {u: [] for u in expected}
        t0 = time.monotonic()

        def on_result(row: dict) -> None:
            m, r, _ = row["tag"].split("|")
            unit = (m, int(r))
            rows[unit].append(row)
            if len(rows[unit]) == expected[unit]:
                write_json(eval_path(cfg, *unit), {"method": m, "round": int(r), "episodes": rows[unit],
                                                    "wall_s": time.monotonic() - t0})
                log(f"eval {m} round {r}: mean success {np.mean([x['success'] for x in rows[unit]]):.3f}")
            if deadline.passed:
                raise _StopEval

        log(f"eval: {len(jobs)} episodes in {len(expected)} method-rounds, {cfg.eval_workers} workers")
        try:
            evaluate_jobs(jobs, "metaworld", cfg.eval_workers, cfg.eval_device, cfg.camera_size, cfg.eval_max_steps,
                          cfg.eval_execute_steps, progress=False, on_result=on_result)
        except _StopEval:
            log("eval: time budget spent; finished method-rounds are saved, run the phase again")
            return
