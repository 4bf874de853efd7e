"""D2PO: relabel selection and labels by hand; the pipeline on a tiny model on a real local Ray cluster
(budget, gold over silver, stop and resume equal to an uninterrupted run); weights reaching every sampler."""

from __future__ import annotations

import json
import random

import pytest
import torch

from rayalign import config
from rayalign.files import read_jsonl
from rayalign.pipelines.d2po import plan_round, select_for_gold, silver_accuracy, silver_labels
from rayalign.tasks.registry import TASKS, make_task, register_task


def test_conf_sends_the_smallest_gaps_of_each_window_and_rand_is_seeded():
    gaps = [0.5, 0.1, 0.9, 0.3, 0.2, 0.05, 0.7]  # windows of 3: [0.5, 0.1, 0.9], [0.3, 0.2, 0.05], [0.7]
    assert select_for_gold(gaps, 3, 2, "conf", 10, random.Random(0)) == [1, 0, 5, 4, 6]
    assert select_for_gold(gaps, 3, 2, "conf", 3, random.Random(0)) == [1, 0, 5]  # the budget runs out
    assert select_for_gold(gaps, 3, 2, "conf", 0, random.Random(0)) == []
    rand = select_for_gold(gaps, 3, 1, "rand", 10, random.Random(7))
    assert rand == select_for_gold(gaps, 3, 1, "rand", 10, random.Random(7))
    assert [i // 3 for i in rand] == [0, 1, 2]  # one from each window


def test_gold_labels_override_silver_and_ties_give_no_pair():
    scores = [(0.1, 0.9), (0.8, 0.2), (0.5, 0.5), (0.3, 0.4)]
    # silver: 1, 0, tie, 1; gold overrides pair 0 (sample 0 better) and pair 3 with a gold tie
    assert silver_labels(scores, {0: 0, 3: None}) == [0, 0, None, None]


def test_a_silver_label_needs_a_gap_and_its_accuracy_is_measured_against_the_gold_reward():
    scores = [(0.1, 0.9), (0.8, 0.2), (0.50, 0.55), (0.3, 0.4), (0.0, 1.0)]
    labels = silver_labels(scores, {3: 1}, min_gap=0.1)
    assert labels == [1, 0, None, 1, 1]  # pair 2's gap 0.05 is too close to call; pair 3 is gold's
    # gold rewards: pair 0 agrees (1 > 0), pair 1 disagrees, pair 4 is a gold tie; pair 3 is gold, not silver
    rewards = [(0.0, 1.0), (0.0, 2.0), (5.0, 5.0), (1.0, 0.0), (3.0, 3.0)]
    assert silver_accuracy(labels, {3: 1}, rewards) == {"silver/labels": 3, "silver/accuracy": 0.5,
                                                       "silver/gold_tie_share": 1 / 3}


@pytest.mark.parametrize("steps_per_round", [None, 5])
def test_every_label_is_trained_or_carried_and_the_arms_take_equal_steps(steps_per_round):
    """Eight rounds of the job's shape (batch 4): D2PO labels 23 pairs a round, gold-only 3 (its gold labels alone).
    Each pair is an id; a round trains on `plan_round`'s pairs and carries the rest. No id is ever lost, and with
    d2po.steps_per_round both arms end with 8 x 5 steps (gold-only's first round has less than a batch: its steps
    wait for the second)."""
    extra = [f"d2po.steps_per_round={steps_per_round}"] if steps_per_round else []
    cfg = config.load(None, ["pipeline=d2po", "train.batch_size=4", "train.epochs=1", *extra])
    totals = {}
    for arm, per_round in (("d2po", 23), ("gold_only", 3)):
        carry, owed, trained, steps_taken, new = [], 0, set(), 0, iter(range(10_000))
        for _ in range(8):
            rows = carry + [next(new) for _ in range(per_round)]
            steps, used, owed = plan_round(cfg, len(rows), owed)
            trained |= {rows[i] for i in used}
            carry = [row for i, row in enumerate(rows) if i not in set(used)]
            steps_taken += steps
        assert trained | set(carry) == set(range(8 * per_round)) and not trained & set(carry), arm
        totals[arm] = steps_taken
    if steps_per_round:
        assert totals == {"d2po": 40, "gold_only": 40}
    else:  # one pass over each round's pairs: the arms' steps follow their pair counts
        assert totals["d2po"] == 184 // 4 and totals["gold_only"] == 24 // 4


@pytest.fixture(scope="module")
def longest_task():
    """A learnable task for a random tiny model: the gold reward is the response's length."""
    prompts = [f"Write something, number {i}." for i in range(200)]
    yield register_task(make_task("d2po_longest", prompts, lambda prompt, response: float(len(response))))
    TASKS.pop("d2po_longest")


TINY = ["model.name=tiny-llama", "pipeline=d2po", "d2po.task=d2po_longest", "d2po.rounds=2",
        "d2po.prompts_per_round=8", "d2po.window=4", "d2po.relabels=1", "d2po.gold_budget=3",
        "d2po.disc_max_length=32", "d2po.disc_epochs=2", "sampling.max_new_tokens=6", "sampling.cpus_per_actor=0.5",
        "train.cpus_per_worker=1", "train.batch_size=4", "train.micro_batch_size=4", "train.lr=1e-3",
        "train.warmup_ratio=0", "train.lr_schedule=constant", "data.max_length=128", "eval.enabled=false",
        "tracking.wandb=disabled"]


def _run(root, name: str, *extra):
    import socket

    from rayalign.pipelines import run_pipeline

    with socket.socket() as probe:  # a free port for Serve's HTTP proxy
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return run_pipeline(config.load(None, TINY + [f"output_dir={root}", f"name={name}", f"d2po.http_port={port}",
                                                  *extra]))


def _calls(run_dir) -> list[dict]:
    return read_jsonl(run_dir / "gold_calls.jsonl")


@pytest.fixture(scope="module")
def runs(tmp_path_factory, ray_local, longest_task):
    from ray import serve

    root = tmp_path_factory.mktemp("d2po")
    whole = _run(root, "whole")
    stopped = _run(root, "resumed", "d2po.stop_after_round=1")
    resumed = _run(root, "resumed")
    yield root, whole, stopped, resumed
    serve.shutdown()  # the runs leave Serve up (as on a shared cluster); later tests start their own


@pytest.mark.slow  # three D2PO runs on Ray (Serve, samplers, Train): about 3 minutes together
def test_budget_is_never_exceeded_and_every_gold_call_is_logged_with_its_round(runs):
    root, whole, stopped, resumed = runs
    calls = _calls(root / "whole")
    # 8 pairs in windows of 4, 1 relabel each: 2 in round 1, then the budget (3) leaves 1 for round 2
    assert [c["round"] for c in calls] == [1, 1, 2] and [c["used"] for c in calls] == [1, 2, 3]
    assert whole["gold_used"] == 3 and [r["gold/used"] for r in whole["rounds"]] == [2, 3]
    assert stopped["rounds_done"] == 1 and stopped["gold_used"] == 2
    assert _calls(root / "resumed") == calls and resumed["gold_used"] == 3
    assert stopped["train"]["status"] == "stopped" and whole["train"]["status"] == resumed["train"]["status"] == "ok"


@pytest.mark.slow  # three D2PO runs on Ray (Serve, samplers, Train): about 3 minutes together
def test_a_rounds_clock_adds_up_to_its_wall_time(runs):
    """The phases follow each other, so they sum to the round; the overhead is the round less sampling, scoring and
    the train steps, and the steps are part of training's phase."""
    _, whole, _, _ = runs
    for row in whole["rounds"]:
        phases = [row[f"time/{p}"] for p in ("sample_s", "score_s", "gold_s", "disc_update_s", "train_s",
                                             "weight_sync_s", "checkpoint_wait_s")]
        assert min(phases) >= 0 and sum(phases) == pytest.approx(row["round_s"], rel=1e-9)
        assert 0 < row["time/train_steps_s"] <= row["time/train_s"]
        assert row["time/overhead_s"] == pytest.approx(
            row["round_s"] - row["time/sample_s"] - row["time/score_s"] - row["time/train_steps_s"], rel=1e-9)


@pytest.mark.slow  # three D2PO runs on Ray (Serve, samplers, Train): about 3 minutes together
def test_gold_labels_override_silver_in_the_trained_pairs(runs):
    import pyarrow.parquet as pq

    root, *_ = runs
    rows = pq.read_table(root / "whole" / "rounds" / "round_001" / "pairs.parquet").to_pylist()
    gold_rows = [row for row in rows if row["label"] == "gold"]
    gold_calls = {c["pair"]: c for c in _calls(root / "whole") if c["round"] == 1 and c["label"] is not None}
    assert len(gold_rows) == len(gold_calls) >= 1
    for row in gold_rows:  # the gold-better (longer) response is chosen, whatever the discriminator scored
        gold = gold_calls[row["prompt_index"]]["gold"]
        assert (float(len(row["chosen"])), float(len(row["rejected"]))) == (max(gold), min(gold))


@pytest.mark.slow  # three D2PO runs on Ray (Serve, samplers, Train): about 3 minutes together
def test_a_stopped_run_resumes_at_its_round_and_ends_like_an_uninterrupted_one(runs):
    from rayalign.sampling.hf import read_checkpoint

    root, whole, _, resumed = runs
    assert [r["step"] for r in resumed["rounds"]] == [1, 2]
    for key in ("policy/gold_reward", "train/loss", "disc/accuracy_new_gold"):
        assert [r.get(key) for r in resumed["rounds"]] == pytest.approx([r.get(key) for r in whole["rounds"]]), key
    a, b = read_checkpoint(whole["train"]["checkpoint"]), read_checkpoint(resumed["train"]["checkpoint"])
    for name, value in a.items():
        torch.testing.assert_close(b[name], value, atol=1e-5, rtol=1e-4)
    state = json.loads((root / "resumed" / "d2po_state.json").read_text())
    assert state["rounds_done"] == 2 and state["gold_used"] == 3


@pytest.mark.slow  # three D2PO runs on Ray (Serve, samplers, Train): about 3 minutes together
def test_after_update_weights_every_actor_samples_what_the_trainers_checkpoint_does(runs):
    from rayalign.sampling.base import SamplingParams
    from rayalign.sampling.hf import HFSampler, read_checkpoint
    from rayalign.sampling.pool import SamplerPool

    _, whole, _, _ = runs
    checkpoint = whole["train"]["checkpoint"]
    trained = HFSampler(checkpoint, batch_size=4)
    prompts = [trained.tokenizer.encode(f"Tell me about {i}.") for i in range(6)]
    greedy = SamplingParams(temperature=0, max_new_tokens=6)
    expected = trained.generate(prompts, greedy)
    served: set[int] = set()
    with SamplerPool(model="tiny-llama", num_actors=2, num_cpus=0.5, chunk_size=1, batch_size=4) as pool:
        before = pool.generate(prompts, greedy)
        pool.update_weights(read_checkpoint(checkpoint))  # the state dict, through the object store
        after = pool.generate(prompts, greedy, on_chunk=lambda chunk, actor: served.add(actor))
    assert served == {0, 1}
    assert [row[0].token_ids for row in after] == [row[0].token_ids for row in expected]
    # the same tokens, and the trained model's log-probs of them (not the starting model's)
    for new, old, want in zip(after, before, expected):
        assert new[0].logprobs == pytest.approx(want[0].logprobs, abs=1e-4)
    assert any(new[0].logprobs != pytest.approx(old[0].logprobs, abs=1e-3) for new, old in zip(after, before))


def test_plot_script_counts_the_discriminators_right_answers_on_new_gold_pairs():
    """jobs/d2po_plot.py: per round, accuracy × that round's gold pairs, round 1 (untrained head) left out."""
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location("d2po_plot", Path(__file__).parents[1] / "jobs" / "d2po_plot.py")
    plot = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(plot)
    gold_pairs = [{"round": r} for r in [1, 1, 2, 2, 2, 2, 3, 3]]
    metrics = [{"step": 1, "disc/accuracy_new_gold": 0.5}, {"step": 2, "disc/accuracy_new_gold": 0.75},
               {"step": 3, "disc/accuracy_new_gold": 0.5}, {"step": 4}]  # round 4: no gold pair, no accuracy
    assert plot.accuracy_on_new_gold(metrics, gold_pairs) == (3 + 1, 4 + 2)


GPUS_OF_ONE = """
import sys
import ray
ray.init(num_cpus=4, num_gpus=1, include_dashboard=False, logging_level="WARNING")  # declared, not real
from rayalign.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_samplers_and_trainer_that_cannot_share_the_gpus_stop_in_seconds_with_one_line(tmp_path):
    """On a cluster of one (declared) GPU, a GPU trainer and a GPU sampler each fit alone, but D2PO keeps its
    samplers through training: the run stops before any sampler or service starts, never waiting for a GPU."""
    import subprocess
    import sys
    import time

    job = tmp_path / "job.yaml"
    job.write_text("name: gpus\n")
    began = time.monotonic()
    done = subprocess.run([sys.executable, "-c", GPUS_OF_ONE, "run", str(job), *TINY, f"output_dir={tmp_path}",
                           "train.use_gpu=true", "sampling.gpus_per_actor=1"], capture_output=True, text=True,
                          timeout=300)
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert lines[0].startswith("error: the cluster can never run these at once: 1 for 1 Ray Train worker(s) + 1 for "
                               "1 sampler actor(s) = 2 GPU, and its nodes have 1 GPU in all")
    assert time.monotonic() - began < 120
    assert not (tmp_path / "gpus" / "rounds" / "round_001").exists()


@pytest.mark.slow  # a fourth D2PO run on Ray, its trainer on a Ray actor killed between rounds: about 40 s
def test_a_trainer_killed_between_rounds_is_replaced_and_the_run_ends_as_an_uninterrupted_one(runs, capfd):
    """The trainer's process is SIGKILLed once round 1's state is saved (as the OOM killer would); round 2's
    training finds it gone, a new trainer starts from round 1's checkpoint and redoes it: the run ends with the
    uninterrupted run's losses and gold rewards."""
    import os
    import signal
    import threading
    import time

    import psutil

    root, whole, _, _ = runs
    state_file = root / "killed" / "d2po_state.json"
    killed: list[int] = []

    def kill_after_round_1():
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not killed:
            if state_file.is_file() and json.loads(state_file.read_text())["rounds_done"] == 1:
                for process in psutil.process_iter(["cmdline"]):
                    if (process.info["cmdline"] or [""])[0].startswith("ray::OnlineTrainer"):
                        os.kill(process.pid, signal.SIGKILL)  # Ray names an actor's process after its class
                        killed.append(process.pid)
            time.sleep(0.1)

    watcher = threading.Thread(target=kill_after_round_1, daemon=True)
    watcher.start()
    survived = _run(root, "killed", "train.num_workers=1")
    watcher.join()
    assert len(killed) == 1
    assert "its training starts again from the last round's policy" in capfd.readouterr().out
    assert survived["rounds_done"] == 2 and survived["train"]["status"] == "ok"
    for key in ("policy/gold_reward", "train/loss"):
        assert [r.get(key) for r in survived["rounds"]] == pytest.approx([r.get(key) for r in whole["rounds"]]), key


@pytest.mark.slow  # a D2PO run of two rounds with a warm start on Ray: about 40 s
def test_a_warm_started_head_is_refitted_on_every_gold_pair_so_far(tmp_path, ray_local, longest_task):
    """disc_warm_start: the head is fitted before round 1 on gold-labelled pairs of training prompts no round uses;
    disc_training=head: each round's discriminator is the head refitted on the warm pairs and every gold pair so
    far, which a fit in this process reproduces."""
    from ray import serve

    from rayalign.pipelines.d2po import GOLD_PAIRS, WARM_PAIRS
    from rayalign.scoring.discriminator import Discriminator

    try:
        summary = _run(tmp_path, "warm", "d2po.disc_warm_start=12", "d2po.disc_training=head")
    finally:
        serve.shutdown()
    run_dir = tmp_path / "warm"
    warm, gold = read_jsonl(run_dir / WARM_PAIRS), read_jsonl(run_dir / GOLD_PAIRS)
    round_prompts = set(longest_task.prompts("train", 2 * 8, 0))
    assert warm and not {p["prompt"] for p in warm} & round_prompts  # prompts after the rounds'
    assert all(len(p["chosen"]) > len(p["rejected"]) for p in warm)  # the gold reward: the longer response
    assert summary["rounds_done"] == 2 and gold
    last = max(p["round"] for p in gold)
    served = run_dir / "rounds" / f"round_{last:03d}" / "discriminator"
    refit = Discriminator.load(served)  # its backbone is the one every fit saw: frozen
    refit.fit_head(warm + gold)
    served = Discriminator.load(served)
    torch.testing.assert_close(served.head.weight, refit.head.weight, atol=1e-5, rtol=1e-4)


@pytest.mark.slow  # one D2PO run on Ray with its evaluation: about a minute
def test_a_last_round_with_less_than_a_batch_still_ends_with_a_model_the_evaluation_reads(tmp_path, ray_local,
                                                                                         longest_task):
    """Gold-only spends the whole budget in round 1 (8 pairs: 2 steps), so round 2 has no pair to train on; the
    policy round 1 trained must still come out as a model directory (found when a gold-only run on the word
    collector, its last rounds all gold ties, could not be evaluated)."""
    from ray import serve

    result = _run(tmp_path, "short_end", "d2po.mode=gold_only", "d2po.relabels=4", "d2po.gold_budget=8",
                  "eval.enabled=true", "eval.num_prompts=4", "eval.max_new_tokens=4")
    serve.shutdown()
    assert [r.get("train/steps") for r in result["rounds"]] == [2, None]
    assert (tmp_path / "short_end" / "checkpoints" / "round_002" / "config.json").is_file()
    assert result["eval"]["win_rate"]["prompts"] == 4
