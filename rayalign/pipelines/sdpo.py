"""sDPO (arXiv 2403.19270): the preference data in T chunks, easy first, trained stage by stage.

M_0 is the starting model. Stage t initialises the policy from M_{t-1}, takes M_{t-1} frozen as
the reference (its log-probs are recomputed for chunk t: the reference cache is keyed by the
weights, so each stage gets its own), trains DPO on chunk t, and checkpoints M_t.

Difficulty, our reading of the paper: a pair is easy when the starting model already prefers its
chosen response. With M_0 as both policy and reference the DPO implicit reward is 0 for every
pair, so we measure M_0's log-prob margin, by `sdpo.difficulty`: `normalised_margin` (default),
logp(y_w)/|y_w| − logp(y_l)/|y_l| (the implicit reward of a reference-free model, which does not
call a pair hard only because its chosen response is longer), or `logp_margin`, the paper's
unnormalised γ = logp(y_w) − logp(y_l). Its sign gives the reward accuracy. `easy_to_hard` sorts
pairs by the margin, largest first, and cuts T chunks; `by_source` orders the sources by their
accuracy (one chunk per source, the paper's set-up); `random` is the paper's ablation. Pairs keep their file order
inside a chunk, so T = 1 trains exactly what plain DPO trains.

Equal steps: the run trains as many optimizer steps as plain DPO on all the pairs would (`train.max_steps`, or
`train.epochs` of the whole set), shared among the stages in proportion to their chunks, so sDPO at any T is
compared with DPO at the same number of updates (each stage dropping its own last incomplete batch would not).

Diagnostic (the paper's γ_ref): the mean reference margin logp_ref(y_w) − logp_ref(y_l) on chunk
t+1 under M_{t-1} and under M_t; sDPO's claim is that it rises. A stopped run resumes in the stage
it was in: finished stages are read from their summary, not retrained.
"""

from __future__ import annotations

import dataclasses
import json
import random
from typing import TYPE_CHECKING

import torch

from rayalign import config as config_lib
from rayalign.errors import ConfigError

if TYPE_CHECKING:
    from rayalign.pipelines.run import Run
    from rayalign.summary import TrainSummary


def chunk_counts(n: int, stages: int, sizes: list[float] | None) -> list[int]:
    """How many pairs each chunk gets: proportional to `sizes` (equal by default), summing to n."""
    weights = sizes or [1.0] * stages
    if len(weights) != stages or any(w <= 0 for w in weights):
        raise ConfigError(f"sdpo.chunk_sizes needs {stages} positive numbers (one per stage), got {sizes}")
    counts = [int(n * w / sum(weights)) for w in weights]
    counts[-1] += n - sum(counts)
    return counts


def split_chunks(margins: list[float], stages: int, strategy: str, sizes: list[float] | None = None,
                 seed: int = 0, sources: list[str] | None = None) -> tuple[list[list[int]], list[float]]:
    """Chunks of pair indices (file order inside each) and each chunk's reward accuracy."""
    n = len(margins)
    if strategy == "by_source":
        if sources is None:
            raise ConfigError("sdpo.split=by_source needs a source column in the data (sdpo.source_column)")
        groups: dict[str, list[int]] = {}
        for index, source in enumerate(sources):
            groups.setdefault(source, []).append(index)
        if len(groups) != stages:
            raise ConfigError(f"sdpo.split=by_source makes one chunk per source: the data has {len(groups)} "
                              f"sources, so set sdpo.stages={len(groups)}")
        chunks = sorted(groups.values(), key=lambda idx: -_accuracy(margins, idx))
    else:
        if strategy == "easy_to_hard":
            order = sorted(range(n), key=lambda i: (-margins[i], i))
        elif strategy == "random":
            order = list(range(n))
            random.Random(seed).shuffle(order)
        else:
            raise ConfigError(f"sdpo.split '{strategy}' is not easy_to_hard, random or by_source")
        chunks, start = [], 0
        for count in chunk_counts(n, stages, sizes):
            chunks.append(order[start:start + count])
            start += count
    chunks = [sorted(chunk) for chunk in chunks]
    return chunks, [_accuracy(margins, chunk) for chunk in chunks]


def stage_steps(total: int, counts: list[int]) -> list[int]:
    """`total` optimizer steps shared among stages in proportion to their pairs (largest remainders; at least one
    each)."""
    n = sum(counts)
    exact = [total * c / n for c in counts]
    steps = [int(x) for x in exact]
    for i in sorted(range(len(counts)), key=lambda i: -(exact[i] - steps[i]))[:total - sum(steps)]:
        steps[i] += 1
    return [max(1, st) for st in steps]


def _accuracy(margins: list[float], indices: list[int]) -> float:
    return sum(margins[i] > 0 for i in indices) / max(1, len(indices))


def response_logps(model_name: str, pairs, pad_id: int, options, micro_batch: int = 8) -> torch.Tensor:
    """[N, 4]: chosen sum, rejected sum, chosen length, rejected length of each pair under a model (loaded with
    `options`, a `rayalign.models.LoadOptions`)."""
    from rayalign.logprobs import ResponseLogps, takes_block_masks
    from rayalign.models import load_causal_lm
    from rayalign.train.step import pair_sums

    lm = load_causal_lm(model_name, options=options).eval()
    return pair_sums(ResponseLogps(lm), pairs, pad_id, micro_batch, "cpu", takes_block_masks(lm))


def pair_margins(stats: torch.Tensor, difficulty: str = "normalised_margin") -> list[float]:
    """M_0's margin of each pair: length-normalised (our default) or the paper's unnormalised γ."""
    if difficulty == "logp_margin":
        return (stats[:, 0] - stats[:, 1]).tolist()
    return (stats[:, 0] / stats[:, 2] - stats[:, 1] / stats[:, 3]).tolist()


def reference_margin(model_name: str, pairs, pad_id: int, options) -> float | None:
    """Mean γ_ref = logp_ref(y_w) − logp_ref(y_l) over `pairs` (None for no pairs)."""
    if not pairs:
        return None
    stats = response_logps(model_name, pairs, pad_id, options)
    return float((stats[:, 0] - stats[:, 1]).mean())


def _stage_done(stage_cfg: config_lib.Config) -> dict | None:
    from rayalign.summary import finished, read_summary

    stage_cfg.storage().pull(fresh=True)  # a URI run: the stage's summary, if an earlier attempt finished it
    summary = read_summary(stage_cfg.run_dir)
    return summary if finished(summary) else None


def _sources(cfg: config_lib.Config, prepared) -> list[str]:
    """The source column of the rows that became pairs (needs data without skipped rows)."""
    from rayalign.data import iter_rows

    if prepared.stats.get("bad_rows"):
        raise ConfigError("sdpo.split=by_source needs data without bad rows (their sources cannot be matched)")
    column, sources = cfg.sdpo.source_column, []
    for row, raw in iter_rows(cfg.data):
        if len(sources) == len(prepared.pairs):
            break
        if not isinstance(raw, dict) or column not in raw:
            raise ConfigError(f"{cfg.data.path}, row {row}: no '{column}' field for sdpo.split=by_source; "
                              f"set sdpo.source_column or use sdpo.split=easy_to_hard")
        sources.append(str(raw[column]))
    return sources


def run_stages(cfg: config_lib.Config, prepared, tokenizer) -> TrainSummary:
    """Train T stages on `prepared` (tokenised pairs) as runs `stage_<t>` inside `cfg`'s run directory (inside its
    URI when output_dir is one, so a stage's workers write there); returns the summary, its stages' under
    ``stages``."""
    from rayalign.data import PreparedData
    from rayalign.summary import finished
    from rayalign.train.driver import run_training
    from rayalign.train.loop import total_steps

    pairs, s, pad_id = prepared.pairs, cfg.sdpo, tokenizer.pad_token_id
    # Measured for every split, so a random split's chunks report their accuracy too (the ablation's control).
    margins = pair_margins(response_logps(cfg.model.name, pairs, pad_id, cfg.model.options), s.difficulty)
    sources = _sources(cfg, prepared) if s.split == "by_source" else None
    chunks, accuracies = split_chunks(margins, s.stages, s.split, s.chunk_sizes, s.seed, sources)
    run_dir = cfg.run_dir.resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    steps = stage_steps(total_steps(cfg, len(pairs)), [len(chunk) for chunk in chunks])
    (run_dir / "chunks.json").write_text(json.dumps({"chunks": chunks, "accuracy": accuracies, "steps": steps}))
    previous, stages, root = cfg.model.name, [], cfg.storage().root
    for t, chunk in enumerate(chunks, start=1):
        stage_cfg = dataclasses.replace(
            cfg, output_dir=root, name=f"stage_{t}", train=dataclasses.replace(cfg.train, max_steps=steps[t - 1]),
            model=dataclasses.replace(cfg.model, name=previous, reference=previous))
        summary = _stage_done(stage_cfg)
        if summary is None:
            print(f"rayalign: sDPO stage {t}/{len(chunks)}: {len(chunk)} pairs, reference {previous}", flush=True)
            subset = PreparedData(pairs=[pairs[i] for i in chunk], stats=dict(prepared.stats, rows_used=len(chunk)))
            summary = run_training(stage_cfg, prepared=subset)
            if not finished(summary):  # stopped (train.stop_at_step): resume here later
                return _stages_summary(stages + [summary], finished_all=False)
        following, options = ([pairs[i] for i in chunks[t]] if t < len(chunks) else []), cfg.model.options
        summary["gamma_ref_next_chunk"] = {"before": reference_margin(previous, following, pad_id, options),
                                           "after": reference_margin(summary["checkpoint"], following, pad_id, options)}
        summary["chunk_accuracy"] = accuracies[t - 1]
        stages.append(summary)
        previous = summary["checkpoint"]
    return _stages_summary(stages, finished_all=True)


def _stages_summary(stages: list[TrainSummary], finished_all: bool) -> TrainSummary:
    """The stages' summaries as one: steps and wall time summed, the median of their steps' tokens/s; the last
    stage's checkpoint and metrics; unfinished until every stage ran (later stages' step counts are not known)."""
    from rayalign.summary import train_summary

    steps = sum(st["steps"] for st in stages)
    return train_summary(steps=steps, total_steps=steps if finished_all else None,
                         checkpoint=stages[-1]["checkpoint"], final_metrics=stages[-1]["final_metrics"],
                         speeds=[st["tokens_per_s_median"] for st in stages if st.get("tokens_per_s_median")],
                         wall_time_s=sum(st.get("wall_time_s", 0.0) for st in stages),
                         failure=stages[-1].get("reason"), stages=stages)


def run_sdpo(run: Run) -> dict:
    """`rayalign run` with pipeline: sdpo — stages on `data.path` (the run's ending evaluates the last one)."""
    from rayalign.data import prepare_data

    return {"train": run_stages(run.cfg, prepare_data(run.cfg.data, run.tokenizer), run.tokenizer)}
