"""Pipelines (recipes) over the components: one readable function each, not a trainer subclass."""

from __future__ import annotations

from rayalign import config as config_lib
from rayalign.pipelines.run import Run
from rayalign.preflight import check_pipeline_lora
from rayalign.recipes import get_recipe

__all__ = ["Run", "run_pipeline", "run_train"]


def run_pipeline(cfg: config_lib.Config) -> dict:
    """What `rayalign run` does with a config: its `pipeline` names the recipe, which runs in a `Run`.

    A pipeline's wandb runs (its phases, sDPO's stages) share a group: the run name unless set. A run that finished
    with this same config is not redone: its summary is returned.
    """
    import dataclasses

    check_pipeline_lora(cfg)
    cfg = dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, group=cfg.tracking.group or cfg.name))
    recipe = get_recipe(cfg.pipeline)
    if recipe.name == "train":  # `rayalign train`'s run: its training summary is the run's
        return {"pipeline": "train", "train": recipe.runner()(cfg)}
    # With a URI output_dir the pipeline works in its staging copy: taken fresh from the URI first (a rerun resumes
    # from what is there), pushed when it ends or fails (its nested runs write their checkpoints to the URI).
    storage = cfg.storage()
    storage.pull(fresh=True)
    try:
        done = _finished_with(cfg)
        if done is not None:
            print(f"rayalign: {cfg.run_dir} finished with this config; its summary is reused (name= or rm -r it to "
                  "run again)", flush=True)
            return done
        with Run(cfg, recipe) as run:
            return run.finish(recipe.runner()(run))
    finally:
        storage.push()


def _finished_with(cfg: config_lib.Config) -> dict | None:
    """The summary of a finished run of this same config in its run directory, else None."""
    from rayalign.summary import finished, read_summary

    summary, saved = read_summary(cfg.run_dir), cfg.run_dir / "config.yaml"
    if not finished(summary) or not saved.is_file():
        return None
    return summary if config_lib.to_dict(config_lib.load(saved)) == config_lib.to_dict(cfg) else None


def run_train(cfg: config_lib.Config) -> dict:
    """The train recipe: `rayalign train` on data.path (its run directory and summary are the training's own)."""
    from rayalign.train.driver import run_training

    return run_training(cfg)
