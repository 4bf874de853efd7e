"""Batch tokenised pairs into right-padded tensors: all chosen sequences, then all rejected.

One forward pass over [2B, L] serves both sides of every pair; row i and row B + i are a pair.
"""

from __future__ import annotations

import torch

from rayalign.data.tokenize import TokenizedPair


def collate_pairs(pairs: list[TokenizedPair], pad_id: int) -> dict[str, torch.Tensor]:
    """input_ids/attention_mask [2B, L] (right-padded; L = the longest sequence here),
    response_mask [2B, L] True exactly at response tokens, marks [2B, L], lengths [2B].

    response_mask[i, t] means input_ids[i, t] is a response token, whose log-prob the model gives
    at logits[i, t - 1]. The attention mask comes from the lengths, never from comparing with
    pad_id, because pad and EOS are often the same token.
    """
    if not pairs:
        raise ValueError("collate_pairs needs at least one pair")
    rows = [(pair.prompt_ids, pair.chosen_ids, pair.chosen_marks) for pair in pairs]
    rows += [(pair.prompt_ids, pair.rejected_ids, pair.rejected_marks) for pair in pairs]
    width = max(len(prompt) + len(response) for prompt, response, _ in rows)
    batch = {
        "input_ids": torch.full((len(rows), width), pad_id, dtype=torch.long),
        "attention_mask": torch.zeros((len(rows), width), dtype=torch.long),
        "response_mask": torch.zeros((len(rows), width), dtype=torch.bool),
        "marks": torch.zeros((len(rows), width), dtype=torch.bool),
        "lengths": torch.tensor([len(response) for _, response, _ in rows], dtype=torch.long),
    }
    for index, (prompt, response, marks) in enumerate(rows):
        _fill_row(batch, index, prompt, response, marks)
    return batch


def _fill_row(batch: dict, index: int, prompt: list[int], response: list[int], marks) -> None:
    start, end = len(prompt), len(prompt) + len(response)
    batch["input_ids"][index, :end] = torch.tensor(prompt + response, dtype=torch.long)
    batch["attention_mask"][index, :end] = 1
    batch["response_mask"][index, start:end] = True
    if marks is not None:
        batch["marks"][index, start:end] = torch.tensor(marks, dtype=torch.bool)
