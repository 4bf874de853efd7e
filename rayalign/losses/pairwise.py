"""Pairwise preference losses on sequence log-probabilities.

Every function is a pure function of tensors of shape [B] (B = number of pairs) and returns
``(losses, chosen_rewards, rejected_rewards)``: the per-pair loss (the caller takes the mean)
and the detached implicit rewards used for logging (reward accuracy, margins).

``*_logps`` are summed response log-probabilities Σ_t log π(y_t | x, y_<t); ``*_lengths`` are the
response token counts |y| as floats. Formulas follow /work/shared/papers.md, "Pairwise losses".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

Triple = tuple[Tensor, Tensor, Tensor]


def log1mexp(x: Tensor) -> Tensor:
    """log(1 − exp(x)) for x ≤ 0, stable at both ends.

    x is clamped just below 0 so that p = 1 gives a large negative number, not log(0) = −inf.
    Near 0, log(−expm1(x)) keeps the precision that 1 − exp(x) would cancel away; far below 0,
    log1p(−exp(x)) is the accurate form (Mächler 2012, "Accurately computing log(1 − exp(−|a|))").
    """
    x = x.clamp(max=-torch.finfo(x.dtype).eps)
    near_zero = x > -0.6931471805599453  # −ln 2: the switch point of the two forms
    return torch.where(near_zero, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def log_odds(logps: Tensor, lengths: Tensor) -> Tensor:
    """ORPO's log odds(y) = log p − log(1 − p) with p = exp(logp/|y|) the per-token mean probability."""
    mean_logp = logps / lengths
    return mean_logp - log1mexp(mean_logp)


def _reference_rewards(beta: float, pc: Tensor, pr: Tensor, rc: Tensor, rr: Tensor) -> tuple[Tensor, Tensor]:
    return (beta * (pc - rc)).detach(), (beta * (pr - rr)).detach()


def dpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
             reference_chosen_logps: Tensor, reference_rejected_logps: Tensor,
             beta: float = 0.1, label_smoothing: float = 0.0) -> Triple:
    """DPO, Rafailov et al. 2023, arXiv 2305.18290, Eq. 7; cDPO label smoothing (Mitchell 2023).

    loss = −(1−ε)·log σ(β d) − ε·log σ(−β d), with d = Δ(y_w) − Δ(y_l) and
    Δ(y) = logp_θ(y) − logp_ref(y). ε = 0 is plain DPO; at policy = reference the loss is ln 2.
    Per pair; the caller takes the mean. Rewards: β·Δ(y) (the implicit reward of Eq. 5).
    """
    d = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    losses = -F.logsigmoid(beta * d)
    if label_smoothing:
        # −(1−ε)·logσ(z) − ε·logσ(−z); skipped for ε = 0 so that plain DPO is bit-exact.
        losses = (1 - label_smoothing) * losses - label_smoothing * F.logsigmoid(-beta * d)
    return (losses, *_reference_rewards(beta, policy_chosen_logps, policy_rejected_logps,
                                        reference_chosen_logps, reference_rejected_logps))


def ipo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
             reference_chosen_logps: Tensor, reference_rejected_logps: Tensor,
             chosen_lengths: Tensor, rejected_lengths: Tensor,
             beta: float = 0.1, length_normalised: bool = True) -> Triple:
    """IPO, Azar et al. 2023, arXiv 2310.12036, Eq. 17 (β plays the role of τ).

    loss = (h − 1/(2β))², h = Δ(y_w)/|y_w| − Δ(y_l)/|y_l| when ``length_normalised`` (the default,
    as in TRL), or h = Δ(y_w) − Δ(y_l) on summed log-probs (as in OpenRLHF and the paper).
    Per pair; the caller takes the mean. Rewards: β·Δ(y) on summed log-probs, as for DPO.
    """
    chosen = policy_chosen_logps - reference_chosen_logps
    rejected = policy_rejected_logps - reference_rejected_logps
    if length_normalised:
        chosen, rejected = chosen / chosen_lengths, rejected / rejected_lengths
    losses = (chosen - rejected - 1 / (2 * beta)) ** 2
    return (losses, *_reference_rewards(beta, policy_chosen_logps, policy_rejected_logps,
                                        reference_chosen_logps, reference_rejected_logps))


def hinge_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
               reference_chosen_logps: Tensor, reference_rejected_logps: Tensor,
               beta: float = 0.1) -> Triple:
    """Hinge, after SLiC-HF's rank-calibration loss (Zhao et al. 2023, arXiv 2305.10425, Sec. 2).

    loss = max(0, 1 − β d), d = Δ(y_w) − Δ(y_l) as in DPO. This is β times SLiC's
    max(0, δ − logp(y_w) + logp(y_l)) with margin δ = 1/β and the reference log-ratio Δ in place of
    the raw log-prob (the form in papers.md and TRL's "hinge"). Per pair; the caller takes the mean. Rewards: β·Δ(y).
    """
    d = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    losses = torch.relu(1 - beta * d)
    return (losses, *_reference_rewards(beta, policy_chosen_logps, policy_rejected_logps,
                                        reference_chosen_logps, reference_rejected_logps))


def simpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
               chosen_lengths: Tensor, rejected_lengths: Tensor,
               beta: float = 0.1, gamma: float = 0.5) -> Triple:
    """SimPO, Meng et al. 2024, arXiv 2405.14734, Eq. 6; no reference model.

    loss = −log σ(β·logp_θ(y_w)/|y_w| − β·logp_θ(y_l)/|y_l| − γ), γ the target margin (outside β,
    as in the paper). Per pair; the caller takes the mean. Rewards: β·logp_θ(y)/|y| (Eq. 4).
    """
    chosen = beta * policy_chosen_logps / chosen_lengths
    rejected = beta * policy_rejected_logps / rejected_lengths
    losses = -F.logsigmoid(chosen - rejected - gamma)
    return losses, chosen.detach(), rejected.detach()


def orpo_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
              chosen_lengths: Tensor, rejected_lengths: Tensor,
              lam: float = 0.1, beta: float = 0.1) -> Triple:
    """ORPO, Hong et al. 2024, arXiv 2403.07691, Eqs. 6–7; no reference model.

    loss = −logp_θ(y_w)/|y_w| − λ·log σ(log odds(y_w) − log odds(y_l)), odds(y) = p/(1−p) with
    p = exp(logp_θ(y)/|y|); log(1−p) is computed stably (``log1mexp``). The first term is the
    length-normalised NLL of the chosen response (the SFT term). Per pair; the caller takes the
    mean. Rewards: β·logp_θ(y)/|y| (β only scales the logged reward; it is not in the loss).
    """
    nll = -policy_chosen_logps / chosen_lengths
    ratio = log_odds(policy_chosen_logps, chosen_lengths) - log_odds(policy_rejected_logps, rejected_lengths)
    losses = nll - lam * F.logsigmoid(ratio)
    chosen = (beta * policy_chosen_logps / chosen_lengths).detach()
    rejected = (beta * policy_rejected_logps / rejected_lengths).detach()
    return losses, chosen, rejected


def dpop_loss(policy_chosen_logps: Tensor, policy_rejected_logps: Tensor,
              reference_chosen_logps: Tensor, reference_rejected_logps: Tensor,
              beta: float = 0.1, lam: float = 50.0) -> Triple:
    """DPO-Positive (Smaug), Pal et al. 2024, arXiv 2402.13228, the DPOP loss of Sec. 3.

    loss = −log σ(β[d − λ·max(0, logp_ref(y_w) − logp_θ(y_w))]): DPO plus a penalty whenever the
    chosen response becomes less likely than under the reference. Per pair; the caller takes the
    mean. Rewards: β·Δ(y), as for DPO.
    """
    d = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    penalty = torch.relu(reference_chosen_logps - policy_chosen_logps)
    losses = -F.logsigmoid(beta * (d - lam * penalty))
    return (losses, *_reference_rewards(beta, policy_chosen_logps, policy_rejected_logps,
                                        reference_chosen_logps, reference_rejected_logps))
