"""BMC end to end: task editors, gates, the LLM editor against rayalign's own endpoint, marks in every training
path, and the token-weighted loss through real training runs on a tiny model."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import load_file

from rayalign import config
from rayalign.data import collate_pairs, encode_prompt, encode_response, prepare_data
from rayalign.data.tokenize import TokenizedPair
from rayalign.editing import LLMEditor, TaskEditor, clean_edit, edit_messages, gate, indel_distance, words
from rayalign.errors import ConfigError, RayAlignError
from rayalign.losses.bmc import stopword_token_ids, varied_token_marks
from rayalign.models import load_causal_lm, load_tokenizer
from rayalign.tasks import arithmetic, bullets, word_collector
from rayalign.tracking import read_metrics
from rayalign.train.driver import run_training
from tests.conftest import QUICKSTART_DATA, free_port


@pytest.fixture(scope="module")
def tokenizer():
    return load_tokenizer("tiny-llama")


def ids(text: str) -> list[int]:
    return list(map(ord, text))  # characters as token ids, for hand-checkable distances


# ---------------------------------------------------------------- distances and gates

@pytest.mark.parametrize("a, b, distance", [("abc", "abd", 2), ("", "ab", 2), ("kitten", "sitting", 5),
                                            ("same", "same", 0), ("ab", "ba", 2)])
def test_indel_distance_by_hand(a, b, distance):
    assert indel_distance(ids(a), ids(b)) == distance == indel_distance(ids(b), ids(a))


@pytest.mark.parametrize("edit, gains, reason", [
    (None, None, "malformed"),
    ("", None, "empty"),
    ("try it", None, "unchanged"),
    ("try it!!", None, "not_closer"),           # moved away from "try this one"
    ("try this one", None, "not_targeted"),     # a copy of the winner
    ("try thi it", 0.0, "no_gain"),             # closer and targeted, but the gold reward did not rise
    ("try thi it", 1.0, None),
    ("try thi it", None, None),                 # no gold reward: the distance gates alone
])
def test_gate_rejects_each_kind_of_bad_edit(edit, gains, reason):
    chosen, rejected = ids("try this one"), ids("try it")
    assert gate(chosen, rejected, None if edit is None else ids(edit), gains) == reason


def test_the_word_gate_compares_words_not_spelling():
    """By words, "DATA!!! try it." is "data try it": 1 from "data try it now" where "try it" is 2, and 1 from
    "try it" where the winner is 2. By characters it is 16 from the winner where "try it" is 9 (the capitals and
    punctuation), so a gate on those units calls it not closer."""
    chosen, rejected, edit = "data try it now", "try it", "DATA!!! try it."
    assert words(edit) == ["data", "try", "it"]
    assert gate(words(chosen), words(rejected), words(edit)) is None
    assert indel_distance(ids(edit), ids(chosen)) == 16 and indel_distance(ids(rejected), ids(chosen)) == 9
    assert gate(ids(chosen), ids(rejected), ids(edit)) == "not_closer"


def test_most_of_the_main_jobs_pairs_are_bridged_at_word_level():
    """The issue's gate: on the main job's 86 pairs the token gate passed 39 edits (46 not_closer: spliced words
    tokenise apart); the word gate must bridge most of them, and every edit it passes raises the gold reward."""
    from rayalign.pipelines.bmc import bridge

    task, passed = word_collector.TASK, {}
    for unit in ("tokens", "words"):
        cfg = config.load("jobs/bmc.yaml", ["data.path=jobs/data/word_collector_pairs.jsonl",
                                            f"bmc.closeness={unit}"])
        tokenizer = load_tokenizer(cfg.model.name)
        prepared = prepare_data(cfg.data, tokenizer, keep_text=True)
        rows, counts = bridge(cfg, prepared, tokenizer, TaskEditor(task), task)
        passed[unit] = [row for row in rows if row["edit_status"] == "accepted"]
        assert counts["pairs_in"] == 86
    assert len(passed["words"]) > 86 / 2 > len(passed["tokens"])
    assert all(task.gold_reward(r["prompt"], r["chosen"]) > task.gold_reward(r["prompt"], r["rejected"])
               for r in passed["words"])


def test_clean_edit_refuses_an_answer_that_echoes_the_request():
    prompt, chosen, rejected = "Name a colour.", "Blue.", "Car."
    body = edit_messages(prompt, chosen, rejected)[1]["content"]
    assert clean_edit(body) is None and clean_edit(None) is None
    assert clean_edit("  Red.\n") == "Red."


# ---------------------------------------------------------------- task editors

def _check_task_edit(task, prompt, chosen, rejected, tokenizer):
    edit = task.editor(prompt, chosen, rejected)
    assert task.gold_reward(prompt, edit) > task.gold_reward(prompt, rejected), edit
    c, r, e = (encode_response(text, tokenizer) for text in (chosen, rejected, edit))
    assert indel_distance(e, r) < indel_distance(c, r), "not a targeted edit of the loser"
    assert indel_distance(e, c) < indel_distance(r, c), "did not move toward the winner"
    assert gate(c, r, e, task.gold_reward(prompt, edit) - task.gold_reward(prompt, rejected)) is None
    return edit


def test_word_collector_editor_splices_the_winners_target_words(tokenizer):
    chosen = "Happy to help! First, try it slowly. Ensure your plan is safe."
    rejected = "Just try it.\nIt will  work out."
    edit = _check_task_edit(word_collector.TASK, "Any tip?", chosen, rejected, tokenizer)
    # the loser's words and whitespace stay; the target words it lacked come in the winner's spelling, each after
    # the stretch of the loser that the word diff lines up with the winner's stretch holding it ("try it" matches)
    assert edit == "Just Happy help First try it.\nIt will  work out. Ensure your safe"
    assert word_collector.gold_reward(edit) == 6.0  # happy help first ensure your safe


def test_math_editor_fixes_the_first_wrong_step(tokenizer):
    prompt = arithmetic.TASK.render("(3 + (4 * 2)) - 5", None)
    chosen = "(3 + (4 * 2)) - 5\n(3 + 8) - 5\n11 - 5\n7"
    rejected = "(3 + (4 * 2)) - 5\n(3 + 9) - 5\n12 - 5\n7"
    assert _check_task_edit(arithmetic.TASK, prompt, chosen, rejected, tokenizer) == (
        "(3 + (4 * 2)) - 5\n(3 + 8) - 5\n12 - 5\n7")
    short = "(3 + (4 * 2)) - 5\n(3 + 8) - 5"  # stopped early: the winner's next step is added
    assert _check_task_edit(arithmetic.TASK, prompt, chosen, short, tokenizer) == short + "\n11 - 5"


def test_bullets_editor_reshapes_the_losers_points(tokenizer):
    chosen = "• Start small\n• Ask a friend\n• Write it down"
    rejected = "Sure! Here is what helps.\n1. Go slowly.\n2. Rest often."
    edit = _check_task_edit(bullets.TASK, "Tips for running, in 3 bullets.", chosen, rejected, tokenizer)
    assert edit == "• Go slowly.\n• Rest often.\n• Sure!"
    assert bullets.gold_reward("", edit) == 1.0


def test_a_task_without_an_editor_is_refused_with_the_fix():
    from rayalign.tasks.registry import make_task

    with pytest.raises(ConfigError, match="bmc.editor=llm"):
        TaskEditor(make_task("plain", ["a?"], lambda p, r: 0.0))


# ---------------------------------------------------------------- marks

def test_marks_on_a_hand_made_pair_align_with_the_labels_after_the_chat_template(tokenizer):
    prompt = encode_prompt([{"role": "user", "content": "Give me a tip."}], tokenizer)
    chosen = encode_response("Cook the rice slowly and add salt", tokenizer)
    rejected = encode_response("Cook the pasta very slowly", tokenizer)
    marks = varied_token_marks(chosen, rejected, stopword_token_ids(tokenizer))
    pair = TokenizedPair(prompt, chosen, rejected, *marks)
    batch = collate_pairs([pair], tokenizer.pad_token_id)
    scored = batch["targets"].split(batch["lengths"].tolist())  # response layout: row 0 chosen, row 1 rejected
    words = [tokenizer.decode(scored[row][batch["marks"][row][:len(scored[row])]]).split() for row in (0, 1)]
    # replace "pasta" -> "rice"; delete "very" (a stopword: never marked); insert "and add salt" ("and" is one too)
    assert words == [["rice", "add", "salt"], ["pasta"]]
    rejected = encode_response("Cook the pasta gently slowly", tokenizer)  # a deleted content word is marked
    pair = TokenizedPair(prompt, chosen, rejected, *varied_token_marks(chosen, rejected, stopword_token_ids(tokenizer)))
    batch = collate_pairs([pair], tokenizer.pad_token_id)
    rejected_scored = batch["targets"][len(chosen):]
    assert tokenizer.decode(rejected_scored[batch["marks"][1][:len(rejected_scored)]]).split() == ["pasta", "gently"]
    assert not (batch["marks"] & ~batch["response_mask"]).any(), "a mark outside the response"


def test_the_bmc_default_is_the_papers_beta():
    assert config.LossConfig(name="bmc").beta == 0.01 and config.LossConfig(name="bmc").bmc_delta == 2.0
    assert config.LossConfig(name="simpo").beta == 2.0 and config.LossConfig(name="dpo").beta == 0.1
    assert config.load(None, ["loss.name=bmc", "loss.beta=0.05"]).loss.beta == 0.05


TINY_INCO = ["model.name=tiny-llama", "inco.num_prompts=8", "inco.shard_size=8", "inco.ratio=0.5",
             "inco.include_off_policy=true", "sampling.samples=2", "sampling.max_new_tokens=8", "data.max_length=160",
             "train.batch_size=2", "train.micro_batch_size=2", "train.max_steps=2", "train.cpus_per_worker=1",
             "loss.name=bmc", "eval.enabled=false", "tracking.wandb=disabled"]


def _marked_tokens(run_dir) -> list[float]:
    return [row["marked_tokens"] for row in read_metrics(run_dir)]


@pytest.mark.slow  # 60 s: an inco and an sdpo job; keeps the default suite under 15 min on 2 cores
def test_bmc_gets_its_marks_in_inco_and_sdpo_jobs(tmp_path, ray_local):
    """Every training path marks the varied tokens: a path that dropped them would train plain DPO silently."""
    from rayalign.pipelines import run_pipeline

    run_pipeline(config.load(None, TINY_INCO + ["pipeline=inco", f"output_dir={tmp_path}", "name=inco"]))
    sdpo = ["model.name=tiny-llama", "pipeline=sdpo", f"data.path={QUICKSTART_DATA}", "data.limit=8",
            "data.max_length=128", "sdpo.stages=2", "train.batch_size=2", "train.micro_batch_size=2",
            "train.cpus_per_worker=1", "loss.name=bmc", "eval.enabled=false", "tracking.wandb=disabled"]
    run_pipeline(config.load(None, sdpo + [f"output_dir={tmp_path}", "name=sdpo"]))
    for run_dir in (tmp_path / "inco", tmp_path / "sdpo" / "stage_1", tmp_path / "sdpo" / "stage_2"):
        marked = _marked_tokens(run_dir)
        assert marked and min(marked) > 0, run_dir


# ---------------------------------------------------------------- the loss through real training

BMC_TRAIN = ["model.name=tiny-llama", f"data.path={QUICKSTART_DATA}", "data.limit=16", "data.max_length=128",
             "train.batch_size=4", "train.micro_batch_size=4", "train.max_steps=4", "train.lr=1e-3",
             "train.warmup_ratio=0.0", "train.cpus_per_worker=1", "train.seed=5", "loss.beta=0.1",
             "tracking.wandb=disabled", "train.num_workers=0"]  # Ray Train's local mode: the loss is under test


@pytest.fixture(scope="module")
def bmc_runs(tmp_path_factory, ray_local):
    root = tmp_path_factory.mktemp("bmc_runs")

    def train(name, *overrides):
        cfg = config.load(None, BMC_TRAIN + [f"output_dir={root}", f"name={name}", *overrides])
        return run_training(cfg), read_metrics(cfg.run_dir)

    return {"cached": train("cached", "loss.name=bmc"),
            "live": train("live", "loss.name=bmc", "train.reference_cache=false"),
            "unit_weights": train("unit", "loss.name=bmc", "loss.bmc_delta=0"),
            "dpo": train("dpo", "loss.name=dpo")}


def _losses(rows):
    return [row["loss"] for row in rows]


def test_bmc_cached_and_live_reference_give_the_same_curve(bmc_runs):
    cached, live = _losses(bmc_runs["cached"][1]), _losses(bmc_runs["live"][1])
    assert len(cached) == 4 and cached == pytest.approx(live, rel=1e-5)
    assert min(_marked_tokens_of(bmc_runs["cached"][1])) > 0


def _marked_tokens_of(rows):
    return [row["marked_tokens"] for row in rows]


def test_bmc_with_unit_weights_is_dpo(bmc_runs):
    """δ = 0 makes every weight 1 + m·min(1/p, 0) = 1: the weighted sums are the plain ones, so the curve is DPO's;
    with δ = 2 it is not (the marks change the loss)."""
    unit, dpo, bmc = (_losses(bmc_runs[k][1]) for k in ("unit_weights", "dpo", "cached"))
    assert unit == pytest.approx(dpo, rel=1e-5)
    assert bmc[1:] != pytest.approx(dpo[1:], rel=1e-3)


def test_bmc_training_changes_every_parameter(bmc_runs):
    trained = load_file(f"{bmc_runs['cached'][0]['checkpoint']}/model.safetensors")
    start = load_causal_lm("tiny-llama", "float32").state_dict()
    unchanged = [name for name, value in trained.items() if torch.equal(value, start[name])]
    assert not unchanged, unchanged


# ---------------------------------------------------------------- the LLM editor on rayalign's own endpoint

ITEMS = [("Name a colour.", "Blue is a calm colour.", "Car."), ("Say hi.", "Hello there, friend!", "Bye.")]


def test_llm_editor_edits_caches_and_names_a_dead_endpoint(tmp_path, ray_local):
    from ray import serve

    from rayalign.llm_client import LLMClient
    from rayalign.sampling.serve import start_server

    url = start_server("tiny-llama", port=free_port(), name="editor-test", num_cpus=1)
    try:
        first = LLMEditor(LLMClient(base_url=url, model="tiny-llama", max_retries=0), tmp_path, max_tokens=8)
        edits = first.edit(ITEMS)
    finally:
        serve.shutdown()  # its proxy too: later tests start Serve on ports of their own
    assert first.requests == 2 and all(isinstance(edit, str) for edit in edits)
    assert len(list(tmp_path.glob("*.json"))) == 2

    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there now
    again = LLMEditor(LLMClient(base_url=dead, model="tiny-llama", max_retries=0), tmp_path, max_tokens=8)
    assert again.edit(ITEMS) == edits and (again.requests, again.cached) == (0, 2), "cached edits asked for again"
    uncached = LLMEditor(LLMClient(base_url=dead, model="tiny-llama", max_retries=0), None, max_tokens=8)
    with pytest.raises(RayAlignError, match=rf"could not reach the LLM endpoint {dead}.*bmc.llm_base_url") as error:
        uncached.edit(ITEMS[:1])
    assert "\n" not in str(error.value)


# ---------------------------------------------------------------- the pipeline

@pytest.mark.slow  # 40 s: a BMC pipeline run twice; keeps the default suite under 15 min on 2 cores
def test_pipeline_trains_on_the_edits_and_reruns_without_editing_again(tmp_path, ray_local, tokenizer):
    from rayalign.pipelines import run_pipeline

    cfg = config.load(None, TINY_INCO + ["pipeline=bmc", f"output_dir={tmp_path}", "name=bmc", "eval.enabled=true",
                                         "eval.num_prompts=4", "eval.samples=1", "eval.max_new_tokens=6"])
    summary = run_pipeline(cfg)
    run_dir = tmp_path / "bmc"
    for name in ("config.yaml", "metrics.jsonl", "summary.json", "report.json", "data/bridged.parquet",
                 "data/bridging.json", "data/pairs.parquet"):
        assert (run_dir / name).is_file(), name
    counts = summary["bridging"]
    assert counts["pairs_in"] == counts["pairs_out"] == sum(counts["outcomes"].values()) > 0
    assert counts["accepted"] > 0
    source = pq.read_table(run_dir / "data" / "pairs.parquet").to_pylist()
    bridged = pq.read_table(run_dir / "data" / "bridged.parquet").to_pylist()
    for before, row in zip(source, bridged):
        assert row["rejected_ids"] == before["rejected_ids"], "the loser must train on the ids that were sampled"
        assert row["original_chosen"] == before["chosen"]
        if row["edit_status"] == "accepted":
            assert row["chosen"] == word_collector.bridge(before["prompt"], before["chosen"], before["rejected"])
            ends = [tokenizer.eos_token_id] if before["rejected_finish"] == "stop" else []  # as the loser ended
            assert row["chosen_ids"] == tokenizer.encode(row["chosen"], add_special_tokens=False) + ends
            assert row["chosen_score"] > row["rejected_score"] and row["marked_after"] < row["marked_before"]
        else:
            assert row["chosen_ids"] == before["chosen_ids"]
    stamp = (run_dir / "data" / "bridged.parquet").stat().st_mtime_ns
    run_pipeline(cfg)
    assert (run_dir / "data" / "bridged.parquet").stat().st_mtime_ns == stamp, "the edits were made again"
    assert json.loads((run_dir / "summary.json").read_text())["bridging"] == counts


def test_task_editor_on_a_users_file_needs_the_task(tmp_path):
    from rayalign.pipelines import run_pipeline

    cfg = config.load(None, ["pipeline=bmc", "model.name=tiny-llama", f"data.path={QUICKSTART_DATA}",
                             f"output_dir={tmp_path}"])
    with pytest.raises(ConfigError, match="set bmc.task, or use bmc.editor=llm"):
        run_pipeline(cfg)


@pytest.mark.slow  # a Serve endpoint, synthesis and a training run: about a minute on 2 cores
def test_llm_editor_pipeline_starts_its_own_endpoint_and_counts_every_outcome(tmp_path, ray_local, monkeypatch):
    """bmc.editor=llm with no URL: the pipeline serves the policy as the editor on 127.0.0.1, asks it once per pair,
    gates and counts every answer, trains, and takes the endpoint down again."""
    from ray import serve

    from rayalign.pipelines import run_pipeline

    monkeypatch.delenv("RAYALIGN_LLM_BASE_URL", raising=False)
    cfg = config.load(None, TINY_INCO + ["pipeline=bmc", f"output_dir={tmp_path}", "name=llm", "bmc.editor=llm",
                                         f"bmc.llm_port={free_port()}", "bmc.max_new_tokens=8",
                                         "train.max_steps=1"])
    serve.shutdown()  # a proxy left on another port by an earlier test would serve the editor there
    try:
        counts = run_pipeline(cfg)["bridging"]
        assert "llm-editor" not in serve.status().applications
    finally:
        serve.shutdown()
    assert counts["llm_requests"] + counts["llm_cached"] == counts["pairs_in"] > 0  # cached by an earlier test run
    assert sum(counts["outcomes"].values()) == counts["pairs_out"] == counts["pairs_in"]  # on_rejected=keep
