"""Ray Tune sweeps over pipeline configs: each trial runs a whole pipeline at small scale.

A sweep file names a base job, overrides applied to every trial, and a search space over dotted
config keys::

    name: inco_ratio
    base: jobs/inco_dpo.yaml
    overrides: [inco.num_prompts=24, eval.num_prompts=16]
    search:
      inco.ratio: {grid: [0.0, 0.5, 1.0]}
      loss.beta: {choice: [0.1, 0.3]}
      train.lr: {loguniform: [1.0e-6, 1.0e-5]}
    metric: win_rate        # or policy_reward
    mode: max

Ray Tune's own search (grid / random via BasicVariantGenerator) runs the trials; each trial is
logged to wandb by Tune's WandbLoggerCallback (offline unless tracking.wandb=online) with its
resolved config, and the pipeline's training phase logs to the same wandb group. The sweep
writes `<output_dir>/<name>/trials.csv`, `sweep.png` (the metric against the first swept key)
and `best.yaml`, the resolved config of the best trial.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic.dataclasses import dataclass

from rayalign import config as config_lib
from rayalign.config import _STRICT
from rayalign.errors import ConfigError

METRICS = ("win_rate", "policy_reward")


@dataclass(config=_STRICT)
class SweepConfig:
    name: str = "sweep"
    """Sweep name: its directory is <output_dir>/<name>."""
    base: str = "jobs/inco_dpo.yaml"
    """The pipeline job every trial starts from."""
    overrides: list[str] = dataclasses.field(default_factory=list)
    """key=value overrides applied to every trial (e.g. a smaller scale)."""
    search: dict[str, dict[str, list[Any]]] = dataclasses.field(default_factory=dict)
    """Dotted key -> {grid|choice: [values]} or {uniform|loguniform: [low, high]}."""
    metric: Literal["win_rate", "policy_reward"] = "win_rate"
    """What the best trial maximises (or minimises, see mode)."""
    mode: Literal["max", "min"] = "max"
    """Direction of the metric."""
    num_samples: int = 1
    """Samples of the search space (grid points are each run num_samples times)."""
    max_concurrent_trials: int = 1
    """Trials at once: a laptop fits one; a cluster more."""
    output_dir: str = "runs"
    """Where the sweep directory goes."""


def load_sweep(path: str, overrides: list[str] = ()) -> SweepConfig:
    if not Path(path).is_file():
        raise ConfigError(f"{path}: no such sweep file")
    tree = config_lib._merge(yaml.safe_load(Path(path).read_text()) or {}, config_lib.parse_overrides(list(overrides)))
    try:
        sweep = config_lib.build(tree, SweepConfig)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    known = {key for key, _, _ in config_lib.describe_fields()}
    for key, spec in sweep.search.items():
        if key not in known:
            raise ConfigError(f"{path}: search key '{key}' is not a config key (see `rayalign train --help`)")
        if len(spec) != 1 or next(iter(spec)) not in ("grid", "choice", "uniform", "loguniform"):
            raise ConfigError(f"{path}: search key '{key}' needs one of grid, choice, uniform, loguniform")
    config_lib.load(sweep.base, sweep.overrides)  # the base job must be valid before any trial starts
    return sweep


def search_space(sweep: SweepConfig) -> dict:
    from ray import tune

    make = {"grid": tune.grid_search, "choice": tune.choice,
            "uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v)}
    return {key: make[kind](values) for key, spec in sweep.search.items() for kind, values in spec.items()}


def trial_metrics(summary: dict) -> dict:
    """The figures a trial reports to Tune, from a pipeline summary."""
    ev = summary.get("eval", {})
    win = ev.get("win_rate", {})
    return {"win_rate": win.get("win_rate"), "win_rate_low": win.get("ci_low"),
            "win_rate_high": win.get("ci_high"), "policy_reward": ev.get("policy", {}).get("mean_reward"),
            "reference_reward": ev.get("reference", {}).get("mean_reward"),
            "pairs": summary.get("synthesis", {}).get("pairs"), "train_loss": summary["train"]["final_metrics"].get("loss")}


def _trial(params: dict, sweep: SweepConfig, sweep_dir: str) -> None:
    from ray import tune

    from rayalign.pipelines import run_pipeline

    name = tune.get_context().get_trial_name()
    overrides = [*sweep.overrides, *(f"{k}={v}" for k, v in params.items()),
                 f"output_dir={sweep_dir}/trials", f"name={name}", f"tracking.group={sweep.name}"]
    summary = run_pipeline(config_lib.load(sweep.base, overrides))
    tune.report(trial_metrics(summary))


def run_sweep(sweep: SweepConfig) -> dict:
    import os

    import ray
    from ray import tune
    from ray.air.integrations.wandb import WandbLoggerCallback

    sweep_dir = (Path(sweep.output_dir) / sweep.name).resolve()
    sweep_dir.mkdir(parents=True, exist_ok=True)
    base = config_lib.load(sweep.base, sweep.overrides)
    callbacks = []
    if base.tracking.wandb != "disabled":
        os.environ.setdefault("WANDB_MODE", base.tracking.wandb)  # offline: Tune's callback needs no API key
        callbacks.append(WandbLoggerCallback(project=base.tracking.project, group=sweep.name,
                                             mode=base.tracking.wandb, dir=str(sweep_dir), log_config=True))
    if not ray.is_initialized():
        ray.init(logging_level="WARNING")
    # A trial only orchestrates: its sampler actors and Ray Train workers reserve their own CPUs.
    trainable = tune.with_resources(tune.with_parameters(_trial, sweep=sweep, sweep_dir=str(sweep_dir)),
                                    {"cpu": 0.01})
    tuner = tune.Tuner(
        trainable, param_space=search_space(sweep),
        tune_config=tune.TuneConfig(metric=sweep.metric, mode=sweep.mode, num_samples=sweep.num_samples,
                                    max_concurrent_trials=sweep.max_concurrent_trials),
        run_config=tune.RunConfig(name="tune", storage_path=str(sweep_dir), callbacks=callbacks),
    )
    results = tuner.fit()
    return _write_outputs(sweep, sweep_dir, results)


def _write_outputs(sweep: SweepConfig, sweep_dir: Path, results) -> dict:
    frame = results.get_dataframe()
    keys = [f"config/{k}" for k in sweep.search]
    columns = [c for c in ["trial_id", *keys, *METRICS, "win_rate_low", "win_rate_high", "pairs"] if c in frame]
    table = frame[columns].sort_values(sweep.metric, ascending=sweep.mode == "min")
    table.to_csv(sweep_dir / "trials.csv", index=False)
    best = results.get_best_result()
    best_overrides = [*sweep.overrides, *(f"{k}={v}" for k, v in best.config.items())]
    config_lib.save(config_lib.load(sweep.base, best_overrides), sweep_dir / "best.yaml")
    if keys:
        _plot(table, keys[0], sweep.metric, sweep_dir / "sweep.png")
    summary = {"best": {"config": best.config, **{m: best.metrics.get(m) for m in METRICS}},
               "trials": len(table), "table": str(sweep_dir / "trials.csv"), "best_config": str(sweep_dir / "best.yaml")}
    (sweep_dir / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    print(table.to_string(index=False))
    return summary


def _plot(table, key: str, metric: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.5))
    ordered = table.sort_values(key)
    if {"win_rate_low", "win_rate_high"} <= set(table) and metric == "win_rate":
        ax.errorbar(ordered[key], ordered[metric], fmt="o",
                    yerr=[ordered[metric] - ordered["win_rate_low"], ordered["win_rate_high"] - ordered[metric]])
        ax.axhline(0.5, color="grey", linestyle=":")
    else:
        ax.plot(ordered[key], ordered[metric], "o")
    ax.set_xlabel(key.removeprefix("config/"))
    ax.set_ylabel(metric)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)

