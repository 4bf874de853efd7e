"""Ray Tune sweeps: two trials over the InCo ratio and sDPO's T on a tiny model; joined keys; seed groups."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from rayalign.errors import ConfigError
from rayalign.tune import load_sweep, run_sweep
from tests.conftest import REPO
from tests.test_inco import TINY


def sweep_in(tmp_path: Path, **fields) -> dict:
    """Run the sweep `fields` describe over an empty base job, its directory under `tmp_path`; its summary."""
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({}))
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({"base": str(base), "output_dir": str(tmp_path), **fields}))
    return run_sweep(load_sweep(str(sweep_file)))


@pytest.mark.slow  # 67 s: keeps the default suite under 15 min on a fresh clone
def test_two_trial_sweep_completes_logs_to_wandb_and_names_the_best(tmp_path, ray_local):
    summary = sweep_in(tmp_path, name="tiny_sweep",
                       overrides=[o for o in TINY if not o.startswith("inco.ratio")] + ["train.max_steps=1"],
                       search={"inco.ratio,sdpo.stages": {"grid": [[0.0, 1], [0.5, 2]]}}, metric="win_rate",
                       mode="max")
    sweep_dir = tmp_path / "tiny_sweep"
    assert summary["trials"] == 2
    rows = (sweep_dir / "trials.csv").read_text().splitlines()
    assert len(rows) == 3 and "config/inco.ratio,sdpo.stages" in rows[0] and "win_rate" in rows[0]
    import pandas as pd

    table = pd.read_csv(sweep_dir / "trials.csv")
    top = table.loc[table["win_rate"].idxmax()]  # the best trial is the one with the highest metric
    ratio, stages = summary["best"]["config"]["inco.ratio,sdpo.stages"]
    assert summary["best"]["win_rate"] == pytest.approx(top["win_rate"])
    assert top["config/inco.ratio,sdpo.stages"] == f"{ratio},{stages}"
    best = yaml.safe_load((sweep_dir / "best.yaml").read_text())
    assert (best["inco"]["ratio"], best["sdpo"]["stages"]) == (ratio, stages) and best["pipeline"] == "inco"
    assert (sweep_dir / "sweep.png").is_file()
    tune_runs = list((sweep_dir / "wandb").glob("offline-run-*"))
    assert len(tune_runs) == 2, "one wandb offline run per trial from Tune's callback"
    trials = sorted((sweep_dir / "trials").iterdir())
    assert len(trials) == 2 and all((t / "report.json").is_file() for t in trials)
    for trial in trials:
        assert json.loads((trial / "summary.json").read_text())["pipeline"] == "inco"
    staged = [t for t in trials if yaml.safe_load((t / "config.yaml").read_text())["sdpo"]["stages"] == 2]
    assert len(staged) == 1 and {d.name for d in staged[0].glob("stage_*")} == {"stage_1", "stage_2"}
    # compare over the trials read the very samples each trial's evaluation made (the cache): same win rates
    compared = json.loads((sweep_dir / "compare.json").read_text())
    assert all(entry["from_cache"] for entry in compared["entries"])
    for trial in trials:
        config = yaml.safe_load((trial / "config.yaml").read_text())
        label = f"inco.ratio={config['inco']['ratio']}, sdpo.stages={config['sdpo']['stages']}"  # the swept setting
        [pair] = [p for p in compared["pairs"] if p["row"] == label and p["column"] == "start"]
        report = json.loads((trial / "report.json").read_text())
        assert pair["win_rate"] == report["win_rate"]["win_rate"] and pair["ci_low"] == report["win_rate"]["ci_low"]
    assert (sweep_dir / "compare.png").is_file()


def test_joined_keys_move_together_and_seeds_are_averaged(tmp_path):
    import pandas as pd

    from rayalign.tune import _seed_groups, assignments

    assert assignments({"sdpo.stages,sdpo.split": [2, "random"], "train.seed": 1}) == [
        "sdpo.stages=2", "sdpo.split=random", "train.seed=1"]
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "base": "jobs/inco_dpo.yaml",
        "search": {"inco.mode": {"grid": ["inco", "on_policy"]}, "train.seed,sdpo.seed": {"grid": [[0, 0], [1, 1]]}}}))
    sweep = load_sweep(str(sweep_file))
    # win rates 0.5, 0.7 (inco) and 0.2, 0.4 (on_policy): means 0.6 and 0.3, sd √0.02 each
    table = pd.DataFrame({"config/inco.mode": ["inco", "inco", "on_policy", "on_policy"],
                          "config/train.seed,sdpo.seed": ["0,0", "1,1", "0,0", "1,1"],
                          "win_rate": [0.5, 0.7, 0.2, 0.4], "policy_reward": [1.0, 2.0, 3.0, 5.0]})
    groups = _seed_groups(table, sweep)
    assert list(groups["config/inco.mode"]) == ["inco", "on_policy"]
    assert groups["win_rate_mean"].tolist() == pytest.approx([0.6, 0.3])
    assert groups["win_rate_std"].tolist() == pytest.approx([0.02 ** 0.5] * 2)
    assert groups["policy_reward_mean"].tolist() == pytest.approx([1.5, 4.0])
    assert groups["win_rate_count"].tolist() == [2, 2]


def test_a_joined_key_needs_one_value_per_key(tmp_path):
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({"base": "jobs/inco_dpo.yaml",
                                          "search": {"sdpo.stages,sdpo.split": {"grid": [[1], [2, "random"]]}}}))
    with pytest.raises(ConfigError, match="joins 2 keys"):
        load_sweep(str(sweep_file))


SWEEPS = sorted(str(p.relative_to(REPO)) for p in (REPO / "jobs" / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("sweep_file", SWEEPS)
def test_every_shipped_sweep_and_its_base_job_load(sweep_file, monkeypatch):
    monkeypatch.chdir(REPO)
    sweep = load_sweep(sweep_file)
    assert sweep.search and Path(sweep.base).is_file()


def test_cmaes_takes_continuous_ranges_only(tmp_path):
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({"base": "jobs/mujoco_po.yaml", "search_alg": "cmaes",
                                          "search": {"loss.beta": {"grid": [0.1, 0.2]}}}))
    with pytest.raises(ConfigError, match="CMA-ES searches continuous ranges"):
        load_sweep(str(sweep_file))


@pytest.mark.slow  # 50 s: CMA-ES generations through Ray Tune; keeps the default suite under 15 min on 2 cores
def test_cmaes_through_ray_tune_moves_toward_a_known_optimum(tmp_path, ray_local):
    """The sweep's own searcher and Tune config on a toy fitness −‖x − (0.8, 0.2)‖²: 4 generations of 6."""
    from ray import tune

    from rayalign.tune import SweepConfig, search_space, tune_config

    sweep = SweepConfig(search_alg="cmaes", popsize=6, num_samples=24, seed=0, metric="mean_return", mode="max",
                        search={"loss.mpo_a": {"uniform": [0.0, 1.0]}, "loss.mpo_kappa": {"uniform": [0.0, 1.0]}})

    def toy(params):
        tune.report({"mean_return": -((params["loss.mpo_a"] - 0.8) ** 2 + (params["loss.mpo_kappa"] - 0.2) ** 2)})

    results = tune.Tuner(toy, param_space=search_space(sweep), tune_config=tune_config(sweep),
                         run_config=tune.RunConfig(name="toy", storage_path=str(tmp_path))).fit()
    distance = [(-result.metrics["mean_return"]) ** 0.5 for result in results]  # in the order CMA-ES asked
    assert len(distance) == 24
    first, last = sum(distance[:6]) / 6, sum(distance[-6:]) / 6
    assert last < first / 2, (first, last)
    assert min(distance) < 0.15


def test_start_points_must_name_every_key_inside_its_range(tmp_path):
    sweep_file = tmp_path / "sweep.yaml"
    search = {"loss.beta": {"loguniform": [0.01, 1.0]}, "loss.mpo_a": {"uniform": [0.0, 1.0]}}
    for start, message in (([{"loss.beta": 2.0, "loss.mpo_a": 0.0}], r"loss.beta=2.0 is outside its range"),
                           ([{"loss.beta": 0.1}], "give a value for each searched key")):
        sweep_file.write_text(yaml.safe_dump({"base": "jobs/mujoco_po.yaml", "search_alg": "cmaes",
                                              "search": search, "start": start}))
        with pytest.raises(ConfigError, match=message):
            load_sweep(str(sweep_file))


def test_cmaes_evaluates_the_start_points_first_then_searches_around_the_first(tmp_path, ray_local):
    """Start points (0.1, 0.9) and (0.8, 0.2): the first two trials are exactly them; CMA-ES's own candidates are
    then drawn around x0 = (0.1, 0.9), not around the middle of the box where it starts by default."""
    from ray import tune

    from rayalign.tune import SweepConfig, search_space, tune_config

    start = [{"loss.mpo_a": 0.1, "loss.mpo_kappa": 0.9}, {"loss.mpo_a": 0.8, "loss.mpo_kappa": 0.2}]
    sweep = SweepConfig(search_alg="cmaes", popsize=6, num_samples=8, seed=0, metric="mean_return", mode="max",
                        start=start, search={"loss.mpo_a": {"uniform": [0.0, 1.0]},
                                             "loss.mpo_kappa": {"uniform": [0.0, 1.0]}})

    def toy(params):
        tune.report({"mean_return": -params["loss.mpo_a"]})

    results = tune.Tuner(toy, param_space=search_space(sweep), tune_config=tune_config(sweep),
                         run_config=tune.RunConfig(name="start", storage_path=str(tmp_path))).fit()
    points = [(r.config["loss.mpo_a"], r.config["loss.mpo_kappa"]) for r in results]
    assert points[:2] == [(0.1, 0.9), (0.8, 0.2)]
    searched = points[2:]
    mean = (sum(a for a, _ in searched) / len(searched), sum(k for _, k in searched) / len(searched))
    assert math.dist(mean, (0.1, 0.9)) < math.dist(mean, (0.5, 0.5)), searched
