"""Research runs on Flower's simulation engine (Ray): the same ServerApp, ClientApp and strategies, many
rounds and many clients on one machine.

Why: in the SuperLink/SuperNode deployment (the robots' path) every round pays seconds that are not training
(a SuperNode sleeps 3 s after an empty pull, one ``flwr-clientapp`` process per message; see
benchmarks/federation_cost.py). Flower's simulation engine runs the ClientApp in warm Ray actors and moves
messages through an in-memory grid, so a round costs little more than the training.

How (Flower 1.41's supported path; ``flwr.simulation.run_simulation`` is deprecated in favour of it): a
SuperLink in simulation mode (``flower-superlink --simulation``, private port, own ``FLWR_HOME``) and
``flwr run <app> <superlink> --federation-config 'num-supernodes=K ...' --run-config FILE``. The SuperLink
hands the run to a ``flwr-simulation`` process that loads ``[tool.flwr.app.components]`` of the app and
runs it with the Ray backend.

Data: a virtual node's node config is only ``partition-id``/``num-partitions``. This module writes the
fleet file (one robot node config per partition: robot-id, episode-dir, ``local-trainer="off"``) and
names it in ``$FEDVLA_SIM_FLEET``, which :func:`fedvla_flower.task.node_config_of` reads in the ClientApp.
The deployment path does not read it (a SuperNode's node config names its episode-dir).

    python -m fedvla_flower.simulation --episode-dirs d0,d1,d2,d3 --work /tmp/sim \\
        -c num-server-rounds=100 -c 'model-config="{}"' [--num-cpus 2] [--client-cpus 1]
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from fedvla_core.federated import keys
from fedvla_flower.app_dir import app_dir
from fedvla_flower.flwr_cli import bin_dir, flwr_json
from fedvla_flower.task import SIM_FLEET_ENV, SIM_WARM_NODES_ENV

SUPERLINK_NAME = "fedvla-sim"
FLEET_FILE = "fleet.json"
#: The run-config key of ServerRunConfig.checkpoint_dir (where the ServerApp writes round_NNNN.json).
CHECKPOINT_DIR_KEY = "checkpoint-dir"


def fleet_node_configs(episode_dirs: Sequence, robot_prefix: str = "sim") -> list[dict]:
    """One robot node config per virtual node (index = partition id), training in the ClientApp's process."""
    return [{keys.NODE_ROBOT_ID: f"{robot_prefix}{i}", keys.NODE_EPISODE_DIR: str(Path(d).resolve()),
             keys.NODE_LOCAL_TRAINER: "off"} for i, d in enumerate(episode_dirs)]


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (Linux /proc), parents first. The SuperLink starts its SuperExec,
    flwr-simulation and Ray in new sessions, so a process-group signal would not reach them."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields_ = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields_[1]), []).append(int(stat.parent.name))
        except (OSError, ValueError, IndexError):
            continue
    out, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop(0)
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def _free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


@dataclass
class SimulationSettings:
    """The simulated federation: K virtual nodes and Ray's resources (fractions allowed for clients)."""

    num_cpus: float = field(default=2.0, metadata={"help": "CPUs Ray may use (the whole pool of ClientApp actors)."})
    client_cpus: float = field(default=1.0, metadata={"help": "CPUs per ClientApp actor: actors = num_cpus / client_cpus."})
    warm_nodes: int = field(default=16, metadata={"help": "Robots whose policy + decoded episodes each actor keeps warm (0 = reload every round)."})
    client_threads: int = field(default=1, metadata={"help": "torch/OpenMP threads of each actor (0 = Ray's default)."})
    timeout_s: float = field(default=3600.0, metadata={"help": "Seconds the whole run may take."})

    def __post_init__(self):
        if self.num_cpus <= 0 or self.client_cpus <= 0 or self.client_cpus > self.num_cpus:
            raise ValueError(f"SimulationSettings: need 0 < client_cpus <= num_cpus (got {self.client_cpus}, {self.num_cpus})")

    @property
    def actors(self) -> int:
        return int(self.num_cpus // self.client_cpus)

    def federation_config(self, num_nodes: int) -> str:
        return (f"num-supernodes={int(num_nodes)} init-args-num-cpus={self.num_cpus:g} "
                f"client-resources-num-cpus={self.client_cpus:g} client-resources-num-gpus=0")


@dataclass
class SimulationResult:
    status: str
    run_id: str
    wall_s: float
    rounds: list[dict]          # the ServerApp's per-round checkpoint metadata (round_NNNN.json "metrics")
    checkpoint_dir: Path
    log_path: Path


class Simulation:
    """A SuperLink in simulation mode under ``work_dir`` and the ``flwr`` CLI pointed at it."""

    def __init__(self, work_dir, nodes: Sequence[Mapping[str, Any]], settings: SimulationSettings | None = None):
        self.work = Path(work_dir).resolve()
        self.nodes = [dict(n) for n in nodes]
        self.settings = settings or SimulationSettings()
        self.flwr_home = self.work / "flwr"
        self.fleet_path = self.work / FLEET_FILE
        self.log_path = self.work / "superlink.log"
        self.port = 0
        self.proc: subprocess.Popen | None = None

    def env(self) -> dict[str, str]:
        env = {**os.environ, "FLWR_HOME": str(self.flwr_home), SIM_FLEET_ENV: str(self.fleet_path),
               "PATH": bin_dir() + os.pathsep + os.environ.get("PATH", ""),
               "FEDVLA_FEDERATION_DIR": str(self.work), "FLWR_DISABLE_UPDATE_CHECK": "1",
               SIM_WARM_NODES_ENV: str(self.settings.warm_nodes), "RAY_USAGE_STATS_ENABLED": "0"}
        if self.settings.client_threads > 0:
            env.update({k: str(self.settings.client_threads) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")})
        return env

    def start(self, timeout_s: float = 60.0) -> None:
        import tomli_w

        self.work.mkdir(parents=True, exist_ok=True)
        self.fleet_path.write_text(json.dumps({"nodes": self.nodes}, indent=1))
        self.port = _free_port()
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        (self.flwr_home / "config.toml").write_text(tomli_w.dumps({"superlink": {
            "default": SUPERLINK_NAME, SUPERLINK_NAME: {"address": f"127.0.0.1:{self.port}", "insecure": True}}}))
        cmd = [str(Path(bin_dir()) / "flower-superlink"), "--insecure", "--simulation", "--host", "127.0.0.1", "--port", str(self.port),
               "--database", str(self.work / "superlink.db"), "--disable-runtime-dependency-installation"]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=self.env(), cwd=str(self.work), start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"flower-superlink --simulation exited with {self.proc.returncode}; see {self.log_path}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                    return
            except OSError:
                time.sleep(0.2)
        raise TimeoutError(f"simulation SuperLink did not listen on port {self.port} within {timeout_s} s")

    def stop(self, timeout_s: float = 20.0) -> None:
        """Stop the SuperLink and every process below it (SuperExec, flwr-simulation, Ray), by pid."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        pids = [proc.pid, *_descendants(proc.pid)]
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for pid in pids:
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + (timeout_s if sig == signal.SIGTERM else 5.0)
            while time.monotonic() < deadline:
                proc.poll()
                pids = [p for p in pids if Path(f"/proc/{p}").exists() and not _zombie(p)]
                if not pids:
                    return
                time.sleep(0.2)

    def flwr(self, *args: str, timeout_s: float = 120.0) -> dict:
        return flwr_json(list(args), self.env(), str(self.work), timeout_s)

    def submit(self, run_config: Mapping[str, Any]) -> str:
        import tomli_w

        cfg_path = self.work / "run_config.toml"
        cfg_path.write_text(tomli_w.dumps(dict(run_config)))
        res = self.flwr("run", str(app_dir()), SUPERLINK_NAME, "--run-config", str(cfg_path),
                        "--federation-config", self.settings.federation_config(len(self.nodes)))
        if not res.get("success"):
            raise RuntimeError(f"flwr run (simulation) failed: {res.get('error-message')}")
        return str(res["run-id"])

    def wait(self, run_id: str, timeout_s: float, poll_s: float = 0.5) -> str:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"the simulation SuperLink died; see {self.log_path}")
            for run in self.flwr("ls", SUPERLINK_NAME).get("runs", []):
                if str(run.get("run-id")) == run_id and str(run.get("status", "")).startswith("finished"):
                    return str(run["status"])
            time.sleep(poll_s)
        self.flwr("stop", run_id, SUPERLINK_NAME)
        raise TimeoutError(f"simulation run {run_id} not finished within {timeout_s} s")

    def run(self, run_config: Mapping[str, Any]) -> SimulationResult:
        """One ``flwr run`` on the simulated fleet; the rounds' metrics come from the ServerApp's checkpoints."""
        ckpt = Path(run_config.get(CHECKPOINT_DIR_KEY, "") or self.work / "checkpoints")
        cfg = {"min-nodes": len(self.nodes), **dict(run_config), CHECKPOINT_DIR_KEY: str(ckpt)}
        t0 = time.monotonic()
        run_id = self.submit(cfg)
        status = self.wait(run_id, self.settings.timeout_s)
        wall = time.monotonic() - t0
        rounds = []
        for path in sorted(ckpt.glob("round_*.json")):
            if path.stem != "round_0000":
                rounds.append(json.loads(path.read_text()).get("metrics", {}))
        return SimulationResult(status=status, run_id=run_id, wall_s=wall, rounds=rounds, checkpoint_dir=ckpt,
                                log_path=self.log_path)

    def __enter__(self) -> "Simulation":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def run_simulation(run_config: Mapping[str, Any], episode_dirs: Sequence, work_dir,
                   settings: SimulationSettings | None = None) -> SimulationResult:
    """Run ``run_config`` (the app's run-config keys) on one virtual node per episode dir; stops everything after."""
    with Simulation(work_dir, fleet_node_configs(episode_dirs), settings) as sim:
        return sim.run(run_config)


def main(argv: list[str] | None = None) -> int:
    import tomllib

    parser = argparse.ArgumentParser(prog="python -m fedvla_flower.simulation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episode-dirs", required=True, help="comma-separated: one virtual robot per episode dir")
    parser.add_argument("--work", required=True, help="folder for the SuperLink, the fleet file and the checkpoints")
    parser.add_argument("-c", "--run-config", action="append", default=[],
                        help="run-config override KEY=TOML_VALUE (repeatable), e.g. num-server-rounds=100")
    defaults = SimulationSettings()
    parser.add_argument("--num-cpus", type=float, default=defaults.num_cpus)
    parser.add_argument("--client-cpus", type=float, default=defaults.client_cpus)
    parser.add_argument("--client-threads", type=int, default=defaults.client_threads)
    parser.add_argument("--warm-nodes", type=int, default=defaults.warm_nodes)
    parser.add_argument("--timeout", type=float, default=defaults.timeout_s)
    args = parser.parse_args(argv)
    run_config = {}
    for item in args.run_config:
        run_config.update(tomllib.loads(item))
    settings = SimulationSettings(num_cpus=args.num_cpus, client_cpus=args.client_cpus,
                                  client_threads=args.client_threads, warm_nodes=args.warm_nodes,
                                  timeout_s=args.timeout)
    res = run_simulation(run_config, [d for d in args.episode_dirs.split(",") if d], args.work, settings)
    print(json.dumps({"status": res.status, "wall_s": res.wall_s, "rounds": len(res.rounds),
                      "checkpoint_dir": str(res.checkpoint_dir),
                      "round_wall_s": [r.get("round-wall-s") for r in res.rounds]}, indent=1, default=float))
    return 0 if res.status == "finished:completed" else 1


if __name__ == "__main__":
    sys.exit(main())
