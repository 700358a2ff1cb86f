"""benchmarks/metaworld_table1.py and benchmarks/table1/: pure helpers, config validation, the smoke config end to end.

The end-to-end test runs the committed smoke config (every method, as real loopback deployments:
SuperLink + SuperNodes + warm trainers, real Meta-World recording and rollouts) into a temp dir,
then checks the outputs against the files the run itself wrote (evaluation episodes, round metrics).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
from table1.config import ALL_TASKS, Table1Config  # noqa: E402
from table1.methods import METHODS, clients_of, run_config  # noqa: E402
from table1.results import local_epochs  # noqa: E402

SMOKE = ROOT / "benchmarks" / "configs" / "metaworld_table1_smoke.yaml"
FULL = ROOT / "benchmarks" / "configs" / "metaworld_table1_full.yaml"


# ------------------------------------------------------------------------------------ pure helpers
def test_local_epochs_is_steps_times_batch_over_samples():
    assert local_epochs(100, 32, 1600) == pytest.approx(2.0)
    assert local_epochs(3, 4, 24) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="client_samples"):
        local_epochs(1, 1, 0)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="methods"):
        Table1Config(methods=["fedvla", "nope"])
    with pytest.raises(ValueError, match="tasks"):
        Table1Config(tasks=["door-lock", "door-lock"])
    with pytest.raises(ValueError, match="eval_seed_start"):  # evaluation seeds must be held out
        Table1Config(eval_seed_start=990, eval_episodes=50, train_seed_start=1000)
    with pytest.raises(ValueError, match="fedpart_layers"):
        Table1Config(fedpart_layers=4, model={"n_layers": 4})
    with pytest.raises(ValueError, match="device"):
        Table1Config(device="tpu")
    with pytest.raises(ValueError, match="local_steps"):
        Table1Config(local_steps=0)


def test_yaml_unknown_key_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rounds: 2\nround: 3\n")
    with pytest.raises(ValueError, match="unknown keys.*round"):
        Table1Config.from_yaml(path)


def test_smoke_and_full_configs_have_the_same_keys_and_the_full_one_is_the_papers_setting():
    smoke_yaml, full_yaml = yaml.safe_load(SMOKE.read_text()), yaml.safe_load(FULL.read_text())
    assert set(smoke_yaml) == set(full_yaml) == {f.name for f in fields(Table1Config)}
    assert set(smoke_yaml["model"]) == set(full_yaml["model"])
    full = Table1Config.from_yaml(FULL)
    assert full.tasks == list(ALL_TASKS) and full.methods == list(METHODS)
    assert full.device == "cuda" and full.eval_episodes >= 50 and full.demos_per_task == 50
    assert full.model["camera_names"] == ["corner", "topview", "gripperPOV"] and full.model["image_size"] == 128
    assert full.out == "benchmarks/results/metaworld_table1.json" and full.results_md == "docs/RESULTS.md"
    smoke = Table1Config.from_yaml(SMOKE)
    assert smoke.device == "cpu" and smoke.rounds == 1
    assert not smoke.out.startswith("benchmarks/results") and not smoke.results_md.startswith("docs/")
    assert full.eval_rounds()[-1] == full.rounds and len(full.eval_rounds()) >= 3


def test_run_config_gives_centralized_the_same_total_steps_and_each_method_its_strategy(tmp_path):
    cfg = Table1Config(local_steps=7, model={"n_layers": 4})
    central = run_config(cfg, "centralized", tmp_path)
    fedvla = run_config(cfg, "fedvla", tmp_path)
    assert central["local-steps"] * len(clients_of(cfg, "centralized")) == \
        fedvla["local-steps"] * len(clients_of(cfg, "fedvla")) == 7 * 4
    assert (central["min-nodes"], fedvla["min-nodes"]) == (1, 4)
    assert (central["strategy"], central["scope"]) == ("fedavg", "full")
    assert (fedvla["strategy"], fedvla["scope"], fedvla["fedpart-layers"]) == ("eda", "trunk", 0)
    assert run_config(cfg, "fedprox", tmp_path)["proximal-mu"] == cfg.proximal_mu > 0
    assert run_config(cfg, "fedpart", tmp_path)["fedpart-layers"] == cfg.fedpart_layers
    assert json.loads(run_config(cfg, "fedvla-top2", tmp_path)["model-config"])["ffn_kind"] == "topk"
    assert json.loads(run_config(cfg, "fedvla-no-iosp", tmp_path)["model-config"])["use_iosp"] is False
    assert (run_config(cfg, "fedvla-fedavg-agg", tmp_path)["strategy"], "trunk") == ("fedavg", "trunk")
    from fedvla_flower.server_app import ServerRunConfig

    for m in METHODS:  # every run config is one the ServerApp accepts
        ServerRunConfig.from_run_config(run_config(cfg, m, tmp_path))


# ------------------------------------------------------------------------------- end to end (smoke)
@pytest.mark.slow
@pytest.mark.timeout(900)
def test_smoke_config_end_to_end(tmp_path):
    work, out, md = tmp_path / "work", tmp_path / "results" / "table1.json", tmp_path / "results" / "RESULTS.md"
    cmd = [sys.executable, str(ROOT / "benchmarks" / "metaworld_table1.py"), "--config", str(SMOKE),
           "--work-dir", str(work), "--out", str(out), "--results-md", str(md)]
    env = {**os.environ, "MUJOCO_GL": os.environ.get("MUJOCO_GL", "egl")}
    t0 = time.monotonic()
    run = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=840)
    first_s = time.monotonic() - t0
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    cfg = Table1Config.from_yaml(SMOKE)
    result = json.loads(out.read_text())

    assert set(result["methods"]) == set(cfg.methods)
    assert result["git_commit"] and result["device"]
    for task in cfg.tasks:
        assert task in result["data"]["record_commands"][task]
        seeds = result["data"]["train_seeds"][task]
        assert len(seeds) == cfg.demos_per_task and min(seeds) >= cfg.train_seed_start
    assert result["data"]["eval_seeds"][1] < cfg.train_seed_start

    for name, m in result["methods"].items():
        final = json.loads((work / "eval" / name / f"round_{cfg.rounds:04d}.json").read_text())["episodes"]
        for task in cfg.tasks:
            rows = [e for e in final if e["task"] == task]
            assert len(rows) == cfg.eval_episodes == m["eval_episodes_per_task"][task]
            assert {e["seed"] for e in rows} == set(range(cfg.eval_seed_start, cfg.eval_seed_start + cfg.eval_episodes))
            assert 0.0 <= m["per_task_success"][task] <= 1.0
            assert m["per_task_success"][task] == pytest.approx(np.mean([e["success"] for e in rows]))
            assert all(1 <= e["steps"] <= cfg.eval_max_steps for e in rows)
        assert m["mean_success"] == pytest.approx(np.mean(list(m["per_task_success"].values())))
        assert m["rounds"] == cfg.rounds
        assert m["upload_bytes_per_round_per_client"] > 0
        metrics = json.loads((work / "runs" / name / "checkpoints" / f"round_{cfg.rounds:04d}.json").read_text())
        assert m["client_samples"] > 0
        assert m["local_epochs_per_round"] == pytest.approx(
            local_epochs(m["local_steps_per_round"], cfg.batch_size, m["client_samples"]))
        assert m["activated_experts_per_token"] == pytest.approx(metrics["metrics"]["mean-active-experts"])
        assert m["train_wall_s"] > 0 and m["success_by_round"][-1]["round"] == cfg.rounds
    ms = result["methods"]
    assert ms["centralized"]["local_steps_per_round"] == len(cfg.tasks) * ms["fedvla"]["local_steps_per_round"]
    # what travels follows the method: the trunk is a part of the model, FedPart a part of the trunk
    assert ms["fedvla"]["upload_bytes_per_round_per_client"] < ms["fedavg"]["upload_bytes_per_round_per_client"]
    assert ms["fedpart"]["upload_bytes_per_round_per_client"] < ms["fedvla"]["upload_bytes_per_round_per_client"]
    assert ms["fedvla-top2"]["activated_experts_per_token"] == pytest.approx(2.0)
    assert 0 < ms["fedvla"]["activated_experts_per_token"] <= cfg.model["n_experts"]
    usage = result["expert_usage"]
    assert set(usage) == set(cfg.tasks)
    assert np.asarray(usage[cfg.tasks[0]]).shape == (cfg.model["n_layers"], cfg.model["n_experts"])

    for png in result["plots"].values():
        assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    text = md.read_text()
    assert all(m["label"] in text for m in ms.values()) and "Differences from the paper" in text
    assert "smoke" in text and "63.3" in text

    # Resume: every phase again skips the finished work (no new deployment, no new rollout)
    stamps = {p: p.stat().st_mtime_ns for p in (work / "eval").rglob("*.json")}
    t0 = time.monotonic()
    again = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    assert "submitted" not in again.stdout and time.monotonic() - t0 < first_s / 2
    assert stamps == {p: p.stat().st_mtime_ns for p in (work / "eval").rglob("*.json")}
