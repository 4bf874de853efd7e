"""`rayalign compare`: two trained tiny runs and their starting model on the same held-out samples."""

from __future__ import annotations

import json

import pytest

from rayalign import cli, config
from rayalign.compare import reported_pairs
from rayalign.stats import compare_runs
from rayalign.tasks.registry import get_task
from rayalign.train.driver import run_training
from tests.conftest import QUICKSTART_DATA

BASE = ["model.name=tiny-llama", f"data.path={QUICKSTART_DATA}", "data.limit=8", "data.max_length=128",
        "train.batch_size=4", "train.micro_batch_size=4", "train.max_steps=2", "train.lr=1e-2",
        "train.cpus_per_worker=1", "tracking.wandb=disabled", "eval.task=word_collector", "eval.num_prompts=6",
        "eval.samples=2", "eval.max_new_tokens=5"]


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("compare")
    for seed in (0, 1):
        run_training(config.load(None, BASE + [f"output_dir={root}", f"name=seed{seed}", f"train.seed={seed}"]))
    return root


def _rewards(compare_dir, name: str) -> list[list[float]]:
    """Per prompt, the rewards compare.json's samples of `name` got, read back from its own samples file."""
    rows = [json.loads(line) for line in (compare_dir / "samples.jsonl").read_text().splitlines()]
    prompts = list(dict.fromkeys(row["prompt"] for row in rows))
    return [[row["reward"] for row in rows if row["model"] == name and row["prompt"] == p] for p in prompts]


def test_compare_pools_the_runs_of_a_label_and_compares_every_pair(two_runs, capsys):
    out = two_runs / "cmp"
    code = cli.main(["compare", str(two_runs / "seed0"), str(two_runs / "seed1"), "--label", "dpo", "--label", "dpo",
                     "--out", str(out)])
    assert code == 0
    result = json.loads((out / "compare.json").read_text())
    assert [e["name"] for e in result["entries"]] == ["start", "seed0", "seed1"]
    assert result["groups"]["dpo"]["runs"] == ["seed0", "seed1"]
    # the group's figures are those of both runs against the start model's, on the held-out prompts' topics
    topics = [topic for topic, _ in get_task("word_collector").draw("held_out", 6, 0)]
    [pair] = [p for p in result["pairs"] if (p["row"], p["column"]) == ("dpo", "start")]
    expected = compare_runs([_rewards(out, "seed0"), _rewards(out, "seed1")], [_rewards(out, "start")], topics)
    assert pair["win_rate"] == expected["win_rate"] and pair["ci_low"] == expected["ci_low"]
    assert pair["runs"] == [2, 1] and pair["seed_test"]["smallest_p"] == 0.5  # 2 runs: 2 of 4 sign flips at best
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    texts = {name: [row["response"] for row in samples if row["model"] == name] for name in ("seed0", "seed1")}
    assert texts["seed0"] != texts["seed1"]  # each seed's policy drew its own samples
    assert len(result["run_pairs"]) == 6  # 3 models, every ordered pair
    assert result["groups"]["dpo"]["responses"] == 2 * 6 * 2
    assert (out / "compare.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "dpo vs start: win rate" in capsys.readouterr().out
    row = f"| dpo | start | 2 vs 1 | {pair['win_rate']:.3f} [{pair['ci_low']:.3f}, {pair['ci_high']:.3f}] |"
    table = (out / "compare.md").read_text()
    assert row in table and "| start | dpo |" not in table  # each pair once, against the start model first
    # a second compare samples nothing: every model's samples come from the cache; one label per run names its rows
    again = cli.main(["compare", str(two_runs / "seed0"), str(two_runs / "seed1"), "--label", "lr=a", "--label",
                      "lr=b", "--out", str(two_runs / "cmp2")])
    assert again == 0
    result = json.loads((two_runs / "cmp2" / "compare.json").read_text())
    assert all(e["from_cache"] for e in result["entries"])
    assert {(p["row"], p["column"]) for p in reported_pairs(result)} == {("lr=a", "start"), ("lr=b", "start"),
                                                                       ("lr=a", "lr=b")}


def test_compare_refuses_runs_evaluated_differently_and_unfinished_ones(two_runs, tmp_path, capsys):
    other = config.load(None, BASE + [f"output_dir={tmp_path}", "name=other", "eval.num_prompts=7"])
    config.save(other, tmp_path / "other.yaml")
    (tmp_path / "other").mkdir()
    config.save(other, tmp_path / "other" / "config.yaml")
    (tmp_path / "other" / "summary.json").write_text((two_runs / "seed0" / "summary.json").read_text())
    assert cli.main(["compare", str(two_runs / "seed0"), str(tmp_path / "other"), "--out", str(tmp_path)]) == 2
    assert "its num_prompts (7) differs" in capsys.readouterr().err
    (tmp_path / "unfinished").mkdir()
    config.save(other, tmp_path / "unfinished" / "config.yaml")
    assert cli.main(["compare", str(tmp_path / "unfinished"), "--out", str(tmp_path)]) == 2
    assert "no summary.json" in capsys.readouterr().err
