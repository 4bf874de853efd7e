"""sDPO: the easy-to-hard split, T = 1 equals DPO, stage references, and resuming inside stage 2."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rayalign import cli, config
from rayalign.data import fingerprint, prepare_data
from rayalign.errors import ConfigError
from rayalign.models import PLAIN, cache_root, load_tokenizer
from rayalign.pipelines.sdpo import chunk_counts, pair_margins, response_logps, run_stages, split_chunks, stage_steps
from rayalign.tracking import read_metrics
from rayalign.train import reference as ref_lib
from rayalign.train.driver import run_training
from tests.conftest import QUICKSTART_DATA


def test_easy_to_hard_orders_chunks_by_accuracy_and_covers_every_pair_once():
    margins = [0.5, -1.0, 2.0, -0.2, 0.1, -3.0]  # easiest first: 2, 0, 4, 3, 1, 5
    chunks, accuracy = split_chunks(margins, 2, "easy_to_hard")
    assert chunks == [[0, 2, 4], [1, 3, 5]] and accuracy == [1.0, 0.0]
    chunks, accuracy = split_chunks(margins, 3, "easy_to_hard", sizes=[1, 1, 2])
    assert chunks == [[2], [0], [1, 3, 4, 5]] and accuracy == [1.0, 1.0, 0.25]
    assert sorted(i for chunk in chunks for i in chunk) == list(range(6))


def test_random_and_by_source_splits():
    margins = [0.5, -1.0, 2.0, -0.2, 0.1, -3.0]
    random_chunks, accuracy = split_chunks(margins, 2, "random", seed=1)
    assert sorted(i for c in random_chunks for i in c) == list(range(6)) and list(map(len, random_chunks)) == [3, 3]
    # 3 of the 6 margins are positive: whatever the shuffle, the two chunks' accuracies share those 3 pairs
    assert sum(a * len(c) for a, c in zip(accuracy, random_chunks)) == pytest.approx(3)
    assert random_chunks == split_chunks(margins, 2, "random", seed=1)[0]
    sources = ["a", "b", "a", "b", "b", "a"]  # a: accuracy 2/3, b: 1/3
    by_source, accuracy = split_chunks(margins, 2, "by_source", sources=sources)
    assert by_source == [[0, 2, 5], [1, 3, 4]] and accuracy == [pytest.approx(2 / 3), pytest.approx(1 / 3)]
    assert chunk_counts(10, 3, [0.2, 0.3, 0.5]) == [2, 3, 5] and chunk_counts(7, 2, None) == [3, 4]
    with pytest.raises(ConfigError, match="set sdpo.stages=2"):
        split_chunks(margins, 3, "by_source", sources=sources)


def test_stages_share_the_steps_plain_dpo_would_train():
    """86 pairs, 1.5 epochs of batch 4: plain DPO trains ceil(1.5 * 21) = 32 steps; two chunks of 43 share them
    16 + 16 (each stage cutting its own batches would train 15 + 15)."""
    assert stage_steps(32, [43, 43]) == [16, 16]
    assert stage_steps(32, [20, 66]) == [7, 25]  # 7.44 and 24.56: the larger remainder gets the step
    assert stage_steps(5, [1, 1, 1]) == [2, 2, 1]
    assert stage_steps(2, [1, 50, 1]) == [1, 2, 1]  # every stage trains at least once
    assert sum(stage_steps(32, [17, 25, 44])) == 32


def test_difficulty_measures_by_hand():
    # columns: logp(y_w), logp(y_l), |y_w|, |y_l|. Pair 1: a long chosen response, likelier per token but
    # less likely in all: normalised margin -10/10 - (-4/2) = +1 (easy), unnormalised γ = -10 - (-4) = -6 (hard).
    stats = torch.tensor([[-10.0, -4.0, 10.0, 2.0], [-3.0, -6.0, 3.0, 3.0]])
    assert pair_margins(stats, "normalised_margin") == pytest.approx([1.0, 1.0])
    assert pair_margins(stats, "logp_margin") == pytest.approx([-6.0, 3.0])
    # the paper's γ puts pair 1 in the hard chunk; the normalised margin ties the two (file order kept)
    assert split_chunks(pair_margins(stats, "logp_margin"), 2, "easy_to_hard")[0] == [[1], [0]]
    assert split_chunks(pair_margins(stats, "normalised_margin"), 2, "easy_to_hard")[0] == [[0], [1]]


BASE = ["model.name=tiny-llama", f"data.path={QUICKSTART_DATA}", "data.limit=16", "data.max_length=128",
        "train.batch_size=4", "train.micro_batch_size=4", "train.epochs=1", "train.lr=1e-3", "train.warmup_ratio=0",
        "train.cpus_per_worker=1", "tracking.wandb=disabled", "eval.enabled=false"]


def _prepared(cfg):
    return prepare_data(cfg.data, load_tokenizer(cfg.model.name))


def test_one_stage_is_plain_dpo(tmp_path, ray_local):
    cfg = config.load(None, BASE + [f"output_dir={tmp_path}", "name=sdpo1", "sdpo.stages=1"])
    staged = run_stages(cfg, _prepared(cfg), load_tokenizer(cfg.model.name))
    plain = config.load(None, BASE + [f"output_dir={tmp_path}", "name=dpo"])
    run_training(plain)
    staged_losses = [r["loss"] for r in read_metrics(tmp_path / "sdpo1" / "stage_1")]
    assert len(staged_losses) == 4 and staged["status"] == "ok"
    assert staged_losses == pytest.approx([r["loss"] for r in read_metrics(tmp_path / "dpo")], rel=1e-6)


@pytest.mark.slow  # 45 s: keeps the default suite under 15 min on a fresh clone
def test_stage_two_uses_stage_one_as_reference_and_resumes_inside_stage_two(tmp_path, ray_local):
    overrides = BASE + [f"output_dir={tmp_path}", "name=sdpo2", "sdpo.stages=2", "sdpo.chunk_sizes=[0.25,0.75]",
                        "train.save_every=1"]
    cfg = config.load(None, overrides + ["train.stop_at_step=2"])  # stage 1 has 1 step, stage 2 has 3
    prepared = _prepared(cfg)
    run_dir = tmp_path / "sdpo2"
    stopped = run_stages(cfg, prepared, load_tokenizer(cfg.model.name))
    assert stopped["status"] == "stopped" and [st["steps"] for st in stopped["stages"]] == [1, 2]
    stage1_summary = (run_dir / "stage_1" / "summary.json").read_text()

    finished = run_stages(config.load(None, overrides), prepared, load_tokenizer(cfg.model.name))
    assert finished["status"] == "ok"
    assert finished["wall_time_s"] > 0 and finished["steps"] == 4
    cli._print_train(finished, run_dir)  # what `rayalign run` prints for an sDPO run
    assert (run_dir / "stage_1" / "summary.json").read_text() == stage1_summary, "stage 1 was redone"
    stage2 = read_metrics(run_dir / "stage_2")
    assert [r["step"] for r in stage2] == [1, 2, 3]
    assert stage2[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)  # policy = reference = M_1 at its start

    m1 = finished["stages"][0]["checkpoint"]
    chunk2 = [prepared.pairs[i] for i in json.loads((run_dir / "chunks.json").read_text())["chunks"][1]]
    cached = ref_lib.load_reference(ref_lib.cache_path(cache_root() / "reference", ref_lib.model_fingerprint(m1),
                                                       fingerprint(chunk2), "float32", False))
    live = response_logps(m1, chunk2, load_tokenizer("tiny-llama").pad_token_id, PLAIN)
    assert sorted(cached) == list(range(len(chunk2)))  # stage 2's three steps of four use all twelve pairs
    torch.testing.assert_close(torch.stack([cached[i][0].sum() for i in sorted(cached)]), live[:, 0],
                               atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(torch.stack([cached[i][1].sum() for i in sorted(cached)]), live[:, 1],
                               atol=1e-4, rtol=1e-5)
    gamma = finished["stages"][0]["gamma_ref_next_chunk"]
    assert gamma["before"] is not None and gamma["after"] is not None and gamma["after"] != gamma["before"]
