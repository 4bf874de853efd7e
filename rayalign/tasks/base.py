"""The Task type: seeded disjoint prompt splits, a gold reward, an optional strong writer.

Kept apart from the registry so the built-in task modules can import it without a cycle; see
:mod:`rayalign.tasks.registry` for what a task is and how to add one.
"""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable
from dataclasses import dataclass, field

from rayalign.errors import RayAlignError

SPLITS = ("train", "held_out")
Reward = Callable[[str, str], float]
Writer = Callable[[str, random.Random], str]


def in_held_out(prompt: str, share: float) -> bool:
    """Whether `prompt` is held out: the first 8 bytes of its SHA-256 as a fraction in [0, 1)."""
    digest = hashlib.sha256(prompt.encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "big") / 2**64 < share


@dataclass
class Task:
    """A task: a prompt generator, a gold reward and (optionally) a strong off-policy writer."""

    name: str
    generate: Callable[[random.Random], str]
    """Draws one prompt (any split) from the task's prompt space."""
    gold_reward: Reward
    """gold_reward(prompt, response) -> float; higher is better."""
    strong_writer: Writer | None = None
    """strong_writer(prompt, rng) -> a high-reward response in an off-policy style."""
    description: str = ""
    held_out_share: float = 0.25
    """Share of the prompt space kept for evaluation."""
    reward_range: tuple[float | None, float | None] = (None, None)
    """Known bounds of the gold reward (None where unbounded), for plots and reports."""
    max_draws: int = field(default=20_000, repr=False)
    """Draws without a new prompt before we decide the split has no more distinct prompts."""

    def prompts(self, split: str, n: int, seed: int = 0) -> list[str]:
        """n distinct prompts of `split`, in a seeded order; an error if the split has fewer."""
        if split not in SPLITS:
            raise RayAlignError(f"unknown split '{split}'; use one of {', '.join(SPLITS)}")
        rng, found, misses = random.Random(f"{self.name}/{split}/{seed}"), {}, 0
        want_held_out = split == "held_out"
        while len(found) < n:
            prompt = self.generate(rng)
            if prompt in found or in_held_out(prompt, self.held_out_share) != want_held_out:
                misses += 1
                if misses > self.max_draws:
                    raise RayAlignError(f"task '{self.name}' has only {len(found)} distinct {split} prompts; "
                                        f"ask for at most {len(found)}")
                continue
            found[prompt], misses = None, 0
        return list(found)

    def strong_response(self, prompt: str, rng: random.Random) -> str:
        if self.strong_writer is None:
            raise RayAlignError(f"task '{self.name}' has no strong response writer; give it a strong_writer")
        return self.strong_writer(prompt, rng)


def make_task(name: str, prompts: list[str], reward: Reward, strong_writer: Writer | None = None,
              description: str = "", held_out_share: float = 0.25) -> Task:
    """A task over a fixed prompt list: the common case of a user's own task."""
    pool = sorted(set(prompts))
    if not pool:
        raise RayAlignError(f"task '{name}' needs at least one prompt")
    return Task(name, lambda rng: rng.choice(pool), reward, strong_writer, description, held_out_share,
                max_draws=50 * len(pool))
