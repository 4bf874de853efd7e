"""rayalign.bench: one real rayalign-vs-naive run on tiny-llama (two spawned processes, ~30 s on 2 cores)."""

from __future__ import annotations

import json
import math
import os
import statistics

import pytest

from rayalign.bench import run_bench
from rayalign.errors import RayAlignError
from rayalign.memory import memory_mib
from tests.conftest import REPO

# tiny-llama has SmolLM2's 49k vocabulary, so the logits dominate its memory. At 2 pairs x 64
# tokens they are 50 MB, lost in the ~200 MB the allocator and autograd add to any first step;
# at 2 x 256 the naive step's full logits (200 MB, plus their log-softmax and gradients) stand
# clearly above one checkpointed 512-token slice (measured: ~680 vs ~470 MiB, ratio ~0.7).
BATCH, SEQ_LEN, STEPS = 2, 256, 2
VARIANT_FIGURES = ("median_step_s", "warmup_step_s", "tokens_per_s", "peak_rss_mib", "rss_after_load_mib",
                   "step_peak_increase_mib", "torch_threads")


@pytest.fixture(scope="module")
def result():
    return run_bench("tiny-llama", steps=STEPS, batch=BATCH, seq_len=SEQ_LEN)


def _positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def test_structure_and_figures(result):
    assert result["model"] == "tiny-llama"
    assert (result["batch_pairs"], result["seq_len"], result["steps"]) == (BATCH, SEQ_LEN, STEPS)
    assert result["tokens_per_step"] == 2 * BATCH * SEQ_LEN
    assert result["vocab_size"] == 49152
    assert _positive(result["params"]) and _positive(result["torch_threads"])
    assert set(result["variants"]) == {"rayalign", "naive"}
    for name, variant in result["variants"].items():
        for key in VARIANT_FIGURES:
            assert _positive(variant[key]), (name, key, variant[key])
        assert len(variant["step_times_s"]) == STEPS and all(map(_positive, variant["step_times_s"]))
        assert variant["median_step_s"] == pytest.approx(statistics.median(variant["step_times_s"]))
        assert variant["tokens_per_s"] == pytest.approx(2 * BATCH * SEQ_LEN / statistics.median(variant["step_times_s"]))
        assert variant["peak_rss_mib"] >= variant["rss_after_load_mib"] + variant["step_peak_increase_mib"] - 1
        assert math.isfinite(variant["final_loss"])
    assert set(result["ratios"]) == {"tokens_per_s_rayalign_over_naive", "step_peak_mem_rayalign_over_naive"}
    assert all(map(_positive, result["ratios"].values()))
    json.dumps(result)  # the CLI prints it as JSON


def test_same_step_in_both_variants(result):
    """Same seed, data and loss: the two log-prob paths agree, so the losses do too."""
    ours, naive = result["variants"]["rayalign"], result["variants"]["naive"]
    assert ours["final_loss"] == pytest.approx(naive["final_loss"], rel=1e-3)


def test_naive_step_needs_more_memory(result):
    ours = result["variants"]["rayalign"]["step_peak_increase_mib"]
    naive = result["variants"]["naive"]["step_peak_increase_mib"]
    assert naive > 1.2 * ours, (ours, naive)
    assert result["ratios"]["step_peak_mem_rayalign_over_naive"] < 1 / 1.2


def test_memory_reading_follows_what_the_process_touches():
    """200 MiB written by this process shows in its resident memory and its peak, and leaves the peak when freed."""
    from rayalign.memory import reset_peak

    before, _ = memory_mib()
    block = bytearray(200 * 2**20)
    block[::4096] = b"x" * len(block[::4096])  # touch every page
    during, peak = memory_mib()
    assert 190 < during - before < 260 and peak >= during - 5  # the kernel's counters lag by a few pages
    del block
    after, peak_after = memory_mib()
    assert after < during - 150 and peak_after >= during - 5  # freed, but the high-water mark remembers it
    if reset_peak():
        assert memory_mib()[1] < during - 150


def test_bad_arguments_are_user_errors():
    with pytest.raises(RayAlignError, match="steps >= 1"):
        run_bench("tiny-llama", steps=0, batch=2, seq_len=64)


def test_serve_bench_percentiles_by_hand():
    from rayalign.serve_bench import percentile

    values = [5.0, 1.0, 4.0, 2.0, 3.0]
    assert percentile(values, 50) == 3.0 and percentile(values, 0) == 1.0 and percentile(values, 100) == 5.0
    assert percentile(values, 99) == pytest.approx(4.96)  # rank 0.99·4 = 3.96: 4 + 0.96·(5 − 4)
    assert percentile([7.0], 99) == 7.0


# ---------------------------------------------------------------- bench --peer trl

_ALLOCATE = ("import sys, time; block = bytearray({mb} * 2**20); block[::4096] = b'x' * len(block[::4096]); "
             "time.sleep({sleep})")


def test_peer_measurement_counts_the_whole_process_tree(tmp_path):
    """A parent holding 100 MiB starts a child holding 250 MiB: the tree's peak has both, the largest process one."""
    import sys

    from rayalign.peer_bench import run_measured

    child = _ALLOCATE.format(mb=250, sleep=1.5)
    parent = (f"import subprocess, sys; {_ALLOCATE.format(mb=100, sleep=0)}; "
              f"subprocess.run([sys.executable, '-c', {child!r}], check=True)")
    run = run_measured([sys.executable, "-c", parent], dict(__import__("os").environ), tmp_path / "log")
    assert run["exit_code"] == 0 and run["seconds"] >= 1.5
    assert 350 <= run["peak_pss_mib"] < 600, run
    assert 250 <= run["largest_process_peak_mib"] < 400 and run["processes_at_peak"] == 2, run


def test_peer_bench_bad_arguments_are_user_errors():
    from rayalign.peer_bench import run_peer_bench

    with pytest.raises(RayAlignError, match="one peer is trl"):
        run_peer_bench("axolotl", "tiny-llama", 8, 2, 4, 1, gpu=False)
    with pytest.raises(RayAlignError, match="batch <= pairs"):
        run_peer_bench("trl", "tiny-llama", 2, 2, 4, 1, gpu=False)
    for workers in (2, "2", "many"):
        with pytest.raises(RayAlignError, match="--workers auto, 0 or 1"):
            run_peer_bench("trl", "tiny-llama", 8, 2, 4, 1, gpu=False, workers=workers)


@pytest.mark.slow  # a TRL run and a rayalign run, each a fresh process: about 2 minutes
def test_peer_bench_runs_the_same_job_through_both():
    from rayalign.peer_bench import run_peer_bench, summary_lines

    result = run_peer_bench("trl", "tiny-llama", pairs=8, steps=2, batch=4, repeats=1, gpu=False, workers=1)
    runs = result["runs"]
    assert runs["trl"][0]["steps"] == runs["rayalign"][0]["steps"] == 2
    for tool in ("trl", "rayalign"):
        assert all(_positive(result["medians"][tool][k]) for k in ("seconds", "tokens_per_s_median", "peak_mib"))
    assert runs["rayalign"][0]["processes_at_peak"] > runs["trl"][0]["processes_at_peak"]  # Ray's own processes
    assert result["ratios"]["whole_process_speedup"] == pytest.approx(
        result["medians"]["trl"]["seconds"] / result["medians"]["rayalign"]["seconds"])
    assert len(summary_lines(result)) == 4


@pytest.mark.slow  # two rounds of the D2PO job on SmolLM2: about 3 minutes on 2 cores
def test_bench_online_splits_each_round_of_the_d2po_job(tmp_path, monkeypatch):
    from rayalign.online_bench import run_online_bench, summary_lines

    monkeypatch.chdir(REPO)
    result = run_online_bench(2, str(tmp_path), ["d2po.prompts_per_round=8", "d2po.window=8"])
    assert [r["round"] for r in result["rounds"]] == [1, 2] and result["mode"] == "local mode"
    second = result["rounds"][1]
    assert second["overhead_s"] == pytest.approx(second["gold_s"] + second["disc_update_s"] + second["train_s"]
                                                 - second["train_steps_s"] + second["weight_sync_s"]
                                                 + second["checkpoint_wait_s"], rel=1e-6)
    assert result["medians_after_round_1"] == {k: v for k, v in second.items() if k != "round"}
    assert "fixed overhead" in summary_lines(result)[1]


def test_bench_data_times_the_same_pairs_three_ways(monkeypatch):
    from rayalign.data_bench import run_data_bench, summary_lines
    from rayalign.files import cache_root

    monkeypatch.chdir(REPO)
    before = os.environ.get("RAYALIGN_CACHE")
    result = run_data_bench("tiny-llama", 300, 1, "jobs/data/word_collector_prefs.jsonl")
    assert result["rows"] == 300 and 0 < result["pairs"] <= 300  # the same count three ways, else it raises
    assert set(result["median_s"]) == {"row_by_row", "prepare_cold", "prepare_cached"}
    assert all(len(times) == 1 and times[0] > 0 for times in result["seconds"].values())
    assert os.environ.get("RAYALIGN_CACHE") == before and cache_root().is_dir()  # the user's cache put back
    assert summary_lines(result)[0].startswith(f"data: {result['pairs']} pairs from 300 rows of jobs/data/")
