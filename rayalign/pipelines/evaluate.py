"""The evaluation step every pipeline ends with: trained policy vs starting model on held-out prompts."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from rayalign import config as config_lib


def eval_config(cfg: config_lib.Config) -> config_lib.EvalConfig:
    """The run's evaluation settings with the task resolved (eval.task, else the pipeline's task)."""
    from rayalign.recipes import get_recipe

    return dataclasses.replace(cfg.eval, task=cfg.eval.task or get_recipe(cfg.pipeline).task(cfg))


def evaluate_run(cfg: config_lib.Config, run_dir: Path, checkpoint: str, pools=None) -> dict:
    """{"eval": figures} after writing report.json/.png in `run_dir`; {} when evaluation is off. `pools`: the
    pipeline's `PhasePool`, when it has one running.

    A report for the same checkpoint and settings is reused, so a rerun of a finished pipeline does not redo it.
    """
    if not cfg.eval.enabled:
        return {}
    from rayalign.evaluation import evaluate, report_settings

    e = eval_config(cfg)
    report_path = run_dir / "report.json"
    report = json.loads(report_path.read_text()) if report_path.is_file() else {}
    if report.get("policy") != checkpoint or report.get("settings") != report_settings(e, cfg.sampling):
        report = evaluate(checkpoint, cfg.model.name, e, run_dir, cfg.sampling, cfg.data.chat_template, pools)
    return {"eval": {"win_rate": report["win_rate"], "policy": report["policy_stats"],
                     "reference": report["reference_stats"]}}
