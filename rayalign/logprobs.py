"""Per-token log-probs of response tokens, without a float32 [batch, seq, vocab] tensor.

The vocabulary projection is the memory peak of preference training: SmolLM2's 49k vocabulary at
batch 8 x 512 tokens is 800 MB of float32 logits, and autograd would keep them for backward.
We project only the positions that predict a response token, a slice of ``chunk_size`` of them at
a time, and wrap each slice in activation checkpointing so backward recomputes its logits instead
of storing them: the peak is one [chunk_size, vocab] slice, whatever the batch.

Inputs are a batch from :func:`rayalign.data.collate_pairs` (either input layout); the output is
its response layout [2B, R], chosen rows first.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

MODEL_INPUTS = ("input_ids", "position_ids", "attention_mask")


def _slice_logps(states: torch.Tensor, targets: torch.Tensor, head: nn.Module, softcap: float | None):
    logits = head(states).float()
    if softcap:  # Gemma-2 style final logit soft-capping
        logits = torch.tanh(logits / softcap) * softcap
    return logits.gather(-1, targets[:, None]).squeeze(-1) - logits.logsumexp(-1)


def response_token_logps(hidden: torch.Tensor, head: nn.Module, batch: dict, chunk_size: int = 512,
                         softcap: float | None = None) -> torch.Tensor:
    """log π(targets[n] | its context), read from hidden[sources[n]], in the response layout [2B, R] float32
    (0 where response_mask is False). `hidden` is the decoder's last hidden state [rows, L, H]."""
    states = hidden.reshape(-1, hidden.shape[-1])[batch["sources"]]  # [N, H]: only the positions we score
    targets = batch["targets"]
    pieces = []
    for start in range(0, states.shape[0], chunk_size):
        h, t = states[start:start + chunk_size], targets[start:start + chunk_size]
        if torch.is_grad_enabled() and h.requires_grad:
            pieces.append(checkpoint(_slice_logps, h, t, head, softcap, use_reentrant=False))
        else:
            pieces.append(_slice_logps(h, t, head, softcap))
    mask = batch["response_mask"]
    flat = torch.cat(pieces) if pieces else hidden.new_zeros(0, dtype=torch.float32)
    return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_scatter(mask, flat)


def naive_token_logps(lm: nn.Module, batch: dict) -> torch.Tensor:
    """The textbook computation (full float32 logits, log_softmax over every position), for a padded-layout
    batch (`collate_pairs(..., shared_prompt=False)`): the reference the tests and the benchmark compare with."""
    logits = lm(**{k: batch[k] for k in MODEL_INPUTS}).logits.float()
    logps = logits.log_softmax(-1).reshape(-1, logits.shape[-1])[batch["sources"]]
    flat = logps.gather(-1, batch["targets"][:, None]).squeeze(-1)
    mask = batch["response_mask"]
    return torch.zeros(mask.shape, dtype=torch.float32, device=mask.device).masked_scatter(mask, flat)


def takes_block_masks(lm: nn.Module) -> bool:
    """Whether the model's attention takes the shared-prompt layout's custom 4D mask as it is (sdpa and eager do;
    flash-attention kernels and sliding-window models do not)."""
    config = lm.config
    sliding = getattr(config, "sliding_window", None) and getattr(config, "use_sliding_window", True)
    return getattr(config, "_attn_implementation", "eager") in ("sdpa", "eager") and not sliding


class LogpHead(nn.Module):
    """The output projection as one module whose one forward scores every response position (in slices): FSDP2
    gathers the head once around it, where calling the projection slice by slice would gather it per slice."""

    def __init__(self, projection: nn.Module, chunk_size: int = 512, softcap: float | None = None):
        super().__init__()
        self.projection = projection
        self.chunk_size = chunk_size
        self.softcap = softcap

    def forward(self, hidden: torch.Tensor, batch: dict) -> torch.Tensor:
        return response_token_logps(hidden, self.projection, batch, self.chunk_size, self.softcap)


class ResponseLogps(nn.Module):
    """A causal LM whose forward maps a `collate_pairs` batch to response-token log-probs [2B, R].

    `head` is the LM's own output projection (the same module, not a copy), so FSDP2 can shard it as a unit of its
    own: `rayalign.train.sharding`.
    """

    def __init__(self, lm: nn.Module, chunk_size: int = 512):
        super().__init__()
        self.lm = lm
        self.head = LogpHead(lm.get_output_embeddings(), chunk_size,
                             getattr(lm.config, "final_logit_softcapping", None))  # Gemma-2's logit soft-capping

    def forward(self, batch: dict) -> torch.Tensor:
        inputs = {k: batch[k] for k in MODEL_INPUTS}
        if inputs["attention_mask"].dim() == 4 and self.lm.config._attn_implementation == "eager":
            inputs["attention_mask"] = _additive(inputs["attention_mask"], self.lm.dtype)
        hidden = self.lm.get_decoder()(**inputs, use_cache=False).last_hidden_state
        return self.head(hidden, batch)


def _additive(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean attend-mask as eager attention's additive one (0 or the dtype's minimum)."""
    return torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
