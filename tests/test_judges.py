"""Judges for any prompts: a reward model on Ray Serve (a discriminator checkpoint or an HF sequence classifier) and an
LLM judge through the OpenAI-compatible client, against rayalign's own sampler endpoint on 127.0.0.1."""

from __future__ import annotations

import json

import pytest
import torch

from rayalign.config import JudgeConfig
from rayalign.errors import ConfigError, RayAlignError
from rayalign.judges import LLMJudge, both_orders, verdict
from rayalign.stats import compare_models
from tests.conftest import free_port
from tests.test_discriminator import word_pairs


@pytest.mark.parametrize("answer, expected", [
    ("A", "A"), (" b.", "B"), ("Response A is better", "A"), ("**B**", "B"), ("Tie", "tie"), ("tie.", "tie"),
    ("Absolutely A", None), ("", None), ("C", None), ("AB", None), ("I think A", None)])
def test_the_verdict_is_the_answers_first_word(answer, expected):
    assert verdict(answer) == expected


def test_both_orders_cancel_a_judge_that_favours_a_position():
    assert both_orders("A", "B") == 1.0  # first response preferred in both positions
    assert both_orders("B", "A") == 0.0
    assert both_orders("A", "A") == 0.5  # always the first position: no preference
    assert both_orders("tie", "tie") == 0.5 and both_orders(None, None) == 0.5
    assert both_orders("A", "tie") == 0.75 and both_orders(None, "B") == 0.75


# ---------------------------------------------------------------- a reward model on Ray Serve

@pytest.fixture(scope="module")
def reward_model_dir(tmp_path_factory):
    """A discriminator whose head is fitted on frozen tiny-llama features to prefer word-collector target words."""
    from rayalign.scoring.discriminator import Discriminator

    model = Discriminator(backbone="tiny-llama", max_length=64, pooling="response_mean", pool_layers=[1, 2], seed=0)
    model.fit_head(word_pairs("train", 64, seed=0))
    return str(model.save(tmp_path_factory.mktemp("rm") / "discriminator"))


def test_a_served_reward_model_names_the_expected_winner_and_scores_as_it_does_in_process(reward_model_dir,
                                                                                         ray_local):
    from rayalign.evaluation import served_scorer
    from rayalign.scoring.reward_model import load_reward_model
    from rayalign.tasks.registry import get_task

    pairs = word_pairs("held_out", 24, seed=5)
    prompts = [p["prompt"] for p in pairs]
    with served_scorer(reward_model_dir, get_task("word_collector"), JudgeConfig()) as score:
        chosen, rejected = score(prompts, [p["chosen"] for p in pairs]), score(prompts, [p["rejected"] for p in pairs])
    result = compare_models([[c] for c in chosen], [[r] for r in rejected])
    assert result["win_rate"] >= 0.85 and result["resolved"]  # the responses with the target words win
    local = load_reward_model(reward_model_dir)
    assert chosen == pytest.approx(local.score(prompts, [p["chosen"] for p in pairs]), abs=1e-5)
    from ray import serve

    assert "judge" not in serve.status().applications  # the replica is removed after
    with pytest.raises(RayAlignError, match="is no reward model directory"), \
            served_scorer(str(reward_model_dir) + "/backbone", None, JudgeConfig()):
        pass


def test_an_hf_sequence_classifier_scores_padded_batches_as_each_text_alone(tmp_path):
    from transformers import AutoModelForSequenceClassification, LlamaConfig, LlamaForSequenceClassification

    from rayalign.models import load_tokenizer
    from rayalign.scoring.reward_model import SequenceClassifier, load_reward_model

    tokenizer = load_tokenizer("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, num_labels=1,
                         pad_token_id=tokenizer.pad_token_id, architectures=["LlamaForSequenceClassification"])
    LlamaForSequenceClassification(config).save_pretrained(tmp_path / "rm")
    tokenizer.save_pretrained(tmp_path / "rm")
    judge = load_reward_model(str(tmp_path / "rm"))
    assert isinstance(judge, SequenceClassifier)
    prompts = ["Name a colour.", "What is 2+2? Explain your answer in a few words."]
    responses = ["Blue.", "It is four, because two and two make four."]
    batched = judge.score(prompts, responses)
    reference = AutoModelForSequenceClassification.from_pretrained(tmp_path / "rm").eval()
    with torch.no_grad():
        alone = [reference(**tokenizer(judge.text(p, r), return_tensors="pt", add_special_tokens=False)).logits[0, 0]
                 .item() for p, r in zip(prompts, responses)]
    assert batched == pytest.approx(alone, abs=1e-5)
    (tmp_path / "lm").mkdir()
    (tmp_path / "lm" / "config.json").write_text('{"architectures": ["LlamaForCausalLM"]}')
    with pytest.raises(RayAlignError, match="is no reward model directory"):
        load_reward_model(str(tmp_path / "lm"))


# ---------------------------------------------------------------- an LLM judge: rayalign's own endpoint

@pytest.fixture(scope="module")
def endpoint(ray_local):
    from ray import serve

    from rayalign.sampling.serve import start_server

    url = start_server("tiny-llama", host="127.0.0.1", port=free_port(), num_cpus=1, name="judge-endpoint")
    yield url
    serve.delete("judge-endpoint")


def test_an_llm_judge_that_answers_nonsense_is_counted_and_its_answers_are_cached(endpoint, tmp_path, monkeypatch):
    """tiny-llama's answers are no verdicts: every one is counted as invalid and scored as a tie; the second run
    asks nothing (the cache); a run that would need more requests than judge.max_calls stops before the first."""
    monkeypatch.setenv("RAYALIGN_CACHE", str(tmp_path / "cache"))
    cfg = JudgeConfig(base_url=endpoint, max_tokens=4, max_calls=6)
    prompts, firsts, seconds = ["Name a colour.", "Say hi.", "Count to 3."], ["Blue.", "Hi!", "1 2 3"], \
        ["A fish.", "No.", "3 2 1"]
    judge = LLMJudge(cfg)
    scores = judge.compare(prompts, firsts, seconds)
    assert judge.counts["requests"] == 6 and judge.counts["cached"] == 0
    assert judge.counts["invalid"] == 6 and scores == [0.5] * 3  # nonsense answers: ties, counted, no crash
    again = LLMJudge(cfg)
    assert again.compare(prompts, firsts, seconds) == scores
    assert again.counts["requests"] == 0 and again.counts["cached"] == 6 and again.counts["invalid"] == 6
    over = LLMJudge(JudgeConfig(base_url=endpoint, max_tokens=4, max_calls=3))
    with pytest.raises(ConfigError, match=r"would make 4 requests .* above judge.max_calls=3"):
        over.compare(prompts, ["Red.", "Hello."] + firsts[2:], seconds)  # 2 new comparisons, one cached
    assert over.counts["requests"] == 0


def test_rayalign_eval_with_an_llm_judge_reports_its_counts(endpoint, tmp_path, monkeypatch, capsys):
    from rayalign import cli

    out = tmp_path / "eval"
    code = cli.main(["eval", "--policy", "tiny-llama", "--reference", "tiny-llama", "--num-prompts", "2",
                     "--samples", "1", "--max-new-tokens", "4", "--scorer", "llm", "--out", str(out),
                     f"judge.base_url={endpoint}", "judge.max_tokens=4", "judge.max_calls=4"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["scorer"] == "llm" and report["judge"]["requests"] + report["judge"]["cached"] == 4
    assert report["win_rate"]["prompts"] == 2 and report["win_rate"]["win_rate"] == 0.5  # all invalid: ties
    assert "invalid answers (scored as ties)" in capsys.readouterr().out
    code = cli.main(["eval", "--policy", "tiny-llama", "--reference", "tiny-llama", "--scorer", "llm",
                     "--out", str(out), "train.lr=1"])
    assert code == 2 and "takes judge.*, prompts.* and model.* settings" in capsys.readouterr().err

