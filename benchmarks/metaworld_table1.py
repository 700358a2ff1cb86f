"""The paper's Meta-World Table 1, reproduced through the deployment's own Flower ServerApp and ClientApp.

Four clients, one Meta-World task each (door-lock, drawer-close, sweep-into, window-open), three
RGB cameras. Every method runs as a real loopback deployment: a SuperLink (TLS + SuperNode auth)
and one supervised SuperNode per client with its warm local trainer (fedvla_bringup.loopback_federation);
there is no training loop of the benchmark's own. Methods (same model, data, seeds and optimizer
steps in total):

  centralized        ONE SuperNode holding all four tasks' demonstrations, local-steps x 4, FedAvg, full model
  fedavg             FedAvg on the full model
  fedprox            FedProx (proximal term on the trunk) on the full model
  fedvla             Expert-Driven Aggregation of the trunk, DGMoE + IOSP (the model defaults)
  fedvla-fedavg-agg  ablation: EDA -> FedAvg (trunk only)
  fedvla-top2        ablation: DGMoE -> top-2 MoE
  fedvla-no-iosp     ablation: IOSP off
  fedpart            FedPart: EDA, trunk, fedpart_layers trunk layers trained and uploaded per round

A client's task is evaluated with what that robot runs after round r: its own local policy of
round r (stem, head, normalization) with the server's round-r global arrays loaded over it.
Centralized: its one model on every task. Success comes from Meta-World (info["success"]).

Phases (each skips finished work, so a run split over several time-limited commands resumes):
  record  scripted-expert demonstrations (fedvla_sim.recorder, i.e. `fedvla-sim record`), seeds from train_seed_start
  train   every method's deployment (parallel_methods at once); the ServerApp resumes from its last round
  eval    held-out seeds from eval_seed_start, one process pool over all methods x rounds x clients
  report  the JSON, the plots and RESULTS.md
  all     the four in order

    .venv/bin/python benchmarks/metaworld_table1.py --config benchmarks/configs/metaworld_table1_smoke.yaml
    python3 benchmarks/metaworld_table1.py --config benchmarks/configs/metaworld_table1_full.yaml --phase train

This file is the command line; the phases live in benchmarks/table1/, one module each.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from table1.config import Table1Config
from table1.deployment import phase_train
from table1.evaluation import phase_eval
from table1.recording import phase_record
from table1.report import phase_report
from table1.runtime import Deadline, log

PHASES = ("record", "train", "eval", "report")


def _interrupted(signum, _frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="YAML file of Table1Config fields (benchmarks/configs/)")
    parser.add_argument("--phase", default="all", choices=(*PHASES, "all"), help="what to do (default: all)")
    parser.add_argument("--out", default="", help="override the config's result JSON path")
    parser.add_argument("--results-md", default="", help="override the config's RESULTS.md path")
    parser.add_argument("--work-dir", default="", help="override the config's work folder")
    args = parser.parse_args(argv)
    cfg = Table1Config.from_yaml(args.config)
    for key in ("out", "results_md", "work_dir"):
        if getattr(args, key):
            setattr(cfg, key, getattr(args, key))
    cfg.work_dir = str(Path(cfg.work_dir).resolve())  # Flower CLIs run from other folders: no relative paths
    os.environ.setdefault("MUJOCO_GL", "egl")
    signal.signal(signal.SIGTERM, _interrupted)
    deadline = Deadline(cfg.phase_time_budget_s)
    phases = PHASES if args.phase == "all" else (args.phase,)
    t0 = time.monotonic()
    for phase in phases:
        log(f"phase {phase} ({cfg.name})")
        if phase == "record":
            phase_record(cfg, deadline)
        elif phase == "train":
            phase_train(cfg, deadline)
        elif phase == "eval":
            phase_eval(cfg, deadline)
        else:
            phase_report(cfg)
    log(f"done in {time.monotonic() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
