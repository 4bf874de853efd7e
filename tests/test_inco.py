"""InCo-DPO: prefix arithmetic, pair selection, and the pipeline end to end on a tiny model."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest

from rayalign import config
from rayalign.pipelines.inco import prefix_length, run_inco, select_pair, synthesise
from rayalign.sampling.base import SamplingParams
from rayalign.sampling.hf import HFSampler


@pytest.mark.parametrize("tokens, ratio, expected", [
    (10, 0.0, 0), (10, 1.0, 10), (10, 0.3, 3), (10, 0.25, 2), (7, 0.5, 4), (0, 0.5, 0), (3, 0.99, 3),
])
def test_prefix_length_is_round_of_ratio_times_tokens(tokens, ratio, expected):
    assert prefix_length(tokens, ratio) == expected  # round half to even: 2.5 -> 2, 3.5 -> 4


def test_prefixes_are_cut_on_token_boundaries_and_kept_by_the_sampler():
    sampler = HFSampler("tiny-llama")
    off = sampler.tokenizer.encode("First, ensure your data is safe; however, include two examples.",
                                   add_special_tokens=False)
    prefix = off[:prefix_length(len(off), 0.5)]
    prompt = sampler.tokenizer.encode("Give me a tip.", add_special_tokens=False)
    [[completion]] = sampler.generate([prompt], SamplingParams(max_new_tokens=4, seed=0), [prefix])
    assert completion.token_ids[:len(prefix)] == prefix and completion.prefix_len == len(prefix)
    assert completion.text.startswith(sampler.tokenizer.decode(prefix))


def test_select_pair_takes_best_and_worst_and_skips_ties():
    assert select_pair([("a", 1.0), ("b", 3.0), ("c", 2.0)]) == (("b", 3.0), ("a", 1.0))
    assert select_pair([("a", 2.0), ("b", 2.0)]) is None
    assert select_pair([("only", 5.0)]) is None


TINY = ["model.name=tiny-llama", "pipeline=inco", "inco.num_prompts=8", "inco.shard_size=4", "inco.ratio=0.5",
        "inco.include_off_policy=true", "sampling.samples=2", "sampling.max_new_tokens=6", "data.max_length=160",
        "train.batch_size=2", "train.micro_batch_size=2", "train.max_steps=2", "train.cpus_per_worker=1",
        "eval.num_prompts=4", "eval.samples=1", "eval.max_new_tokens=6", "tracking.wandb=offline"]


def test_pipeline_writes_every_file_and_reruns_without_synthesising_again(tmp_path, ray_local):
    cfg = config.load(None, TINY + [f"output_dir={tmp_path}", "name=inco_tiny"])
    summary = run_inco(cfg)
    run_dir = tmp_path / "inco_tiny"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "report.json", "report.png", "data/pairs.parquet"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "checkpoints").glob("step_*/model.safetensors"))
    pairs = pq.read_table(run_dir / "data" / "pairs.parquet").to_pylist()
    synthesis = summary["synthesis"]
    assert synthesis["prompts"] == 8 and synthesis["pairs"] == len(pairs) == 8 - synthesis["ties_skipped"]
    assert all(p["chosen_score"] > p["rejected_score"] and p["ratio"] == 0.5 for p in pairs)
    assert all(p["prefix_len"] > 0 for p in pairs)
    assert json.loads((run_dir / "report.json").read_text())["win_rate"]["prompts"] == 4

    shards = sorted((run_dir / "data").glob("shard_*.parquet"))
    stamps = {p: p.stat().st_mtime_ns for p in shards}
    (run_dir / "data" / "shard_0001.parquet").unlink()  # as if stopped during the second shard
    synthesise(cfg, run_dir)
    assert shards[0].stat().st_mtime_ns == stamps[shards[0]], "a finished shard was synthesised again"
    assert (run_dir / "data" / "shard_0001.parquet").is_file()
    assert pq.read_table(run_dir / "data" / "pairs.parquet").num_rows == len(pairs)
