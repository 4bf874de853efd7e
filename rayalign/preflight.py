"""What a job's config can get wrong that shows without a cluster, checked in one place: before `rayalign train`
and `rayalign run` start anything, and by `rayalign submit` before it contacts the cluster (a job that would
only fail there fails here, in one line)."""

from __future__ import annotations

from rayalign import config as config_lib
from rayalign.errors import ConfigError, RayAlignError


def check_batch_arithmetic(cfg: config_lib.Config) -> int:
    """Gradient-accumulation steps, or a one-line error when the batch does not split evenly."""
    t = cfg.train
    workers = t.processes
    per_step = t.micro_batch_size * workers
    if t.batch_size % per_step:
        raise ConfigError(
            f"train.batch_size ({t.batch_size}) must be a multiple of train.micro_batch_size x "
            f"train.num_workers ({t.micro_batch_size} x {workers}{' in local mode' if t.local_mode else ''}); "
            "change one of them")
    return t.batch_size // per_step


def check_pipeline_lora(cfg: config_lib.Config) -> None:
    if cfg.train.lora_r and cfg.pipeline != "train":
        raise ConfigError(f"train.lora_r works with `rayalign train` (pipeline train) only so far, not the "
                          f"{cfg.pipeline} pipeline, whose later phases load full checkpoints; set train.lora_r=0")


def check_inco_ratios(cfg: config_lib.Config) -> None:
    ratios = cfg.inco.ratios
    if cfg.inco.mode == "inco" and ratios and cfg.sampling.samples % len(ratios):
        raise ConfigError(f"inco.ratios shares each prompt's sampling.samples ({cfg.sampling.samples}) evenly among "
                          f"its {len(ratios)} ratios; set sampling.samples to a multiple of {len(ratios)}")


def check_job(cfg: config_lib.Config) -> None:
    """The loss, the batch arithmetic, LoRA with a pipeline, the task the run samples or is evaluated on, and a
    local data file that is not there."""
    from rayalign.data.readers import check_exists
    from rayalign.losses import get_loss
    from rayalign.recipes import get_recipe
    from rayalign.tasks.registry import get_task

    get_loss(cfg.loss.name)
    check_batch_arithmetic(cfg)
    check_pipeline_lora(cfg)
    check_inco_ratios(cfg)
    recipe = get_recipe(cfg.pipeline)
    if cfg.prompts.path:
        from rayalign.scoring.reward_model import check_reward_model

        if "://" not in cfg.prompts.path:
            check_exists(cfg.prompts.path)
        check_reward_model(cfg.prompts.judge, "prompts.judge")
    elif recipe.starts_pool(cfg):
        try:
            get_task(cfg.eval.task or recipe.task(cfg))
        except RayAlignError as error:
            raise ConfigError(f"{error} (set eval.task, or the {cfg.pipeline} pipeline's task key)") from None
    if cfg.data.path and "://" not in cfg.data.path:
        check_exists(cfg.data.path)  # the data reader's own rule
