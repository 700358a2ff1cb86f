"""Cost of a federated round on loopback: bytes per client per round and time beyond local training.

Real deployment: a SuperLink with TLS + SuperNode authentication and 2 supervised SuperNodes
(robots) on 127.0.0.1, the FedVLA Flower app, the default FedVLAConfig (2 cameras). Compared:
  eda-trunk-fp32   Expert-Driven Aggregation, trunk only, float32 weights
  eda-trunk-fp16   the same, uploading float16 deltas to the global trunk
  fedavg-full-fp32 FedAvg on the whole model (stem + trunk + head), float32 - the baseline
and two ways a robot trains:
  warm   the robot's warm local trainer (started by SuperNodeSupervisor; torch, MiniLM, policy and
         episodes stay loaded) does the round; the ClientApp only forwards arrays (the default)
  cold   the ClientApp trains in its own fresh process (node-config local-trainer="off"): imports
         torch, loads the policy and decodes the episodes every round
Overhead of a round = round wall time (server) - the slowest client's local training time
(everything that is not optimizer steps: Flower messaging, ClientApp start, hand-off, loading,
saving, aggregation). CPU load of the whole machine (all processes, /proc/stat) is sampled
during each run, since the machine may be shared.

Where the overhead goes (per round, slowest client; all clocks are this machine's):
  delivery_s        server push -> ClientApp entered: the SuperNode's wait before its next pull,
                    the download, SuperExec's task poll, the fresh flwr-clientapp process
  clientapp_start_s of which: flwr-clientapp process start -> ClientApp entered (imports, task input)
  return_s          ClientApp reply -> ServerApp has it: upload to the SuperNode, its reply poll,
                    upload to the SuperLink, the ServerApp's pull
  client_process_s - trainer_s - handoff_s: our ClientApp (gate, unpack/pack, report)
  trainer_s - local_train_s: the warm trainer's load/merge, upload and local save
Fixed in flwr 1.41 (no flag or variable; see fedvla_fed_client.supernode): the SuperNode sleeps
3 s after every empty pull from the SuperLink and polls for the ClientApp's reply every 0.5 s, and
every message gets a fresh flwr-clientapp process (~1 s of imports on this CPU).

The 2 simulated robots share this machine's cores: each robot's processes get --robot-threads
torch/OpenMP threads (default 1, as if each robot had its own core). With torch's default (all
cores per process) the two trainers' threads oversubscribe the CPU and slow every process on it.

Simulation engine (--engine simulation; the research path, fedvla_flower.simulation): the same app on
`flower-superlink --simulation` + `flwr run --federation-config` (Ray), the ClientApp in warm Ray actors
(--sim-cpus CPUs, --sim-client-cpus each), each keeping its robots' policy and decoded episodes warm.
Rows: the default FedVLAConfig with 4 clients, and a scaling series (a tiny FedVLAConfig, --sim-clients
4,10,25,50,100 clients per round). With more clients than actors the actors train clients one after the
other, so the training a round cannot avoid is sum(clients' train time) / workers (workers = min(actors,
clients)); overhead_s = round wall - that. engine_s = round wall - sum(clients' whole ClientApp time) /
workers: Flower + Ray alone (without our ClientApp's load, merge, save and pack). The first round (Ray
actors import torch, build the policies, decode the episodes) is reported apart, not in the means.
It writes only the JSON's "simulation" entry (and the deployment only its own): each run keeps the other's rows.

    .venv/bin/python benchmarks/federation_cost.py [--rounds 2] [--local-steps 5] [--modes warm,cold]
        [--cold-configs eda-trunk-fp16] [--robot-threads 1] [--keep-work]
        [--engine deployment|simulation|both] [--sim-rounds 4] [--sim-clients 4,10,25,50,100]
        [--out benchmarks/results/federation_cost.json]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from fedvla_core.episodes import EpisodeWriter
from fedvla_fed_server.certs import generate_certificates

from fedvla_bringup.loopback_federation import LoopbackFederation
from fedvla_flower.simulation import Simulation, SimulationSettings, fleet_node_configs

#: The scaling series' model: a FedVLAConfig of a few tens of thousands of parameters (one 32x32 camera).
TINY = dict(camera_names=["agentview"], image_size=32, patch_size=8, d_model=32, n_layers=2, n_heads=2, n_experts=4,
            expert_hidden=32, iosp_topk=2, iosp_n_experts=2, iosp_expert_hidden=16, chunk_size=4, proprio_dim=8,
            action_dim=8)

CONFIGS = {
    "eda-trunk-fp32": {"strategy": "eda", "scope": "trunk", "upload-dtype": "float32"},
    "eda-trunk-fp16": {"strategy": "eda", "scope": "trunk", "upload-dtype": "float16"},
    "fedavg-full-fp32": {"strategy": "fedavg", "scope": "full", "upload-dtype": "float32"},
}


def make_episodes(directory: Path, seed: int, cameras, size: int, episodes: int = 2, steps: int = 10) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(episodes):
        w = EpisodeWriter(directory, metadata={"instruction": "close the drawer", "robot_id": directory.name},
                          camera_names=cameras, joint_names=[f"j{i}" for i in range(8)],
                          action_names=[f"a{i}" for i in range(8)])
        for t in range(steps):
            w.add_step(t, {c: rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for c in cameras},
                       rng.normal(size=8), rng.normal(size=8) * 0.1 + seed)
        w.close(True)


class CpuSampler:
    """Samples machine-wide CPU use (/proc/stat) and the 1-minute load average once a second."""

    def __init__(self, period_s: float = 1.0):
        self.period_s = period_s
        self.busy: list[float] = []
        self.load: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _times() -> tuple[int, int]:
        values = [int(v) for v in open("/proc/stat").readline().split()[1:]]
        idle = values[3] + values[4]  # idle + iowait
        return sum(values) - idle, sum(values)

    def _run(self) -> None:
        busy0, total0 = self._times()
        while not self._stop.wait(self.period_s):
            busy1, total1 = self._times()
            if total1 > total0:
                self.busy.append((busy1 - busy0) / (total1 - total0))
            busy0, total0 = busy1, total1
            self.load.append(os.getloadavg()[0])

    def __enter__(self) -> "CpuSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict:
        if not self.busy:
            return {}
        return {"cpu_busy_mean": float(np.mean(self.busy)), "cpu_busy_max": float(np.max(self.busy)),
                "loadavg1_mean": float(np.mean(self.load)), "loadavg1_max": float(np.max(self.load)),
                "cores": os.cpu_count(), "samples": len(self.busy)}


def robot_env(threads: int) -> dict[str, str]:
    """Environment of one simulated robot's processes: at most `threads` torch/OpenMP threads (0 = torch's default)."""
    if threads <= 0:
        return {}
    return {name: str(threads) for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")}


def run_config_rounds(name: str, overrides: dict, args, work: Path, certs: Path, mode: str) -> dict:
    warm = mode == "warm"
    tag = f"{name}-{mode}"
    robots = [work / "robots" / f"robot{i}" for i in range(2)]
    for robot in robots:
        shutil.rmtree(robot / "policy", ignore_errors=True)  # every run starts from the same state
    nodes = [{"robot-id": f"robot{i}", "episode-dir": str(robots[i])} for i in range(2)]
    fed = LoopbackFederation(work / tag / "server", certs, nodes, env=robot_env(args.robot_threads), warm=warm)
    try:
        fed.start()
        # a robot starts its trainer once, at boot: wait for the warm-up instead of timing it per round
        warmup_s = fed.wait_trainers(timeout_s=300) if warm else None
        ckpt = work / tag / "server" / "checkpoints"
        cfg = {"num-server-rounds": args.rounds, "min-nodes": 2, "model-config": json.dumps({}),
               "local-steps": args.local_steps, "batch-size": args.batch_size, "round-timeout": 600.0,
               "checkpoint-dir": str(ckpt), **overrides}
        with CpuSampler() as cpu:
            t0 = time.monotonic()
            run_id = fed.submit(cfg)
            info = fed.link.wait_run(run_id, timeout=1800, poll_s=0.5, on_poll=lambda _: fed.poll())
            wall = time.monotonic() - t0
        records = [json.loads((ckpt / f"round_{r:04d}.json").read_text()) for r in range(1, args.rounds + 1)]
        for r, rec in enumerate(records, 1):
            if "bytes-up" not in rec["metrics"]:  # no client result was aggregated: say why instead of a KeyError
                raise RuntimeError(
                    f"{tag}: round {r} aggregated no client result (sent {rec['metrics'].get('sent')}, replies "
                    f"{rec['metrics'].get('replies')}, rejected {rec.get('rejected')}); the robots' logs are under "
                    f"{work / 'robots'} (local_trainer.log, supernode.log) and the ServerApp's under {work / tag / 'server'}")
        rounds = [rec["metrics"] for rec in records]
        trainer_restarts = fed.trainer_restarts
    finally:
        fed.stop()
    per_round = []
    for m in rounds:
        clients = max(int(m.get("num-clients", 0)), 1)
        per_round.append({
            "clients": m.get("num-clients"),
            "warm_trainer_fraction": m.get("warm-trainer", 0.0),
            "bytes_up_per_client": m["bytes-up"] / clients,
            "bytes_down_per_client": m["bytes-down-per-client"],
            "round_wall_s": m["round-wall-s"],
            "local_train_s_max": m.get("train-time-s-max"),
            "client_process_s_max": m.get("round-client-s-max"),
            "client_load_s_max": m.get("load-s-max"),
            "handoff_s_max": m.get("handoff-s-max"),
            "delivery_s_max": m.get("delivery-s-max"),
            "clientapp_start_s_max": m.get("clientapp-start-s-max"),
            "trainer_s_max": m.get("trainer-s-max"),
            "return_s_max": m.get("return-s-max"),
            "aggregate_s": m.get("aggregate-s"),
            "round_start_time": m.get("round-start-time"),
            "overhead_s": m["round-wall-s"] - m.get("train-time-s-max", 0.0),
            "flower_s": m["round-wall-s"] - m.get("round-client-s-max", 0.0),
            "train_loss": m.get("train-loss"),
        })
    mean = lambda key: float(np.mean([r[key] for r in per_round]))  # noqa: E731
    later = per_round[1:] or per_round
    breakdown = {}
    for key in ("delivery_s_max", "clientapp_start_s_max", "return_s_max", "handoff_s_max", "aggregate_s"):
        values = [r[key] for r in per_round if r.get(key) is not None]
        if values:
            breakdown[key.replace("_max", "") + "_mean"] = float(np.mean(values))
    ours = [r["client_process_s_max"] - r["trainer_s_max"] - (r["handoff_s_max"] or 0.0) for r in per_round
            if r.get("trainer_s_max") is not None and r.get("client_process_s_max") is not None]
    if ours:
        breakdown["clientapp_own_s_mean"] = float(np.mean(ours))
    trainer_extra = [r["trainer_s_max"] - r["local_train_s_max"] for r in per_round
                     if r.get("trainer_s_max") is not None and r.get("local_train_s_max") is not None]
    if trainer_extra:
        breakdown["trainer_load_save_s_mean"] = float(np.mean(trainer_extra))
    starts = [r["round_start_time"] for r in per_round if r.get("round_start_time") is not None]
    cycles = [b - a for a, b in zip(starts, starts[1:])]
    return {"mode": mode, "status": info.get("status"), "run_wall_s": wall, "trainer_warmup_s": warmup_s,
            "trainer_restarts": trainer_restarts if warm else None, "cpu": cpu.summary(), "rounds": per_round,
            "bytes_up_per_client_per_round": mean("bytes_up_per_client"),
            "bytes_down_per_client_per_round": mean("bytes_down_per_client"),
            "round_wall_s_mean": mean("round_wall_s"), "overhead_s_mean": mean("overhead_s"),
            "flower_s_mean": mean("flower_s"),
            "overhead_s_after_first_round": float(np.mean([r["overhead_s"] for r in later])),
            "round_cycle_s_mean": float(np.mean(cycles)) if cycles else None,
            "breakdown": breakdown}


def model_size(cfg_kwargs: dict) -> dict:
    from fedvla_core.model import FedVLAConfig, FedVLAPolicy

    policy = FedVLAPolicy(FedVLAConfig(**cfg_kwargs))
    trunk = sum(v.numel() for v in policy.export_trunk().values())
    total = sum(p.numel() for p in policy.parameters())
    return {"trunk_params": int(trunk), "total_params": int(total)}


def run_simulation_rounds(cfg_kwargs: dict, clients: int, args, work: Path) -> dict:
    """One simulated run of `clients` virtual robots for --sim-rounds rounds; per-round overhead beyond training."""
    from fedvla_core.model import FedVLAConfig

    model_cfg = FedVLAConfig(**cfg_kwargs)
    robots = [work / "robots" / f"robot{i}" for i in range(clients)]
    for i, robot in enumerate(robots):
        if not robot.exists():
            make_episodes(robot, i, model_cfg.camera_names, model_cfg.image_size)
        shutil.rmtree(robot / "policy", ignore_errors=True)
    settings = SimulationSettings(num_cpus=args.sim_cpus, client_cpus=args.sim_client_cpus, warm_nodes=clients,
                                  timeout_s=1800)
    run_config = {"num-server-rounds": args.sim_rounds, "strategy": "eda", "scope": "trunk", "min-nodes": clients,
                  "model-config": json.dumps(cfg_kwargs), "local-steps": args.sim_local_steps,
                  "batch-size": args.batch_size, "round-timeout": 600.0, "node-wait-timeout": 120.0,
                  "checkpoint-dir": str(work / f"sim-{clients}" / "checkpoints")}
    with CpuSampler() as cpu, Simulation(work / f"sim-{clients}", fleet_node_configs(robots), settings) as sim:
        res = sim.run(run_config)
    if res.status != "finished:completed" or len(res.rounds) != args.sim_rounds:
        raise RuntimeError(f"simulation with {clients} clients: {res.status}, {len(res.rounds)} rounds; see {res.log_path}")
    workers = min(settings.actors, clients)
    per_round = []
    for m in res.rounds:
        n = int(m.get("num-clients", 0))
        if n != clients:
            raise RuntimeError(f"simulation with {clients} clients: a round aggregated {n}; see {res.log_path}")
        train_sum = m["train-time-s"] * n  # equal data per robot: the num-examples-weighted mean is the plain mean
        client_sum = m["round-client-s"] * n
        per_round.append({
            "round_wall_s": m["round-wall-s"], "train_s_sum": train_sum, "train_s_max": m["train-time-s-max"],
            "client_s_sum": client_sum, "load_s_mean": m.get("load-s"), "delivery_s_max": m.get("delivery-s-max"),
            "return_s_max": m.get("return-s-max"), "aggregate_s": m.get("aggregate-s"),
            "overhead_s": m["round-wall-s"] - train_sum / workers,
            "engine_s": m["round-wall-s"] - client_sum / workers,
            "train_loss": m.get("train-loss")})
    later = per_round[1:]
    mean = lambda key: float(np.mean([r[key] for r in later]))  # noqa: E731
    return {"clients": clients, "actors": settings.actors, "workers": workers, "status": res.status,
            "run_wall_s": res.wall_s, "cpu": cpu.summary(), "rounds": per_round,
            "first_round_wall_s": per_round[0]["round_wall_s"],
            "round_wall_s_mean": mean("round_wall_s"), "train_s_sum_mean": mean("train_s_sum"),
            "overhead_s_mean": mean("overhead_s"), "engine_s_mean": mean("engine_s"),
            "overhead_s_per_client": mean("overhead_s") / clients, "engine_s_per_client": mean("engine_s") / clients,
            "load_s_mean": mean("load_s_mean") if all(r["load_s_mean"] is not None for r in later) else None,
            "bytes_down_per_client": res.rounds[0].get("bytes-down-per-client")}


def simulation_section(args, work: Path) -> dict:
    """The JSON's "simulation" entry: the default model with 4 clients, and the tiny model's scaling series."""
    import ray

    from fedvla_core.model import FedVLAConfig

    with CpuSampler() as idle:
        time.sleep(5)
    default_row = None
    if not args.sim_skip_default:
        print("== simulation: default FedVLAConfig, 4 clients", flush=True)
        default_row = run_simulation_rounds({}, 4, args, work / "default")
        print(json.dumps({k: v for k, v in default_row.items() if k != "rounds"}, indent=1), flush=True)
    scaling = []
    for k in [int(c) for c in args.sim_clients.split(",") if c]:
        print(f"== simulation: tiny model, {k} clients", flush=True)
        row = run_simulation_rounds(TINY, k, args, work / "tiny")
        print(json.dumps({k_: v for k_, v in row.items() if k_ != "rounds"}, indent=1), flush=True)
        scaling.append(row)
    default_cfg = FedVLAConfig()
    return {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU only, "
                   "shared machine (see cpu_idle_before and each row's cpu)",
        "engine": f"flwr {__import__('flwr').__version__} simulation (flower-superlink --simulation, flwr run "
                  f"--federation-config), Ray {ray.__version__}, {args.sim_cpus:g} CPUs, {args.sim_client_cpus:g} "
                  "per ClientApp actor, 1 torch thread per actor, in-memory grid; ServerApp reply poll 0.2 s "
                  "(fedvla_flower.server_app.REPLY_POLL_S), engine message poll 0.1 s (flwr vce_api)",
        "overhead_definition": "per round after the first: overhead_s = round wall (ServerApp: push to last reply "
                               "+ aggregation) - sum of the clients' optimizer-step time / workers, workers = "
                               "min(actors, clients) (the actors train clients one after the other); engine_s = "
                               "round wall - sum of the clients' whole ClientApp time (load/merge, train, save, "
                               "pack) / workers, i.e. Flower + Ray alone",
        "settings": {"rounds": args.sim_rounds, "rounds_in_means": "2.." + str(args.sim_rounds),
                     "local_steps": args.sim_local_steps, "batch_size": args.batch_size, "strategy": "eda",
                     "scope": "trunk", "episodes_per_robot": 2, "steps_per_episode": 10,
                     "warm_nodes_per_actor": "= clients (every robot stays warm)"},
        "models": {"default": {"config": "FedVLAConfig() defaults", "camera_names": default_cfg.camera_names,
                               "image_size": default_cfg.image_size, **model_size({})},
                   "tiny": {"config": TINY, **model_size(TINY)}},
        "cpu_idle_before": idle.summary(),
        "default_model_4_clients": default_row,
        "tiny_model_scaling": scaling,
        "summary": {
            **({"default_4_clients_overhead_s_per_round": default_row["overhead_s_mean"],
                "default_4_clients_engine_s_per_round": default_row["engine_s_mean"],
                "default_4_clients_round_wall_s": default_row["round_wall_s_mean"]} if default_row else {}),
            "tiny_overhead_s_per_round_by_clients": {str(r["clients"]): r["overhead_s_mean"] for r in scaling},
            "tiny_engine_s_per_round_by_clients": {str(r["clients"]): r["engine_s_mean"] for r in scaling},
            "tiny_round_wall_s_by_clients": {str(r["clients"]): r["round_wall_s_mean"] for r in scaling},
        },
        "targets": {
            "overhead_le_0_5s_per_round_4_clients": (default_row["overhead_s_mean"] <= 0.5 if default_row else None),
            "note": "the issue's target is for the H200; these figures are this 2-core CPU's",
            "max_clients_per_round_run": max((r["clients"] for r in scaling), default=0),
        },
    }


def write_merged(path: Path, section: dict) -> None:
    """Update `path` with `section`'s keys, keeping the keys it does not name (deployment vs simulation rows)."""
    old = json.loads(path.read_text()) if path.is_file() else {}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**old, **section}, indent=1, default=float))
    print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2, help="rounds per configuration")
    parser.add_argument("--local-steps", type=int, default=5, help="client optimizer steps per round")
    parser.add_argument("--batch-size", type=int, default=4, help="client batch size")
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated subset of " + ",".join(CONFIGS))
    parser.add_argument("--modes", default="warm,cold", help="warm (warm local trainer) and/or cold (in-process)")
    parser.add_argument("--cold-configs", default="eda-trunk-fp16",
                        help="configs also run cold ('all' = every config; cold runs are slow)")
    parser.add_argument("--robot-threads", type=int, default=1,
                        help="torch/OpenMP threads of each simulated robot's processes (0 = torch's default)")
    parser.add_argument("--keep-work", action="store_true", help="keep the work folder (logs) and print its path")
    parser.add_argument("--out", default="benchmarks/results/federation_cost.json", help="output JSON")
    parser.add_argument("--engine", default="deployment", choices=("deployment", "simulation", "both"),
                        help="deployment (SuperLink + SuperNodes, TLS), simulation (Ray), or both")
    parser.add_argument("--sim-rounds", type=int, default=4, help="rounds per simulated run (the first is cold)")
    parser.add_argument("--sim-local-steps", type=int, default=5, help="client optimizer steps per simulated round")
    parser.add_argument("--sim-clients", default="4,10,25,50,100", help="the tiny model's clients per round series")
    parser.add_argument("--sim-skip-default", action="store_true", help="skip the default model's 4-client row")
    parser.add_argument("--sim-cpus", type=float, default=2.0, help="CPUs Ray may use")
    parser.add_argument("--sim-client-cpus", type=float, default=1.0, help="CPUs per ClientApp actor")
    args = parser.parse_args()
    if args.engine in ("simulation", "both"):
        work = Path(tempfile.mkdtemp(prefix="fedvla_simcost_"))
        try:
            write_merged(Path(args.out), {"simulation": simulation_section(args, work)})
        finally:
            if args.keep_work:
                print(f"logs kept in {work}")
            else:
                shutil.rmtree(work, ignore_errors=True)
        if args.engine == "simulation":
            return

    from fedvla_core.model import FedVLAConfig, FedVLAPolicy

    model_cfg = FedVLAConfig()
    policy = FedVLAPolicy(model_cfg)
    trunk = sum(v.numel() for v in policy.export_trunk().values())
    total = sum(p.numel() for p in policy.parameters())
    del policy
    work = Path(tempfile.mkdtemp(prefix="fedvla_fedcost_"))
    certs = work / "certs"
    generate_certificates(certs, num_nodes=2)
    for i in range(2):
        make_episodes(work / "robots" / f"robot{i}", i, model_cfg.camera_names, model_cfg.image_size)
    modes = [m for m in args.modes.split(",") if m]
    cold_configs = set(CONFIGS) if args.cold_configs == "all" else set(args.cold_configs.split(","))
    with CpuSampler() as idle:  # what the machine does without us (other users)
        time.sleep(5)
    results: dict[str, dict] = {}
    for mode in modes:
        for name in args.configs.split(","):
            if mode == "cold" and "warm" in modes and name not in cold_configs:
                continue
            print(f"== {name} ({mode})", flush=True)
            r = run_config_rounds(name, CONFIGS[name], args, work, certs, mode)
            results.setdefault(mode, {})[name] = r
            print(json.dumps({k: v for k, v in r.items() if k != "rounds"}, indent=1), flush=True)
    any_mode = next(iter(results.values()))
    base = any_mode.get("fedavg-full-fp32")
    summary: dict = {}
    if base:
        for name, r in any_mode.items():
            summary[f"{name}_upload_vs_fedavg_full"] = r["bytes_up_per_client_per_round"] / base["bytes_up_per_client_per_round"]
    for mode, by_name in results.items():
        for name, r in by_name.items():
            summary[f"{name}_{mode}_overhead_s_per_round"] = r["overhead_s_mean"]
    best_eda = min((r["bytes_up_per_client_per_round"], n) for n, r in any_mode.items() if n.startswith("eda"))
    out = {
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, CPU only, loopback, "
                   "TLS + SuperNode auth (shared machine: see cpu_idle_before)",
        "model": {"config": "FedVLAConfig() defaults", "trunk_params": trunk, "total_params": total,
                  "trunk_fraction": trunk / total},
        "settings": vars(args),
        "flwr_1_41_fixed_delays": {
            "supernode_sleep_after_empty_pull_s": 3.0,  # flwr/supernode/start_client_internal.py:263
            "supernode_reply_poll_s": 0.5,              # flwr/supernode/start_client_internal.py:470
            "clientapp_process_per_message": True,      # flwr/supernode/runtime/run_clientapp.py (one message, exit)
            "note": "a robot pulls right after replying, finds nothing and sleeps 3 s: >= 3 s from its reply "
                    "to its next message; breakdown.delivery_s includes that wait and the ClientApp process start",
        },
        "cpu_idle_before": idle.summary(),
        "results": results,
        "summary": summary,
        "targets": {
            "eda_upload_le_40pct_of_fedavg_full": (best_eda[0] / base["bytes_up_per_client_per_round"] <= 0.40
                                                   if base else None),
            "eda_upload_config_meeting_it": best_eda[1],
            "overhead_le_5s_per_round": {f"{n}-{m}": r["overhead_s_mean"] <= 5.0
                                         for m, by_name in results.items() for n, r in by_name.items()},
        },
    }
    write_merged(Path(args.out), out)
    if args.keep_work:
        print(f"logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
