"""The simulated fleet demo (`fedvla up fleet`, the README's main command).

1. Starts every robot of the fleet config (sim Panda + policy server + fed client, own namespace
   and ROS domain) from the shipped base checkpoint.
2. Measures each robot's success rate on its own tasks (held-out seeds): "before".
3. Each robot records scripted-expert demonstrations through its fed client (demonstration mode).
4. Starts the federation server (SuperLink with TLS + SuperNode authentication, Expert-Driven
   Aggregation) and runs the rounds; the robots' SuperNodes train on their logged episodes and
   the policy servers load each new checkpoint between goals.
5. Measures success again: "after". Writes runs/<run>/summary.json and summary.png.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

from fedvla_bringup.fleet_config import load_fleet_config
from fedvla_bringup.graph import NodeSpec, robot_graph
from fedvla_bringup.processes import NodeProcesses
from fedvla_bringup.robot_handle import RobotHandle
from fedvla_msgs.msg import RoundStatus

REPO = Path(__file__).resolve().parents[3]
DEFAULT_CHECKPOINT = REPO / "checkpoints" / "panda_base"


def _log(msg: str) -> None:
    print(f"[fleet {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def evaluate(handle: RobotHandle, tasks: list[str], seeds: list[int], max_steps: int, label: str) -> list[dict]:
    """Run one goal per (task, seed) and return what happened."""
    rows = []
    for task in tasks:
        for seed in seeds:
            instruction = handle.reset(task, seed)
            for _ in range(30):  # right after start-up the server may not have every input yet
                run = handle.goals.run(instruction, timeout=max_steps * 0.5 + 60, max_steps=max_steps)
                if not run.retryable:  # refused as not ready (or busy): goal_refusal.RETRYABLE
                    break
                time.sleep(1.0)
            result = run.result
            rows.append({"task": task, "seed": seed, "instruction": instruction,
                         "success": bool(result is not None and result.success),
                         "steps": int(result.steps) if result is not None else 0,
                         "reason": result.reason if result is not None else (run.rejection_reason or "timeout")})
            _log(f"{handle.namespace} {label}: {task} seed {seed}: "
                 f"{'success' if rows[-1]['success'] else 'fail'} ({rows[-1]['reason']}, {rows[-1]['steps']} steps)")
    return rows


def record_demonstrations(handle: RobotHandle, tasks: list[str], count: int, seed_start: int) -> int:
    ok = 0
    for k in range(count):
        task = tasks[k % len(tasks)]
        handle.reset(task, seed_start + k)
        ok += handle.record_demonstration()
        _log(f"{handle.namespace} demonstrations: {ok}/{k + 1} recorded ({task})")
    return ok


def in_parallel(fn, items) -> list:
    """Run fn(item) for every item in its own thread; re-raise the first error."""
    results, errors = [None] * len(items), []

    def work(i, item):
        try:
            results[i] = fn(item)
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(err)

    threads = [threading.Thread(target=work, args=(i, it)) for i, it in enumerate(items)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return results


def run_rounds(handles: list[RobotHandle], server: subprocess.Popen, rounds: int, timeout: float) -> None:
    """Keep each robot's round gate open until every robot reports `rounds` finished rounds."""
    deadline = time.monotonic() + timeout
    last = {}
    while time.monotonic() < deadline:
        states = {h.namespace: h.status for h in handles}
        for h in handles:
            s = states[h.namespace]
            line = f"round {s.round}: {s.message or s.state}" if s else "no status yet"
            if last.get(h.namespace) != line:
                _log(f"{h.namespace} {line}")
                last[h.namespace] = line
            if s is not None and s.round < rounds and s.state != RoundStatus.STATE_READY:
                try:
                    h.trigger_round()
                except TimeoutError:
                    pass
        if all(s is not None and s.round >= rounds and s.state == RoundStatus.STATE_DONE for s in states.values()):
            return
        if server.poll() is not None and server.returncode != 0:
            raise RuntimeError(f"the federation server exited with {server.returncode}")
        time.sleep(1.0)
    raise TimeoutError(f"the fleet did not finish {rounds} rounds in {timeout:.0f} s")


def plot(summary: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    robots = list(summary["robots"])
    before = [summary["robots"][r]["success_before"] for r in robots]
    after = [summary["robots"][r]["success_after"] for r in robots]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    x = range(len(robots))
    ax.bar([i - 0.2 for i in x], before, width=0.4, label="before federated rounds")
    ax.bar([i + 0.2 for i in x], after, width=0.4, label=f"after {summary['rounds']} rounds (EDA)")
    ax.set_xticks(list(x), robots)
    ax.set_ylim(0, 1)
    ax.set_ylabel("task success rate")
    ax.set_title("Simulated fleet: success on each robot's own tasks")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fedvla up fleet", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--fleet-config", default="", help="fleet YAML (default: fedvla_bringup config/fleet_sim.yaml)")
    p.add_argument("--checkpoint", default=str(DEFAULT_CHECKPOINT), help="base policy checkpoint of every robot")
    p.add_argument("--out", default="", help="run folder (default: runs/fleet-<time>)")
    p.add_argument("--eval-seeds", type=int, default=2, help="held-out seeds per task for before/after success")
    p.add_argument("--max-steps", type=int, default=150, help="step limit of each evaluation goal (the base checkpoint's eval uses 150)")
    p.add_argument("--demos", type=int, default=6, help="demonstrations each robot records")
    p.add_argument("--rounds", type=int, default=2, help="federated rounds")
    p.add_argument("--local-steps", type=int, default=30, help="optimizer steps per robot per round")
    p.add_argument("--local-lr", type=float, default=1e-5,
                   help="robots' learning rate: fine-tuning a trained base on a handful of demonstrations "
                        "(measured: 60 steps at 5e-5 on 6 clean demos took the base from 50%% to 22%% on its tasks; "
                        "1e-5 kept 50%%)")
    p.add_argument("--local-batch", type=int, default=16, help="robots' batch size")
    p.add_argument("--trainer-threads", type=int, default=1,
                   help="OpenMP threads of each robot's local trainer (the robots share this machine's cores: "
                        "measured on 2 cores, torch's default made 30 local steps take 184 s with 2 robots)")
    p.add_argument("--strategy", default="eda", choices=["eda", "fedavg", "fedprox"], help="aggregation")
    p.add_argument("--round-timeout", type=float, default=400.0, help="seconds per round before it times out")
    p.add_argument("--port", type=int, default=9092, help="SuperLink port")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    t_start = time.monotonic()
    checkpoint = Path(args.checkpoint).resolve()
    if not (checkpoint / "config.json").exists():
        print(f"no policy checkpoint at {checkpoint}; train one with scripts/train_base_checkpoint.sh", file=sys.stderr)
        return 2
    out = Path(args.out or f"runs/fleet-{time.strftime('%Y%m%d-%H%M%S')}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    fleet = load_fleet_config(args.fleet_config or None)
    robots = fleet.robots
    certs = out / "certs"
    bin_dir = Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}")
    subprocess.run([str(bin_dir / "fedvla-federation"), "certs", "--out", str(certs), "--nodes", str(len(robots))],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    _log(f"run folder {out}; TLS credentials in {certs}")
    superlink = f"127.0.0.1:{args.port}"
    group = NodeProcesses(out / "logs")
    handles: list[RobotHandle] = []
    server = None
    try:
        for index, robot in enumerate(robots):
            for spec in robot_graph(sim=True, checkpoint=str(checkpoint), robot_id=robot.namespace,
                                    episode_dir=str(out / "episodes" / robot.namespace), sim_tasks=robot.tasks):
                if spec.package == "fedvla_fed_client":
                    spec = NodeSpec(**{**spec.__dict__, "parameters": {
                        **spec.parameters, "superlink_address": superlink, "base_checkpoint": str(checkpoint),
                        "root_certificates": str(certs / "ca.crt"), "auth_private_key": str(certs / f"node{index}"),
                        "min_new_episodes": 1_000_000, "round_interval_s": 0.0,
                        "trainer_threads": args.trainer_threads}})
                if spec.package == "fedvla_policy":  # load_checkpoint takes only the run folder's round checkpoints
                    spec = NodeSpec(**{**spec.__dict__, "parameters": {**spec.parameters, "checkpoint_root": str(out)}})
                group.start(spec, namespace=robot.namespace, domain_id=robot.domain_id, env={"PATH": env["PATH"]})
            _log(f"started {robot.namespace} (domain {robot.domain_id}): tasks {', '.join(robot.tasks)}")
        # The SuperLink starts now, so the SuperNodes are connected by the time the robots have data;
        # the run's first round waits at each robot's gate until the robot opens it (after its demonstrations).
        _log("starting the federation server (SuperLink, TLS + SuperNode authentication)")
        server_log = open(out / "logs" / "federation.log", "ab")
        server = subprocess.Popen(
            [str(bin_dir / "fedvla-federation"), "serve", "--certs", str(certs), "--port", str(args.port),
             "--rounds", str(args.rounds), "--min-clients", str(len(robots)), "--strategy", args.strategy,
             "--state-dir", str(out / "federation"), "--base-checkpoint", str(checkpoint),
             "--local-steps", str(args.local_steps), "--round-timeout", str(args.round_timeout),
             "--lr", str(args.local_lr), "--batch-size", str(args.local_batch),
             "--run-config", "gate-timeout=1200"],
            stdout=server_log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        handles = [RobotHandle(r.namespace, r.domain_id) for r in robots]
        in_parallel(lambda h: h.wait_ready(timeout=180), handles)
        _log(f"all {len(handles)} robots up in {time.monotonic() - t_start:.0f} s")

        seeds = list(range(args.eval_seeds))
        pairs = list(zip(handles, robots))
        before = in_parallel(lambda hr: evaluate(hr[0], hr[1].tasks, seeds, args.max_steps, "before"), pairs)
        demos = in_parallel(lambda hr: record_demonstrations(hr[0], hr[1].tasks, args.demos, 500), pairs)

        t_fed = time.monotonic()
        run_rounds(handles, server, args.rounds, timeout=args.rounds * args.round_timeout + 120)
        fed_wall = time.monotonic() - t_fed
        time.sleep(2.0)  # the fed clients ask the policy servers to load the new checkpoints
        after = in_parallel(lambda hr: evaluate(hr[0], hr[1].tasks, seeds, args.max_steps, "after"), pairs)

        rate = lambda rows: sum(r["success"] for r in rows) / max(1, len(rows))  # noqa: E731
        summary = {
            "rounds": args.rounds, "strategy": args.strategy, "checkpoint": str(checkpoint),
            "wall_time_s": round(time.monotonic() - t_start, 1), "federation_wall_time_s": round(fed_wall, 1),
            "robots": {h.namespace: {
                "tasks": r.tasks, "domain_id": r.domain_id, "demonstrations": demos[i],
                "success_before": rate(before[i]), "success_after": rate(after[i]),
                "round_status": {"round": h.status.round, "state": h.status.state,
                                 "bytes_up": h.status.bytes_up, "bytes_down": h.status.bytes_down,
                                 "metrics": {m.name: m.value for m in h.status.metrics}} if h.status else None,
                "before": before[i], "after": after[i]} for i, (h, r) in enumerate(pairs)},
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
        plot(summary, out / "summary.png")
        for name, r in summary["robots"].items():
            _log(f"{name}: success {r['success_before']:.0%} before -> {r['success_after']:.0%} after "
                 f"{args.rounds} federated rounds")
        _log(f"done in {summary['wall_time_s']:.0f} s: {out / 'summary.json'}, {out / 'summary.png'}")
        return 0
    finally:
        for h in handles:
            h.close()
        if server is not None and server.poll() is None:
            os.killpg(server.pid, 2)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, 9)
        group.stop()


if __name__ == "__main__":
    sys.exit(main())
