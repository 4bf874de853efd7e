"""A two-trial Ray Tune sweep over the InCo ratio on a tiny model: both trials run, are logged, best named."""

from __future__ import annotations

import json

import yaml

from rayalign.tune import load_sweep, run_sweep
from tests.test_inco import TINY


def test_two_trial_sweep_completes_logs_to_wandb_and_names_the_best(tmp_path, ray_local):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({}))
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(yaml.safe_dump({
        "name": "tiny_sweep", "base": str(base), "output_dir": str(tmp_path),
        "overrides": [o for o in TINY if not o.startswith("inco.ratio")] + ["train.max_steps=1"],
        "search": {"inco.ratio": {"grid": [0.0, 0.5]}}, "metric": "win_rate", "mode": "max",
    }))
    summary = run_sweep(load_sweep(str(sweep_file)))
    sweep_dir = tmp_path / "tiny_sweep"
    assert summary["trials"] == 2
    rows = (sweep_dir / "trials.csv").read_text().splitlines()
    assert len(rows) == 3 and "config/inco.ratio" in rows[0] and "win_rate" in rows[0]
    assert summary["best"]["config"]["inco.ratio"] in (0.0, 0.5)
    best = yaml.safe_load((sweep_dir / "best.yaml").read_text())
    assert best["inco"]["ratio"] == summary["best"]["config"]["inco.ratio"] and best["pipeline"] == "inco"
    assert (sweep_dir / "sweep.png").is_file()
    tune_runs = list((sweep_dir / "wandb").glob("offline-run-*"))
    assert len(tune_runs) == 2, "one wandb offline run per trial from Tune's callback"
    trials = sorted((sweep_dir / "trials").iterdir())
    assert len(trials) == 2 and all((t / "report.json").is_file() for t in trials)
    for trial in trials:
        assert json.loads((trial / "summary.json").read_text())["pipeline"] == "inco"
