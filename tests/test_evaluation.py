"""rayalign.evaluation: statistics on hand-made score tables, and a tiny end-to-end `rayalign eval`."""

from __future__ import annotations

import json
import math

import pytest

from rayalign import cli
from rayalign.evaluation import evaluate, mean_stderr, prompt_win_scores, wilson_interval, win_rate

# 4 prompts x 2 samples per model. Per prompt, all 4 (policy, reference) sample pairs:
#   prompt 1: 3>2, 3>2, 1<2, 1<2      -> 2 wins of 4        = 0.5
#   prompt 2: all 2=2                  -> 4 ties, half each  = 0.5
#   prompt 3: 0<1 four times           -> 0
#   prompt 4: 5=5, 5>4, 5=5, 5>4       -> (0.5 + 1 + 0.5 + 1)/4  = 0.75
POLICY = [[3, 1], [2, 2], [0, 0], [5, 5]]
REFERENCE = [[2, 2], [2, 2], [1, 1], [5, 4]]


def test_per_prompt_win_scores_count_ties_half():
    assert prompt_win_scores(POLICY, REFERENCE) == [0.5, 0.5, 0.0, 0.75]


def test_win_rate_and_wilson_interval_on_a_hand_made_table():
    result = win_rate(POLICY, REFERENCE)
    assert result["win_rate"] == pytest.approx(1.75 / 4)
    # Wilson, n = 4, p = 0.4375, z = 1.96: centre (p + z²/8)/(1 + z²/4) = 0.46811,
    # half-width z/(1 + z²/4)·sqrt(p(1-p)/4 + z²/64) = 0.34857
    assert result["ci_low"] == pytest.approx(0.11955, abs=1e-4)
    assert result["ci_high"] == pytest.approx(0.81668, abs=1e-4)
    assert (result["prompts"], result["prompts_won"], result["prompts_tied"], result["prompts_lost"]) == (4, 1, 2, 1)
    assert "Wilson" in result["interval"]


def test_win_rate_is_antisymmetric_and_a_model_against_itself_is_half():
    forward, backward = win_rate(POLICY, REFERENCE), win_rate(REFERENCE, POLICY)
    assert forward["win_rate"] + backward["win_rate"] == pytest.approx(1.0)
    same = win_rate(POLICY, POLICY)
    assert same["ci_low"] < 0.5 < same["ci_high"]


def test_wilson_interval_does_not_collapse_at_the_edges():
    low, high = wilson_interval(1.0, 10)
    assert high == pytest.approx(1.0) and low == pytest.approx(10 / (10 + 1.959963984540054 ** 2))
    low, high = wilson_interval(0.0, 10)
    assert low == 0.0 and 0.25 < high < 0.3


def test_mean_and_standard_error():
    mean, stderr = mean_stderr([1, 2, 3, 4])
    assert mean == 2.5 and stderr == pytest.approx(math.sqrt((1.5**2 * 2 + 0.5**2 * 2) / 3 / 4))
    assert mean_stderr([7.0]) == (7.0, 0.0)
    with pytest.raises(ValueError):
        mean_stderr([])


def test_mismatched_tables_are_rejected():
    with pytest.raises(ValueError, match="3 policy prompts but 2"):
        win_rate([[1]] * 3, [[1]] * 2)
    with pytest.raises(ValueError, match="at least one sample"):
        win_rate([[]], [[1]])


def test_eval_cli_end_to_end_with_tiny_llama(tmp_path, capsys):
    out = tmp_path / "eval"
    code = cli.main(["eval", "--policy", "tiny-llama", "--reference", "tiny-llama", "--task", "word_collector",
                     "--num-prompts", "3", "--samples", "2", "--max-new-tokens", "6", "--out", str(out)])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["num_prompts"] == 3 and report["win_rate"]["prompts"] == 3
    for role in ("policy", "reference"):
        stats = report[f"{role}_stats"]
        assert stats["responses"] == 6 and 1 <= stats["mean_length_tokens"] <= 6
    wr = report["win_rate"]
    assert wr["ci_low"] <= wr["win_rate"] <= wr["ci_high"]
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and {row["model"] for row in rows} == {"policy", "reference"}
    assert "win rate" in capsys.readouterr().out


def test_eval_cli_unknown_task_is_one_line(tmp_path, capsys):
    code = cli.main(["eval", "--policy", "tiny-llama", "--reference", "tiny-llama", "--task", "nope",
                     "--out", str(tmp_path)])
    assert code == 2 and "unknown task 'nope'" in capsys.readouterr().err


def _reference_rows(out) -> list[dict]:
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    return [row for row in rows if row["model"] == "reference"]


def test_reference_samples_are_cached_and_equal_live_ones(tmp_path, monkeypatch):
    monkeypatch.setenv("RAYALIGN_CACHE", str(tmp_path / "cache"))
    settings = {"task": "word_collector", "num_prompts": 3, "samples": 2, "max_new_tokens": 6}
    live = evaluate("tiny-llama", "tiny-llama", out_dir=tmp_path / "live", **settings)
    cached = evaluate("tiny-llama", "tiny-llama", out_dir=tmp_path / "cached", **settings)
    assert (live["reference_samples"], cached["reference_samples"]) == ("sampled", "cache")
    assert cached["reference_stats"] == live["reference_stats"]
    assert _reference_rows(tmp_path / "cached") == _reference_rows(tmp_path / "live")
    reseeded = evaluate("tiny-llama", "tiny-llama", out_dir=tmp_path / "seed1", seed=1, **settings)
    assert reseeded["reference_samples"] == "sampled"  # another setting is another cache entry
