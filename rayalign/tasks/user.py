"""A task from a user's prompts and reward model (`prompts.*`): what every pipeline takes in place of a built-in task.

The prompts come from a file or dataset (rayalign's data readers, so a bad file is one line); each is its own topic,
so the held-out share is decided by a hash of the prompt, as for `make_task`. The gold reward is the reward model's
score, loaded once, in the process that asks. A row's `chosen` response is the prompt's strong response.
"""

from __future__ import annotations

import random

from rayalign.errors import RayAlignError
from rayalign.tasks.base import Task, make_task

NAME = "prompts"  # the task's name in reports


def read_prompts(cfg) -> tuple[dict[str, str | None], int]:
    """({prompt: its chosen response or None}, rows skipped) from `cfg` (a PromptsConfig), in file order."""
    from rayalign.config import DataConfig
    from rayalign.data.bad_rows import BadRow
    from rayalign.data.formats import normalise
    from rayalign.data.readers import iter_rows, their_field
    from rayalign.errors import DataError

    data = DataConfig(path=cfg.path, split=cfg.split, name=cfg.name, data_dir=cfg.data_dir, columns=cfg.columns,
                      limit=cfg.limit)
    found: dict[str, str | None] = {}
    skipped = 0
    for row, raw in iter_rows(data):
        if cfg.limit is not None and len(found) >= cfg.limit:
            break
        if isinstance(raw, DataError):
            raise their_field(raw, cfg.columns)
        prompt, strong = raw.get("prompt"), raw.get("chosen")
        if not isinstance(prompt, str) or not isinstance(strong, (str, type(None))):
            try:
                example = normalise(raw, row, cfg.path, "auto")
            except BadRow:
                skipped += 1
                continue
            if len(example.prompt) != 1 or example.prompt[0]["role"] != "user":
                skipped += 1  # a longer conversation: tasks ask one question
                continue
            prompt, strong = example.prompt[0]["content"], example.chosen
        if prompt.strip():
            found.setdefault(prompt, strong)
    if not found:
        raise RayAlignError(f"prompts.path: {cfg.path} holds no usable prompt ({skipped} rows skipped: a prompt is "
                            "a `prompt` string, a one-turn conversation or a one-turn HH-RLHF transcript)")
    return found, skipped


def user_task(cfg) -> Task:
    """The task of `cfg` (a PromptsConfig with a path and a judge)."""
    from rayalign.scoring.reward_model import load_reward_model

    found, _ = read_prompts(cfg)
    model = []

    def reward(prompt: str, response: str) -> float:
        if not model:
            model.append(load_reward_model(cfg.judge))
        return model[0].score([prompt], [response])[0]

    strong = {p: r for p, r in found.items() if r}

    def writer(prompt: str, rng: random.Random) -> str:
        if prompt not in strong:
            raise RayAlignError(f"prompts.path: no chosen response for the prompt {prompt[:60]!r}; InCo's strong "
                                "responses come from a `chosen` column")
        return strong[prompt]

    return make_task(NAME, list(found), reward, writer if strong else None,
                     description=f"prompts of {cfg.path}, scored by {cfg.judge}", held_out_share=cfg.held_out_share,
                     validation_share=cfg.validation_share)
