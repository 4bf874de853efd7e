"""The methods `rayalign run` knows (a config's `pipeline`), in one registry that the config, the CLI, the
evaluation, the cluster fit check and Tune all read.

A recipe is a name, the function that runs it (``"module:function"``, imported only when it runs, so reading
the registry stays cheap), and what the rest of rayalign needs to know about it without running it: whether it
samples (the fit check adds the sampler pool), whether it ends with the held-out evaluation, the task that
evaluation uses, and the figures a Tune trial reports. A new method is one module that calls `register_recipe`;
a user's own module is named in the config's `recipes` list (imported before the config is checked).
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from typing import Any

from rayalign.errors import ConfigError


def _no(cfg) -> bool:
    return False


def _inco_task(cfg) -> str | None:
    return cfg.inco.task


def eval_figures(summary: dict) -> dict:
    """What a trial of an evaluated recipe reports to Tune: its win rate, rewards and training loss."""
    ev = summary.get("eval", {})
    win = ev.get("win_rate", {})
    return {"win_rate": win.get("win_rate"), "win_rate_low": win.get("ci_low"),
            "win_rate_high": win.get("ci_high"), "policy_reward": ev.get("policy", {}).get("mean_reward"),
            "reference_reward": ev.get("reference", {}).get("mean_reward"),
            "pairs": summary.get("synthesis", {}).get("pairs"),
            "train_loss": summary["train"]["final_metrics"].get("loss")}


@dataclasses.dataclass(frozen=True)
class Recipe:
    name: str
    run: str
    """"module:function" taking a `rayalign.pipelines.Run` (the config, the run directory, the tokenizer, tasks, the
    sampler pool) and returning the run's figures, its training's `TrainSummary` under "train"; the run's ending
    (evaluation, summary.json) is the Run's. The train recipe alone takes the Config: its run is the training's."""
    help: str
    """One line for `rayalign run --help`."""
    samples: Callable[[Any], bool] = _no
    """Whether a run of this config starts a sampler pool before its evaluation (synthesis, online rounds)."""
    evaluates: bool = True
    """Whether it ends with the held-out evaluation (`eval.*`) when eval.enabled."""
    task: Callable[[Any], str | None] = _inco_task
    """The task its evaluation uses when eval.task is null."""
    trial_figures: Callable[[dict], dict] = eval_figures
    """The figures a Tune trial reports, from the run's summary."""
    figures: tuple[str, ...] = ("win_rate", "win_rate_low", "win_rate_high", "policy_reward", "reference_reward",
                                "pairs", "train_loss")
    """Their names (what a sweep's metric may be)."""
    concurrent: bool = False
    """Whether its sampler pool stays up through training (an online loop): the fit check then adds the trainer, the
    pool and `services` together (`cluster_fit.together_demands`)."""
    services: Callable[[Any], list] = lambda cfg: []
    """The `cluster_fit.Demand`s of what else it runs beside them (D2PO's discriminator replica)."""

    def starts_pool(self, cfg) -> bool:
        """Whether a run of `cfg` needs a sampler pool at some phase (synthesis, online rounds, evaluation)."""
        return self.samples(cfg) or (self.evaluates and cfg.eval.enabled)

    def runner(self) -> Callable[[Any], dict]:
        module, _, function = self.run.partition(":")
        return getattr(importlib.import_module(module), function)


RECIPES: dict[str, Recipe] = {}


def register_recipe(recipe: Recipe) -> Recipe:
    RECIPES[recipe.name] = recipe
    return recipe


def get_recipe(name: str) -> Recipe:
    if name not in RECIPES:
        raise ConfigError(f"config key 'pipeline': unknown pipeline '{name}'; one of {', '.join(RECIPES)}, or a "
                          "recipe a module in the config's `recipes` registers")
    return RECIPES[name]


def import_recipes(modules: list[str]) -> None:
    """Import the modules a config names in `recipes` (each registers its recipes); one line for a missing one."""
    from rayalign.plugins import import_module

    for module in modules:
        import_module(module, "config key 'recipes'")


def _d2po_services(cfg) -> list:
    from rayalign.cluster_fit import Demand

    return [Demand("discriminator replica", 1, cfg.d2po.disc_cpus, cfg.d2po.disc_gpus, "d2po.disc_cpus / d2po.disc_gpus")]


MUJOCO_FIGURES = ("mean_return", "reference_return", "gain_over_reference")


def _mujoco_figures(summary: dict) -> dict:
    return {key: summary[key] for key in MUJOCO_FIGURES}


for _recipe in (
    Recipe("train", "rayalign.pipelines:run_train", "DPO (or loss.name) on data.path", evaluates=False),
    Recipe("inco", "rayalign.pipelines.inco:run_inco", "InCo-DPO: synthesise pairs, train, evaluate",
           samples=lambda cfg: True),
    Recipe("sdpo", "rayalign.pipelines.sdpo:run_sdpo", "sDPO: stages on data.path, easy to hard, then evaluate"),
    Recipe("d2po", "rayalign.pipelines.d2po:run_d2po", "D2PO: online rounds with a discriminator, then evaluate",
           samples=lambda cfg: True, task=lambda cfg: cfg.d2po.task or cfg.inco.task, concurrent=True,
           services=_d2po_services),
    Recipe("bmc", "rayalign.pipelines.bmc:run_bmc", "BMC: pairs, bridging edits, train, evaluate",
           samples=lambda cfg: not cfg.data.path, task=lambda cfg: cfg.bmc.task or cfg.inco.task),
    Recipe("mujoco", "rayalign.pipelines.mujoco:run_mujoco", "the MuJoCo preference benchmark (loss.* on mujoco.*)",
           evaluates=False, trial_figures=_mujoco_figures, figures=MUJOCO_FIGURES),
):
    register_recipe(_recipe)
