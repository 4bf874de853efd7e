"""rayalign.stats on hand-worked tables: paired win scores, intervals, prompts needed, edge cases."""

from __future__ import annotations

import math

import pytest

from rayalign.stats import (
    cluster_weights,
    compare_models,
    compare_runs,
    describe,
    hierarchical_interval,
    mean_stderr,
    prompt_differences,
    prompt_win_scores,
    prompts_needed,
    seed_test,
    wilson_interval,
)

# 4 prompts x 2 samples per model. Per prompt, all 4 (A sample, B sample) pairs:
#   prompt 1: 3>2, 3>2, 1<2, 1<2      -> 2 wins of 4        = 0.5
#   prompt 2: all 2=2                  -> 4 ties, half each  = 0.5
#   prompt 3: 0<1 four times           -> 0
#   prompt 4: 5=5, 5>4, 5=5, 5>4       -> (0.5 + 1 + 0.5 + 1)/4  = 0.75
A = [[3, 1], [2, 2], [0, 0], [5, 5]]
B = [[2, 2], [2, 2], [1, 1], [5, 4]]


def test_per_prompt_win_scores_count_ties_half_and_differences_are_paired():
    assert prompt_win_scores(A, B) == [0.5, 0.5, 0.0, 0.75]
    # means per prompt: A 2, 2, 0, 5; B 2, 2, 1, 4.5
    assert prompt_differences(A, B) == [0.0, 0.0, -1.0, 0.5]


def test_wilson_interval_on_a_hand_worked_case():
    # n = 4, p = 0.4375, z = 1.96: centre (p + z²/8)/(1 + z²/4) = 0.46811,
    # half-width z/(1 + z²/4)·sqrt(p(1-p)/4 + z²/64) = 0.34857
    low, high = wilson_interval(1.75 / 4, 4)
    assert low == pytest.approx(0.11955, abs=1e-4) and high == pytest.approx(0.81668, abs=1e-4)
    low, high = wilson_interval(1.0, 10)  # does not collapse at the edge
    assert high == pytest.approx(1.0) and low == pytest.approx(10 / (10 + 1.959963984540054 ** 2))


def test_prompts_needed_from_the_observed_spread():
    # scores 1, 0, 1, 1: mean 0.75, sd 0.5; (1.96 * 0.5 / 0.25)² = 15.37 -> 16 prompts
    assert prompts_needed([1, 0, 1, 1], 0.5) == 16
    # differences 2, 0: mean 1, sd √2; (1.96 * √2 / 1)² = 7.68 -> 8
    assert prompts_needed([2.0, 0.0], 0.0) == 8
    assert prompts_needed([0.5, 0.5, 0.5], 0.5) is None  # all ties: no effect to resolve
    assert prompts_needed([1.0], 0.5) is None  # one prompt: no spread to measure


def test_compare_models_all_ties_and_one_prompt():
    ties = compare_models([[1, 1]] * 5, [[1, 1]] * 5)
    assert (ties["win_rate"], ties["ci_low"], ties["ci_high"]) == (0.5, 0.5, 0.5)
    assert ties["prompts_tied"] == 5 and not ties["resolved"] and ties["prompts_needed"] is None
    assert ties["reward_diff"] == 0.0 and "no effect to resolve" in describe(ties)
    one = compare_models([[2.0]], [[1.0]])
    assert (one["win_rate"], one["ci_low"], one["ci_high"], one["prompts_needed"]) == (1.0, 1.0, 1.0, None)
    assert one["wilson_low"] == pytest.approx(1 / (1 + 1.959963984540054 ** 2))


def test_compare_models_is_antisymmetric_and_resolves_a_clear_win():
    forward, backward = compare_models(A, B), compare_models(B, A)
    assert forward["win_rate"] + backward["win_rate"] == pytest.approx(1.0)
    assert forward["reward_diff"] == -backward["reward_diff"] == pytest.approx(-0.125)
    assert (forward["prompts_won"], forward["prompts_tied"], forward["prompts_lost"]) == (1, 2, 1)
    clear = compare_models([[3, 4]] * 40 + [[0, 0]] * 10, [[1, 1]] * 50)  # wins 40 prompts, loses 10
    assert clear["win_rate"] == 0.8 and clear["resolved"] and clear["ci_low"] > 0.6
    assert describe(clear).endswith("; better")
    unclear = compare_models([[1]] * 6 + [[0]] * 4, [[0.5]] * 10)  # 0.6 on 10 prompts
    assert not unclear["resolved"] and unclear["prompts_needed"] > 10
    # sd of six 1s and four 0s = sqrt(0.24·10/9); (1.96·sd/0.1)² = 102.4 -> 103
    assert unclear["prompts_needed"] == math.ceil((1.959963984540054 * math.sqrt(2.4 / 9) / 0.1) ** 2)
    assert f"needs about {unclear['prompts_needed']} prompts" in describe(unclear)


def test_mean_and_standard_error():
    mean, stderr = mean_stderr([1, 2, 3, 4])
    assert mean == 2.5 and stderr == pytest.approx(math.sqrt((1.5**2 * 2 + 0.5**2 * 2) / 3 / 4))
    assert mean_stderr([7.0]) == (7.0, 0.0)
    with pytest.raises(ValueError):
        mean_stderr([])


def test_mismatched_tables_are_rejected():
    with pytest.raises(ValueError, match="3 prompts for one model but 2"):
        compare_models([[1]] * 3, [[1]] * 2)
    with pytest.raises(ValueError, match="at least one sample"):
        compare_models([[]], [[1]])


# ---------------------------------------------------------------- runs, topics, prompts

def test_the_run_level_share_of_the_interval_is_s_squared_over_r_by_hand():
    """Two runs of A against one of B, 2 prompts in 1 topic each: the runs' mean differences are 1 and 3
    (s² = 2, over R = 2: variance 1); the topic level sees per-prompt means 2 and 2 (no spread)."""
    a_runs = [[[1.0], [1.0]], [[3.0], [3.0]]]
    b_runs = [[[0.0], [0.0]]]
    result = hierarchical_interval([[prompt_differences(a, b) for b in b_runs] for a in a_runs], ["x", "y"], 0.0)
    assert result["mean"] == 2.0 and result["stderr"] == pytest.approx(1.0)
    assert result["variance_shares"] == {"runs_a": 1.0, "topics_prompts": 0.0}
    # one degree of freedom from the runs: t(0.975, 1) = 12.706
    assert (result["low"], result["high"]) == pytest.approx((2 - 12.706, 2 + 12.706), abs=1e-3)


def test_topics_resample_as_clusters():
    """Two topics, one all +1 and one all -1 (3 prompts each): the two-stage resample's mean is +1, 0 or -1 with
    probabilities ¼, ½, ¼ when prompts inside a topic agree, so its variance is ½; prompts resampled as if
    independent would give (1/6)·1 = 0.167."""
    import numpy as np

    weights = cluster_weights(["a"] * 3 + ["b"] * 3, 40_000, np.random.default_rng(0))
    means = (weights @ [1, 1, 1, -1, -1, -1]) / weights.sum(axis=1)
    assert float(means.var()) == pytest.approx(0.5, abs=0.02)
    assert (weights.sum(axis=1) == 6).all()  # each resample draws as many prompts as there are


@pytest.mark.parametrize("runs, run_sd", [(3, 0.5), (5, 0.0)])  # seeds that vary most, and not at all
def test_the_interval_covers_a_known_effect_at_least_90_percent_of_the_time(runs, run_sd):
    """Simulated experiments with a true mean reward difference of 0.2 between a method and its starting model:
    runs differ by seed (sd `run_sd`), 40 topics of 3 prompts with topic and prompt effects and a method × topic
    interaction, 2 noisy samples per prompt. Each experiment draws new topics, prompts and runs; the nominal 95%
    interval must contain 0.2 in at least 90% of 200 of them (an interval over prompts alone covers it far less
    often when runs vary: checked at the end)."""
    import numpy as np

    rng = np.random.default_rng(runs * 10 + int(run_sd * 10))
    topics = [str(t) for t in range(40) for _ in range(3)]
    index = np.repeat(np.arange(40), 3)
    covered = prompts_only = 0
    for trial in range(200):
        base = rng.normal(0, 0.3, 40)[index] + rng.normal(0, 0.3, 120)
        method = 0.2 + rng.normal(0, run_sd, runs)[:, None] + rng.normal(0, 0.2, 40)[index][None, :]
        a = (base + method)[:, :, None] + rng.normal(0, 1, (runs, 120, 2))
        b = base[None, :, None] + rng.normal(0, 1, (1, 120, 2))
        result = compare_runs(a.tolist(), b.tolist(), topics, seed=trial)
        covered += result["reward_diff_low"] <= 0.2 <= result["reward_diff_high"]
        pooled = prompt_differences(a.transpose(1, 0, 2).reshape(120, -1).tolist(), b[0].tolist())
        alone = hierarchical_interval([[pooled]], [str(i) for i in range(120)], 0.0, resamples=500, seed=trial)
        prompts_only += alone["low"] <= 0.2 <= alone["high"]  # the runs pooled, prompts resampled
    assert covered / 200 >= 0.9
    if run_sd:
        assert prompts_only / 200 < 0.85  # what the old interval over pooled prompts did


def test_seed_tests_by_hand():
    # 3 runs against 3: C(6,3) = 20 splits; the observed split and its mirror are the most extreme: p = 2/20
    strong = seed_test([3.0, 4.0, 5.0], [0.0, 1.0, 2.0])
    assert strong["p"] == pytest.approx(0.1) and strong["smallest_p"] == pytest.approx(0.1)
    # 4 runs against the starting model: differences +1, +2, +3, -1 (sum 5); of the 16 sign flips, |sum| >= 5 for
    # 1+2+3+1 = 7, 1+2+3-1 = 5, -1+2+3+1 = 5 and their three negations: 6 of 16
    flips = seed_test([2.0, 3.0, 4.0, 0.0], [1.0])
    assert flips["p"] == pytest.approx(6 / 16) and flips["smallest_p"] == pytest.approx(2 / 16)


def test_compare_runs_reports_the_runs_needed_when_runs_decide():
    """Five runs whose effects scatter around a small mean: the runs, not the prompts, hold the answer back."""
    runs = [[[effect + noise] for noise in (0.0, 0.01) * 20] for effect in (0.5, -0.3, 0.4, -0.2, 0.35)]
    start = [[[0.0] for _ in range(40)]]
    result = compare_runs(runs, start)
    assert result["runs"] == [5, 1] and not result["resolved"]
    assert result["variance_shares"]["runs_a"] > 0.9 and result["runs_needed"] > 5
    assert "cannot tell at 5 runs" in describe(result)
    # two runs that cancel out: no effect for runs to resolve, and more prompts would not settle it either
    even = compare_runs([[[1.0]] * 40, [[-1.0]] * 40], start)
    assert even["win_rate"] == 0.5 and even["runs_needed"] is None
    assert describe(even).endswith("; cannot tell at 2 runs (too small an effect for more runs alone to resolve)")
