"""An instruction-following task with a format constraint: answer in exactly 3 bullet points.

Chosen because a 135M chat model can satisfy it (it writes lists readily) but often does not
(it adds an introduction, or writes 5 points, or numbers them), so the reward has room to move.

Reward in [0, 1], on the non-empty lines of the response; a bullet is a line starting with
``-``, ``*`` or ``•`` followed by a space and some text:

    reward = 0.5 · max(0, 1 − |bullets − 3| / 3) + 0.5 · bullets / lines

so exactly three bullets and nothing else scores 1.0; three bullets under an introduction line
0.5 + 0.5·3/4 = 0.875; no bullets 0.
"""

from __future__ import annotations

import random
import re

from rayalign.tasks.base import templated_task
from rayalign.tasks.word_collector import TOPICS

TEMPLATES = (
    "Give three tips about {t}. Answer in exactly 3 bullet points and nothing else.",
    "List 3 things to remember about {t}, as exactly three bullet points with no introduction.",
    "Answer in exactly 3 bullet points, nothing else: how can a beginner get better at {t}?",
    "In exactly three bullet points and no other text, what do I need for {t}?",
    "What are the 3 most useful habits for {t}? Reply with exactly 3 bullet points only.",
    "Summarise how to approach {t} in exactly 3 bullet points, without any other sentences.",
)
_BULLET = re.compile(r"^[-*•]\s+\S")
_POINTS = ("start small and keep going", "set aside ten minutes a day", "ask someone who has done it",
           "write down what worked", "get the basic tools ready first", "rest when you feel tired",
           "watch one short tutorial", "keep it simple at the start")


def gold_reward(prompt: str, response: str) -> float:
    lines = [line.strip() for line in response.splitlines() if line.strip()]
    if not lines:
        return 0.0
    bullets = sum(1 for line in lines if _BULLET.match(line))
    return 0.5 * max(0.0, 1 - abs(bullets - 3) / 3) + 0.5 * bullets / len(lines)


def strong_response(prompt: str, rng: random.Random) -> str:
    """Three terse lower-case '•' bullets with no formatting: full reward. SmolLM2 sometimes uses
    '•' too, but writes capitalised, bold, longer points: the shift is in the wording, not the marks."""
    topic = next((t for t in TOPICS if t in prompt), "it")
    points = rng.sample(_POINTS, 3)
    points[0] = f"for {topic}, {points[0]}"
    return "\n".join(f"• {point}" for point in points)


_MARKER = re.compile(r"^(?:[-*•]|\d+[.)])\s+")


def bridge(prompt: str, chosen: str, rejected: str) -> str:
    """BMC's edit for this task: `rejected`'s own points reshaped into three bullets with `chosen`'s bullet mark:
    its bullet lines first, then its other lines' sentences, topped up from `chosen`'s bullets when it has fewer
    than three points. The words stay `rejected`'s; the shape becomes the one the reward asks for."""
    lines = [line.strip() for line in rejected.splitlines() if line.strip()]
    points = [_MARKER.sub("", line) for line in lines if _MARKER.match(line)]
    points += [s for line in lines if not _MARKER.match(line) for s in re.split(r"(?<=[.!?])\s+", line) if s]
    points += [_MARKER.sub("", line.strip()) for line in chosen.splitlines() if _BULLET.match(line.strip())]
    mark = next((line.strip()[0] for line in chosen.splitlines() if _BULLET.match(line.strip())), "-")
    return "\n".join(f"{mark} {point}" for point in points[:3])


TASK = templated_task("bullets", TOPICS, TEMPLATES, gold_reward, strong_response,
                      description="answer in exactly 3 bullet points (reward 0-1)", reward_range=(0.0, 1.0),
                      editor=bridge)
