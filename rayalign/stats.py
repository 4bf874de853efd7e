"""Statistics of comparisons on the same held-out prompts (pure functions).

The units nest: runs (the seeds of a method), topics (a task's prompts are topics rendered through templates),
prompts, samples. Samples of one prompt are correlated, prompts of one topic are, and the runs of a method differ
by their seeds: an interval over prompts alone describes the trained models at hand, not the method.

- Win score of prompt i, run a against run b: the share of all (sample of a, sample of b) pairs that a wins, ties
  counted half, in [0, 1]. An arm's win rate over another is the mean over prompts and over every pair of their
  runs (with one run each: the mean of the prompts' scores).
- Reward difference: the same with each prompt's mean reward of a's samples − b's.
- The interval (the headline): mean ± t·se. se² adds each arm's run variance, s²/R of its runs' means (what
  resampling the runs estimates, without the bootstrap's (R − 1)/R shrinkage, which at 3-5 runs hides a fifth to a
  third of it), and the variance of a two-stage bootstrap of topics and then prompts within each drawn topic
  (seeded, so a report is reproducible). t has Satterthwaite's degrees of freedom from runs (R − 1) and topics
  (T − 1). Its coverage at nominal 95% is tested on simulated experiments with a known effect (tests/test_stats.py).
- Seed test beside it: the exact permutation test of two arms' run means, or the exact sign-flip test of each
  run against an arm of one run (the starting model), with the smallest p its run counts allow (3 vs 3: 0.1).
- Wilson score interval (prompts only, beside it): the win rate as a binomial proportion over n prompts.
- Prompts needed, runs needed: how many prompts (runs per arm) a normal 95% interval needs to exclude the null (½
  for the win rate, 0 for the difference) if the observed means and spreads held; None when there is no effect to
  resolve, or when the other levels' spread alone is too wide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

Z95 = 1.959963984540054
RESAMPLES = 10_000
INTERVAL = ("95% t interval: runs (s²/R per arm), then topics, then prompts within topics (two-stage bootstrap, "
            f"{RESAMPLES} resamples), Satterthwaite degrees of freedom; Wilson over prompts beside it")


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


def prompts_needed(values: Sequence[float], null: float, z: float = Z95) -> int | None:
    """Prompts at which a 95% interval around the observed mean would exclude `null` (see module doc)."""
    if len(values) < 2:
        return None
    mean = sum(values) / len(values)
    if mean == null:
        return None
    return max(2, math.ceil((z * _sd(values, mean) / abs(mean - null)) ** 2))


def compare_runs(a_runs: Sequence[Sequence[Sequence[float]]], b_runs: Sequence[Sequence[Sequence[float]]],
                 topics: Sequence[str] | None = None, seed: int = 0) -> dict:
    """Arm A against arm B on the same prompts: each arm's runs (seeds), each run per prompt its samples' rewards;
    `topics` per prompt (None: each prompt its own). The win rate and reward difference are means over every pair
    of runs and every prompt; their intervals count runs, topics and prompts (`hierarchical_interval`); the seed test
    compares the runs' mean rewards."""
    for run in list(a_runs) + list(b_runs):
        _check_paired(a_runs[0], run)
    wins = [[prompt_win_scores(a, b) for b in b_runs] for a in a_runs]
    diffs = [[prompt_differences(a, b) for b in b_runs] for a in a_runs]
    result = _figures(wins, diffs, topics, seed)
    if len(a_runs) > 1 or len(b_runs) > 1:
        result["seed_test"] = seed_test([_mean_of(run) for run in a_runs], [_mean_of(run) for run in b_runs])
    return result


def mean_reward(runs: Sequence[Sequence[Sequence[float]]], topics: Sequence[str] | None = None) -> tuple[float, float]:
    """An arm's mean reward over its runs' samples and its standard error counting runs, topics and prompts (what
    a "± s.e." over pooled responses, as if each were independent, understates)."""
    per_prompt = [[[sum(row) / len(row) for row in run]] for run in runs]
    result = hierarchical_interval(per_prompt, _each_its_own(topics, len(runs[0])), 0.0)
    return result["mean"], result["stderr"]


def _each_its_own(topics: Sequence[str] | None, prompts: int) -> list[str]:
    """`topics`, checked against the prompts; None: each prompt its own topic."""
    topics = list(topics) if topics is not None else [str(i) for i in range(prompts)]
    if len(topics) != prompts:
        raise ValueError(f"{len(topics)} topics for {prompts} prompts; give one topic per prompt")
    return topics


def _mean_of(run: Sequence[Sequence[float]]) -> float:
    flat = [r for row in run for r in row]
    return sum(flat) / len(flat)


def compare_models(a: Sequence[Sequence[float]], b: Sequence[Sequence[float]],
                   topics: Sequence[str] | None = None) -> dict:
    """One model against another (one run each) on the same prompts."""
    return compare_runs([a], [b], topics)


def compare_scores(scores: Sequence[float], diffs: Sequence[float], topics: Sequence[str] | None = None) -> dict:
    """`compare_models` from each prompt's win score of A (in [0, 1], ties half) and its difference: what a pairwise
    judge gives directly."""
    return _figures([[list(scores)]], [[list(diffs)]], topics, 0)


def _figures(wins, diffs, topics, seed: int) -> dict:
    import numpy as np

    prompts = len(wins[0][0])
    topics = _each_its_own(topics, prompts)

    weights = cluster_weights(topics, RESAMPLES, np.random.default_rng(seed))  # one draw for both figures
    win = hierarchical_interval(wins, topics, 0.5, weights=weights)
    diff = hierarchical_interval(diffs, topics, 0.0, weights=weights)
    scores = [sum(w[i] for row in wins for w in row) / (len(wins) * len(wins[0])) for i in range(prompts)]
    per_prompt_diffs = [sum(d[i] for row in diffs for d in row) / (len(diffs) * len(diffs[0])) for i in range(prompts)]
    low, high = max(0.0, win["low"]), min(1.0, win["high"])
    wilson_low, wilson_high = wilson_interval(win["mean"], prompts)
    runs = [len(wins), len(wins[0])]
    return {"win_rate": win["mean"], "ci_low": low, "ci_high": high, "wilson_low": wilson_low,
            "wilson_high": wilson_high, "prompts": prompts, "topics": len(set(topics)), "runs": runs,
            "prompts_won": sum(s > 0.5 for s in scores), "prompts_tied": sum(s == 0.5 for s in scores),
            "prompts_lost": sum(s < 0.5 for s in scores), "prompts_needed": prompts_needed(scores, 0.5),
            "runs_needed": win["runs_needed"], "resolved": not low <= 0.5 <= high,
            "variance_shares": win["variance_shares"], "df": win["df"],
            "reward_diff": diff["mean"], "reward_diff_low": diff["low"], "reward_diff_high": diff["high"],
            "reward_diff_prompts_needed": prompts_needed(per_prompt_diffs, 0.0),
            "interval": INTERVAL}


def describe(result: dict) -> str:
    """One line: 'win rate 0.742 [0.688, 0.793] 95% (Wilson [0.66, 0.81]) over 128 prompts, 49 topics, 5 vs 1
    runs; reward difference ...; resolved' (or what it would take)."""
    r = result
    runs = r.get("runs", [1, 1])
    line = (f"win rate {r['win_rate']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] 95% "
            f"(Wilson [{r['wilson_low']:.3f}, {r['wilson_high']:.3f}]) over {r['prompts']} prompts, "
            f"{r.get('topics', r['prompts'])} topics, {runs[0]} vs {runs[1]} runs; reward difference "
            f"{r['reward_diff']:+.3f} [{r['reward_diff_low']:+.3f}, {r['reward_diff_high']:+.3f}]")
    return f"{line}; {verdict(r)}"


def verdict(result: dict) -> str:
    """'better' or 'worse' (the row's model or method, when the win rate's interval excludes ½), else what it would
    take: 'cannot tell at 5 runs (needs about 12 per arm)', 'not resolved: needs about 300 prompts', 'no effect to
    resolve'. Where runs were counted, more prompts alone cannot settle it: the verdict names the runs."""
    r = result
    if r["resolved"]:
        return "better" if r["win_rate"] > 0.5 else "worse"
    runs = r.get("runs", [1, 1])
    if max(runs) > 1:
        at = " vs ".join(str(n) for n in runs if n > 1) if 1 in runs else " vs ".join(map(str, runs))
        needs = f"needs about {r['runs_needed']} per arm" if r.get("runs_needed") else \
            "too small an effect for more runs alone to resolve"
        return f"cannot tell at {at} runs ({needs})"
    if r["prompts_needed"] is None:
        return "no effect to resolve"
    return f"not resolved: needs about {r['prompts_needed']} prompts"


# ---------------------------------------------------------------- runs, topics, prompts

def cluster_weights(topics: Sequence[str], resamples: int, rng) -> np.ndarray:
    """(resamples, prompts): how often each prompt is drawn when the topics are resampled with replacement and then,
    within each drawn topic, its prompts (the two lower levels of the hierarchical bootstrap)."""
    import numpy as np

    names = sorted(set(topics))
    members = [[i for i, topic in enumerate(topics) if topic == name] for name in names]
    sizes = np.array([len(m) for m in members])
    table = np.zeros((len(names), sizes.max()), dtype=np.int64)
    for t, m in enumerate(members):
        table[t, :len(m)] = m
    drawn = rng.integers(0, len(names), size=(resamples, len(names)))  # topic slots
    picks = (rng.random((resamples, len(names), table.shape[1])) * sizes[drawn][..., None]).astype(np.int64)
    valid = np.arange(table.shape[1]) < sizes[drawn][..., None]  # a topic of n prompts draws n of them
    flat = (np.arange(resamples)[:, None, None] * len(topics) + table[drawn[..., None], picks])[valid]
    return np.bincount(flat, minlength=resamples * len(topics)).reshape(resamples, len(topics)).astype(np.float64)


def hierarchical_interval(values, topics: Sequence[str], null: float, level: float = 0.95,
                          resamples: int = RESAMPLES, seed: int = 0, weights=None) -> dict:
    """The interval of the mean of `values[a][b][i]` (run a of one arm against run b of the other, prompt i) that
    counts runs, then topics, then prompts (module doc): its bounds, standard error and degrees of freedom, each
    level's share of the variance, and the runs per arm at which it would exclude `null` (None: no effect, or the
    topics' and prompts' share alone is too wide). `weights`: `cluster_weights` already drawn for these topics."""
    import numpy as np
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    runs_a, runs_b, _ = values.shape
    mean = float(values.mean())
    parts, dfs = {}, {}
    for arm, run_means in (("runs_a", values.mean(axis=(1, 2))), ("runs_b", values.mean(axis=(0, 2)))):
        if len(run_means) > 1:  # the variance of a mean of R runs: s²/R, which resampling runs underestimates
            parts[arm], dfs[arm] = float(run_means.var(ddof=1) / len(run_means)), len(run_means) - 1
    per_prompt = values.mean(axis=(0, 1))
    if weights is None:
        weights = cluster_weights(topics, resamples, np.random.default_rng(seed))
    parts["topics_prompts"] = float(((weights @ per_prompt) / weights.sum(axis=1)).var(ddof=1))
    dfs["topics_prompts"] = max(1, len(set(topics)) - 1)
    variance = sum(parts.values())
    if variance == 0:
        low = high = mean
        df = math.inf
    else:
        df = variance ** 2 / sum(part ** 2 / dfs[name] for name, part in parts.items() if part > 0)
        half = float(stats.t.ppf(0.5 + level / 2, df)) * math.sqrt(variance)
        low, high = mean - half, mean + half
    return {"mean": mean, "low": low, "high": high, "stderr": math.sqrt(variance), "df": df,
            "variance_shares": {name: part / variance if variance else 0.0 for name, part in parts.items()},
            "runs_needed": _runs_needed(parts, mean, null, (runs_a, runs_b))}


def _runs_needed(parts: dict, mean: float, null: float, runs: tuple[int, int]) -> int | None:
    """Runs per arm at which a normal 95% interval would exclude `null` if the observed spreads held."""
    gap = abs(mean - null)
    run_var = parts.get("runs_a", 0.0) * runs[0] + parts.get("runs_b", 0.0) * runs[1]  # s² of one run, both arms
    fixed = parts["topics_prompts"]
    if gap == 0 or run_var == 0 or Z95 ** 2 * fixed >= gap ** 2:
        return None
    return max(2, math.ceil(Z95 ** 2 * run_var / (gap ** 2 - Z95 ** 2 * fixed)))


def seed_test(a_means: Sequence[float], b_means: Sequence[float]) -> dict:
    """A test on the runs themselves (one value per run, e.g. its mean reward): the exact permutation test of the
    difference of the arms' means when both have several runs, else the exact sign-flip test of each run's difference
    from the other arm's one run. Two-sided p, and the smallest p these run counts can give."""
    import itertools

    if len(b_means) == 1 or len(a_means) == 1:
        one, fixed = (a_means, b_means[0]) if len(b_means) == 1 else (b_means, a_means[0])
        diffs = [x - fixed for x in one]
        observed = abs(sum(diffs))
        flips = list(itertools.product((1, -1), repeat=len(diffs)))
        extreme = sum(abs(sum(s * d for s, d in zip(signs, diffs))) >= observed - 1e-12 for signs in flips)
        return {"test": "sign-flip of run differences", "runs": [len(a_means), len(b_means)],
                "p": extreme / len(flips), "smallest_p": 2 / len(flips) if len(diffs) else 1.0}
    pooled, size = list(a_means) + list(b_means), len(a_means)
    observed = abs(sum(a_means) / size - sum(b_means) / len(b_means))
    splits = list(itertools.combinations(range(len(pooled)), size))
    extreme = 0
    for split in splits:
        chosen = set(split)
        a = [pooled[i] for i in chosen]
        b = [pooled[i] for i in range(len(pooled)) if i not in chosen]
        extreme += abs(sum(a) / len(a) - sum(b) / len(b)) >= observed - 1e-12
    return {"test": "permutation of run means", "runs": [len(a_means), len(b_means)], "p": extreme / len(splits),
            "smallest_p": 2 / len(splits) if len(a_means) == len(b_means) else 1 / len(splits)}
