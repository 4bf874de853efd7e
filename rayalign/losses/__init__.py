"""The loss registry: one explicit dict from ``loss.name`` to a :class:`LossSpec`.

The trainer builds a :class:`LossInputs` from the model's log-probs and calls
:func:`compute_loss`; the spec tells it beforehand what to compute (reference log-probs,
token-level log-probs). The formulas live in pure tensor functions in ``pairwise``, ``bmc``
and ``mpo``; the adapters here only pick the hyper-parameters out of :class:`LossConfig`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from rayalign.config import LossConfig
from rayalign.errors import ConfigError
from rayalign.losses import bmc, mpo, pairwise


@dataclass
class LossInputs:
    """All tensors float, shape [B] (B = number of pairs) unless noted."""

    policy_chosen_logps: Tensor       # Σ_t log π_θ(y_w,t) over response tokens
    policy_rejected_logps: Tensor
    chosen_lengths: Tensor            # response token counts |y| (float)
    rejected_lengths: Tensor
    reference_chosen_logps: Tensor | None = None
    reference_rejected_logps: Tensor | None = None
    # token level, for token-weighted losses (bmc); [B, T], padded, with masks
    policy_chosen_token_logps: Tensor | None = None
    policy_rejected_token_logps: Tensor | None = None
    reference_chosen_token_logps: Tensor | None = None
    reference_rejected_token_logps: Tensor | None = None
    chosen_mask: Tensor | None = None     # bool [B, T]: real response tokens
    rejected_mask: Tensor | None = None
    chosen_marks: Tensor | None = None    # bool [B, T]: BMC "varied" tokens
    rejected_marks: Tensor | None = None
    progress: float = 0.0                 # fraction of training done, in [0, 1] (time-aware MPO)


@dataclass
class LossOutput:
    losses: Tensor            # [B] per-pair loss; the batch loss is losses.mean()
    chosen_rewards: Tensor    # [B], detached
    rejected_rewards: Tensor  # [B], detached
    metrics: dict[str, Tensor] = field(default_factory=dict)  # extra per-batch scalars, e.g. "nll_loss"


@dataclass(frozen=True)
class LossSpec:
    fn: Callable[[LossInputs, LossConfig], LossOutput]
    needs_reference: bool | Callable[[LossConfig], bool]
    """Whether reference log-probs must be computed (a function of the config for mpo)."""
    needs_token_logps: bool
    """Whether the per-token log-probs, masks and BMC marks must be filled in."""
    needs_nll: bool
    """Whether the loss has an NLL term on the chosen response (reported as metrics['nll_loss'])."""
    length_normalised: bool
    """Whether the loss uses per-token means logp/|y| (in its default form)."""
    doc: str


def _refs(x: LossInputs) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    return x.policy_chosen_logps, x.policy_rejected_logps, x.reference_chosen_logps, x.reference_rejected_logps


def _output(triple: tuple[Tensor, Tensor, Tensor], **metrics: Tensor) -> LossOutput:
    return LossOutput(*triple, metrics={k: v.detach() for k, v in metrics.items()})


def _chosen_nll(x: LossInputs) -> Tensor:
    return (-x.policy_chosen_logps / x.chosen_lengths).mean()


def _dpo(x: LossInputs, cfg: LossConfig) -> LossOutput:
    return _output(pairwise.dpo_loss(*_refs(x), beta=cfg.beta, label_smoothing=cfg.label_smoothing))


def _ipo(x: LossInputs, cfg: LossConfig) -> LossOutput:
    return _output(pairwise.ipo_loss(*_refs(x), x.chosen_lengths, x.rejected_lengths, beta=cfg.beta,
                                     length_normalised=cfg.ipo_length_normalised))


def _hinge(x: LossInputs, cfg: LossConfig) -> LossOutput:
    return _output(pairwise.hinge_loss(*_refs(x), beta=cfg.beta))


def _simpo(x: LossInputs, cfg: LossConfig) -> LossOutput:
    return _output(pairwise.simpo_loss(x.policy_chosen_logps, x.policy_rejected_logps, x.chosen_lengths,
                                       x.rejected_lengths, beta=cfg.beta, gamma=cfg.simpo_gamma))


def _orpo(x: LossInputs, cfg: LossConfig) -> LossOutput:
    triple = pairwise.orpo_loss(x.policy_chosen_logps, x.policy_rejected_logps, x.chosen_lengths,
                                x.rejected_lengths, lam=cfg.orpo_lambda, beta=cfg.beta)
    ratio = (pairwise.log_odds(x.policy_chosen_logps, x.chosen_lengths)
             - pairwise.log_odds(x.policy_rejected_logps, x.rejected_lengths))
    return _output(triple, nll_loss=_chosen_nll(x), log_odds_ratio=ratio.mean())


def _dpop(x: LossInputs, cfg: LossConfig) -> LossOutput:
    penalty = torch.relu(x.reference_chosen_logps - x.policy_chosen_logps).mean()
    return _output(pairwise.dpop_loss(*_refs(x), beta=cfg.beta, lam=cfg.dpop_lambda), dpop_penalty=penalty)


def _bmc(x: LossInputs, cfg: LossConfig) -> LossOutput:
    marked = (x.chosen_marks & x.chosen_mask).sum(-1) + (x.rejected_marks & x.rejected_mask).sum(-1)
    return _output(bmc.bmc_loss(
        x.policy_chosen_token_logps, x.policy_rejected_token_logps,
        x.reference_chosen_token_logps, x.reference_rejected_token_logps,
        x.chosen_mask, x.rejected_mask, x.chosen_marks, x.rejected_marks,
        beta=cfg.beta, delta=cfg.bmc_delta), marked_tokens=marked.float().mean())


def _mpo(x: LossInputs, cfg: LossConfig) -> LossOutput:
    alpha = mpo.scheduled_alpha(cfg.mpo_alpha, cfg.mpo_alpha_end, x.progress)
    triple = mpo.mpo_loss(x.policy_chosen_logps, x.policy_rejected_logps, x.chosen_lengths, x.rejected_lengths,
                          x.reference_chosen_logps, x.reference_rejected_logps, beta=cfg.beta, a=cfg.mpo_a,
                          kappa=cfg.mpo_kappa, lam=cfg.mpo_lambda, alpha=alpha,
                          length_power=cfg.mpo_length_power)
    return _output(triple, nll_loss=_chosen_nll(x), alpha=torch.tensor(alpha))


LOSSES: dict[str, LossSpec] = {
    "dpo": LossSpec(_dpo, True, False, False, False,
                    "DPO −log σ(βd), with cDPO label smoothing (arXiv 2305.18290)"),
    "ipo": LossSpec(_ipo, True, False, False, True,
                    "IPO (h − 1/(2β))², per-token log-ratios by default (arXiv 2310.12036)"),
    "hinge": LossSpec(_hinge, True, False, False, False,
                      "hinge max(0, 1 − βd) (SLiC-HF, arXiv 2305.10425)"),
    "simpo": LossSpec(_simpo, False, False, False, True,
                      "SimPO: reference-free, length-normalised, margin γ (arXiv 2405.14734)"),
    "orpo": LossSpec(_orpo, False, False, True, True,
                     "ORPO: NLL + λ·odds-ratio term, reference-free (arXiv 2403.07691)"),
    "dpop": LossSpec(_dpop, True, False, False, False,
                     "DPO-Positive: DPO plus a penalty on the chosen log-prob falling (arXiv 2402.13228)"),
    "bmc": LossSpec(_bmc, True, True, False, False,
                    "BMC: DPO on log-probs with varied tokens up-weighted by min(1/p, δ) (arXiv 2408.07471)"),
    "mpo": LossSpec(_mpo, lambda cfg: cfg.mpo_kappa != 0, False, True, False,
                    "mirror-descent family containing DPO and ORPO (our parameterisation, after arXiv 2411.06568)"),
}


def get_loss(name: str) -> LossSpec:
    try:
        return LOSSES[name]
    except KeyError:
        raise ConfigError(f"loss.name '{name}' is unknown: choose one of {', '.join(LOSSES)}") from None


def needs_reference(cfg: LossConfig) -> bool:
    """Whether the configured loss needs reference log-probs (mpo only when mpo_kappa != 0)."""
    flag = get_loss(cfg.name).needs_reference
    return bool(flag(cfg)) if callable(flag) else flag


_REFERENCE_FIELDS = ("reference_chosen_logps", "reference_rejected_logps")
_TOKEN_FIELDS = ("policy_chosen_token_logps", "policy_rejected_token_logps", "reference_chosen_token_logps",
                 "reference_rejected_token_logps", "chosen_mask", "rejected_mask", "chosen_marks", "rejected_marks")


def compute_loss(inputs: LossInputs, cfg: LossConfig) -> LossOutput:
    """Dispatch on cfg.name with cfg's hyper-parameters; missing inputs are a trainer bug (ValueError)."""
    spec = get_loss(cfg.name)
    required = (_REFERENCE_FIELDS if needs_reference(cfg) and not spec.needs_token_logps else ())
    required += _TOKEN_FIELDS if spec.needs_token_logps else ()
    missing = [name for name in required if getattr(inputs, name) is None]
    if missing:
        raise ValueError(f"loss '{cfg.name}' needs {', '.join(missing)} in LossInputs")
    return spec.fn(inputs, cfg)


def metric_sums(inputs: LossInputs, out: LossOutput) -> dict[str, Tensor]:
    """TRL's metrics of a batch, as sums over its pairs (divide by the pair count, after any all-reduce)."""
    return {
        "loss": out.losses.detach().sum(),
        "rewards/chosen": out.chosen_rewards.sum(),
        "rewards/rejected": out.rejected_rewards.sum(),
        "rewards/accuracies": (out.chosen_rewards > out.rejected_rewards).float().sum(),
        "rewards/margins": (out.chosen_rewards - out.rejected_rewards).sum(),
        "logps/chosen": inputs.policy_chosen_logps.detach().sum(),
        "logps/rejected": inputs.policy_rejected_logps.detach().sum(),
        **{k: v.detach() * out.losses.shape[0] for k, v in out.metrics.items()},
    }


__all__ = ["LOSSES", "LossInputs", "LossOutput", "LossSpec", "compute_loss", "get_loss", "metric_sums",
           "needs_reference"]
