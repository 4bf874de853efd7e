"""The training step, the one path the trainer, the reference pass, sDPO's margins and `rayalign bench` call.

`pair_batch` lays pairs out (`collate_pairs`) on a device; the model (a `ResponseLogps`) maps it to
response-token log-probs [2B, R]; `micro_step` turns policy and reference log-probs into the loss's
inputs, computes the loss and runs backward; `optimizer_step` clips, steps and zeroes.
"""

from __future__ import annotations

import torch

from rayalign.data import collate_pairs
from rayalign.losses import LossInputs, LossOutput, compute_loss


def pair_batch(pairs, pad_id: int, device, shared_prompt: bool = True) -> dict[str, torch.Tensor]:
    return {k: v.to(device) for k, v in collate_pairs(pairs, pad_id, shared_prompt).items()}


@torch.no_grad()
def pair_sums(model, pairs, pad_id: int, micro_batch: int, device, shared_prompt: bool = True) -> torch.Tensor:
    """[N, 4] of each pair under `model`: chosen log-prob sum, rejected sum, chosen length, rejected length."""
    rows = []
    for start in range(0, len(pairs), micro_batch):
        batch = pair_batch(pairs[start:start + micro_batch], pad_id, device, shared_prompt)
        sums, lengths = model(batch).sum(-1).cpu(), batch["lengths"].float().cpu()
        b = sums.shape[0] // 2
        rows.append(torch.stack([sums[:b], sums[b:], lengths[:b], lengths[b:]], dim=1))
    return torch.cat(rows)


def loss_inputs(policy: torch.Tensor, reference: torch.Tensor | None, batch: dict, progress: float) -> LossInputs:
    """Split response-layout [2B, R] token log-probs (chosen rows first) into the loss's inputs."""
    b = policy.shape[0] // 2
    mask, marks = batch["response_mask"], batch["marks"]
    sums = (policy * mask).sum(-1)
    ref_sums = None if reference is None else (reference * mask).sum(-1)
    lengths = batch["lengths"].float()
    return LossInputs(
        policy_chosen_logps=sums[:b], policy_rejected_logps=sums[b:],
        chosen_lengths=lengths[:b], rejected_lengths=lengths[b:],
        reference_chosen_logps=None if ref_sums is None else ref_sums[:b],
        reference_rejected_logps=None if ref_sums is None else ref_sums[b:],
        policy_chosen_token_logps=policy[:b], policy_rejected_token_logps=policy[b:],
        reference_chosen_token_logps=None if reference is None else reference[:b],
        reference_rejected_token_logps=None if reference is None else reference[b:],
        chosen_mask=mask[:b], rejected_mask=mask[b:], chosen_marks=marks[:b], rejected_marks=marks[b:],
        progress=progress,
    )


def micro_step(model, batch: dict, reference: torch.Tensor | None, loss_cfg, progress: float,
               scale: float) -> tuple[LossInputs, LossOutput]:
    """Forward, loss and backward of one micro-batch; the gradient is that of `scale` × the sum of pair losses."""
    inputs = loss_inputs(model(batch), reference, batch, progress)
    out = compute_loss(inputs, loss_cfg)
    (out.losses.sum() * scale).backward()
    return inputs, out


def clip_gradients(model, max_norm: float) -> float:
    """Clip the global gradient norm (0: no clipping); returns the norm before clipping."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)


def optimizer_step(optimizer, scheduler=None) -> None:
    optimizer.step()
    if scheduler is not None:
        scheduler.step()
    optimizer.zero_grad(set_to_none=True)
