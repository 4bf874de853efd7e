"""The evaluation step every pipeline ends with: trained policy vs starting model on held-out prompts."""

from __future__ import annotations

import json
from pathlib import Path

from rayalign import config as config_lib


def evaluate_run(cfg: config_lib.Config, run_dir: Path, checkpoint: str) -> dict:
    """{"eval": figures} after writing report.json/.png in `run_dir`; {} when evaluation is off.

    A report for the same checkpoint is reused, so a rerun of a finished pipeline does not redo it.
    """
    if not cfg.eval.enabled:
        return {}
    from rayalign.evaluation import evaluate

    e = cfg.eval
    report_path = run_dir / "report.json"
    if report_path.is_file() and json.loads(report_path.read_text()).get("policy") == checkpoint:
        report = json.loads(report_path.read_text())
    else:
        report = evaluate(checkpoint, cfg.model.name, task=e.task or cfg.inco.task, num_prompts=e.num_prompts,
                          samples=e.samples, temperature=e.temperature, max_new_tokens=e.max_new_tokens,
                          seed=e.seed, out_dir=run_dir)
    return {"eval": {"win_rate": report["win_rate"], "policy": report["policy_stats"],
                     "reference": report["reference_stats"]}}
