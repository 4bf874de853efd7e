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

Keys joined by commas move together, one grid point per tuple of values (e.g. variants that are
not a product: ``"sdpo.stages,sdpo.split": {grid: [[1, easy_to_hard], [2, easy_to_hard], [2, random]]}``).
Keys that are all seeds (``inco.seed``, ``"train.seed,sdpo.seed"``) are repetitions: the sweep
then also writes ``groups.csv``, each setting of the other keys with the metric's mean, standard
deviation and count over the seeds.

Ray Tune's own search (grid / random via BasicVariantGenerator) runs the trials, or, with ``search_alg: cmaes``,
the evolution strategy CMA-ES (Optuna's CmaEsSampler through Tune's OptunaSearch: ``popsize`` candidates a
generation, ``num_samples`` in all) over uniform/loguniform keys, e.g. the MPO family on the MuJoCo benchmark;
each trial is logged to wandb by Tune's WandbLoggerCallback (offline unless tracking.wandb=online) with its
resolved config, and the pipeline's training phase logs to the same wandb group. The sweep
writes `<output_dir>/<name>/trials.csv`, `sweep.png` (the metric against the first swept key),
`best.yaml` (the resolved config of the best trial) and, when the trials evaluate, `rayalign
compare` over them: `compare.json` and `compare.png`, every trial and the starting model on the
same held-out samples, the seeds of each setting pooled, every pair of settings compared.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal, Optional

import yaml
from pydantic.dataclasses import dataclass

from rayalign import config as config_lib
from rayalign.config import _STRICT
from rayalign.errors import ConfigError
from rayalign.ray_setup import init_ray
from rayalign.recipes import get_recipe
from rayalign.summary import finished, read_summary, write_summary

METRICS = ("win_rate", "policy_reward", "mean_return")


@dataclass(config=_STRICT)
class SweepConfig:
    name: str = "sweep"
    """Sweep name: its directory is <output_dir>/<name>."""
    base: str = "jobs/inco_dpo.yaml"
    """The pipeline job every trial starts from."""
    overrides: list[str] = dataclasses.field(default_factory=list)
    """key=value overrides applied to every trial (e.g. a smaller scale)."""
    search: dict[str, dict[str, list[Any]]] = dataclasses.field(default_factory=dict)
    """Dotted key (or comma-joined keys, values as lists) -> {grid|choice: [values]} or
    {uniform|loguniform: [low, high]}."""
    metric: str = "win_rate"
    """What the best trial maximises (or minimises, see mode): a figure the pipeline's trials report (evaluated
    pipelines: win_rate, policy_reward, train_loss, ...; mujoco: mean_return over its seeds; rayalign.recipes)."""
    mode: Literal["max", "min"] = "max"
    """Direction of the metric."""
    num_samples: int = 1
    """Samples of the search space (grid points are each run num_samples times); with cmaes, the candidates in
    all (generations × popsize)."""
    search_alg: Literal["grid", "cmaes"] = "grid"
    """grid: Ray Tune's own variant generation (grid, choice, random); cmaes: the evolution strategy CMA-ES
    (Optuna's CmaEsSampler through Ray Tune's OptunaSearch) over uniform/loguniform keys."""
    popsize: Optional[int] = None
    """CMA-ES candidates per generation; null: CMA-ES's default, 4 + ⌊3 ln(keys)⌋."""
    seed: int = 0
    """Seed of the CMA-ES sampler."""
    start: list[dict[str, float]] = dataclasses.field(default_factory=list)
    """cmaes: known points of the search space (e.g. the losses a family contains), each a value for every searched
    key: all are evaluated first, and the first is CMA-ES's initial mean (its x0)."""
    max_concurrent_trials: int = 1
    """Trials at once: a laptop fits one; a cluster more."""
    output_dir: str = "runs"
    """Where the sweep directory goes."""


def load_sweep(path: str, overrides: list[str] = ()) -> SweepConfig:
    tree = config_lib._merge(config_lib.read_yaml_mapping(path, "sweep"), config_lib.parse_overrides(list(overrides)))
    try:
        sweep = config_lib.build(tree, SweepConfig)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    known = {key for key, _, _ in config_lib.describe_fields()}
    for key, spec in sweep.search.items():
        for part in key.split(","):
            if part not in known:
                raise ConfigError(f"{path}: search key '{part}' is not a config key (`rayalign train --help` lists the keys)")
        if len(spec) != 1 or next(iter(spec)) not in ("grid", "choice", "uniform", "loguniform"):
            raise ConfigError(f"{path}: search key '{key}' needs one of grid, choice, uniform, loguniform")
        kind, values = next(iter(spec.items()))
        width = len(key.split(","))
        if sweep.search_alg == "cmaes" and (width > 1 or kind not in ("uniform", "loguniform")):
            raise ConfigError(f"{path}: search key '{key}': CMA-ES searches continuous ranges: give it one key "
                              f"with uniform or loguniform [low, high], or fix it in overrides")
        if width > 1 and (kind not in ("grid", "choice")
                          or not all(isinstance(v, list) and len(v) == width for v in values)):
            raise ConfigError(f"{path}: search key '{key}' joins {width} keys: give grid or choice a list of "
                              f"{width} values per point, e.g. [[1, a], [2, b]]")
    _check_start(path, sweep)
    base = config_lib.load(sweep.base, sweep.overrides)  # the base job must be valid before any trial starts
    figures = get_recipe(base.pipeline).figures
    if sweep.metric not in figures:
        raise ConfigError(f"{path}: metric '{sweep.metric}' is not a figure the {base.pipeline} pipeline's trials "
                          f"report: one of {', '.join(figures)}")
    return sweep


def _check_start(path: str, sweep: SweepConfig) -> None:
    if sweep.start and sweep.search_alg != "cmaes":
        raise ConfigError(f"{path}: start points are CMA-ES's; set search_alg: cmaes or remove start")
    for i, point in enumerate(sweep.start):
        if set(point) != set(sweep.search):
            raise ConfigError(f"{path}: start point {i + 1} gives {sorted(point)}; give a value for each searched key, "
                              f"{sorted(sweep.search)}")
        for key, value in point.items():
            low, high = next(iter(sweep.search[key].values()))
            if not low <= value <= high:
                raise ConfigError(f"{path}: start point {i + 1}: {key}={value} is outside its range [{low}, {high}]; "
                                  "widen the range so the search can reach the point")


def search_space(sweep: SweepConfig) -> dict:
    from ray import tune

    make = {"grid": tune.grid_search, "choice": tune.choice,
            "uniform": lambda v: tune.uniform(*v), "loguniform": lambda v: tune.loguniform(*v)}
    return {key: make[kind](values) for key, spec in sweep.search.items() for kind, values in spec.items()}


def search_algorithm(sweep: SweepConfig):
    """None (Tune's variant generation) or the CMA-ES searcher; `num_samples` bounds the candidates."""
    if sweep.search_alg == "grid":
        return None
    try:
        import optuna
    except ImportError:
        raise ConfigError("search_alg: cmaes needs Optuna and cmaes: pip install -e '.[mujoco]'") from None
    from ray.tune.search.optuna import OptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    x0 = sweep.start[0] if sweep.start else None
    sampler = optuna.samplers.CmaEsSampler(x0=x0, seed=sweep.seed, popsize=sweep.popsize)
    return OptunaSearch(sampler=sampler, metric=sweep.metric, mode=sweep.mode, points_to_evaluate=sweep.start or None)


def tune_config(sweep: SweepConfig):
    from ray import tune

    return tune.TuneConfig(metric=sweep.metric, mode=sweep.mode, num_samples=sweep.num_samples,
                           max_concurrent_trials=sweep.max_concurrent_trials, search_alg=search_algorithm(sweep))


def assignments(params: dict) -> list[str]:
    """key=value overrides of a trial's parameters; comma-joined keys take their values in order."""
    pairs = []
    for key, value in params.items():
        keys = key.split(",")
        pairs += zip(keys, value) if len(keys) > 1 else [(key, value)]
    return [f"{k}={v}" for k, v in pairs]


def _is_seed(key: str) -> bool:
    return all(part.endswith("seed") for part in key.split(","))


def _trial(params: dict, sweep: SweepConfig, sweep_dir: str, cwd: str) -> None:
    import os

    from ray import tune

    from rayalign.pipelines import run_pipeline

    os.chdir(cwd)  # Tune starts a trial in its own directory; job files name paths from the sweep's
    name = tune.get_context().get_trial_name()
    overrides = [*sweep.overrides, *assignments(params),
                 f"output_dir={sweep_dir}/trials", f"name={name}", f"tracking.group={sweep.name}"]
    cfg = config_lib.load(sweep.base, overrides)
    if cfg.train.num_workers == "auto":  # Ray Train's local mode cannot report inside a Tune trial
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, num_workers=1))
    tune.report(get_recipe(cfg.pipeline).trial_figures(run_pipeline(cfg)))


def run_sweep(sweep: SweepConfig) -> dict:
    import os

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
    init_ray()
    # A trial only orchestrates: its sampler actors and Ray Train workers reserve their own CPUs.
    trial = tune.with_parameters(_trial, sweep=sweep, sweep_dir=str(sweep_dir), cwd=os.getcwd())
    trainable = tune.with_resources(trial, {"cpu": 0.01})
    tuner = tune.Tuner(
        trainable, param_space=search_space(sweep),
        tune_config=tune_config(sweep),
        run_config=tune.RunConfig(name="tune", storage_path=str(sweep_dir), callbacks=callbacks),
    )
    results = tuner.fit()
    summary = _write_outputs(sweep, sweep_dir, results)
    if base.eval.enabled and get_recipe(base.pipeline).evaluates:  # others are scored their own way (mujoco: its return)
        summary["compare"] = _compare_trials(sweep, sweep_dir)
        write_summary(sweep_dir, summary)
    return summary


def trial_label(config_file: Path, sweep: SweepConfig) -> str:
    """A trial's setting of the swept keys other than seeds ("inco.mode=on_policy"): its seeds share it."""
    flat = config_lib.flatten(yaml.safe_load(config_file.read_text()))
    keys = [part for key in sweep.search if not _is_seed(key) for part in key.split(",")]
    return ", ".join(f"{key}={flat[key]}" for key in keys) or config_file.parent.name


def _compare_trials(sweep: SweepConfig, sweep_dir: Path) -> str:
    """`rayalign compare` over the finished trials, seeds of a setting pooled: compare.json/.png in the sweep dir."""
    from rayalign.compare import compare
    from rayalign.stats import describe

    trials = sorted(d for d in (sweep_dir / "trials").iterdir() if finished(read_summary(d)))
    result = compare(trials, sweep_dir, [trial_label(d / "config.yaml", sweep) for d in trials])
    print("\ncompare (paired per prompt, seeds pooled):")
    for pair in result["pairs"]:
        if pair["column"] == "start":
            print(f"  {pair['row']} vs start: {describe(pair)}")
    return str(sweep_dir / "compare.json")


def _write_outputs(sweep: SweepConfig, sweep_dir: Path, results) -> dict:
    frame = results.get_dataframe()
    keys = [f"config/{k}" for k in sweep.search]
    for key in keys:  # a joined key's values are lists: make them hashable for grouping
        frame[key] = frame[key].map(lambda v: ",".join(map(str, v)) if isinstance(v, list | tuple) else v)
    figures = list(dict.fromkeys([sweep.metric, *METRICS]))  # a recipe's own metric (rayalign.recipes) too
    columns = [c for c in ["trial_id", *keys, *figures, "win_rate_low", "win_rate_high", "pairs"] if c in frame]
    table = frame[columns].sort_values(sweep.metric, ascending=sweep.mode == "min")
    table.to_csv(sweep_dir / "trials.csv", index=False)
    groups = _seed_groups(table, sweep)
    if groups is not None:
        groups.to_csv(sweep_dir / "groups.csv", index=False)
    best = results.get_best_result()
    best_overrides = [*sweep.overrides, *assignments(best.config)]
    config_lib.save(config_lib.load(sweep.base, best_overrides), sweep_dir / "best.yaml")
    if keys:
        _plot(table, keys[0], sweep.metric, sweep_dir / "sweep.png")
    summary = {"best": {"config": best.config, **{m: best.metrics.get(m) for m in figures}},
               "trials": len(table), "table": str(sweep_dir / "trials.csv"), "best_config": str(sweep_dir / "best.yaml")}
    if groups is not None:  # with seeds, the best setting is the best mean, not the luckiest trial
        summary["best_over_seeds"] = groups.iloc[0].to_dict()
    write_summary(sweep_dir, summary)
    print(table.to_string(index=False))
    if groups is not None:
        print(f"\nover seeds:\n{groups.to_string(index=False)}")
    return summary


def _seed_groups(table, sweep: SweepConfig):
    """Mean, sd and count of the metrics over the seed keys, per setting of the others; None without seeds."""
    seeds = [k for k in sweep.search if _is_seed(k)]
    others = [f"config/{k}" for k in sweep.search if not _is_seed(k)]
    if not seeds or not others:
        return None
    metrics = [m for m in METRICS if m in table]
    grouped = table.groupby(others)[metrics].agg(["mean", "std", "count"])
    grouped.columns = [f"{metric}_{stat}" for metric, stat in grouped.columns]
    return grouped.reset_index().sort_values(f"{sweep.metric}_mean", ascending=sweep.mode == "min")


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

