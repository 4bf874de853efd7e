"""An LLM judge with a known preference, served by rayalign's own OpenAI-compatible endpoint on 127.0.0.1, names the
expected winner in both orders. Its own module: one sampler endpoint holds Serve's route "/" at a time, and
tests/test_judges.py keeps one up for its whole module."""

from __future__ import annotations

import pytest
import torch

from rayalign.config import JudgeConfig
from rayalign.judges import LLMJudge
from tests.conftest import free_port

POLITE = ["Certainly, here it is.", "Gladly, with pleasure.", "Of course, happy to help.", "Sure thing, here you go."]
RUDE = ["No.", "Go away.", "Figure it out yourself.", "Not my problem."]
ASKS = ["Say hello.", "Name a colour.", "Give me a fruit.", "Help me please."]


def fitted_judge(out) -> str:
    """tiny-llama taught, on the judge's own chat-formatted question, to answer with the letter of the polite
    response: a judge with a known preference, in either position."""
    import random

    from rayalign.config import JUDGE_PROMPT
    from rayalign.data.tokenize import encode_prompt
    from rayalign.models import load_causal_lm, load_tokenizer

    tokenizer, lm = load_tokenizer("tiny-llama"), load_causal_lm("tiny-llama").train()
    letters = [tokenizer.encode(letter, add_special_tokens=False)[0] for letter in ("A", "B")]
    rng, optimizer = random.Random(0), torch.optim.AdamW(lm.parameters(), lr=3e-3)
    torch.manual_seed(0)
    for _ in range(200):
        rows = []
        for _ in range(16):
            polite_first, polite, rude = rng.random() < 0.5, rng.choice(POLITE), rng.choice(RUDE)
            question = JUDGE_PROMPT.format(prompt=rng.choice(ASKS), first=polite if polite_first else rude,
                                           second=rude if polite_first else polite)
            rows.append((encode_prompt([{"role": "user", "content": question}], tokenizer, chat_template=True),
                         letters[0 if polite_first else 1]))
        width = max(len(ids) for ids, _ in rows)
        ids = torch.tensor([[tokenizer.pad_token_id] * (width - len(i)) + i for i, _ in rows])
        mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i, _ in rows])
        logits = lm(input_ids=ids, attention_mask=mask, logits_to_keep=1).logits[:, -1]
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor([letter for _, letter in rows]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if loss.item() < 0.01:
            break
    tokenizer.save_pretrained(out)
    lm.save_pretrained(out)
    return str(out)


@pytest.mark.slow  # fits a tiny judge (about a minute on 2 cores), then serves it
def test_an_llm_judge_on_rayalign_s_endpoint_names_the_expected_winner(ray_local, tmp_path, monkeypatch):
    from ray import serve

    from rayalign.sampling.serve import start_server

    monkeypatch.setenv("RAYALIGN_CACHE", str(tmp_path / "cache"))
    url = start_server(fitted_judge(tmp_path / "judge"), port=free_port(), num_cpus=1, name="fitted-judge")
    try:
        judge = LLMJudge(JudgeConfig(base_url=url, max_tokens=1))
        assert judge.compare(ASKS, POLITE, RUDE) == [1.0] * 4  # the polite response wins, shown first or second
        assert judge.compare(ASKS, RUDE, POLITE) == [0.0] * 4  # answers from the cache: the same verdicts
        assert judge.counts == {"requests": 8, "cached": 8, "invalid": 0, "ties": 0}
    finally:
        serve.delete("fitted-judge")
