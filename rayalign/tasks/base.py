"""The Task type: seeded prompt splits disjoint in content, a gold reward, an optional strong writer.

Kept apart from the registry so the built-in task modules can import it without a cycle; see
:mod:`rayalign.tasks.registry` for what a task is and how to add one.

A prompt is a *topic* rendered through a template ("What should I know about {topic}?"). Splits
are made on topics, not prompts: a topic is held out when a stable hash of it (SHA-256, not
Python's salted ``hash``) falls in the held-out share, so every prompt about it is held out too,
and an evaluation never asks about something training has seen in another wording. The next band
of the same hash is the *validation* split: the prompts every choice made before a final run
(a sweep's best trial, a tuned β) is judged on, so the held-out prompts are read once per
experiment. A task whose topics nest (math expressions contain smaller expressions) gives
``split_keys``: a topic is held out when any of its keys is, in validation when any key is and
none is held out, so no held-out or validation topic appears inside a training one.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from rayalign.errors import RayAlignError

SPLITS = ("train", "validation", "held_out")
Reward = Callable[[str, str], float]
Writer = Callable[[str, random.Random], str]
Editor = Callable[[str, str, str], str]
"""editor(prompt, chosen, rejected) -> the rejected response minimally edited toward the chosen one (BMC)."""


def key_fraction(key: str) -> float:
    """Where `key` falls in [0, 1): the first 8 bytes of its SHA-256 as a fraction (the same in every process)."""
    digest = hashlib.sha256(key.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def in_held_out(key: str, share: float) -> bool:
    """Whether `key` is held out: its fraction is below the held-out share."""
    return key_fraction(key) < share


def _whole(topic: str) -> list[str]:
    return [topic]


@dataclass
class Task:
    """A task: topics, a template per prompt, a gold reward and (optionally) a strong off-policy writer."""

    name: str
    topic: Callable[[random.Random], str]
    """Draws one topic (any split) from the task's topic space."""
    render: Callable[[str, random.Random], str]
    """render(topic, rng) -> a prompt about the topic."""
    gold_reward: Reward
    """gold_reward(prompt, response) -> float; higher is better."""
    strong_writer: Writer | None = None
    """strong_writer(prompt, rng) -> a high-reward response in an off-policy style."""
    description: str = ""
    held_out_share: float = 0.25
    """Share of the topic space kept for evaluation."""
    validation_share: float = 0.15
    """Share of the topic space kept for choices made before a final run (the band above the held-out share)."""
    reward_range: tuple[float | None, float | None] = (None, None)
    """Known bounds of the gold reward (None where unbounded), for plots and reports."""
    split_keys: Callable[[str], list[str]] = _whole
    """The strings whose hashes place a topic: held out when any of them is (default: the topic)."""
    editor: Editor | None = None
    """editor(prompt, chosen, rejected) -> a minimal edit of `rejected` that raises the gold reward (BMC's bridging)."""
    max_draws: int = field(default=20_000, repr=False)
    """Draws without a new prompt before we decide the split has no more distinct prompts."""

    def is_held_out(self, topic: str) -> bool:
        return self.split_of(topic) == "held_out"

    def split_of(self, topic: str) -> str:
        """The split `topic` belongs to: held out if any key is, else validation if any key is, else train."""
        fractions = [key_fraction(key) for key in self.split_keys(topic)]
        if any(f < self.held_out_share for f in fractions):
            return "held_out"
        if any(f < self.held_out_share + self.validation_share for f in fractions):
            return "validation"
        return "train"

    def draw(self, split: str, n: int, seed: int = 0) -> list[tuple[str, str]]:
        """n (topic, prompt) pairs of `split` with distinct prompts, in a seeded order; an error if
        the split has fewer."""
        if split not in SPLITS:
            raise RayAlignError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
        rng, found, misses = random.Random(f"{self.name}/{split}/{seed}"), {}, 0
        while len(found) < n:
            topic = self.topic(rng)
            prompt = self.render(topic, rng) if self.split_of(topic) == split else None
            if prompt is None or prompt in found:
                misses += 1
                if misses > self.max_draws:
                    raise RayAlignError(f"task '{self.name}' has only {len(found)} distinct {split} prompts; "
                                        f"ask for at most {len(found)}")
                continue
            found[prompt], misses = topic, 0
        return [(topic, prompt) for prompt, topic in found.items()]

    def prompts(self, split: str, n: int, seed: int = 0) -> list[str]:
        """n distinct prompts of `split`, in a seeded order (see `draw`)."""
        return [prompt for _, prompt in self.draw(split, n, seed)]

    def strong_response(self, prompt: str, rng: random.Random) -> str:
        if self.strong_writer is None:
            raise RayAlignError(f"task '{self.name}' has no strong response writer; give it a strong_writer")
        return self.strong_writer(prompt, rng)


def templated_task(name: str, topics: tuple[str, ...], templates: tuple[str, ...], reward: Reward,
                   strong_writer: Writer | None = None, **kwargs) -> Task:
    """A task over a topic list and '{t}' templates: the shape of the word-collector and bullets tasks."""
    return Task(name, lambda rng: rng.choice(topics), lambda topic, rng: rng.choice(templates).format(t=topic),
                reward, strong_writer, **kwargs)


def make_task(name: str, prompts: list[str], reward: Reward, strong_writer: Writer | None = None,
              description: str = "", held_out_share: float = 0.25, validation_share: float = 0.15) -> Task:
    """A task over a fixed prompt list: the common case of a user's own task (each prompt its own topic)."""
    pool = sorted(set(prompts))
    if not pool:
        raise RayAlignError(f"task '{name}' needs at least one prompt")
    return Task(name, lambda rng: rng.choice(pool), lambda topic, rng: topic, reward, strong_writer, description,
                held_out_share, validation_share, max_draws=50 * len(pool))
