"""`rayalign compare RUN_DIR...`: trained runs and their starting model on the same held-out samples.

Each run's final checkpoint and the starting model are sampled on the same held-out prompts with
the evaluation settings the runs were made with (their `config.yaml`; they must agree), so each
run's samples come from the cache its own evaluation filled, and so do the starting model's.
Every pair of models is compared paired per prompt (`rayalign.stats.compare_models`).

Runs given the same label (the seeds of one method) also form a *group*: its per-prompt rewards
are all its runs' samples of that prompt, so a method is compared with the starting model and
with the other methods over every seed at once; each run's own figures stay beside it.

Writes `compare.json` (every entry and group with its reward statistics, the figures of every
ordered pair), `compare.md` (the same as Markdown tables, for an experiment's write-up),
`compare.png` (reward distributions; the matrix of win rates of row over column with their
intervals) and `samples.jsonl` (every response with its reward).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import yaml

from rayalign import config as config_lib
from rayalign.errors import RayAlignError
from rayalign.files import atomic_write_text

START = "start"
INTERVAL_NOTE = ("t intervals adding run-to-run variance (s²/R per arm) to a bootstrap of topics, then prompts "
                 "within topics; the seed test compares the runs' mean rewards")


def run_checkpoint(run_dir: Path) -> str:
    """The final checkpoint a run's summary names (pipelines nest it under "train")."""
    from rayalign.summary import finished, read_summary

    summary = read_summary(run_dir)
    if not finished(summary):
        raise RayAlignError(f"{run_dir}: the run has not finished (no summary.json, or its training stopped before "
                            "its last step); rerun it or leave it out")
    checkpoint = summary.get("train", summary).get("checkpoint")
    if not checkpoint or not Path(checkpoint).is_dir():
        raise RayAlignError(f"{run_dir}: its summary names no checkpoint directory ({checkpoint}); rerun the run")
    return checkpoint


def _run_config(run_dir: Path) -> config_lib.Config:
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise RayAlignError(f"{run_dir}: no config.yaml; give run directories written by `rayalign run`")
    return config_lib.build(yaml.safe_load(path.read_text()))


def _shared_settings(run_dirs: list[Path]) -> list[config_lib.Config]:
    """Every run's config, after checking every run was evaluated the same way from the same model."""
    from rayalign.evaluation import report_settings
    from rayalign.pipelines.run import eval_config

    def key(cfg):
        return {"model": cfg.model.name, "chat_template": cfg.data.chat_template,
                **report_settings(eval_config(cfg), cfg.sampling),
                "chunk_size": cfg.sampling.chunk_size, "batch_size": cfg.sampling.batch_size}

    configs = [_run_config(d) for d in run_dirs]
    first = key(configs[0])
    for run_dir, cfg in zip(run_dirs[1:], configs[1:]):
        differs = [name for name, value in key(cfg).items() if first.get(name) != value]
        if differs:
            raise RayAlignError(f"{run_dir}: its {differs[0]} ({key(cfg)[differs[0]]}) differs from {run_dirs[0]}'s "
                                f"({first[differs[0]]}); compare runs evaluated with the same settings")
    return configs


def compare(run_dirs: list[str | Path], out_dir: str | Path, labels: list[str] | None = None) -> dict:
    """Sample (or read from the cache) every run and the starting model, compare all pairs, write the outputs."""
    from rayalign.evaluation import (
        held_out,
        model_stats,
        role_params,
        sample_models,
        score_samples,
        served_scorer,
        write_samples,
    )
    from rayalign.models import load_tokenizer
    from rayalign.pipelines.run import eval_config, task_of

    run_dirs = [Path(d).resolve() for d in run_dirs]
    if not run_dirs:
        raise RayAlignError("compare needs at least one run directory")
    labels = labels or [d.name for d in run_dirs]
    if len(labels) != len(run_dirs):
        raise RayAlignError(f"{len(labels)} labels for {len(run_dirs)} runs; give one label per run")
    configs = _shared_settings(run_dirs)
    cfg = configs[0]
    e = eval_config(cfg)
    task = task_of(cfg, e.task)
    prompts = held_out(e, task, load_tokenizer(cfg.model.name, cfg.model.options), cfg.data.chat_template)
    if e.scorer == "llm":
        raise RayAlignError("compare scores each response on its own (a gold reward or a reward model: eval.scorer); "
                            "an LLM judge compares two models at a time: use `rayalign eval --scorer llm` per pair")
    models = [(START, START, cfg.model.name, "reference")]
    models += [(d.name, label, run_checkpoint(d), "policy") for d, label in zip(run_dirs, labels)]
    seeds = {d.name: run.train.seed for d, run in zip(run_dirs, configs)}  # each run's policy samples with its own
    sampled = sample_models([(name, model, role_params(e, role, seeds.get(name, 0)))
                             for name, _, model, role in models], prompts.prompt_ids, cfg.sampling,
                            options=cfg.model.options)
    samples, rewards, entries = {}, {}, []
    with served_scorer(e.scorer, task, cfg.judge) as score:
        for name, label, model, _ in models:
            samples[name], cached = sampled[name]
            rewards[name] = score_samples(score, prompts.prompts, samples[name])
            entries.append({"name": name, "label": label, "model": model, "from_cache": cached,
                            **model_stats(rewards[name], samples[name], prompts.topics)})
    by_label = _runs_by_label(entries)
    groups = by_label if any(len(names) > 1 for names in by_label.values()) else {}  # some label has seeds
    single = {name: [runs] for name, runs in rewards.items()}
    arms = {label: [rewards[name] for name in names] for label, names in by_label.items()}
    result = {"task": e.task, "settings": {**dataclasses.asdict(e), "engine": cfg.sampling.engine},
              "topics": len(set(prompts.topics)), "entries": entries,
              "groups": {label: {"runs": names, **_arm_stats(arms[label], prompts.topics)}
                         for label, names in groups.items()},
              "pairs": _pairs(arms, prompts.topics), "run_pairs": _pairs(single, prompts.topics) if groups else []}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "compare.json", json.dumps(result, indent=2) + "\n")
    atomic_write_text(out / "compare.md", markdown(result))
    write_samples(out / "samples.jsonl", prompts.prompts, samples, rewards)
    plot_compare(out / "compare.png", {label: _pool(runs) for label, runs in arms.items()}, result["pairs"], e.task)
    return result


def reported_pairs(result: dict) -> list[dict]:
    """Each model against the starting model, then every other pair once (row before column by name)."""
    return [pair for pair in result["pairs"]
            if pair["column"] == START or (pair["row"] < pair["column"] and pair["row"] != START)]


def markdown(result: dict) -> str:
    """compare.json as Markdown: each model's (or group's) reward, then the reported pairs with intervals."""
    from rayalign.stats import verdict

    models = result["groups"] or {e["label"]: e for e in result["entries"]}
    lines = ["| model | runs | responses | reward (± s.e. over runs, topics, prompts) |", "| --- | --- | --- | --- |"]
    lines += [f"| {label} | {len(m.get('runs', [label]))} | {m['responses']} | "
              f"{m['mean_reward']:.3f} ± {m['reward_stderr']:.3f} |" for label, m in models.items()]
    lines += ["", f"Intervals: {INTERVAL_NOTE}; {result.get('topics', '?')} topics.", "",
              ("| model | vs | runs | win rate [95%] | Wilson (prompts) | reward difference [95%] | seed test p "
               "(smallest possible) | verdict |"), "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for p in reported_pairs(result):
        test = p.get("seed_test")
        seeds = f"{test['p']:.3f} ({test['smallest_p']:.3f})" if test else "n/a (one run each)"
        lines.append(f"| {p['row']} | {p['column']} | {p['runs'][0]} vs {p['runs'][1]} | {p['win_rate']:.3f} "
                     f"[{p['ci_low']:.3f}, {p['ci_high']:.3f}] | [{p['wilson_low']:.3f}, {p['wilson_high']:.3f}] | "
                     f"{p['reward_diff']:+.3f} [{p['reward_diff_low']:+.3f}, {p['reward_diff_high']:+.3f}] | {seeds} | "
                     f"{verdict(p)} |")
    return "\n".join(lines) + "\n"


def _runs_by_label(entries: list[dict]) -> dict[str, list[str]]:
    """label -> its runs' names, in the order given."""
    by_label: dict[str, list[str]] = {}
    for entry in entries:
        by_label.setdefault(entry["label"], []).append(entry["name"])
    return by_label


def _pool(runs: list[list[list[float]]]) -> list[list[float]]:
    """Per prompt, the rewards of every sample of every run."""
    return [[r for run in runs for r in run[i]] for i in range(len(runs[0]))]


def _arm_stats(runs: list[list[list[float]]], topics: list[str]) -> dict:
    """An arm's mean reward and its standard error over runs, topics and prompts."""
    from rayalign.stats import mean_reward

    mean, err = mean_reward(runs, topics)
    return {"mean_reward": mean, "reward_stderr": err, "responses": sum(len(row) for run in runs for row in run)}


def _pairs(arms: dict, topics: list[str]) -> list[dict]:
    """`compare_runs` for every ordered pair (row, column) of the arms (each a list of runs)."""
    from rayalign.stats import compare_runs

    return [{"row": a, "column": b, **compare_runs(arms[a], arms[b], topics)} for a in arms for b in arms if a != b]


def plot_compare(path: Path, table: dict, pairs: list[dict], task: str) -> None:
    """Left: reward distribution per model (box, mean marked); right: win rate of row over column."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table)
    flat = [[r for row in table[name] for r in row] for name in names]
    size = len(names)
    fig, (left, right) = plt.subplots(1, 2, figsize=(6 + 1.6 * size, 2.5 + 0.6 * size))
    left.boxplot(flat, vert=False, showmeans=True)
    left.set_yticks(range(1, size + 1), names, fontsize=7)
    left.set_xlabel(f"reward ({task})")
    left.set_title("reward per response (triangle: mean)")
    matrix = [[0.5] * size for _ in range(size)]
    labels = [[""] * size for _ in range(size)]
    for pair in pairs:
        i, j = names.index(pair["row"]), names.index(pair["column"])
        matrix[i][j] = pair["win_rate"]
        labels[i][j] = f"{pair['win_rate']:.2f}\n[{pair['ci_low']:.2f}, {pair['ci_high']:.2f}]"
    right.imshow(matrix, cmap="RdBu", vmin=0, vmax=1)
    for i in range(size):
        for j in range(size):
            right.text(j, i, labels[i][j], ha="center", va="center", fontsize=6)
    right.set_xticks(range(size), names, rotation=30, ha="right", fontsize=7)
    right.set_yticks(range(size), names, fontsize=7)
    right.set_title("win rate of row over column, 95% bootstrap CI")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
