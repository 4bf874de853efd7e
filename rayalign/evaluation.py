"""Evaluate a policy against its starting model on a task's held-out prompts: rewards, win rate, report.

Both models sample `eval.samples` responses per held-out prompt on a `SamplerPool` (the engine of
`sampling.engine`: `hf` on CPU, `vllm` on a GPU), with the same temperature and token budget and
independent seeds (a model against itself is a fair null check); a scorer (the task's gold
reward, or a saved discriminator) scores every response; `rayalign.stats.compare_models` gives
the paired win rate, its interval over the prompts' topics and the prompts within them, and the prompts a
decision would need. One report is one trained run: `rayalign compare` over a method's seeds counts the runs.

A model's samples are a constant of (its weights, the prompt ids, the sampling settings), so they
are cached under ``$RAYALIGN_CACHE/eval_samples``: the starting model is sampled once for all the
runs of a sweep, and `rayalign compare` reads the samples each run's own evaluation made.
Sampling is seeded, so a cached table equals a live one (tested).

Outputs in `out_dir`: ``report.json`` (figures + settings), ``samples.jsonl`` (every response
with its reward) and ``report.png`` (reward distributions of both models; the win rate with its
intervals against ½).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from rayalign.config import EvalConfig, JudgeConfig, SamplingConfig
from rayalign.models import PLAIN, LoadOptions
from rayalign.stats import compare_models, compare_scores, describe, mean_reward, mean_stderr

if TYPE_CHECKING:
    from rayalign.sampling.pool import PhasePool
    from rayalign.tasks.base import Task

SAMPLES_CACHE_VERSION = "2"  # bump when sampling code changes what a seed produces
ROLE_SEED_OFFSET = {"policy": 0, "reference": 1_000_003}  # independent samples for the two sides
RUN_SEED_STRIDE = 7_919  # a policy trained with train.seed k samples with eval.seed + k·stride: its own draws


def make_scorer(scorer: str, task) -> Callable[[list[str], list[str]], list[float]]:
    """'gold' → the task's gold reward; "module:attribute" → your judge, a function (or an object with a `score`
    method) of (prompts, responses) -> scores; anything else is a reward model directory (a discriminator checkpoint
    or an HF sequence classifier), loaded in this process."""
    if scorer == "gold":
        return lambda prompts, responses: [task.gold_reward(p, r) for p, r in zip(prompts, responses)]
    if is_plugin(scorer):
        from rayalign.plugins import load_attribute

        judge = load_attribute(scorer, "eval.scorer")
        return getattr(judge, "score", judge)
    from rayalign.scoring.reward_model import load_reward_model

    return load_reward_model(scorer).score


@contextlib.contextmanager
def served_scorer(scorer: str, task, judge: JudgeConfig):
    """The scorer of an evaluation: the task's gold reward, or a reward model directory on a Ray Serve replica of
    its own (`judge.cpus`, `judge.gpus`), removed after."""
    if scorer == "gold" or is_plugin(scorer):
        yield make_scorer(scorer, task)
        return
    from rayalign.scoring.reward_model import check_reward_model
    from rayalign.scoring.serve import DiscriminatorService
    from rayalign.serving import free_port

    check_reward_model(scorer, "eval.scorer (gold, llm or a reward model directory)")
    service = DiscriminatorService(scorer, name="judge", route_prefix="/judge", num_cpus=judge.cpus,
                                   num_gpus=judge.gpus, port=free_port())  # where no Serve proxy runs yet: not 8000
    try:
        yield service.score
    finally:
        service.shutdown()


def is_plugin(scorer: str) -> bool:
    """Whether `scorer` names your judge as module:attribute (not a directory with a colon in its path)."""
    return ":" in scorer and not Path(scorer).exists()


def judge_pairwise(judge, prompts: list[str], policy: list[list[dict]], reference: list[list[dict]]) -> tuple:
    """Every policy sample against every reference sample of its prompt, by an LLM judge (both orders). Returns
    (each prompt's win score of the policy, each sample's win share: policy's, reference's)."""
    asks = [(i, j, k) for i, (ours, theirs) in enumerate(zip(policy, reference))
            for j in range(len(ours)) for k in range(len(theirs))]
    outcomes = judge.compare([prompts[i] for i, _, _ in asks], [policy[i][j]["text"] for i, j, _ in asks],
                             [reference[i][k]["text"] for i, _, k in asks])
    won = {ask: outcome for ask, outcome in zip(asks, outcomes)}
    scores, shares = [], {"policy": [], "reference": []}
    for i, (ours, theirs) in enumerate(zip(policy, reference)):
        scores.append(sum(won[i, j, k] for j in range(len(ours)) for k in range(len(theirs))) /
                      (len(ours) * len(theirs)))
        shares["policy"].append([sum(won[i, j, k] for k in range(len(theirs))) / len(theirs)
                                 for j in range(len(ours))])
        shares["reference"].append([1 - sum(won[i, j, k] for j in range(len(ours))) / len(ours)
                                    for k in range(len(theirs))])
    return scores, shares


@dataclasses.dataclass
class HeldOut:
    """The held-out prompts every model of a comparison is sampled on, as text and as token ids, with each one's
    topic (the unit the statistics resample)."""

    task: str
    prompts: list[str]
    prompt_ids: list[list[int]]
    topics: list[str]


def held_out(e: EvalConfig, task: Task, tokenizer, chat_template: bool = True) -> HeldOut:
    from rayalign.data.tokenize import encode_prompt

    drawn = task.draw(e.split, e.num_prompts, e.seed)
    ids = [encode_prompt([{"role": "user", "content": p}], tokenizer, chat_template) for _, p in drawn]
    return HeldOut(task.name, [p for _, p in drawn], ids, [topic for topic, _ in drawn])


def role_params(e: EvalConfig, role: str, run_seed: int = 0):
    """What a model in `role` samples with. The policies of a method's seeds (`run_seed`: their train.seed) each
    draw their own samples, so that pooled runs are independent draws; the starting model draws one set for all."""
    from rayalign.sampling.base import SamplingParams

    own = RUN_SEED_STRIDE * run_seed if role == "policy" else 0
    return SamplingParams(n=e.samples, temperature=e.temperature, top_p=e.top_p, max_new_tokens=e.max_new_tokens,
                          seed=e.seed + ROLE_SEED_OFFSET[role] + own)


def _samples_cache_path(model: str, prompt_ids: list[list[int]], params, sampling: SamplingConfig,
                        revision: str | None) -> Path:
    """Keyed by the model's weights, the prompt ids and everything that decides what a seed samples."""
    from rayalign.files import cache_key
    from rayalign.models import cache_root, resolve_model
    from rayalign.train.reference import model_fingerprint

    key = {"version": SAMPLES_CACHE_VERSION, "model": model_fingerprint(resolve_model(model), revision),
           "prompt_ids": prompt_ids, "params": dataclasses.asdict(params), "engine": sampling.engine,
           "chunk_size": sampling.chunk_size, "batch_size": sampling.batch_size}
    return cache_root() / "eval_samples" / f"{cache_key(key)}.json"


def sample_models(entries: list[tuple[str, str, object]], prompt_ids: list[list[int]], sampling: SamplingConfig,
                  pools: PhasePool | None = None,
                  options: LoadOptions = PLAIN) -> dict[str, tuple[list[list[dict]], bool]]:
    """For each (label, model, params): per prompt, `params.n` samples {"text", "tokens", "finish"}, and whether
    they came from the cache. Models not cached are sampled on `pools` (a pipeline's pool, left running), else on
    a pool of their own (loading with `options`, a `rayalign.models.LoadOptions`): interchangeable models share it,
    the next one's weights loaded into the running pool."""
    from tqdm import tqdm

    from rayalign.files import atomic_write_text
    from rayalign.sampling.pool import given_or_own

    results = {}
    with given_or_own(pools, sampling, options) as phases:
        for label, model, params in entries:
            path = _samples_cache_path(model, prompt_ids, params, sampling, phases.options.revision)
            if path.is_file():
                results[label] = json.loads(path.read_text())["samples"], True
                continue
            pool = phases.serving(model)
            chunks = -(-len(prompt_ids) // sampling.chunk_size)
            with tqdm(total=chunks, desc=f"sampling {label or model}", unit="chunk") as bar:
                outputs = pool.generate(prompt_ids, params, on_chunk=lambda *_: bar.update())
            samples = [[{"text": c.text, "tokens": len(c.generated_ids), "finish": c.finish_reason} for c in row]
                       for row in outputs]
            atomic_write_text(path, json.dumps({"model": model, "samples": samples}))
            results[label] = samples, False
    return results


def score_samples(score, prompts: list[str], samples: list[list[dict]]) -> list[list[float]]:
    flat = score([p for p, row in zip(prompts, samples) for _ in row], [s["text"] for row in samples for s in row])
    rewards, start = [], 0
    for row in samples:
        rewards.append(flat[start:start + len(row)])
        start += len(row)
    return rewards


def model_stats(rewards: list[list[float]], samples: list[list[dict]], topics: list[str]) -> dict:
    """Mean reward (its standard error by topic and prompt, `rayalign.stats.mean_reward`), length, truncation."""
    flat = [s for row in samples for s in row]
    mean, err = mean_reward([rewards], topics)
    length, length_err = mean_stderr([s["tokens"] for s in flat])
    return {"mean_reward": mean, "reward_stderr": err, "mean_length_tokens": length, "length_stderr": length_err,
            "truncated_share": sum(s["finish"] == "length" for s in flat) / len(flat), "responses": len(flat)}


def report_settings(e: EvalConfig, sampling: SamplingConfig) -> dict:
    """What a report's figures depend on besides the two models (a report with other settings is stale)."""
    return {**dataclasses.asdict(e), "task": e.task or "word_collector", "engine": sampling.engine}


def evaluate(policy: str, reference: str, e: EvalConfig, out_dir: str | Path, sampling: SamplingConfig | None = None,
             chat_template: bool = True, pools: PhasePool | None = None, task: Task | None = None,
             tokenizer=None, judge: JudgeConfig | None = None, options: LoadOptions = PLAIN,
             run_seed: int = 0) -> dict:
    """Sample both models on held-out prompts (on `pools`, a pipeline's running pool, when given), score, compare;
    write report.json/.png + samples.jsonl. `task` and `tokenizer`: a run's own (else e.task's and the
    reference's). `options`: how a pool of this call's loads the models (`rayalign.models.LoadOptions`); `run_seed`:
    the policy's train.seed (its own sampling seed, `role_params`)."""
    began, sampling = time.time(), sampling or SamplingConfig()
    if task is None:
        from rayalign.tasks.registry import get_task

        task = get_task(e.task or "word_collector")
    if tokenizer is None:
        from rayalign.models import load_tokenizer

        tokenizer = load_tokenizer(reference, options)
    prompts = held_out(e, task, tokenizer, chat_template)
    judge = judge or JudgeConfig()
    sampled = sample_models([(role, model, role_params(e, role, run_seed)) for role, model in
                             (("reference", reference), ("policy", policy))], prompts.prompt_ids, sampling, pools,
                            options)
    samples = {role: sampled[role][0] for role in ("reference", "policy")}
    extra = {}
    if e.scorer == "llm":  # pairwise: a "reward" is a sample's win share against the other model's samples
        from rayalign.judges import LLMJudge

        llm = LLMJudge(judge)
        scores, rewards = judge_pairwise(llm, prompts.prompts, samples["policy"], samples["reference"])
        win_rate = compare_scores(scores, [score - 0.5 for score in scores], prompts.topics)
        extra = {"judge": {**llm.counts, "model": llm.client.model, "base_url": llm.client.base_url}}
    else:
        with served_scorer(e.scorer, task, judge) as score:
            rewards = {role: score_samples(score, prompts.prompts, samples[role]) for role in samples}
        win_rate = compare_models(rewards["policy"], rewards["reference"], prompts.topics)
    stats = {role: model_stats(rewards[role], samples[role], prompts.topics) for role in samples}
    report = {"task": task.name, "policy": policy, "reference": reference, "scorer": e.scorer,
              "settings": report_settings(e, sampling),
              "policy_stats": stats["policy"], "reference_stats": stats["reference"], "win_rate": win_rate,
              "samples_from_cache": {role: sampled[role][1] for role in samples}, **extra,
              "wall_time_s": round(time.time() - began, 1)}
    report["summary"] = describe(report["win_rate"])
    write_outputs(Path(out_dir), report, prompts.prompts, samples, rewards)
    return report


def write_samples(path: Path, prompts: list[str], samples: dict, rewards: dict) -> None:
    """samples.jsonl: every response of every model (the keys of `samples`) with its reward, for people to read."""
    rows = [{"model": model, "prompt": prompt, "response": s["text"], "tokens": s["tokens"], "finish": s["finish"],
             "reward": reward}
            for model in samples
            for prompt, row, scores in zip(prompts, samples[model], rewards[model])
            for s, reward in zip(row, scores)]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))


def write_outputs(out: Path, report: dict, prompts: list[str], samples: dict, rewards: dict) -> None:
    """samples.jsonl and report.png, then report.json, atomically and last: a rerun reuses a report it finds
    (`Run.evaluate`), so one there means the evaluation's files are whole."""
    from rayalign.files import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    write_samples(out / "samples.jsonl", prompts, samples, rewards)
    plot_report(out / "report.png", report, rewards)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2) + "\n")


def plot_report(path: Path, report: dict, rewards: dict) -> None:
    """Left: reward histograms of both models; right: win rate with its 95% intervals against ½."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4), gridspec_kw={"width_ratios": [3, 1]})
    flat = {role: [r for row in rewards[role] for r in row] for role in ("policy", "reference")}
    bins = reward_bins(flat["policy"] + flat["reference"])
    for role, colour in (("reference", "tab:grey"), ("policy", "tab:blue")):
        left.hist(flat[role], bins=bins, alpha=0.55, color=colour, label=f"{role} ({Path(report[role]).name})")
        left.axvline(report[f"{role}_stats"]["mean_reward"], color=colour, linestyle="--")
    left.set_xlabel(f"reward ({report['scorer']})")
    left.set_ylabel("responses")
    left.set_title(f"task {report['task']}: reward per response (dashed: mean)")
    left.legend(fontsize=7)
    wr = report["win_rate"]
    for x, (low, high, name) in enumerate(((wr["ci_low"], wr["ci_high"], "topics, prompts"),
                                           (wr["wilson_low"], wr["wilson_high"], "Wilson"))):
        right.errorbar([x], [wr["win_rate"]], yerr=[[wr["win_rate"] - low], [high - wr["win_rate"]]], fmt="o",
                       capsize=6, color="tab:blue" if x == 0 else "tab:grey")
    right.axhline(0.5, color="tab:grey", linestyle=":")
    right.set_xlim(-0.8, 1.8)
    right.set_ylim(0, 1)
    right.set_xticks([0, 1], ["topics, prompts", "Wilson"], fontsize=8)
    right.set_title(f"win rate {wr['win_rate']:.2f} over {wr['prompts']} prompts ({wr['topics']} topics)\n"
                    f"95% CI [{wr['ci_low']:.2f}, {wr['ci_high']:.2f}]", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def reward_bins(values: list[float], most: int = 30) -> list[float]:
    low, high = min(values), max(values)
    if high - low < 1e-9:
        return [low - 0.5, high + 0.5]
    step = (high - low) / most
    if float(low).is_integer() and float(high).is_integer() and high - low <= most:
        step, low, high = 1.0, low - 0.5, high + 0.5  # integer rewards: one bar per value
    return [low + i * step for i in range(round((high - low) / step) + 1)]
