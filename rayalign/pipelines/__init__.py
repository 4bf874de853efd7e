"""Pipelines (recipes) over the components: one readable function each, not a trainer subclass."""

from __future__ import annotations

import json

from rayalign import config as config_lib
from rayalign.preflight import check_pipeline_lora
from rayalign.recipes import get_recipe
from rayalign.summary import read_summary, write_summary


def run_pipeline(cfg: config_lib.Config) -> dict:
    """What `rayalign run` does with a config: its `pipeline` names the recipe.

    A pipeline's wandb runs (its phases, sDPO's stages) share a group: the run name unless set.
    """
    import dataclasses

    check_pipeline_lora(cfg)
    cfg = dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, group=cfg.tracking.group or cfg.name))
    run = get_recipe(cfg.pipeline).runner()
    if cfg.pipeline == "train":
        return run(cfg)
    # With a URI output_dir the pipeline works in its staging copy: taken fresh from the URI first (a rerun resumes
    # from what is there), pushed when it ends or fails (its nested runs write their checkpoints to the URI).
    storage = cfg.storage()
    storage.pull(fresh=True)
    try:
        summary = run(cfg)
        # Every recipe's ending: its own config over its training's view of it, then the summary, last (it is
        # what says the run ended: rayalign.summary); a rerun that found its run finished rewrites nothing.
        if read_summary(cfg.run_dir) != json.loads(json.dumps(summary, default=str)):
            config_lib.save(cfg, cfg.run_dir / "config.yaml")
            write_summary(cfg.run_dir, summary)
        return summary
    finally:
        storage.push()


def run_train(cfg: config_lib.Config) -> dict:
    """The train recipe: `rayalign train` on data.path."""
    from rayalign.train.driver import run_training

    return {"pipeline": "train", "train": run_training(cfg)}
