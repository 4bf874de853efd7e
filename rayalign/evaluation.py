"""Evaluate a policy against its reference on a task's held-out prompts: rewards, win rate, report.

Both models sample `samples` responses per held-out prompt (HFSampler, the same temperature and
token budget, independent seeds, so a model against itself is a fair null check); a scorer (the
task's gold reward, or a saved discriminator) scores every response.

Statistics (pure functions, so they are tested on hand-made tables):

- mean reward with its standard error (sample standard deviation / √n, over all responses);
- win rate of policy over reference, *paired per prompt*: each prompt gets a win score
  w_i = mean over all (policy sample, reference sample) pairs of 1[p > r] + ½·1[p = r]
  (ties count half), and the win rate is the mean of the w_i. The prompt, not the sample, is the
  independent unit, because samples of one prompt are correlated.
- its 95% interval is the **Wilson score interval** with n = number of prompts and p̂ = the win
  rate. Each w_i lies in [0, 1], so its variance is at most p(1 − p): the binomial variance the
  Wilson interval assumes is an upper bound, making the interval conservative for fractional
  scores, and unlike a plain normal approximation it does not shrink to a point at p̂ = 0 or 1.

The starting model's samples are a constant of (its weights, the prompts, the sampling settings),
so they are cached under ``$RAYALIGN_CACHE/eval_samples``: the runs of a sweep or an experiment,
which all compare against the same starting model, sample it once. Sampling is seeded, so a
cached table equals a live one (tested).

Outputs in `out_dir`: ``report.json`` (figures + settings), ``samples.jsonl`` (every response
with its reward) and ``report.png`` (reward distributions of both models; the win rate with its
interval against ½).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path

Z95 = 1.959963984540054
SAMPLES_CACHE_VERSION = "1"  # bump when sampling code changes what a seed produces
INTERVAL = "Wilson score interval (95%) on the mean per-prompt win score, n = prompts"


def mean_stderr(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error (sample sd / √n); the error is 0 for fewer than 2 values."""
    n = len(values)
    if n == 0:
        raise ValueError("mean_stderr of no values")
    mean = sum(values) / n
    if n < 2:
        return mean, 0.0
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def prompt_win_scores(policy: Sequence[Sequence[float]], reference: Sequence[Sequence[float]]) -> list[float]:
    """Per prompt: the share of (policy, reference) sample pairs the policy wins, ties half."""
    if len(policy) != len(reference):
        raise ValueError(f"{len(policy)} policy prompts but {len(reference)} reference prompts")
    scores = []
    for ours, theirs in zip(policy, reference):
        pairs = [(p, r) for p in ours for r in theirs]
        if not pairs:
            raise ValueError("every prompt needs at least one sample from each model")
        scores.append(sum(1.0 if p > r else 0.5 if p == r else 0.0 for p, r in pairs) / len(pairs))
    return scores


def wilson_interval(p_hat: float, n: int, z: float = Z95) -> tuple[float, float]:
    if n <= 0:
        raise ValueError("wilson_interval needs n >= 1")
    centre = (p_hat + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p_hat * (1 - p_hat) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def win_rate(policy: Sequence[Sequence[float]], reference: Sequence[Sequence[float]]) -> dict:
    """Paired per-prompt win rate of policy over reference with its 95% Wilson interval."""
    scores = prompt_win_scores(policy, reference)
    rate = sum(scores) / len(scores)
    low, high = wilson_interval(rate, len(scores))
    return {"win_rate": rate, "ci_low": low, "ci_high": high, "prompts": len(scores),
            "prompts_won": sum(s > 0.5 for s in scores), "prompts_tied": sum(s == 0.5 for s in scores),
            "prompts_lost": sum(s < 0.5 for s in scores), "interval": INTERVAL}


def model_stats(rewards: Sequence[Sequence[float]], lengths: Sequence[int], truncated: int) -> dict:
    flat = [r for row in rewards for r in row]
    mean, err = mean_stderr(flat)
    length, length_err = mean_stderr(lengths)
    return {"mean_reward": mean, "reward_stderr": err, "mean_length_tokens": length,
            "length_stderr": length_err, "truncated_share": truncated / len(lengths), "responses": len(flat)}


def make_scorer(scorer: str, task) -> Callable[[list[str], list[str]], list[float]]:
    """'gold' → the task's gold reward; anything else is a saved discriminator directory."""
    if scorer == "gold":
        return lambda prompts, responses: [task.gold_reward(p, r) for p, r in zip(prompts, responses)]
    from rayalign.scoring.discriminator import Discriminator

    return Discriminator.load(scorer).score


def _sample(model: str, prompts: list[str], params, sampler=None):
    """Responses per prompt (texts, generated-token counts, truncated count) and the sampler."""
    from rayalign.data.tokenize import encode_prompt
    from rayalign.sampling.hf import HFSampler

    sampler = sampler or HFSampler(model)
    ids = [encode_prompt([{"role": "user", "content": p}], sampler.tokenizer) for p in prompts]
    outputs = sampler.generate(ids, params)
    texts = [[c.text for c in row] for row in outputs]
    lengths = [len(c.generated_ids) for row in outputs for c in row]
    truncated = sum(c.finish_reason == "length" for row in outputs for c in row)
    return texts, lengths, truncated, sampler


def _samples_cache_path(model: str, prompts: list[str], params) -> Path:
    """Cache file of a model's samples: keyed by its weights, the prompts and every sampling field."""
    import dataclasses
    import hashlib

    from rayalign.models import cache_root, resolve_model
    from rayalign.train.reference import model_fingerprint

    key = json.dumps({"version": SAMPLES_CACHE_VERSION, "model": model_fingerprint(resolve_model(model)),
                      "prompts": prompts, "params": dataclasses.asdict(params)}, sort_keys=True, default=str)
    return cache_root() / "eval_samples" / f"{hashlib.sha256(key.encode()).hexdigest()[:24]}.json"


def _cached_sample(model: str, prompts: list[str], params, sampler=None):
    """`_sample` through the cache; the last item says whether the samples came from it."""
    path = _samples_cache_path(model, prompts, params)
    if path.is_file():
        cached = json.loads(path.read_text())
        return cached["texts"], cached["lengths"], cached["truncated"], sampler, True
    texts, lengths, truncated, sampler = _sample(model, prompts, params, sampler)
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    # A temp file of its own: concurrent trials may sample the same model at once; the last rename wins
    # (the contents are equal), and a reader never sees half a file.
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as handle:
        handle.write(json.dumps({"texts": texts, "lengths": lengths, "truncated": truncated}))
    Path(handle.name).replace(path)
    return texts, lengths, truncated, sampler, False


def evaluate(policy: str, reference: str, task: str = "word_collector", num_prompts: int = 32, samples: int = 2,
             temperature: float = 0.7, max_new_tokens: int = 48, seed: int = 0, out_dir: str | Path = "runs/eval",
             scorer: str = "gold", top_p: float = 1.0) -> dict:
    """Sample both models on held-out prompts, score, and write report.json/.png + samples.jsonl."""
    from rayalign.sampling.base import SamplingParams
    from rayalign.tasks.registry import get_task

    began, the_task = time.time(), get_task(task)
    prompts = the_task.prompts("held_out", num_prompts, seed)
    score = make_scorer(scorer, the_task)
    rewards, stats, texts, sampler, cached = {}, {}, {}, None, False
    for offset, (role, model) in enumerate((("policy", policy), ("reference", reference))):
        params = SamplingParams(n=samples, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
                                seed=seed + offset * 1_000_003)
        reuse = sampler if sampler is not None and sampler.model_name == model else None
        if role == "reference":
            texts[role], lengths, truncated, sampler, cached = _cached_sample(model, prompts, params, reuse)
        else:
            texts[role], lengths, truncated, sampler = _sample(model, prompts, params, reuse)
        flat = score([p for p, row in zip(prompts, texts[role]) for _ in row], [t for row in texts[role] for t in row])
        rewards[role] = [flat[i * samples:(i + 1) * samples] for i in range(len(prompts))]
        stats[role] = model_stats(rewards[role], lengths, truncated)
    report = {"task": task, "policy": policy, "reference": reference, "scorer": scorer,
              "settings": {"num_prompts": num_prompts, "samples": samples, "temperature": temperature,
                           "top_p": top_p, "max_new_tokens": max_new_tokens, "seed": seed, "split": "held_out"},
              "policy_stats": stats["policy"], "reference_stats": stats["reference"],
              "win_rate": win_rate(rewards["policy"], rewards["reference"]),
              "reference_samples": "cache" if cached else "sampled",
              "wall_time_s": round(time.time() - began, 1)}
    write_outputs(Path(out_dir), report, prompts, texts, rewards)
    return report


def write_outputs(out: Path, report: dict, prompts: list[str], texts: dict, rewards: dict) -> None:
    out.mkdir(parents=True, exist_ok=True)
    rows = [{"model": role, "prompt": prompt, "response": text, "reward": reward}
            for role in ("policy", "reference")
            for prompt, row, scores in zip(prompts, texts[role], rewards[role])
            for text, reward in zip(row, scores)]
    (out / "samples.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    plot_report(out / "report.png", report, rewards)


def plot_report(path: Path, report: dict, rewards: dict) -> None:
    """Left: reward histograms of both models; right: win rate with its 95% interval against ½."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 1]})
    flat = {role: [r for row in rewards[role] for r in row] for role in ("policy", "reference")}
    everything = flat["policy"] + flat["reference"]
    bins = _bins(min(everything), max(everything))
    for role, colour in (("reference", "tab:grey"), ("policy", "tab:blue")):
        left.hist(flat[role], bins=bins, alpha=0.55, color=colour, label=f"{role} ({report[role]})")
        left.axvline(report[f"{role}_stats"]["mean_reward"], color=colour, linestyle="--")
    left.set_xlabel(f"reward ({report['scorer']})")
    left.set_ylabel("responses")
    left.set_title(f"task {report['task']}: reward per response (dashed: mean)")
    left.legend(fontsize=7)
    wr = report["win_rate"]
    right.errorbar([0], [wr["win_rate"]], yerr=[[wr["win_rate"] - wr["ci_low"]], [wr["ci_high"] - wr["win_rate"]]],
                   fmt="o", capsize=6, color="tab:blue")
    right.axhline(0.5, color="tab:grey", linestyle=":")
    right.set_xlim(-1, 1)
    right.set_ylim(0, 1)
    right.set_xticks([])
    right.set_title(f"win rate {wr['win_rate']:.2f}\n95% CI [{wr['ci_low']:.2f}, {wr['ci_high']:.2f}]", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _bins(low: float, high: float, most: int = 30) -> list[float]:
    if high - low < 1e-9:
        return [low - 0.5, high + 0.5]
    step = (high - low) / most
    if float(low).is_integer() and float(high).is_integer() and high - low <= most:
        step, low, high = 1.0, low - 0.5, high + 0.5  # integer rewards: one bar per value
    return [low + i * step for i in range(round((high - low) / step) + 1)]
