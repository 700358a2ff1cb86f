"""Phase train: one real loopback federation per method (fedvla_bringup), parallel_methods at once."""
from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from fedvla_bringup.loopback_federation import LoopbackFederation, thread_env

from .config import Table1Config
from .language_cache import ensure_language_cache
from .layout import committed_round, demo_files, method_dir, read_json, write_json
from .methods import clients_of, run_config
from .runtime import STOP, Deadline, log
from .snapshots import snapshot_rounds, train_done


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def prepare_clients(cfg: Table1Config, method: str) -> list[dict]:
    """Each client's own episode dir (its demonstrations hard-linked: the warm trainer owns its folder)."""
    clients = clients_of(cfg, method)
    for c in clients:
        folder = method_dir(cfg, method) / "clients" / c["id"]
        folder.mkdir(parents=True, exist_ok=True)
        for task in c["tasks"]:
            for src in demo_files(cfg, task):
                if not (folder / src.name).exists():
                    _link_or_copy(src, folder / src.name)
        c["episode_dir"] = str(folder.resolve())
    return clients


def train_method(cfg: Table1Config, method: str, certs: Path, deadline: Deadline) -> str:
    """One method's loopback deployment until its last round is committed; returns done | paused | failed: why."""
    if train_done(cfg, method):
        return "done"
    mdir = method_dir(cfg, method)
    ckpt = mdir / "checkpoints"
    clients = prepare_clients(cfg, method)
    snapshot_rounds(cfg, method, clients)  # what a previous, interrupted command left to copy
    if committed_round(ckpt) >= cfg.rounds:
        return "done" if train_done(cfg, method) else "failed: rounds finished but local policies were pruned"
    state_path = mdir / "train_state.json"
    state = read_json(state_path, {"sessions": []})
    env = thread_env(cfg.trainer_threads, cpu_only=cfg.device == "cpu")
    nodes = [{"robot-id": c["id"], "episode-dir": c["episode_dir"]} for c in clients]
    t0 = time.monotonic()
    session = {"start_round": committed_round(ckpt), "started": time.time()}
    result = "paused"
    fed = LoopbackFederation(mdir / "server", certs, nodes, env=env)
    try:
        fed.start()
        session["warmup_s"] = fed.wait_trainers(timeout_s=max(60.0, min(900.0, deadline.left())))
        run_id = fed.submit(run_config(cfg, method, ckpt))
        log(f"{method}: run {run_id} submitted from round {session['start_round']} ({len(nodes)} nodes)")
        last_status = time.monotonic()
        while True:
            fed.poll()
            snapshot_rounds(cfg, method, clients)
            if committed_round(ckpt) >= cfg.rounds:
                snapshot_rounds(cfg, method, clients)
                result = "done" if train_done(cfg, method) else "failed: a round's local policies were pruned"
                break
            if time.monotonic() - last_status > 30:  # a flwr CLI call costs ~1 s of CPU: ask rarely
                last_status = time.monotonic()
                status = str(fed.link.run_info(run_id).get("status", ""))
                if status.startswith("finished"):
                    time.sleep(2.0)
                    if committed_round(ckpt) < cfg.rounds:
                        result = f"failed: run {status} at round {committed_round(ckpt)} (see {mdir / 'server'})"
                        break
            if STOP.is_set():
                log(f"{method}: interrupted at round {committed_round(ckpt)}")
                break
            if deadline.passed:
                log(f"{method}: time budget spent at round {committed_round(ckpt)}; the next command resumes")
                break
            if time.monotonic() - t0 > cfg.run_timeout_s:
                result = f"failed: not finished within run_timeout_s={cfg.run_timeout_s}"
                break
            time.sleep(1.0)
        session["trainer_restarts"] = fed.trainer_restarts
    except Exception as err:  # noqa: BLE001 - one method failing must not stop the others
        result = f"failed: {type(err).__name__}: {err}"
    finally:
        fed.stop()
        session.update(end_round=committed_round(ckpt), wall_s=time.monotonic() - t0, result=result)
        state["sessions"].append(session)
        write_json(state_path, state)
    log(f"{method}: {result} (round {committed_round(ckpt)}/{cfg.rounds}, {time.monotonic() - t0:.0f} s)")
    return result


def phase_train(cfg: Table1Config, deadline: Deadline) -> dict[str, str]:
    from fedvla_fed_server.certs import generate_certificates

    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise RuntimeError("Table1Config.device is cuda but torch sees no GPU")
    for task in cfg.tasks:
        if len(demo_files(cfg, task)) < cfg.demos_per_task:
            raise RuntimeError(f"train: {task} has fewer than {cfg.demos_per_task} demonstrations; run --phase record")
    ensure_language_cache(cfg)
    certs = cfg.work / "certs"
    if not (certs / "ca.crt").is_file():
        generate_certificates(certs, num_nodes=len(cfg.tasks))
    with ThreadPoolExecutor(cfg.parallel_methods) as pool:
        futures = {m: pool.submit(train_method, cfg, m, certs, deadline) for m in cfg.methods}
        try:
            results = {m: f.result() for m, f in futures.items()}
        except BaseException:  # Ctrl-C / SIGTERM: let every running deployment stop its processes
            STOP.set()
            for f in futures.values():
                f.cancel()
            raise
    failed = {m: r for m, r in results.items() if r.startswith("failed")}
    if failed:
        raise RuntimeError(f"train: {failed}")
    return results
