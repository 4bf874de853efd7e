"""InCo-DPO: prefix arithmetic, pair selection, and the pipeline end to end on a tiny model."""

from __future__ import annotations

import json
import shutil

import pyarrow.parquet as pq
import pytest

from rayalign import config
from rayalign.data import collate_pairs, encode_prompt, prepare_data
from rayalign.models import load_causal_lm, load_tokenizer, resolve_model
from rayalign.pipelines import Run, run_pipeline
from rayalign.pipelines.inco import prefix_length, select_pair, shard_seed, synthesise
from rayalign.pipelines.pairs import Candidate
from rayalign.sampling.base import SamplingParams
from rayalign.sampling.hf import HFSampler
from rayalign.sampling.pool import pool_from_config
from rayalign.tasks.registry import TASKS, make_task, register_task


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


def _candidates(*scores):
    return [Candidate(f"text {i}", [i], "stop", score) for i, score in enumerate(scores)]


def test_select_pair_takes_best_and_worst_and_skips_ties():
    best, worst = select_pair(_candidates(1.0, 3.0, 2.0))
    assert (best.text, worst.text) == ("text 1", "text 0")
    assert select_pair(_candidates(2.0, 2.0)) is None
    assert select_pair(_candidates(5.0)) is None


def _tiny_model_that_often_stops(root) -> str:
    """tiny-llama whose generation config lists every fifth token id as an end of sequence (as Llama-3 lists
    several): a random 2-layer model then finishes some samples and runs out of tokens on others."""
    from transformers import GenerationConfig

    model_dir = root / "tiny-eos"
    shutil.copytree(resolve_model("tiny-llama"), model_dir)
    tokenizer = load_tokenizer(str(model_dir))
    eos = [tokenizer.eos_token_id] + list(range(5, len(tokenizer), 5))
    GenerationConfig(eos_token_id=eos, bos_token_id=tokenizer.bos_token_id,
                     pad_token_id=tokenizer.pad_token_id).save_pretrained(model_dir)
    return str(model_dir)


@pytest.fixture
def longest_task():
    """A user task whose reward is the response's length, so random text has a best and a worst."""
    prompts = [f"Write something, number {i}." for i in range(16)]
    yield register_task(make_task("longest_test", prompts, lambda prompt, response: float(len(response))))
    TASKS.pop("longest_test")


def test_training_sees_the_sampled_ids_and_eos_only_where_the_sample_ended(tmp_path, ray_local, longest_task):
    model = _tiny_model_that_often_stops(tmp_path)
    cfg = config.load(None, [f"model.name={model}", "pipeline=inco", "inco.task=longest_test", "inco.mode=on_policy",
                             "inco.num_prompts=6", "inco.shard_size=6", "sampling.samples=3",
                             "sampling.max_new_tokens=5", "data.max_length=128", f"output_dir={tmp_path}", "name=ids"])
    with Run(cfg) as run:
        path = synthesise(run)
    rows = pq.read_table(path).to_pylist()
    assert {row[f"{side}_finish"] for row in rows for side in ("chosen", "rejected")} == {"stop", "length"}

    # An independent pool with the same prompts and seed samples the same completions: the pairs hold them exactly.
    tokenizer = load_tokenizer(model)
    train_prompts = longest_task.prompts("train", 6, 0)
    prompt_ids = [encode_prompt([{"role": "user", "content": p}], tokenizer) for p in train_prompts]
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=5, seed=shard_seed(0, 0))
    with pool_from_config(model, cfg.sampling) as pool:
        outputs = pool.generate(prompt_ids, params)
    for row in rows:
        assert row["prompt_ids"] == prompt_ids[row["prompt_index"]]
        sampled = {tuple(c.token_ids): c.finish_reason for c in outputs[row["prompt_index"]]}
        for side in ("chosen", "rejected"):
            assert sampled[tuple(row[f"{side}_ids"])] == row[f"{side}_finish"]

    # ... and a training batch holds those ids unchanged: EOS ends the finished ones, none the truncated.
    eos = set(load_causal_lm(model).generation_config.eos_token_id)
    prepared = prepare_data(cfg.data.__class__(path=str(path), max_length=128), tokenizer)
    batch = collate_pairs(prepared.pairs, tokenizer.pad_token_id)
    scored = batch["targets"].split(batch["lengths"].tolist())  # the tokens whose log-probs train, row by row
    for i, row in enumerate(rows):
        for side, offset in (("chosen", 0), ("rejected", len(rows))):
            trained = scored[offset + i].tolist()
            assert trained == row[f"{side}_ids"]
            assert (trained[-1] in eos) == (row[f"{side}_finish"] == "stop")


def test_several_ratios_share_a_prompts_samples_and_each_pair_names_its_prefixes(tmp_path, ray_local):
    """inco.ratios=[0, 0.5] with 4 samples: two continue nothing, two continue half of y_off; each row says which
    ratio each response came from, and its ids start with exactly that prefix of y_off."""
    import random

    from rayalign.tasks.registry import get_task

    cfg = config.load(None, ["model.name=tiny-llama", "pipeline=inco", "inco.task=word_collector_body",
                             "inco.ratios=[0.0, 0.5]", "inco.num_prompts=6", "inco.shard_size=6", "sampling.samples=4",
                             "sampling.max_new_tokens=4", f"output_dir={tmp_path}", "name=ratios"])
    with Run(cfg) as run:
        path = synthesise(run)
    rows = pq.read_table(path).to_pylist()
    task, tokenizer = get_task("word_collector_body"), load_tokenizer("tiny-llama")
    rng = random.Random(0)
    offs = [tokenizer.encode(task.strong_response(p, rng), add_special_tokens=False)
            for p in task.prompts("train", 6, 0)]
    assert rows and {row["ratio"] for row in rows} | {row["rejected_ratio"] for row in rows} <= {0.0, 0.5}
    assert any(row["ratio"] != row["rejected_ratio"] for row in rows)  # the point: prefixes differ within a pair
    for row in rows:
        off = offs[row["prompt_index"]]
        for side, ratio, prefix in (("chosen", row["ratio"], row["prefix_len"]),
                                    ("rejected", row["rejected_ratio"], row["rejected_prefix_len"])):
            assert prefix == prefix_length(len(off), ratio) and row[f"{side}_ids"][:prefix] == off[:prefix]
    assert json.loads((tmp_path / "ratios" / "data" / "shard_0000.json").read_text())["samples"] == 24


def test_ratios_must_share_the_samples_evenly():
    from rayalign.errors import ConfigError
    from rayalign.preflight import check_job

    cfg = config.load(None, ["pipeline=inco", "inco.ratios=[0.0, 0.25, 0.5]", "sampling.samples=4"])
    with pytest.raises(ConfigError, match="multiple of 3"):
        check_job(cfg)


TINY = ["model.name=tiny-llama", "pipeline=inco", "inco.num_prompts=8", "inco.shard_size=4", "inco.ratio=0.5",
        "inco.include_off_policy=true", "sampling.samples=2", "sampling.max_new_tokens=6", "data.max_length=160",
        "train.batch_size=2", "train.micro_batch_size=2", "train.max_steps=2", "train.cpus_per_worker=1",
        "eval.num_prompts=4", "eval.samples=1", "eval.max_new_tokens=6", "tracking.wandb=offline"]


def test_pipeline_writes_every_file_and_reruns_without_synthesising_again(tmp_path, ray_local):
    cfg = config.load(None, TINY + [f"output_dir={tmp_path}", "name=inco_tiny"])
    summary = run_pipeline(cfg)
    run_dir = tmp_path / "inco_tiny"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "report.json", "report.png", "data/pairs.parquet"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "checkpoints").glob("step_*/model.safetensors"))
    pairs = pq.read_table(run_dir / "data" / "pairs.parquet").to_pylist()
    synthesis = summary["synthesis"]
    assert synthesis["prompts"] == 8 and synthesis["pairs"] == len(pairs) == 8 - synthesis["ties_skipped"]
    assert all(p["chosen_score"] > p["rejected_score"] for p in pairs)
    assert all(p["ratio"] == p["rejected_ratio"] == 0.5 or (p["ratio"] == 1.0 and p["rejected_ratio"] == 0.5)
               for p in pairs)  # a continuation of the half prefix, or y_off itself (ratio 1) chosen over one
    assert all(p["prefix_len"] > 0 for p in pairs)
    assert json.loads((run_dir / "report.json").read_text())["win_rate"]["prompts"] == 4
    assert summary["sampler_pool_starts"] == 1  # the 1-CPU worker fits beside the pool: synthesis's pool evaluates

    shards = sorted((run_dir / "data").glob("shard_*.parquet"))
    stamps = {p: p.stat().st_mtime_ns for p in shards}
    (run_dir / "data" / "shard_0001.parquet").unlink()  # as if stopped during the second shard
    with Run(cfg) as run:
        synthesise(run)
    assert shards[0].stat().st_mtime_ns == stamps[shards[0]], "a finished shard was synthesised again"
    assert (run_dir / "data" / "shard_0001.parquet").is_file()
    assert pq.read_table(run_dir / "data" / "pairs.parquet").num_rows == len(pairs)
