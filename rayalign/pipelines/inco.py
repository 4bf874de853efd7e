"""InCo-DPO (arXiv 2503.15880): preference pairs from continuations of strong off-policy responses.

For each training prompt x with a strong off-policy response y_off (the task's writer: high gold
reward, a style the policy would not produce), keep the first round(r·|y_off|) tokens of y_off as
a prefix, let the policy continue it `sampling.samples` times, score every full response
(prefix + continuation), and keep chosen = best, rejected = worst. A prompt whose candidates all
score the same gives no preference and is skipped (and counted). The ratio r is the knob: 0 is
pure on-policy sampling, 1 is y_off itself. Then vanilla DPO on the pairs, and an evaluation of
the trained policy against the starting model on held-out prompts.

Choices the paper leaves open, and ours: the prefix is a ratio of y_off's tokens (r·|y_off|,
rounded to the nearest token); the policy's own tokenizer cuts it, so the prefix ends on a token
boundary; with one ratio, chosen and rejected share the prefix and its tokens cancel in DPO, so
`inco.ratios` shares a prompt's samples among several ratios (chosen and rejected may then differ
in how much of y_off they carry); y_off joins the candidates only with `inco.include_off_policy`; the scorer is the
task's gold reward by default (a trained discriminator with `inco.scorer=<dir>`). For ablations,
`inco.mode=on_policy` samples without a prefix and `inco.mode=off_policy` pairs y_off (chosen)
against the policy's worst sample, skipping prompts where y_off does not score higher.

Synthesised pairs go to parquet shards in `<run>/data/`: the texts for people to read, and the
token ids that were sampled and scored (prompt, chosen, rejected) with each response's finish
reason, which is what trains (no re-tokenising; a response cut off by `sampling.max_new_tokens`
gets no EOS), with their metadata (ratio, scores, mode, prefix length). A rerun skips finished
shards, training resumes from its checkpoints, and a finished evaluation is not redone.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import TYPE_CHECKING

from rayalign.pipelines.pairs import Candidate, pair_row, write_pairs

if TYPE_CHECKING:
    from rayalign.pipelines.run import Run


def prefix_length(num_tokens: int, ratio: float) -> int:
    """round(r·|y|) tokens, clamped to [0, |y|]; Python rounds halves to even, so say so in tests."""
    return min(num_tokens, max(0, round(ratio * num_tokens)))


def shard_seed(inco_seed: int, first_prompt: int) -> int:
    """The sampling seed of the shard whose first prompt has index `first_prompt`: a rerun samples the same."""
    return inco_seed * 100_003 + first_prompt


def select_pair(candidates: list[Candidate]) -> tuple[Candidate, Candidate] | None:
    """(best, worst) by score, the first of equals; None when every candidate scores the same (no preference)."""
    best = max(candidates, key=lambda c: c.score)
    worst = min(candidates, key=lambda c: c.score)
    return None if best.score == worst.score else (best, worst)


def _inco_columns():
    import pyarrow as pa

    return {"mode": pa.string(), "ratio": pa.float64(), "rejected_ratio": pa.float64(), "prefix_len": pa.int64(),
            "rejected_prefix_len": pa.int64(), "prompt_index": pa.int64()}


def prompt_ratios(inco) -> list[float]:
    """The prefix ratios each prompt's samples are shared among (on- and off-policy modes sample without a prefix)."""
    if inco.mode != "inco":
        return [0.0]
    return list(inco.ratios or [inco.ratio])


def _shard_rows(cfg, prompts, offs, indices, pool, tokenizer, score) -> tuple[list[dict], dict]:
    """Sample, score and pair the prompts `indices`; returns rows and counts."""
    from rayalign.data.tokenize import encode_prompt, encode_response
    from rayalign.sampling.base import SamplingParams

    s, inco = cfg.sampling, cfg.inco
    prompt_ids = [encode_prompt([{"role": "user", "content": prompts[i]}], tokenizer, cfg.data.chat_template)
                  for i in indices]
    off_ids = [tokenizer.encode(offs[i], add_special_tokens=False) for i in indices]
    ratios = prompt_ratios(inco)
    prefixes = [ids[:prefix_length(len(ids), r)] for ids in off_ids for r in ratios]
    params = SamplingParams(n=s.samples // len(ratios), temperature=s.temperature, top_p=s.top_p,
                            max_new_tokens=s.max_new_tokens, seed=shard_seed(inco.seed, indices[0]))
    outputs = pool.generate([ids for ids in prompt_ids for _ in ratios], params, prefixes)
    rows, counts = [], {"prompts": len(indices), "ties_skipped": 0, "off_policy_not_better": 0, "samples": 0,
                        "truncated_samples": 0}
    for k, (i, ids) in enumerate(zip(indices, prompt_ids)):
        drawn = [(r, c) for r, completions in zip(ratios, outputs[k * len(ratios):(k + 1) * len(ratios)])
                 for c in completions]
        candidates = [Candidate.sampled(c) for _, c in drawn]
        made = {id(cand): (r, c.prefix_len) for cand, (r, c) in zip(candidates, drawn)}  # ratio, prefix of each
        counts["samples"] += len(candidates)
        counts["truncated_samples"] += sum(c.finish == "length" for c in candidates)
        if inco.mode == "off_policy" or (inco.mode == "inco" and inco.include_off_policy):
            candidates.append(Candidate(offs[i], encode_response(offs[i], tokenizer), "stop"))  # y_off is last
            made[id(candidates[-1])] = (1.0, len(off_ids[k]))
        for candidate, value in zip(candidates, score([prompts[i]] * len(candidates), [c.text for c in candidates])):
            candidate.score = value
        if inco.mode == "off_policy":
            off, worst = candidates.pop(), min(candidates, key=lambda c: c.score)
            pair = (off, worst) if off.score > worst.score else None
            counts["off_policy_not_better"] += pair is None
        else:
            pair = select_pair(candidates)
            counts["ties_skipped"] += pair is None
        if pair is not None:
            (ratio, prefix), (rejected_ratio, rejected_prefix) = made[id(pair[0])], made[id(pair[1])]
            rows.append(pair_row(prompts[i], ids, *pair, mode=inco.mode, ratio=ratio, rejected_ratio=rejected_ratio,
                                 prefix_len=prefix, rejected_prefix_len=rejected_prefix, prompt_index=i))
    return rows, counts


def synthesise(run: Run) -> Path:
    """Write `<run>/data/pairs.parquet` (and its shards), sampling on the run's pool; finished shards are not
    redone."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rayalign.evaluation import make_scorer
    from rayalign.files import atomic_write, atomic_write_text
    from rayalign.monitoring import record_pairs

    cfg, data_dir = run.cfg, run.dir / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    task = run.task(cfg.inco.task)
    prompts = task.prompts("train", cfg.inco.num_prompts, cfg.inco.seed)
    rng = random.Random(cfg.inco.seed)
    # on-policy sampling needs no strong responses, so a task without a writer can use it
    offs = [task.strong_response(p, rng) if cfg.inco.mode != "on_policy" else "" for p in prompts]
    shards = [list(range(i, min(i + cfg.inco.shard_size, len(prompts))))
              for i in range(0, len(prompts), cfg.inco.shard_size)]
    todo = [(k, idx) for k, idx in enumerate(shards) if not (data_dir / f"shard_{k:04d}.parquet").is_file()]
    if todo:
        pool, score = run.pools.serving(cfg.model.name), make_scorer(cfg.inco.scorer, task)
        for k, indices in todo:
            rows, counts = _shard_rows(cfg, prompts, offs, indices, pool, run.tokenizer, score)
            atomic_write_text(data_dir / f"shard_{k:04d}.json", json.dumps(counts))
            write_pairs(rows, data_dir / f"shard_{k:04d}.parquet", _inco_columns())  # done once it exists
            record_pairs(len(rows), run=cfg.name)
            print(f"rayalign: synthesis shard {k + 1}/{len(shards)}: {len(rows)} pairs", flush=True)
    table = pa.concat_tables([pq.read_table(data_dir / f"shard_{k:04d}.parquet") for k in range(len(shards))])
    return atomic_write(data_dir / "pairs.parquet", lambda tmp: pq.write_table(table, tmp))


def synthesis_stats(run_dir: Path) -> dict:
    """Counts over the shards: prompts, samples, pairs, ties skipped."""
    import pyarrow.parquet as pq

    totals: dict = {}
    for path in sorted((run_dir / "data").glob("shard_*.json")):
        for key, value in json.loads(path.read_text()).items():
            totals[key] = totals.get(key, 0) + value
    totals["pairs"] = pq.read_metadata(run_dir / "data" / "pairs.parquet").num_rows
    return totals


def run_inco(run: Run) -> dict:
    """Synthesise, then train (DPO, or sDPO stages when sdpo.stages > 1), on one sampler pool where the trainer fits
    beside it (the run's ending evaluates)."""
    from rayalign.train.driver import run_training

    cfg = run.cfg
    pairs = synthesise(run)
    train_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(pairs)))
    run.pools.make_room(cfg.train)
    if cfg.sdpo.stages > 1:
        from rayalign.data import prepare_data
        from rayalign.pipelines.sdpo import run_stages

        train = run_stages(train_cfg, prepare_data(train_cfg.data, run.tokenizer), run.tokenizer)
    else:
        train = run_training(train_cfg)
    return {"synthesis": synthesis_stats(run.dir), "train": train}
