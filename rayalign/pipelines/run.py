"""A pipeline's run: its directory, and what its phases share instead of reloading it by name.

`run_pipeline` opens a `Run` for the recipe: the config is saved, the tokenizer is loaded once for every phase, tasks
are handed out as objects, and one `PhasePool` (started only when a phase first samples) serves synthesis, online
rounds and the final evaluation.
The recipe returns its figures and its training's `TrainSummary` under ``train``; the run's ending is the same for
every recipe: the held-out evaluation when training finished and the recipe evaluates, then summary.json, last.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from pathlib import Path
from typing import TYPE_CHECKING

from rayalign import config as config_lib

if TYPE_CHECKING:
    from typing import Self

    from rayalign.recipes import Recipe
    from rayalign.sampling.pool import PhasePool
    from rayalign.tasks.base import Task


def eval_config(cfg: config_lib.Config) -> config_lib.EvalConfig:
    """The run's evaluation settings with the task resolved (eval.task, else the pipeline's task; with your
    prompts, theirs, scored by prompts.judge unless eval.scorer says otherwise)."""
    from rayalign.recipes import get_recipe

    if cfg.prompts.path:
        from rayalign.tasks.user import NAME

        scorer = cfg.prompts.judge if cfg.eval.scorer == "gold" else cfg.eval.scorer
        return dataclasses.replace(cfg.eval, task=NAME, scorer=scorer)
    return dataclasses.replace(cfg.eval, task=cfg.eval.task or get_recipe(cfg.pipeline).task(cfg))


_USER_TASKS: dict[str, Task] = {}


def task_of(cfg: config_lib.Config, name: str | None = None) -> Task:
    """The task a run of `cfg` uses: the one made from `prompts.*` when given (whatever task the pipeline names),
    else `name`, else the recipe's."""
    from rayalign.recipes import get_recipe
    from rayalign.tasks.registry import get_task

    if cfg.prompts.path:
        from rayalign.tasks.user import user_task

        key = repr(cfg.prompts)
        if key not in _USER_TASKS:
            _USER_TASKS[key] = user_task(cfg.prompts)
        return _USER_TASKS[key]
    return get_task(name or get_recipe(cfg.pipeline).task(cfg))


class Run:
    """One run of a recipe. Use as a context manager: leaving it stops the sampler pool."""

    def __init__(self, cfg: config_lib.Config, recipe: Recipe | None = None):
        from rayalign.recipes import get_recipe
        from rayalign.sampling.pool import PhasePool

        self.cfg, self.recipe = cfg, recipe or get_recipe(cfg.pipeline)
        self.dir: Path = cfg.run_dir.resolve()
        self.pools: PhasePool = PhasePool(cfg.sampling, cfg.model.options)

    def __enter__(self) -> Self:
        self.dir.mkdir(parents=True, exist_ok=True)
        config_lib.save(self.cfg, self.dir / "config.yaml")
        return self

    def __exit__(self, *exc) -> None:
        self.pools.close()

    @functools.cached_property
    def tokenizer(self):
        from rayalign.models import load_tokenizer

        return load_tokenizer(self.cfg.model.name, self.cfg.model.options)

    def task(self, name: str | None = None) -> Task:
        """The task `name`, else the one the recipe evaluates on (`task_of`: your prompts when given)."""
        return task_of(self.cfg, name)

    def evaluate(self, checkpoint: str) -> dict:
        """{"eval": figures} after writing report.json/.png in the run directory; {} when evaluation is off.

        A report for the same checkpoint and settings is reused, so a rerun of a finished pipeline does not redo it.
        """
        if not self.cfg.eval.enabled:
            return {}
        from rayalign.evaluation import evaluate, report_settings

        cfg, e = self.cfg, eval_config(self.cfg)
        report_path = self.dir / "report.json"
        report = json.loads(report_path.read_text()) if report_path.is_file() else {}
        if report.get("policy") != checkpoint or report.get("settings") != report_settings(e, cfg.sampling):
            report = evaluate(checkpoint, cfg.model.name, e, self.dir, cfg.sampling, cfg.data.chat_template,
                              self.pools, task=self.task(e.task), tokenizer=self.tokenizer, judge=cfg.judge,
                              run_seed=cfg.train.seed)
        return {"eval": {"win_rate": report["win_rate"], "policy": report["policy_stats"],
                         "reference": report["reference_stats"]}}

    def finish(self, figures: dict) -> dict:
        """The ending every recipe shares: evaluate a finished training, then write config.yaml (the training's own
        copy in this directory replaced by the pipeline's) and summary.json, last."""
        from rayalign.summary import finished, write_summary

        summary = {"pipeline": self.recipe.name, **figures}
        if self.recipe.evaluates and finished(summary):
            summary.update(self.evaluate(summary["train"]["checkpoint"]))
        if self.recipe.starts_pool(self.cfg):
            summary["sampler_pool_starts"] = self.pools.starts
        config_lib.save(self.cfg, self.dir / "config.yaml")
        write_summary(self.dir, summary)
        return summary
