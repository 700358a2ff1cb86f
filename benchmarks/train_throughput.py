"""Training throughput of the Table-1 model through the project's own training loop (fedvla_core.training.train).

What is timed is `train()` itself, the function `fedvla-train`, the warm local trainer and the other
benchmarks call: the dataset goes in as a map-style dataset of single samples (synthetic, Table-1
shapes: 3 cameras at 128x128, d_model 192, 4 layers), and the timer reads the clock at the loop's
periodic eval hook (after a device synchronisation), so each interval covers whole optimizer steps:
batch assembly, forward, backward, clipping, AdamW. The first intervals are warm-up (compilation,
CUDA-graph recording) and are not counted; step_ms is the median over the timed intervals.

Kernel launches per step come from torch.profiler over one further interval: on CUDA the host's
launch calls (cudaLaunchKernel and friends, one cudaGraphLaunch for a whole replayed graph) and,
separately, the kernels the GPU ran; on the CPU there are no kernel launches (null) and the
profiler's count of aten operators per step is recorded instead (cpu_ops_per_step).

Because only train() and TrainConfig are used, the same script measures older commits too: modes
and options the checked-out TrainConfig does not have are skipped (the row's `engine` says which
loop ran: "device" for the device-resident fast path, "legacy" for the DataLoader loop before it).

Rows are merged into the output JSON by (device_name, engine, ffn_kind, mode, batch_size, threads,
precision): a rerun replaces its own rows, rows of other machines stay. On a shared machine, run
several rounds into separate files, alternating the engines, and --aggregate them: each row then
keeps the median round (repeat_step_ms lists them all).

    .venv/bin/python benchmarks/train_throughput.py --device cpu --batch-sizes 16 64 --repeats 3
    python3 benchmarks/train_throughput.py --device cuda --output $OUT/train_throughput.json
On a machine without MiniLM, point FEDVLA_LANGUAGE_CACHE at a file written here with
--write-language-cache (the benchmark's four instructions, bit-identical embeddings).

--parallel (for a short lease on a GPU box): one child process per FFN kind and batch size, plus one for the
commit before the engine with --legacy-src. torch.compile is CPU work, so children compile at the
same time (at a lower CPU priority); the timed part of every row holds an exclusive file lock
(--gpu-lock, taken after the first, untimed interval, at raised priority), so no two rows are ever
timed at once. Rows start only before --deadline-s; every row is merged into --output as it ends.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import importlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

REPO = Path(__file__).resolve().parents[1]
#: The package folder whose model and training engine are measured: this checkout's core, or another
#: checkout's (FEDVLA_POLICY_SRC, e.g. the commit before the engine, where they lived in fedvla_policy).
ENGINE_SRC = Path(os.environ.get("FEDVLA_POLICY_SRC") or REPO / "src" / "fedvla_core")
sys.path.insert(0, str(ENGINE_SRC))  # runnable from a bare checkout (GPU box)
sys.path.insert(1, str(REPO / "src" / "fedvla_bringup"))

from fedvla_bringup.provenance import git_commit  # noqa: E402

_model = importlib.import_module(f"{ENGINE_SRC.name}.model")
_training = importlib.import_module(f"{ENGINE_SRC.name}.training")
FedVLAConfig, FedVLAPolicy = _model.FedVLAConfig, _model.FedVLAPolicy
TrainConfig, train = _training.TrainConfig, _training.train

KINDS = ("dgmoe", "topk", "dense")
RESULTS = REPO / "benchmarks" / "results" / "train_throughput.json"
TABLE1_CONFIG = REPO / "benchmarks" / "configs" / "metaworld_table1_full.yaml"
INSTRUCTIONS = ("lock the door", "close the drawer", "sweep the puck into the hole", "open the window")
HOST_LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
                     "cudaGraphLaunch", "cuGraphLaunch", "cudaLaunchCooperativeKernel")
KEY = ("device_name", "engine", "ffn_kind", "mode", "batch_size", "threads", "precision")


def table1_model_config(kind: str) -> FedVLAConfig:
    """The Table-1 model (benchmarks/configs/metaworld_table1_full.yaml) with the given FFN kind."""
    import yaml

    model = dict(yaml.safe_load(TABLE1_CONFIG.read_text())["model"])
    top = {"dgmoe": {}, "topk": {"top_k": 2}, "dense": {}}[kind]
    return FedVLAConfig(**model, ffn_kind=kind, **top)


class SyntheticEpisodes(Dataset):
    """Random uint8 camera images, proprio and action chunks with the Table-1 shapes; 4 instructions."""

    def __init__(self, n: int, cfg: FedVLAConfig, seed: int = 0):
        g = torch.Generator().manual_seed(seed)
        s = cfg.image_size
        self.images = torch.randint(0, 256, (n, cfg.n_cameras, 3, s, s), generator=g, dtype=torch.uint8)
        self.proprio = torch.randn(n, cfg.proprio_dim, generator=g)
        self.actions = torch.randn(n, cfg.chunk_size, cfg.action_dim, generator=g)
        self.pad = torch.zeros(n, cfg.chunk_size, dtype=torch.bool)
        self.pad[::7, -3:] = True  # some samples end their episode
        self.instructions = [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(n)]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"images": self.images[i], "instruction": self.instructions[i], "proprio": self.proprio[i],
                "actions": self.actions[i], "action_is_pad": self.pad[i], "episode_id": f"ep{i // 100}"}

    def stats(self, relative_action_dims: int = 0) -> dict:
        return {"action_mean": self.actions.mean((0, 1)), "action_std": self.actions.std((0, 1)),
                "proprio_mean": self.proprio.mean(0), "proprio_std": self.proprio.std(0)}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = "cpu"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{name} ({os.cpu_count()} cores)"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_config_fields() -> set[str]:
    return {f.name for f in dataclasses.fields(TrainConfig)}


def engine_name() -> str:
    return "device" if "compile" in train_config_fields() else "legacy"


class GpuLock:
    """An exclusive flock on a file: only its holder times steps. Holding it raises the process's priority."""

    def __init__(self, path: str | None):
        self.path, self.fd = path, None

    def acquire(self) -> None:
        if self.path is None or self.fd is not None:
            return
        import fcntl

        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)
        _set_priority(-5)

    def release(self) -> None:
        if self.fd is None:
            return
        import fcntl

        _set_priority(10)
        fcntl.flock(self.fd, fcntl.LOCK_UN)
        os.close(self.fd)
        self.fd = None


def _set_priority(nice: int) -> None:
    try:
        os.setpriority(os.PRIO_PROCESS, 0, nice)
    except (PermissionError, OSError):
        pass  # not root: keep the current priority


class IntervalClock:
    """The eval hook: synchronises and reads the clock every `every` steps; profiles one chosen interval.

    The first call (the end of the first, untimed interval: compilation, CUDA-graph recording) takes
    the GPU lock before reading the clock, so every timed interval runs alone on the device.
    """

    def __init__(self, device: torch.device, profile_from: int | None, lock: GpuLock):
        self.device = device
        self.stamps: list[tuple[int, float]] = []
        self.profile_from = profile_from
        self.profiler = None
        self.profiler_done = None
        self.lock = lock

    def __call__(self, policy, step: int):
        sync(self.device)
        self.lock.acquire()
        now = time.perf_counter()
        if self.profiler is not None:
            self.profiler.stop()
            self.profiler_done = self.profiler
            self.profiler = None
        self.stamps.append((step, now))
        if self.profile_from is not None and step == self.profile_from:
            from torch.profiler import ProfilerActivity, profile

            acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if self.device.type == "cuda" else [])
            self.profiler = profile(activities=acts)
            self.profiler.start()
        return None


def count_profile(prof, steps: int, device: torch.device) -> dict:
    events = prof.events()
    if device.type == "cuda":
        host = sum(1 for e in events if e.name in HOST_LAUNCH_CALLS)
        gpu = sum(1 for e in events if str(e.device_type).endswith("CUDA") and not e.name.startswith("Memcpy")
                  and not e.name.startswith("Memset"))
        return {"kernel_launches_per_step": round(host / steps, 1), "gpu_kernels_per_step": round(gpu / steps, 1),
                "cpu_ops_per_step": None}
    ops = sum(1 for e in events if e.name.startswith("aten::"))
    return {"kernel_launches_per_step": None, "gpu_kernels_per_step": None, "cpu_ops_per_step": round(ops / steps, 1)}


def measure(kind: str, mode: str, batch: int, args, device: torch.device, data, lock: GpuLock) -> dict:
    """One train() run: warm-up intervals, timed intervals, one profiled interval. Returns a row."""
    torch.manual_seed(args.seed)
    policy = FedVLAPolicy(table1_model_config(kind))
    every = args.interval_steps
    warm = args.warmup_intervals if mode == "eager" else args.compiled_warmup_intervals
    n_intervals = warm + args.timed_intervals + (1 if args.profile else 0)
    profile_from = (warm + args.timed_intervals) * every if args.profile else None
    clock = IntervalClock(device, profile_from, lock)
    kw = dict(max_steps=n_intervals * every, batch_size=batch, lr=1e-4, warmup=5, seed=args.seed,
              eval_every=every, device=str(device), progress=False)
    fields = train_config_fields()
    if "compile" in fields:
        kw["compile"] = "on" if mode == "compiled" else "off"
        for name in ("compile_mode", "moe_dispatch", "cpu_threads", "cpu_bf16"):
            value = getattr(args, name)
            if value not in (None, False) and name in fields:
                kw[name] = value
    t0 = time.perf_counter()
    try:
        metrics = train(policy, data, TrainConfig(**kw), eval_hook=clock)
    finally:
        lock.release()
    total_s = time.perf_counter() - t0
    stamps = clock.stamps
    # Interval k runs from stamp k-1 to stamp k; the first is from the start of the loop to stamp 0 (not timed).
    per_step = [(t1 - t0_) / (s1 - s0) * 1e3 for (s0, t0_), (s1, t1) in zip(stamps, stamps[1:])]
    timed = per_step[warm - 1: warm - 1 + args.timed_intervals]
    step_ms = statistics.median(timed)
    row = {
        "device_name": device_name(device), "device_type": device.type, "engine": engine_name(),
        "ffn_kind": kind, "mode": mode, "batch_size": batch, "step_ms": round(step_ms, 3),
        "samples_per_s": round(batch * 1e3 / step_ms, 1), "interval_step_ms": [round(v, 3) for v in timed],
        "steps_per_interval": every, "threads": torch.get_num_threads() if device.type == "cpu" else None,
        "wall_time_s": round(total_s, 1), "final_loss": round(float(metrics["loss"]), 5),
        "mean_active_experts": round(float(metrics["mean_active_experts"]), 3),
        "train_config": {k: v for k, v in kw.items() if k not in ("device",)},
        "torch": torch.__version__,
    }
    engine = metrics.get("engine", {})
    row["precision"] = "bf16" if engine.get("amp_bf16", device.type == "cuda") else "fp32"
    if args.profile:
        row.update(count_profile(clock.profiler_done, args.interval_steps, device))
    for key in ("compile_mode", "moe_dispatch", "amp"):
        if key in metrics.get("config", {}):
            row[key] = metrics["config"][key]
    if "engine" in metrics:
        row["engine_info"] = metrics["engine"]
        if mode == "compiled" and not metrics["engine"].get("compiled"):
            row["mode"] = "eager (compile failed)"
    del policy
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return row


def merge(rows: list[dict], path: Path) -> dict:
    """Replace this run's rows (same KEY) in the JSON at `path`, keep every other row (file-locked)."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(str(path) + ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        return _merge_locked(rows, path)


def _merge_locked(rows: list[dict], path: Path) -> dict:
    doc = json.loads(path.read_text()) if path.exists() else {}
    old = [r for r in doc.get("rows", []) if tuple(r.get(k) for k in KEY) not in {tuple(n.get(k) for k in KEY)
                                                                                     for n in rows}]
    doc["rows"] = sorted(old + rows, key=lambda r: tuple(str(r.get(k)) for k in KEY))
    doc["description"] = __doc__.split("\n\n")[0]
    doc["updated"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1) + "\n")
    os.replace(tmp, path)
    return doc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto", help="cpu | cuda | auto (default: cuda when available).")
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS, help="FFN kinds (default: all three).")
    p.add_argument("--modes", nargs="+", default=["eager", "compiled"], choices=["eager", "compiled"],
                   help="eager and/or compiled (torch.compile; skipped where TrainConfig has no compile field).")
    p.add_argument("--batch-sizes", nargs="+", type=int, default=[64, 256], help="Batch sizes (default: 64 256).")
    p.add_argument("--samples", type=int, default=0,
                   help="Synthetic samples (default: 4096 on CUDA, 512 on the CPU).")
    p.add_argument("--interval-steps", type=int, default=0, help="Steps per timed interval (default: 20 CUDA, 2 CPU).")
    p.add_argument("--warmup-intervals", type=int, default=1, help="Untimed intervals before timing, eager.")
    p.add_argument("--compiled-warmup-intervals", type=int, default=2,
                   help="Untimed intervals before timing, compiled (compilation and CUDA-graph recording).")
    p.add_argument("--timed-intervals", type=int, default=3, help="Timed intervals per run (median).")
    p.add_argument("--repeats", type=int, default=1,
                   help="Runs per row; the row keeps the median run (the 2-core CPU is shared: use 3+ there).")
    p.add_argument("--no-profile", dest="profile", action="store_false", help="Skip the torch.profiler interval.")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default).")
    p.add_argument("--compile-mode", default=None, help="TrainConfig.compile_mode for the compiled rows.")
    p.add_argument("--moe-dispatch", default=None, help="TrainConfig.moe_dispatch (auto | dense | sparse).")
    p.add_argument("--cpu-threads", type=int, default=None, help="TrainConfig.cpu_threads (threads while training).")
    p.add_argument("--cpu-bf16", action="store_true", help="TrainConfig.cpu_bf16: bf16 autocast on the CPU.")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--label", default="", help="Free text stored in every row (e.g. what else ran on the machine).")
    p.add_argument("--output", default=str(RESULTS), help=f"JSON to merge rows into (default: {RESULTS}).")
    p.add_argument("--parallel", action="store_true",
                   help="One child process per kind and batch size (+ --legacy-src), compiling in parallel, timing one at a time.")
    p.add_argument("--legacy-src", default=None,
                   help="With --parallel: also measure another checkout's engine package folder (fedvla_core, or fedvla_policy before the one-core layout; eager only).")
    p.add_argument("--legacy-commit", default="", help="The commit --legacy-src holds (stored in its rows).")
    p.add_argument("--legacy-interval-steps", type=int, default=10, help="Steps per interval for the legacy child.")
    p.add_argument("--gpu-lock", default=None, help="File whose exclusive lock every timed part holds.")
    p.add_argument("--deadline-s", type=float, default=0.0,
                   help="Start no new row after this many seconds (0: no limit); children get the parent's clock.")
    p.add_argument("--deadline-epoch", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--aggregate", nargs="+", metavar="JSON", default=None,
                   help="Only merge the rows of these files into --output, keeping per key the median run.")
    p.add_argument("--write-language-cache", metavar="PATH", default=None,
                   help="Only write the MiniLM embeddings of the benchmark's instructions to PATH and exit.")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.write_language_cache:
        FrozenSentenceEncoder = importlib.import_module(f"{ENGINE_SRC.name}.model.encoders").FrozenSentenceEncoder

        cfg = FedVLAConfig()
        FrozenSentenceEncoder(cfg.language_model_path, cfg.max_instruction_tokens).save_cache(
            args.write_language_cache, list(INSTRUCTIONS))
        print(f"wrote {args.write_language_cache}")
        return 0
    if args.aggregate:
        return aggregate(args.aggregate, Path(args.output))
    deadline = args.deadline_epoch or (time.time() + args.deadline_s if args.deadline_s else 0.0)
    if args.parallel:
        return run_parallel(args, deadline, argv if argv is not None else sys.argv[1:])
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    if args.threads:
        torch.set_num_threads(args.threads)
    cuda = device.type == "cuda"
    args.interval_steps = args.interval_steps or (20 if cuda else 2)
    modes = [m for m in args.modes if m == "eager" or "compile" in train_config_fields()]
    lock = GpuLock(args.gpu_lock)
    model_cfg = table1_model_config("dgmoe")
    data = SyntheticEpisodes(args.samples or (2048 if cuda else 512), model_cfg, args.seed)
    if engine_name() == "device":  # read onto the device once, as train() would, and shared by every row
        from fedvla_core.device_data import DeviceDataset
        from fedvla_core.model.encoders import FrozenSentenceEncoder

        encoder = FrozenSentenceEncoder.shared(model_cfg.language_model_path, model_cfg.max_instruction_tokens)
        data = DeviceDataset.from_dataset(data, device, encoder)
    rows = []
    for kind in args.kinds:
        for mode in modes:
            for batch in args.batch_sizes:
                runs = []
                for r in range(args.repeats):
                    if deadline and time.time() > deadline:
                        print(f"deadline: skipping {kind} {mode} bs{batch}", flush=True)
                        break
                    try:
                        runs.append(measure(kind, mode, batch, args, device, data, lock))
                    except Exception as err:  # noqa: BLE001 - one failing configuration must not lose the others
                        print(f"FAILED {kind} {mode} bs{batch}: {err!r}", flush=True)
                        break
                    print(f"[{engine_name()}] {kind:5s} {runs[-1]['mode']:8s} bs{batch:4d} run {r + 1}: "
                          f"{runs[-1]['step_ms']:.2f} ms/step {runs[-1]['samples_per_s']:.0f} samples/s, "
                          f"launches/step {runs[-1].get('kernel_launches_per_step')}", flush=True)
                if not runs:
                    continue
                runs.sort(key=lambda row: row["step_ms"])
                row = dict(runs[len(runs) // 2])
                row["repeat_step_ms"] = [r["step_ms"] for r in runs]
                row["repeats"] = len(runs)
                row["git_commit"] = os.environ.get("FEDVLA_GIT_COMMIT") or git_commit(REPO)
                row["label"] = args.label
                row["measured"] = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
                rows.append(row)
                merge([row], Path(args.output))
    print(json.dumps([{k: r[k] for k in ("engine", "ffn_kind", "mode", "batch_size", "step_ms", "samples_per_s")}
                      for r in rows]), flush=True)
    return 0


def aggregate(files: list[str], output: Path) -> int:
    """Rows of several runs (e.g. interleaved rounds on a shared CPU) -> per key the median run, merged."""
    groups: dict[tuple, list[dict]] = {}
    for f in files:
        for row in json.loads(Path(f).read_text()).get("rows", []):
            groups.setdefault(tuple(row.get(k) for k in KEY), []).append(row)
    rows = []
    for runs in groups.values():
        runs.sort(key=lambda r: r["step_ms"])
        row = dict(runs[len(runs) // 2])
        row["repeat_step_ms"] = [r["step_ms"] for r in runs]
        row["repeats"] = len(runs)
        rows.append(row)
    merge(rows, output)
    print(f"merged {len(rows)} rows (median of {[len(g) for g in groups.values()]} runs) into {output}")
    return 0


def _without(argv: list[str], flags: dict[str, int]) -> list[str]:
    """argv without the given flags (flag -> number of values it takes; -1: all values up to the next flag)."""
    out, i = [], 0
    while i < len(argv):
        name = argv[i].split("=", 1)[0]
        if name in flags:
            n = flags[name]
            i += 1
            if "=" not in argv[i - 1]:
                if n < 0:
                    while i < len(argv) and not argv[i].startswith("--"):
                        i += 1
                else:
                    i += n
            continue
        out.append(argv[i])
        i += 1
    return out


def run_parallel(args, deadline: float, argv: list[str]) -> int:
    """Children: one per kind (this checkout), one for --legacy-src; wait for all of them."""
    lock = args.gpu_lock or str(Path(args.output).with_suffix(".gpu.lock"))
    base = _without(argv, {"--parallel": 0, "--kinds": -1, "--batch-sizes": -1, "--legacy-src": 1,
                           "--legacy-commit": 1, "--legacy-interval-steps": 1, "--gpu-lock": 1, "--deadline-s": 1,
                           "--deadline-epoch": 1})
    common = ["--gpu-lock", lock] + (["--deadline-epoch", str(deadline)] if deadline else [])
    children = []
    for kind in args.kinds:  # one child per (kind, batch size): their compilations overlap
        for batch in args.batch_sizes:
            cmd = [sys.executable, __file__, *base, "--kinds", kind, "--batch-sizes", str(batch), *common]
            children.append(subprocess.Popen(cmd, preexec_fn=lambda: _set_priority(10)))
    if args.legacy_src:
        env = dict(os.environ, FEDVLA_POLICY_SRC=args.legacy_src, FEDVLA_GIT_COMMIT=args.legacy_commit or "legacy")
        cmd = [sys.executable, __file__, *_without(base, {"--modes": -1, "--interval-steps": 1}), "--modes", "eager",
               "--interval-steps", str(args.legacy_interval_steps), "--kinds", *args.kinds,
               "--batch-sizes", *map(str, args.batch_sizes), *common]
        children.append(subprocess.Popen(cmd, env=env, preexec_fn=lambda: _set_priority(10)))
    codes = [c.wait() for c in children]
    print("children exited with", codes, flush=True)
    return max(codes, default=0)


if __name__ == "__main__":
    raise SystemExit(main())
