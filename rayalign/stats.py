"""Statistics of a comparison between two models on the same held-out prompts (pure functions).

The prompt is the independent unit: samples of one prompt are correlated, so every figure is
computed from one value per prompt and every interval resamples prompts.

- Win score of prompt i: the share of all (sample of A, sample of B) pairs that A wins, ties
  counted half, w_i ∈ [0, 1]. The win rate is the mean of the w_i.
- Reward difference of prompt i: mean reward of A's samples − mean reward of B's, d_i.
- Bootstrap interval (the headline): the 2.5th and 97.5th percentiles of the mean over
  `resamples` resamples of the prompts with replacement (percentile method, seeded, so a report
  is reproducible). It uses the observed spread of the w_i, so it is the tighter, honest one
  when ties are common.
- Wilson score interval (beside it): treats the win rate as a binomial proportion over n prompts.
  Each w_i lies in [0, 1], so its variance is at most p(1 − p): the binomial variance is an upper
  bound, which makes Wilson conservative for fractional scores.
- Prompts needed: how many prompts a normal-approximation 95% interval needs to exclude the
  null (½ for the win rate, 0 for the difference) if the observed mean and per-prompt spread
  held: ceil((z·s / |mean − null|)²). None when there is no effect to resolve (mean = null, or
  fewer than 2 prompts to measure the spread from).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

Z95 = 1.959963984540054
RESAMPLES = 10_000


def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error (sample sd / √n); the error is 0 for fewer than 2 values."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_stderr of no values")
    mean = sum(values) / n
    return mean, (_sd(values, mean) / math.sqrt(n) if n > 1 else 0.0)


def _sd(values: Sequence[float], mean: float) -> float:
    return math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _check_paired(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> None:
    if len(a) != len(b):
        raise ValueError(f"{len(a)} prompts for one model but {len(b)} for the other; compare on the same prompts")
    if not a:
        raise ValueError("no prompts to compare on")
    if any(not row for row in a) or any(not row for row in b):
        raise ValueError("every prompt needs at least one sample from each model")


def prompt_win_scores(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> list[float]:
    """Per prompt: the share of (A sample, B sample) pairs that A wins, ties half."""
    _check_paired(a, b)
    return [sum(1.0 if x > y else 0.5 if x == y else 0.0 for x in ours for y in theirs) / (len(ours) * len(theirs))
            for ours, theirs in zip(a, b)]


def prompt_differences(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> list[float]:
    """Per prompt: mean reward of A's samples minus mean reward of B's."""
    _check_paired(a, b)
    return [sum(ours) / len(ours) - sum(theirs) / len(theirs) for ours, theirs in zip(a, b)]


def wilson_interval(p_hat: float, n: int, z: float = Z95) -> tuple[float, float]:
    if n <= 0:
        raise ValueError("wilson_interval needs n >= 1")
    centre = (p_hat + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p_hat * (1 - p_hat) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_interval(values: Sequence[float], level: float = 0.95, resamples: int = RESAMPLES,
                       seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of `values` (one per prompt)."""
    import numpy as np

    if len(values) == 0:
        raise ValueError("bootstrap_interval of no values")
    data = np.asarray(values, dtype=np.float64)
    picks = np.random.default_rng(seed).integers(0, len(data), size=(resamples, len(data)))
    means = data[picks].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def prompts_needed(values: Sequence[float], null: float, z: float = Z95) -> int | None:
    """Prompts at which a 95% interval around the observed mean would exclude `null` (see module doc)."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    if mean == null:
        return None
    return max(2, math.ceil((z * _sd(values, mean) / abs(mean - null)) ** 2))


def compare_models(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]]) -> dict:
    """A against B on the same prompts: win rate (bootstrap and Wilson intervals), reward difference,
    prompts needed to resolve each, and the prompt tally."""
    return compare_scores(prompt_win_scores(a, b), prompt_differences(a, b))


def compare_scores(scores: Sequence[float], diffs: Sequence[float]) -> dict:
    """`compare_models` from each prompt's win score of A (in [0, 1], ties half) and its difference: what a pairwise
    judge gives directly."""
    n = len(scores)
    rate, diff = sum(scores) / n, sum(diffs) / n
    low, high = bootstrap_interval(scores)
    wilson_low, wilson_high = wilson_interval(rate, n)
    diff_low, diff_high = bootstrap_interval(diffs)
    return {"win_rate": rate, "ci_low": low, "ci_high": high, "wilson_low": wilson_low, "wilson_high": wilson_high,
            "prompts": n, "prompts_won": sum(s > 0.5 for s in scores), "prompts_tied": sum(s == 0.5 for s in scores),
            "prompts_lost": sum(s < 0.5 for s in scores), "prompts_needed": prompts_needed(scores, 0.5),
            "resolved": not low <= 0.5 <= high,
            "reward_diff": diff, "reward_diff_low": diff_low, "reward_diff_high": diff_high,
            "reward_diff_prompts_needed": prompts_needed(diffs, 0.0),
            "interval": f"95% percentile bootstrap over prompts ({RESAMPLES} resamples); Wilson beside it"}


def describe(result: dict) -> str:
    """One line: 'win rate 0.742 [0.688, 0.793] (Wilson [0.66, 0.81]) over 128 prompts; ...'."""
    r = result
    line = (f"win rate {r['win_rate']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] 95% bootstrap "
            f"(Wilson [{r['wilson_low']:.3f}, {r['wilson_high']:.3f}]) over {r['prompts']} prompts; "
            f"reward difference {r['reward_diff']:+.3f} [{r['reward_diff_low']:+.3f}, {r['reward_diff_high']:+.3f}]")
    if r["resolved"]:
        return line + "; resolved"
    needed = r["prompts_needed"]
    return line + ("; no effect to resolve" if needed is None else f"; not resolved: needs about {needed} prompts")
