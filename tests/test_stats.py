"""rayalign.stats on hand-worked tables: paired win scores, intervals, prompts needed, edge cases."""

from __future__ import annotations

import itertools
import math

import pytest

from rayalign.stats import (bootstrap_interval, compare_models, describe, mean_stderr, prompt_differences,
                            prompt_win_scores, prompts_needed, wilson_interval)

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


@pytest.mark.parametrize("values, expected", [
    ([0.7], (0.7, 0.7)),  # n = 1: every resample is the one prompt
    ([0.5] * 20, (0.5, 0.5)),  # all ties: no spread, no interval
    # [0, 1]: resample means 0, ½, ½, 1 with probabilities ¼, ½, ¼; P(0) = 0.25 > 0.025, so the
    # 2.5th percentile is 0 and the 97.5th is 1
    ([0.0, 1.0], (0.0, 1.0)),
    # [0, 1, 1]: the count of ones is Binomial(3, 2/3): mean 0 w.p. 1/27 = 0.037 > 0.025, mean 1 w.p.
    # 8/27 = 0.30 > 0.025: the interval is [0, 1]
    ([0.0, 1.0, 1.0], (0.0, 1.0)),
])
def test_bootstrap_interval_on_hand_worked_distributions(values, expected):
    assert bootstrap_interval(values) == pytest.approx(expected)


def test_bootstrap_interval_matches_the_exact_bootstrap_distribution():
    """Enumerate all 6^6 resamples of 6 prompts (the exact bootstrap distribution) and compare percentiles."""
    values = [0.0, 0.25, 0.5, 0.5, 1.0, 1.0]
    means = sorted(sum(pick) / 6 for pick in itertools.product(values, repeat=6))
    exact = (means[int(0.025 * len(means))], means[int(0.975 * len(means))])
    low, high = bootstrap_interval(values, resamples=20_000)
    assert low == pytest.approx(exact[0], abs=0.03) and high == pytest.approx(exact[1], abs=0.03)


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
    assert "resolved" in describe(clear)
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
