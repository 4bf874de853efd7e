"""Pipelines (recipes) over the components: one readable function each, not a trainer subclass."""

from __future__ import annotations

from rayalign import config as config_lib


def run_pipeline(cfg: config_lib.Config) -> dict:
    """What `rayalign run` does with a config: its `pipeline` names the recipe.

    A pipeline's wandb runs (its phases, sDPO's stages) share a group: the run name unless set.
    """
    import dataclasses

    if cfg.train.lora_r and cfg.pipeline != "train":
        from rayalign.errors import ConfigError

        raise ConfigError(f"train.lora_r works with `rayalign train` (pipeline train) only so far, not the "
                          f"{cfg.pipeline} pipeline, whose later phases load full checkpoints; set train.lora_r=0")
    cfg = dataclasses.replace(cfg, tracking=dataclasses.replace(cfg.tracking, group=cfg.tracking.group or cfg.name))
    if cfg.pipeline == "train":
        return _dispatch(cfg)
    # With a URI output_dir the pipeline works in its staging copy: taken fresh from the URI first (a rerun resumes
    # from what is there), pushed when it ends or fails (its nested runs write their checkpoints to the URI).
    storage = cfg.storage()
    storage.pull(fresh=True)
    try:
        return _dispatch(cfg)
    finally:
        storage.push()


def _dispatch(cfg: config_lib.Config) -> dict:
    if cfg.pipeline == "sdpo":
        from rayalign.pipelines.sdpo import run_sdpo

        return run_sdpo(cfg)
    if cfg.pipeline == "d2po":
        from rayalign.pipelines.d2po import run_d2po

        return run_d2po(cfg)
    if cfg.pipeline == "bmc":
        from rayalign.pipelines.bmc import run_bmc

        return run_bmc(cfg)
    if cfg.pipeline == "mujoco":
        from rayalign.pipelines.mujoco import run_mujoco

        return run_mujoco(cfg)
    if cfg.pipeline == "inco":
        from rayalign.pipelines.inco import run_inco

        return run_inco(cfg)
    from rayalign.train.driver import run_training

    return {"pipeline": "train", "train": run_training(cfg)}
