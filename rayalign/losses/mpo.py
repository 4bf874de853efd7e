"""MPO: a mirror-descent family of preference losses (after arXiv 2411.06568).

What the paper says, as far as we could read it (arXiv 2411.06568 v1-v3 and the NeurIPS 2025 version, through the
search tool, which returns the abstracts and the TL;DR of the paper's pages, not its method section): MPO is a
family of preference-optimisation losses derived from mirror descent; it recovers DPO and ORPO "for specific
choices of the mirror map"; evolution strategies meta-learn its components, named g, ψ and φ⁻¹; the temporally
aware variant TA-MPO shifts gradually from imitation to preference optimisation, and "temporal awareness combined
with SFT" is what made the discovered losses robust. The exact g, ψ and φ⁻¹ were not available to us, so the
parameterisation below is our choice (papers.md, MPO [open]); what follows the paper is the structure: a mirror
map ψ (ours: ψ_a), a link g applied to a difference of ψ' terms (ours: λ·log σ(β·)), both endpoints, and an
imitation term scheduled over training:

    L = −λ·log σ(β[φ(y_w) − φ(y_l)]) + α·NLL(y_w)/|y_w|
    φ(y) = ψ'_a(p_θ(y)) − κ·ψ'_a(p_ref(y)),   ψ'_a(p) = log p − a·log(1 − p)

with p = exp(logp(y)/|y|^s), s the ``length_power``: s = 0 the sequence probability exp(logp(y)), s = 1 the
per-token mean probability exp(logp(y)/|y|) (a continuous knob, so a search range can hold both endpoints), and
NLL(y_w) = −logp_θ(y_w).

Why this family: ψ'_a is the derivative of the mirror map ψ_a(p) = p log p + a·(1−p) log(1−p)
(up to a constant that cancels in φ(y_w) − φ(y_l)), which is strictly convex on (0, 1) for every
a ≥ 0 (ψ'' = 1/p + a/(1−p)), so each a is a legitimate mirror map; a = 0 is the negative entropy
and a = 1 the Fermi–Dirac entropy. The family is smooth in a handful of interpretable scalars
(a, κ, λ, α, β, and an α schedule), which is what an evolution-strategies search needs, and it
contains both endpoints exactly:

- DPO:  a = 0, κ = 1, λ = 1, α = 0, s = 0 → −log σ(β[Δ(y_w) − Δ(y_l)]).
- ORPO: a = 1, s = 1, κ = 0, β = 1, α = 1, λ = the ORPO weight →
  −logp_θ(y_w)/|y_w| − λ·log σ(log odds(y_w) − log odds(y_l)).

TA-MPO (our schedule): α moves linearly from ``alpha`` to ``alpha_end`` as training progress goes 0 → 1
(imitation early, preference later when alpha > alpha_end). Everything is in log space:
log(1 − p) is computed by ``log1mexp`` with log p clamped just below 0, and with a = 0 it is not
evaluated at all.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from rayalign.losses.pairwise import log1mexp


def mirror_derivative(log_p: Tensor, a: float) -> Tensor:
    """ψ'_a(p) = log p − a·log(1 − p), from log p (≤ 0)."""
    if a == 0:
        return log_p  # negative entropy: the log(1 − p) term is skipped, not multiplied by 0
    return log_p - a * log1mexp(log_p)


def scheduled_alpha(alpha: float, alpha_end: float | None, progress: float) -> float:
    """α at ``progress`` ∈ [0, 1] of training: fixed when alpha_end is None, else linear."""
    if alpha_end is None:
        return alpha
    progress = min(max(progress, 0.0), 1.0)
    return alpha + (alpha_end - alpha) * progress


def _phi(logps: Tensor, ref_logps: Tensor | None, lengths: Tensor,
         a: float, kappa: float, length_power: float) -> Tensor:
    """φ(y) = ψ'_a(p_θ(y)) − κ·ψ'_a(p_ref(y)); the reference is not touched when κ = 0."""
    scale = lengths ** length_power if length_power else 1.0
    phi = mirror_derivative(logps / scale, a)
    if kappa != 0:
        if ref_logps is None:
            raise ValueError(f"mpo with kappa={kappa} needs reference log-probs")
        phi = phi - kappa * mirror_derivative(ref_logps / scale, a)
    return phi


def mpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
             chosen_lengths: Tensor, rejected_lengths: Tensor,
             reference_chosen_logps: Tensor | None = None,
             reference_rejected_logps: Tensor | None = None, *,
             beta: float = 0.1, a: float = 0.0, kappa: float = 1.0, lam: float = 1.0,
             alpha: float = 0.0, length_power: float = 0.0) -> tuple[Tensor, Tensor, Tensor]:
    """Mirror-descent preference loss (our family after arXiv 2411.06568; see the module docstring).

    L = −λ·log σ(β[φ(y_w) − φ(y_l)]) + α·(−logp_θ(y_w))/|y_w|, per pair [B]; the caller takes
    the mean. ``alpha`` is the value at this step (use ``scheduled_alpha`` for time-aware MPO).
    The reference tensors may be None when kappa = 0. Rewards: β·φ(y), detached (equal to DPO's
    β·Δ(y) at the DPO endpoint).
    """
    phi_chosen = _phi(policy_chosen_logps, reference_chosen_logps, chosen_lengths,
                      a, kappa, length_power)
    phi_rejected = _phi(policy_rejected_logps, reference_rejected_logps, rejected_lengths,
                        a, kappa, length_power)
    losses = -lam * F.logsigmoid(beta * (phi_chosen - phi_rejected))
    if alpha != 0:
        losses = losses + alpha * (-policy_chosen_logps / chosen_lengths)
    return losses, (beta * phi_chosen).detach(), (beta * phi_rejected).detach()
