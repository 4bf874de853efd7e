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
