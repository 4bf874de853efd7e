"""The README's main job on the embedded SmolLM2-135M-Instruct (slow: minutes on 2 cores)."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from rayalign import config
from rayalign.train.driver import run_training
from tests.conftest import REPO

pytestmark = pytest.mark.slow


def test_quickstart_trains_smollm2_and_writes_a_loadable_checkpoint(tmp_path, ray_local, monkeypatch):
    monkeypatch.chdir(REPO)
    cfg = config.load(REPO / "jobs" / "dpo_quickstart.yaml", [f"output_dir={tmp_path}"])
    summary = run_training(cfg)
    assert summary["status"] == "ok" and summary["steps"] == summary["total_steps"] == 24
    final = summary["final_metrics"]
    assert final["rewards/margins"] > 0 and final["loss"] < math.log(2)
    model = AutoModelForCausalLM.from_pretrained(summary["checkpoint"])
    assert model.config.num_hidden_layers == 30
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_main_job_improves_smollm2_with_an_interval_above_half(tmp_path, ray_local, monkeypatch):
    """The README's first command as it is: the policy beats the starting model on >= 128 held-out prompts,
    the lower end of its 95% interval (bootstrap and Wilson) above 1/2."""
    from rayalign.pipelines import run_pipeline

    monkeypatch.chdir(REPO)
    summary = run_pipeline(config.load(REPO / "jobs" / "inco_dpo.yaml", [f"output_dir={tmp_path}"]))
    run = tmp_path / "inco_dpo"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "report.json", "report.png", "data/pairs.parquet"):
        assert (run / name).is_file(), name
    synthesis = summary["synthesis"]
    assert synthesis["pairs"] + synthesis["ties_skipped"] == synthesis["prompts"]
    win = summary["eval"]["win_rate"]
    assert win["prompts"] >= 128
    assert win["ci_low"] > 0.5 and win["wilson_low"] > 0.5, win
    assert summary["eval"]["policy"]["mean_reward"] > summary["eval"]["reference"]["mean_reward"]


def test_sdpo_job_trains_two_stages_on_the_inco_pairs_easy_first(tmp_path, ray_local, monkeypatch):
    from rayalign.pipelines import run_pipeline

    monkeypatch.chdir(REPO)
    summary = run_pipeline(config.load(REPO / "jobs" / "sdpo.yaml",
                                       [f"output_dir={tmp_path}", "train.epochs=1", "eval.num_prompts=8"]))
    stages = summary["train"]["stages"]
    assert summary["train"]["status"] == "ok" and [s["pairs"] for s in stages] == [43, 43]
    assert stages[0]["chunk_accuracy"] >= stages[1]["chunk_accuracy"]
    assert all(math.isfinite(value) for value in stages[0]["gamma_ref_next_chunk"].values())
    assert stages[1]["gamma_ref_next_chunk"] == {"before": None, "after": None}  # no chunk after the last
    assert (tmp_path / "sdpo" / "report.json").is_file()


def test_d2po_job_runs_rounds_on_smollm2_within_its_budget(tmp_path, ray_local, monkeypatch):
    """jobs/d2po.yaml on SmolLM2 and minilm, cut to 2 rounds: every round labels, trains and syncs weights."""
    from rayalign.files import read_jsonl
    from rayalign.pipelines import run_pipeline

    monkeypatch.chdir(REPO)
    cfg = config.load(REPO / "jobs" / "d2po.yaml", [f"output_dir={tmp_path}", "d2po.rounds=2", "eval.num_prompts=8"])
    summary = run_pipeline(cfg)
    rounds = summary["rounds"]
    assert [r["step"] for r in rounds] == [1, 2] and summary["gold_used"] == 6 <= cfg.d2po.gold_budget
    assert all(r["train/steps"] >= 1 and r["pairs"] >= 4 for r in rounds)
    calls = read_jsonl(tmp_path / "d2po" / "gold_calls.jsonl")
    assert [c["round"] for c in calls] == [1, 1, 1, 2, 2, 2]
    assert summary["eval"]["win_rate"]["prompts"] == 8


def test_bmc_job_bridges_smollm2_pairs_into_few_marked_tokens(tmp_path, ray_local, monkeypatch):
    """jobs/bmc.yaml on the main job's SmolLM2 pairs, one epoch: accepted edits differ from the loser in a few
    tokens (the paper's point), every edit passed the gates, and the BMC loss trained on their marks."""
    from rayalign.pipelines import run_pipeline
    from rayalign.tracking import read_metrics

    monkeypatch.chdir(REPO)
    summary = run_pipeline(config.load(REPO / "jobs" / "bmc.yaml", [
        f"output_dir={tmp_path}", "data.path=jobs/data/word_collector_pairs.jsonl", "bmc.task=word_collector",
        "train.epochs=1", "eval.num_prompts=8"]))
    counts = summary["bridging"]
    assert counts["pairs_in"] == counts["pairs_out"] == 86 and counts["accepted"] >= 20
    marked = counts["marked_tokens_per_pair"]
    assert marked["edited_after"] < marked["edited_before"] / 5 and marked["after"] < marked["before"]
    assert summary["train"]["status"] == "ok" and min(r["marked_tokens"] for r in read_metrics(tmp_path / "bmc")) > 0
    assert summary["eval"]["win_rate"]["prompts"] == 8
