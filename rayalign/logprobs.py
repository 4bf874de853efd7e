"""Per-token log-probs of response tokens, without a float32 [batch, seq, vocab] tensor.

The vocabulary projection is the memory peak of preference training: SmolLM2's 49k vocabulary at
batch 8 x 512 tokens is 800 MB of float32 logits, and autograd would keep them for backward.
We project only response positions, a slice of ``chunk_size`` tokens at a time, and wrap each
slice in activation checkpointing so backward recomputes its logits instead of storing them:
the peak is one [chunk_size, vocab] slice, whatever the batch.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


def _slice_logps(hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module, softcap: float | None):
    logits = head(hidden).float()
    if softcap:  # Gemma-2 style final logit soft-capping
        logits = torch.tanh(logits / softcap) * softcap
    return logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)


def response_token_logps(
    hidden: torch.Tensor,
    head: nn.Module,
    input_ids: torch.Tensor,
    response_mask: torch.Tensor,
    chunk_size: int = 512,
    softcap: float | None = None,
) -> torch.Tensor:
    """log π(input_ids[b, t] | input_ids[b, :t]) at response positions, 0 elsewhere; [B, L] float32.

    `hidden` is the decoder's last hidden state [B, L, H]; position t's token is predicted from
    the hidden state at t−1, so a response token at position 0 is not allowed (the prompt is never
    empty).
    """
    targets_mask = response_mask[:, 1:]
    states = hidden[:, :-1][targets_mask]  # [N, H]: only the positions we score
    targets = input_ids[:, 1:][targets_mask]
    pieces = []
    for start in range(0, states.shape[0], chunk_size):
        h, t = states[start:start + chunk_size], targets[start:start + chunk_size]
        if torch.is_grad_enabled() and h.requires_grad:
            pieces.append(checkpoint(_slice_logps, h, t, head, softcap, use_reentrant=False))
        else:
            pieces.append(_slice_logps(h, t, head, softcap))
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)
    flat = torch.cat(pieces) if pieces else out.new_zeros(0)
    padded = torch.zeros_like(out[:, 1:]).masked_scatter(targets_mask, flat)
    return torch.cat([out[:, :1], padded], dim=1)


def naive_token_logps(model: nn.Module, input_ids, attention_mask, response_mask) -> torch.Tensor:
    """The textbook computation (full logits, log_softmax): the reference the tests compare with."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    logps = logits[:, :-1].log_softmax(-1).gather(-1, input_ids[:, 1:, None]).squeeze(-1)
    logps = torch.cat([torch.zeros_like(logps[:, :1]), logps], dim=1)
    return logps * response_mask


class ResponseLogps(nn.Module):
    """A causal LM whose forward returns response-token log-probs [B, L].

    One module, one forward: FSDP2 gathers the root's parameters (embeddings, final norm, head)
    around this forward, so the chunked projection above runs on full weights.
    """

    def __init__(self, lm: nn.Module, chunk_size: int = 512):
        super().__init__()
        self.lm = lm
        self.chunk_size = chunk_size

    def forward(self, input_ids, attention_mask, response_mask):
        decoder = self.lm.get_decoder()
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        softcap = getattr(self.lm.config, "final_logit_softcapping", None)
        return response_token_logps(hidden, self.lm.get_output_embeddings(), input_ids, response_mask,
                                    self.chunk_size, softcap)
