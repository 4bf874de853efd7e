"""A method registered outside the package (tests/toy_recipe.py) goes everywhere a built-in one goes: `rayalign
run`, its --help, the fit check and a Ray Tune sweep, with no package file naming it."""

from __future__ import annotations

import json

import pytest
import yaml

from rayalign import config
from rayalign.cli import main
from rayalign.cluster_fit import check_fit, job_demands
from rayalign.errors import ConfigError
from tests.conftest import QUICKSTART_DATA

TOY = ["recipes=[tests.toy_recipe]", "pipeline=toy", "model.name=tiny-llama", f"data.path={QUICKSTART_DATA}",
       "data.limit=8", "data.max_length=128", "train.batch_size=4", "train.micro_batch_size=4",
       "train.num_workers=0", "train.warmup_ratio=0", "tracking.wandb=disabled"]


def test_the_toy_runs_through_rayalign_run_and_its_help(tmp_path, capsys):
    job = tmp_path / "toy.yaml"
    job.write_text(yaml.safe_dump({"name": "toy", "output_dir": str(tmp_path)}))
    assert main(["run", str(job), *TOY]) == 0
    summary = json.loads((tmp_path / "toy" / "summary.json").read_text())
    assert summary["pipeline"] == "toy" and summary["train"]["status"] == "ok" and summary["train"]["steps"] == 2
    assert "eval" not in summary
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    assert "toy      a toy method: DPO on data.path in reverse order" in capsys.readouterr().out


def test_an_unknown_pipeline_or_recipes_module_is_one_line():
    with pytest.raises(ConfigError, match="unknown pipeline 'nosuch'.*train, inco"):
        config.load(None, ["pipeline=nosuch"])
    with pytest.raises(ConfigError, match="cannot import 'no_such_module'"):
        config.load(None, ["recipes=[no_such_module]", "pipeline=toy"])


def test_the_fit_check_counts_the_toys_sampler_pool_and_refuses_it_when_too_big():
    cfg = config.load(None, [*TOY, "sampling.num_actors=8", "sampling.cpus_per_actor=2"])
    demands = job_demands(cfg)
    assert [(d.what, d.count, d.cpus) for d in demands] == [("Ray Train worker", 0, 1), ("sampler actor", 8, 2)]
    nodes = [{"CPU": 4.0, "GPU": 0.0}]
    check_fit(demands[0], nodes)
    with pytest.raises(ConfigError, match="never run 8 sampler actor"):
        check_fit(demands[1], nodes)


@pytest.mark.slow  # 70 s: two Tune trials, each a Ray Train worker; keeps the default suite under 15 min
def test_the_toy_in_a_sweep(tmp_path, ray_local):
    from tests.test_sweep import sweep_in

    summary = sweep_in(tmp_path, name="toy_sweep",
                       overrides=[*TOY, "train.num_workers=1"],  # Ray Train's local mode cannot report in a Tune trial
                       search={"train.lr": {"grid": [1e-6, 1e-3]}}, metric="train_loss", mode="min")
    assert summary["trials"] == 2 and summary["best"]["config"]["train.lr"] == 1e-3  # the larger step learns faster
    trials = sorted((tmp_path / "toy_sweep" / "trials").iterdir())
    assert [json.loads((t / "summary.json").read_text())["pipeline"] for t in trials] == ["toy", "toy"]
