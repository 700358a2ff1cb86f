"""`fedvla-sim`: record demonstrations, list tasks, check experts, save a preview image.

    fedvla-sim record --suite panda --task put_red_block_in_bowl --episodes 20 --out demos/ --workers 2
    fedvla-sim record-suite --episodes 200 --out data/demos          # all 10 tasks, one worker per core
    fedvla-sim tasks
    fedvla-sim check --suite panda --task stack_red_on_green --seeds 10
    fedvla-sim preview --task push_blue_block_left --out preview.png
    fedvla-sim eval --checkpoint checkpoints/panda_base --suite panda --seeds 10 --out eval.json
    fedvla-sim eval-suite --checkpoint checkpoints/panda_base --seeds 50 --out eval.json --media-dir docs/failures
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

from fedvla_sim.recorder import RecordConfig, SuiteRecordConfig, record, record_suite


def _add_record_args(parser: argparse.ArgumentParser) -> None:
    """One flag per RecordConfig field, help from the field's metadata."""
    for f in dataclasses.fields(RecordConfig):
        flag = "--" + f.name.replace("_", "-")
        helptext = f"{f.metadata.get('help', '')} (default: {f.default})"
        if f.type in (bool, "bool"):
            parser.add_argument(flag, action="store_true", help=helptext)
        else:
            kind = {"int": int, "float": float}.get(getattr(f.type, "__name__", f.type), str)
            parser.add_argument(flag, type=kind, default=f.default, help=helptext)


def _cmd_record(args: argparse.Namespace) -> int:
    cfg = RecordConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(RecordConfig)})
    t0 = time.monotonic()
    summary = record(cfg)
    summary["wall_s"] = round(time.monotonic() - t0, 2)
    print(json.dumps({k: v for k, v in summary.items() if k != "kept"} | {"kept": len(summary["kept"])}, indent=2))
    return 0 if len(summary["kept"]) >= cfg.episodes else 1


def _add_dataclass_args(parser: argparse.ArgumentParser, cls, required: tuple[str, ...] = ()) -> None:
    """One flag per field of dataclass `cls` (tuples take several values), help from the field's metadata."""
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        helptext = f"{f.metadata.get('help', '')} (default: {default})"
        if isinstance(default, tuple):
            parser.add_argument(flag, nargs="*", default=list(default), help=helptext)
        elif isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=helptext)
        else:
            parser.add_argument(flag, type=type(default), default=default, help=helptext, required=f.name in required)


def _from_args(cls, args: argparse.Namespace):
    values = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name)
        values[f.name] = tuple(value) if isinstance(value, list) else value
    return cls(**values)


def _cmd_record_suite(args: argparse.Namespace) -> int:
    cfg = _from_args(SuiteRecordConfig, args)
    manifest = record_suite(cfg, command="fedvla-sim " + " ".join(sys.argv[1:]) if sys.argv[1:] else None)
    short = {name: {k: t[k] for k in ("episodes", "attempted", "expert_success_rate", "mean_expert_steps")}
             for name, t in manifest["tasks"].items()}
    print(json.dumps({"tasks": short, "wall_s": manifest["wall_s"], "manifest": cfg.manifest}, indent=2))
    return 0 if all(t["episodes"] >= cfg.episodes for t in manifest["tasks"].values()) else 1


def _cmd_eval_suite(args: argparse.Namespace) -> int:
    from fedvla_sim.batched_eval import SuiteEvalConfig, evaluate_suite

    cfg = _from_args(SuiteEvalConfig, args)
    result = evaluate_suite(cfg, command="fedvla-sim " + " ".join(sys.argv[1:]))
    print(json.dumps({k: result[k] for k in ("per_task_success", "mean_success", "mean_success_by_phrasing",
                                             "failure_modes", "media", "wall_time_s") if k in result}, indent=1))
    return 0


def _cmd_tasks(args: argparse.Namespace) -> int:
    from fedvla_sim.metaworld_env import METAWORLD_TASKS
    from fedvla_sim.tasks import TASKS

    for name, task in TASKS.items():
        print(f"panda     {name:28s} {task.phrasings[0]!r}")
    for name, phrasings in METAWORLD_TASKS.items():
        print(f"metaworld {name:28s} {phrasings[0]!r}")
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    """Run the expert without rendering on a range of seeds and print the success rate."""
    seeds = range(args.seed_start, args.seed_start + args.seeds)
    if args.suite == "panda":
        from fedvla_sim.env import PandaTabletopEnv
        from fedvla_sim.experts import rollout_expert as rollout
        env = PandaTabletopEnv(args.task, args.seed_start, render=False)
    else:
        from fedvla_sim.metaworld_env import MetaWorldEnv, rollout_metaworld_expert as rollout
        env = MetaWorldEnv(args.task, args.seed_start, render=False)
    ok = []
    for seed in seeds:
        env.reset(seed)
        ok.append(rollout(env)["success"])
    failed = [s for s, good in zip(seeds, ok) if not good]
    print(json.dumps({"suite": args.suite, "task": args.task, "seeds": len(ok), "success_rate": sum(ok) / len(ok),
                      "failed_seeds": failed}))
    return 0


def _cmd_preview(args: argparse.Namespace) -> int:
    import numpy as np
    import imageio.v2 as imageio

    from fedvla_sim.recorder import make_env

    env = make_env(args.suite, args.task, args.seed, args.camera_size)
    obs = env.reset(args.seed)
    imageio.imwrite(args.out, np.concatenate([obs["images"][c] for c in obs["images"]], axis=1))
    print(f"{args.out}: {env.instruction!r}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from fedvla_sim.policy_eval import EvalConfig, evaluate

    cfg = EvalConfig(checkpoint=args.checkpoint, suite=args.suite, tasks=tuple(args.tasks), seed_start=args.seed_start,
                     seeds=args.seeds, max_steps=args.max_steps, execute_steps=args.execute_steps,
                     camera_size=args.camera_size, workers=args.workers, device=args.device)
    result = evaluate(cfg)
    text = json.dumps(result, indent=2)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text)
    print(json.dumps({"per_task_success": result["per_task_success"], "mean_success": result["mean_success"],
                      "wall_time_s": result["wall_time_s"]}, indent=2))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedvla-sim", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="Record scripted-expert demonstrations as episode files.")
    _add_record_args(rec)
    rec.set_defaults(func=_cmd_record)
    rs = sub.add_parser("record-suite", help=(
        "Record noise-injected expert demonstrations for many tasks at once (one pool, one worker per core), "
        "with a manifest of seeds and the command."))
    _add_dataclass_args(rs, SuiteRecordConfig)
    rs.set_defaults(func=_cmd_record_suite)
    from fedvla_sim.batched_eval import SuiteEvalConfig
    es = sub.add_parser("eval-suite", help=(
        "Evaluate a checkpoint on held-out seeds of every task with trained and held-out phrasings: sims in "
        "parallel workers, one batched policy; eval.json with Wilson intervals, failure modes, failure GIFs."))
    _add_dataclass_args(es, SuiteEvalConfig, required=("checkpoint",))
    es.set_defaults(func=_cmd_eval_suite)
    sub.add_parser("tasks", help="List the tasks of both suites.").set_defaults(func=_cmd_tasks)
    chk = sub.add_parser("check", help="Expert success rate over seeds (no rendering).")
    chk.add_argument("--suite", choices=("panda", "metaworld"), default="panda", help="Task suite.")
    chk.add_argument("--task", required=True, help="Task name.")
    chk.add_argument("--seeds", type=int, default=20, help="Number of seeds.")
    chk.add_argument("--seed-start", type=int, default=0, help="First seed.")
    chk.set_defaults(func=_cmd_check)
    ev = sub.add_parser("eval", help="Closed-loop success rate of a policy checkpoint on held-out seeds.")
    from fedvla_sim.policy_eval import EvalConfig
    for f in dataclasses.fields(EvalConfig):
        flag = "--" + f.name.replace("_", "-")
        helptext = f"{f.metadata.get('help', '')} (default: {f.default})"
        if f.name == "tasks":
            ev.add_argument(flag, nargs="*", default=[], help=helptext)
        else:
            ev.add_argument(flag, type=type(f.default), default=f.default, help=helptext, required=f.name == "checkpoint")
    ev.add_argument("--out", default="", help="Write the full result (every episode) to this JSON file.")
    ev.set_defaults(func=_cmd_eval)
    pre = sub.add_parser("preview", help="Save the first observation's camera images as one PNG.")
    pre.add_argument("--suite", choices=("panda", "metaworld"), default="panda", help="Task suite.")
    pre.add_argument("--task", default="put_red_block_in_bowl", help="Task name.")
    pre.add_argument("--seed", type=int, default=0, help="Seed of the initial state.")
    pre.add_argument("--camera-size", type=int, default=128, help="Image height and width, pixels.")
    pre.add_argument("--out", default="preview.png", help="Output PNG path.")
    pre.set_defaults(func=_cmd_preview)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MUJOCO_GL", "egl")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
