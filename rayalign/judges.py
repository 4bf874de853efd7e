"""An LLM judge: two responses to one prompt compared through any OpenAI-compatible endpoint (`rayalign.llm_client`).

Each comparison is asked in both orders (the first response as A, then as B), so a judge that favours a position
cancels out: the first response scores 1 when both answers prefer it, 0 when both prefer the other, and ½ for a
split, a tie or an answer that is none of A, B, tie (counted as invalid, never an error). Answers are cached under
``$RAYALIGN_CACHE/judge``, keyed by the endpoint, the model, the judge's prompt, the texts and the answer length, so
a rerun asks nothing again; `judge.max_calls` caps the requests one evaluation makes, checked before the first.
"""

from __future__ import annotations

import json
import re

from rayalign.errors import ConfigError

SCORE_AS_FIRST = {"A": 1.0, "B": 0.0, "tie": 0.5}  # the verdict's score for the response shown as A


def verdict(answer: str) -> str | None:
    """'A', 'B' or 'tie' from the answer's first word (case, punctuation and 'Response' ignored), else None."""
    words = re.findall(r"[A-Za-z]+", answer)
    if words and words[0].lower() == "response":
        words = words[1:]
    if not words:
        return None
    word = words[0]
    return word.upper() if word.upper() in ("A", "B") and len(word) == 1 else "tie" if word.lower() == "tie" else None


def both_orders(first_as_a: str | None, first_as_b: str | None) -> float:
    """The first response's score from the verdicts with it shown as A, then as B (None: invalid, as a tie)."""
    shown_first = SCORE_AS_FIRST.get(first_as_a, 0.5)
    shown_second = 1.0 - SCORE_AS_FIRST.get(first_as_b, 0.5)
    return (shown_first + shown_second) / 2


class LLMJudge:
    """`compare(prompts, firsts, seconds)` -> each first response's score against its second, in [0, 1]."""

    def __init__(self, cfg):
        from rayalign.llm_client import LLMClient

        self.cfg, self.client = cfg, LLMClient(cfg.base_url, cfg.model)
        self.counts = {"requests": 0, "cached": 0, "invalid": 0, "ties": 0}

    def _cache_path(self, prompt: str, a: str, b: str):
        """Where the answer to (prompt, a, b) with this endpoint, model and judge prompt is kept."""
        from rayalign.files import cache_key, cache_root

        key = cache_key({"version": 1, "url": self.client.base_url, "model": self.client.model,
                         "judge_prompt": self.cfg.prompt, "prompt": prompt, "a": a, "b": b,
                         "max_tokens": self.cfg.max_tokens})
        return cache_root() / "judge" / f"{key}.json"

    def _answer(self, path, prompt: str, a: str, b: str) -> str:
        """The judge's answer: from `path` (the cache) where it is there, else asked and written there."""
        from rayalign.files import atomic_write_text

        if path.is_file():
            self.counts["cached"] += 1
            return json.loads(path.read_text())["answer"]
        asked = self.cfg.prompt.format(prompt=prompt, first=a, second=b)
        answer = self.client.chat([{"role": "user", "content": asked}], max_tokens=self.cfg.max_tokens,
                                  temperature=0.0)
        self.counts["requests"] += 1
        atomic_write_text(path, json.dumps({"answer": answer}))
        return answer

    def compare(self, prompts: list[str], firsts: list[str], seconds: list[str]) -> list[float]:
        asks = [(p, a, b) for p, x, y in zip(prompts, firsts, seconds) for a, b in ((x, y), (y, x))]
        paths = [self._cache_path(*ask) for ask in asks]
        needed = sum(not path.is_file() for path in paths)
        if needed > self.cfg.max_calls:
            raise ConfigError(f"the LLM judge would make {needed} requests (both orders of {len(prompts)} "
                              f"comparisons, less those cached), above judge.max_calls={self.cfg.max_calls}: raise "
                              "it, or judge fewer prompts or samples (eval.num_prompts, eval.samples)")
        scores = []
        for i in range(len(prompts)):
            first_as_a, first_as_b = (verdict(self._answer(paths[j], *asks[j])) for j in (2 * i, 2 * i + 1))
            self.counts["invalid"] += (first_as_a is None) + (first_as_b is None)
            score = both_orders(first_as_a, first_as_b)
            self.counts["ties"] += score == 0.5
            scores.append(score)
        return scores
