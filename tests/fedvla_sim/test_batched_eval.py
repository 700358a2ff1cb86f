"""Suite recording (manifest, seed contract, resume) and batched held-out evaluation (intervals, failure modes)."""
import json
import math

import numpy as np
import pytest

from fedvla_core.episodes import read_episode
from fedvla_sim.batched_eval import SuiteEvalConfig, evaluate_suite, summarize, wilson_interval
from fedvla_sim.recorder import SuiteRecordConfig, episode_path, record_suite
from fedvla_sim.seeds import DEMO_SEED_START

TINY_PANDA = dict(camera_names=["agentview", "wrist"], proprio_dim=8, action_dim=8, chunk_size=4, image_size=32,
                  patch_size=8, d_model=32, n_layers=2, n_heads=2, n_experts=4, expert_hidden=32, iosp_topk=2,
                  iosp_n_experts=2, iosp_expert_hidden=16)


def test_seed_contract_keeps_demonstrations_and_evaluation_apart():
    with pytest.raises(ValueError, match="evaluation seeds"):
        SuiteRecordConfig(seed_start=DEMO_SEED_START - 1)
    with pytest.raises(ValueError, match="demonstration seeds"):
        SuiteEvalConfig(checkpoint="x", seed_start=DEMO_SEED_START - 10, seeds=50)
    SuiteEvalConfig(checkpoint="x", seed_start=DEMO_SEED_START - 50, seeds=50)  # the last 50 evaluation seeds


def test_record_suite_writes_manifest_and_resumes(tmp_path):
    cfg = SuiteRecordConfig(tasks=("panda/pick_up_green_block",), episodes=2, out=str(tmp_path), workers=1,
                            camera_size=32)
    manifest = record_suite(cfg, command="test", progress=False)
    entry = manifest["tasks"]["panda/pick_up_green_block"]
    assert entry["episodes"] == 2 and min(entry["kept_seeds"]) >= DEMO_SEED_START
    assert json.loads((tmp_path / "manifest.json").read_text())["command"] == "test"
    paths = [episode_path(tmp_path, "panda", "pick_up_green_block", s) for s in entry["kept_seeds"]]
    for path in paths:
        ep = read_episode(path)
        assert ep.metadata["success"] and ep.metadata["action_noise"] == cfg.panda_action_noise
    stamps = [p.stat().st_mtime_ns for p in paths]
    again = record_suite(cfg, command="test", progress=False)  # resuming: the episodes on disk are kept as they are
    assert again["tasks"]["panda/pick_up_green_block"]["kept_seeds"] == entry["kept_seeds"]
    assert [p.stat().st_mtime_ns for p in paths] == stamps


def test_wilson_interval_matches_its_formula():
    k, n, z = 45, 50, 1.959963984540054
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(centre - half, abs=1e-9) and hi == pytest.approx(centre + half, abs=1e-9)


def test_summary_counts_failures_and_the_held_out_gap():
    cfg = SuiteEvalConfig(checkpoint="x", tasks=("stack_red_on_green",), seeds=4, phrasings=("trained",))
    cfg.phrasings = ("trained", "held_out")  # summarize only reads the rows; no phrasing lookup here
    rows = [{"task": "stack_red_on_green", "phrasing": p, "success": s, "failure_mode": None if s else m,
             "events": {} if s else {m: 3}}
            for p, results in (("trained", [(True, None), (True, None), (False, "drop"), (True, None)]),
                               ("held_out", [(False, "timeout"), (True, None), (False, "drop"), (False, "missed_grasp")]))
            for s, m in results]
    summary = summarize(rows, cfg)
    assert summary["per_task_success"] == {"stack_red_on_green": 0.75}
    assert summary["held_out_gap"]["stack_red_on_green"] == pytest.approx(0.5)
    assert summary["failure_modes"]["stack_red_on_green"] == {"missed_grasp": 1, "drop": 2, "wrong_object": 0,
                                                              "timeout": 1, "collision": 0}
    lo, hi = summary["per_task"]["trained"]["stack_red_on_green"]["ci95"]
    assert lo < 0.75 < hi


def test_batched_eval_of_a_real_policy_writes_eval_json_and_a_failure_gif(tmp_path):
    import torch

    from fedvla_core.model import FedVLAConfig, FedVLAPolicy

    torch.manual_seed(0)
    FedVLAPolicy(FedVLAConfig(**TINY_PANDA)).save_pretrained(str(tmp_path / "policy"))
    cfg = SuiteEvalConfig(checkpoint=str(tmp_path / "policy"), tasks=("pick_up_green_block",), seeds=3,
                          phrasings=("trained",), step_budget=0.3, workers=2, device="cpu", camera_size=32,
                          out=str(tmp_path / "eval.json"), media_dir=str(tmp_path / "media"))
    result = evaluate_suite(cfg, progress=False)
    saved = json.loads((tmp_path / "eval.json").read_text())
    assert saved["seeds"] == [0, 2] and len(saved["episodes"]) == 3
    assert [e["seed"] for e in saved["episodes"]] == [0, 1, 2]
    assert all(e["steps"] == math.ceil(0.3 * 70) for e in saved["episodes"] if not e["success"])
    n_failed = sum(not e["success"] for e in saved["episodes"])
    assert sum(saved["failure_modes"]["pick_up_green_block"].values()) == n_failed
    assert result["per_task_success"]["pick_up_green_block"] == pytest.approx(1 - n_failed / 3)
    if n_failed:  # an untrained policy does not lift the block: its failure is on film, small
        gif = tmp_path / "media" / "policy_panda_pick_up_green_block_failed.gif"
        assert saved["media"]["pick_up_green_block"] == str(gif) and 0 < gif.stat().st_size < 1_000_000
        import imageio.v2 as imageio

        frames = imageio.mimread(gif)
        assert len(frames) > 5 and np.asarray(frames[0]).shape[:2] == (32, 32)
