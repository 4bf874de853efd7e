"""A reward model to judge with: a rayalign discriminator checkpoint, or any HF sequence classifier directory.

`load_reward_model(path)` gives an object with `score(prompts, responses) -> list[float]` and `to(device)`, which
the discriminator's Serve replica (`rayalign.scoring.serve`) hosts either way. A sequence classifier (an
`AutoModelForSequenceClassification` directory whose head has one output, e.g. a Skywork or ArmoRM-style reward
model) reads each (prompt, response) as its tokenizer's chat template lays out a user turn and an assistant turn
(or, without a template, the prompt and the response separated by a blank line), and its score is the head's
output.
"""

from __future__ import annotations

import json
from pathlib import Path

from rayalign.errors import RayAlignError


class SequenceClassifier:
    def __init__(self, directory: str, max_length: int = 1024, batch_size: int = 8):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        self.model = AutoModelForSequenceClassification.from_pretrained(directory, dtype=torch.float32).eval()
        if self.model.config.num_labels != 1:
            raise RayAlignError(f"{directory}: a reward model has one output; this classifier has "
                                f"{self.model.config.num_labels} (num_labels)")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.max_length, self.batch_size, self.device = max_length, batch_size, torch.device("cpu")

    def to(self, device) -> SequenceClassifier:
        import torch

        self.device = torch.device(device)
        self.model.to(self.device)
        return self

    def text(self, prompt: str, response: str) -> str:
        if getattr(self.tokenizer, "chat_template", None):
            return self.tokenizer.apply_chat_template(
                [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}], tokenize=False)
        return f"{prompt}\n\n{response}"

    def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        import torch

        texts = [self.text(p, r) for p, r in zip(prompts, responses)]
        scores = []
        with torch.no_grad():
            for start in range(0, len(texts), self.batch_size):
                batch = self.tokenizer(texts[start:start + self.batch_size], return_tensors="pt", padding=True,
                                       truncation=True, max_length=self.max_length, add_special_tokens=False)
                logits = self.model(**batch.to(self.device)).logits
                scores += logits[:, 0].float().cpu().tolist()
        return scores


def reward_model_kind(path: str) -> str | None:
    """"discriminator" (a `Discriminator.save` directory), "classifier" (an HF sequence classifier) or None."""
    from rayalign.scoring.discriminator import _CONFIG_FILE

    directory = Path(path)
    if (directory / _CONFIG_FILE).is_file():
        return "discriminator"
    config = directory / "config.json"
    architectures = (json.loads(config.read_text()).get("architectures") or []) if config.is_file() else []
    return "classifier" if any(name.endswith("ForSequenceClassification") for name in architectures) else None


def check_reward_model(path: str, setting: str) -> None:
    """One line naming `setting` where `path` is no reward model directory."""
    if reward_model_kind(path) is None:
        raise RayAlignError(f"{setting}: {path} is no reward model directory: give a discriminator checkpoint "
                            "(Discriminator.save, jobs/discriminator_hh.py) or an AutoModelForSequenceClassification "
                            "directory")


def load_reward_model(path: str):
    """A discriminator checkpoint (`Discriminator.save`) or an HF sequence classifier directory, else one line."""
    from rayalign.scoring.discriminator import Discriminator

    check_reward_model(path, "reward model")
    if reward_model_kind(path) == "discriminator":
        return Discriminator.load(path)
    return SequenceClassifier(path)
