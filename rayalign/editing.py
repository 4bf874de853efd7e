"""BMC's bridging (arXiv 2408.07471): an editor rewrites the losing response y_l toward the winning y_w,
and gates decide whether the edit ỹ_w may stand in for y_w.

Two editors, one interface (``edit(items) -> list[str | None]``, an item being (prompt, chosen,
rejected) texts; None is an edit that came back malformed):

- ``TaskEditor``: the embedded task's own programmatic editor (``Task.editor``), which makes a
  minimal edit that raises the gold reward; so the embedded experiment does not depend on a 135M
  model's editing skill.
- ``LLMEditor``: any OpenAI-compatible chat endpoint through `LLMClient`, with `EDIT_INSTRUCTION`, a
  concurrency limit, retries with exponential backoff (the `openai` client's own), and every answer
  cached on disk by (endpoint model, messages, sampling settings), so a rerun sends no request.

`gate` is the quality check every edit passes, whichever editor made it (see its docstring).
"""

from __future__ import annotations

import json
import re
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from rayalign.errors import ConfigError
from rayalign.tasks.base import Task

Item = tuple[str, str, str]  # (prompt, chosen, rejected)

# Written for rayalign from the paper's description of bridging (Sec. 3.1 of arXiv 2408.07471: the editor
# makes targeted modifications to the losing response, using the winning one as a reference, so that the
# result keeps the loser's wording except where it matters); not the authors' prompt.
EDIT_INSTRUCTION = (
    "You will see a user's request, a better answer and a worse answer. Improve the worse answer with as few "
    "changes as possible: keep its wording and structure wherever they are fine, and change only the parts that "
    "make it worse than the better answer (wrong or missing content, unhelpful or unsafe parts), borrowing from "
    "the better answer where that helps. Do not rewrite it from scratch and do not copy the better answer whole. "
    "Reply with the improved answer only, without any heading or comment.")
_SECTIONS = ("[Request]", "[Better answer]", "[Worse answer]")


def edit_messages(prompt: str, chosen: str, rejected: str) -> list[dict]:
    """The chat an LLM editor receives for one pair."""
    body = "\n\n".join(f"{title}\n{text}" for title, text in zip(_SECTIONS, (prompt, chosen, rejected)))
    return [{"role": "system", "content": EDIT_INSTRUCTION}, {"role": "user", "content": body}]


def clean_edit(text: str | None) -> str | None:
    """The answer as an edit, or None when it is malformed (it echoes the request's sections)."""
    if text is None or any(section in text for section in _SECTIONS):
        return None
    return text.strip()


class TaskEditor:
    """The task's programmatic editor (word collector, math, bullets each ship one)."""

    def __init__(self, task: Task):
        if task.editor is None:
            raise ConfigError(f"task '{task.name}' has no programmatic editor; set bmc.editor=llm")
        self.task = task

    def edit(self, items: list[Item]) -> list[str | None]:
        return [self.task.editor(prompt, chosen, rejected) for prompt, chosen, rejected in items]


class LLMEditor:
    """Edits from an OpenAI-compatible endpoint, `concurrency` requests at a time, cached under `cache_dir`."""

    def __init__(self, client, cache_dir: Path | None, concurrency: int = 8, max_tokens: int = 256,
                 temperature: float = 0.0):
        self.client, self.cache_dir, self.concurrency = client, cache_dir, concurrency
        self.params = {"max_tokens": max_tokens, "temperature": temperature, "seed": 0}
        self.requests = self.cached = 0  # answers asked of the endpoint, and taken from the cache

    def edit(self, items: list[Item]) -> list[str | None]:
        with ThreadPoolExecutor(max_workers=max(1, self.concurrency)) as pool:
            answers = list(pool.map(lambda item: self._answer(edit_messages(*item)), items))
        hits = sum(cached for _, cached in answers)
        self.cached, self.requests = self.cached + hits, self.requests + len(answers) - hits
        return [clean_edit(answer) for answer, _ in answers]

    def _answer(self, messages: list[dict]) -> tuple[str, bool]:
        """(the answer, whether it came from the cache)."""
        from rayalign.files import atomic_write_text, cache_key

        key = cache_key({"model": self.client.model, "messages": messages, "params": self.params})
        path = None if self.cache_dir is None else self.cache_dir / f"{key}.json"
        if path is not None and path.is_file():
            return json.loads(path.read_text())["answer"], True
        answer = self.client.chat(messages, **self.params)
        if path is not None:
            atomic_write_text(path, json.dumps({"model": self.client.model, "answer": answer}))
        return answer, False


def words(text: str) -> list[str]:
    """The words of `text`, lower-cased, without punctuation: what the word-level gate compares."""
    return re.findall(r"\w+", text.lower())


def indel_distance(a: list, b: list) -> int:
    """Token edit distance by insertions and deletions: |a| + |b| − 2·LCS(a, b), the distance a diff (and so
    BMC's difflib marks) works with; a substitution counts as a deletion plus an insertion."""
    previous = [0] * (len(b) + 1)
    for item in a:
        current = [0]
        for j, other in enumerate(b):
            current.append(previous[j] + 1 if item == other else max(previous[j + 1], current[j]))
        previous = current
    return len(a) + len(b) - 2 * previous[-1]


def gate(chosen_ids: list, rejected_ids: list, edit_ids: list | None, gains: float | None = None) -> str | None:
    """Why the edit ỹ_w of the pair (y_w, y_l) is rejected, or None when it passes. The three are token ids, or
    their texts' `words` for the word-level gate (`bmc.closeness=words`: a word spliced in can merge with its
    neighbour's tokens, so a move toward y_w in words can be none in tokens). In order:

    - ``malformed``/``empty``: no usable text came back;
    - ``unchanged``: ỹ_w = y_l, no preference left;
    - ``not_closer``: ỹ_w is not closer to y_w than y_l is (token edit distance), so it did not move toward
      the winner;
    - ``not_targeted``: ỹ_w is no closer to y_l than y_w is: a rewrite (or a copy of y_w), not a targeted edit,
      and bridging's point, pairs that differ in few tokens, is lost;
    - ``no_gain``: where a gold reward exists, `gains` = reward(ỹ_w) − reward(y_l) ≤ 0. Stricter than
      "lowers the reward": a tie would train on a pair the gold reward has no preference in.
    """
    if edit_ids is None:
        return "malformed"
    if not edit_ids:
        return "empty"
    if edit_ids == rejected_ids:
        return "unchanged"
    if indel_distance(edit_ids, chosen_ids) >= indel_distance(rejected_ids, chosen_ids):
        return "not_closer"
    if indel_distance(edit_ids, rejected_ids) >= indel_distance(chosen_ids, rejected_ids):
        return "not_targeted"
    if gains is not None and gains <= 0:
        return "no_gain"
    return None
