"""A Gaussian MLP policy, behaviour cloning, preference optimisation with any rayalign loss, and the return.

The policy is μ_θ(s) = MLP(normalised s) with a fixed σ; it is scored acting its mean with the same action noise
as the policies that made the data (N(0, 0.1²)), so that a weaker controller shows in the return. A segment's log-prob is
Σ_t log p_θ(a_t | s_t) over its real steps with p_θ(a | s) = exp(−‖a − μ_θ(s)‖² / 2σ²): the Gaussian density
divided by its peak, so that 0 < p ≤ 1 as ORPO's odds and the MPO mirror maps need (a density can exceed 1). The
dropped normaliser is a constant (σ fixed), which cancels in every DPO-type difference and only shifts the NLL
terms. Segments play the responses of an LLM pair; their step counts are the lengths.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from rayalign.config import LossConfig, MujocoConfig
from rayalign.losses import LossInputs, compute_loss, metric_sums, needs_reference


class GaussianPolicy(nn.Module):
    def __init__(self, obs_mean: np.ndarray, obs_std: np.ndarray, act_dim: int, hidden: int, std: float):
        super().__init__()
        obs_dim = obs_mean.shape[0]
        self.net = nn.Sequential(nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh(),
                                 nn.Linear(hidden, act_dim))
        self.register_buffer("obs_mean", torch.as_tensor(obs_mean, dtype=torch.float32))
        self.register_buffer("obs_std", torch.as_tensor(obs_std, dtype=torch.float32))
        self.std = std

    def forward(self, obs: Tensor) -> Tensor:
        return self.net((obs - self.obs_mean) / self.obs_std)

    @torch.no_grad()
    def act(self, obs: np.ndarray) -> np.ndarray:
        """The mean action, normalised units, clipped to [-1, 1]."""
        return self(torch.as_tensor(obs, dtype=torch.float32)).clamp(-1, 1).numpy()


def new_policy(data: dict[str, np.ndarray], cfg: MujocoConfig, seed: int) -> GaussianPolicy:
    """A fresh policy whose observation normaliser is the dataset's (all steps of both sides)."""
    torch.manual_seed(seed)
    steps = np.concatenate([data[f"{side}_obs"][data[f"{side}_mask"]] for side in ("chosen", "rejected")])
    return GaussianPolicy(steps.mean(0), steps.std(0) + 1e-6, data["chosen_act"].shape[-1], cfg.hidden,
                          cfg.policy_std)


def segment_logps(policy: GaussianPolicy, obs: Tensor, act: Tensor, mask: Tensor) -> Tensor:
    """[N]: Σ over each segment's real steps of −‖a − μ(s)‖² / 2σ² (see the module docstring)."""
    step = -((act - policy(obs)) ** 2).sum(-1) / (2 * policy.std ** 2)
    return (step * mask).sum(-1)


def tensors(data: dict[str, np.ndarray]) -> dict[str, Tensor]:
    return {key: torch.as_tensor(value, dtype=torch.float32) for key, value in data.items()}


def behaviour_clone(policy: GaussianPolicy, data: dict[str, Tensor], cfg: MujocoConfig, seed: int) -> list[float]:
    """Maximise the per-step log-likelihood of the chosen segments (the reference; SFT on the preferred data).
    Returns the loss every step."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    lengths = data["chosen_mask"].sum(-1)
    losses = []
    for _ in range(cfg.bc_steps):
        idx = torch.randint(len(lengths), (cfg.batch_size,), generator=generator)
        logps = _side(policy, data, "chosen", idx)
        loss = -(logps.sum() / lengths[idx].sum())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def _side(policy: GaussianPolicy, data: dict[str, Tensor], side: str, idx: Tensor) -> Tensor:
    return segment_logps(policy, data[f"{side}_obs"][idx], data[f"{side}_act"][idx], data[f"{side}_mask"][idx])


def preference_optimise(policy: GaussianPolicy, reference: GaussianPolicy | None, data: dict[str, Tensor],
                        loss_cfg: LossConfig, cfg: MujocoConfig, seed: int, log=None) -> dict[str, float]:
    """`cfg.po_steps` Adam steps of rayalign's `loss_cfg` on random batches of pairs; `log(metrics, step)` every
    `cfg.log_every` steps with TRL's metric names. Returns the last step's metrics."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.po_lr)
    every = torch.arange(len(data["chosen_mask"]))
    reference_logps = None
    if needs_reference(loss_cfg):
        with torch.no_grad():
            reference_logps = {side: _side(reference, data, side, every) for side in ("chosen", "rejected")}
    lengths = {side: data[f"{side}_mask"].sum(-1) for side in ("chosen", "rejected")}
    metrics: dict[str, float] = {}
    for step in range(cfg.po_steps):
        idx = torch.randint(len(every), (cfg.batch_size,), generator=generator)
        inputs = LossInputs(_side(policy, data, "chosen", idx), _side(policy, data, "rejected", idx),
                            lengths["chosen"][idx], lengths["rejected"][idx], progress=step / cfg.po_steps)
        if reference_logps is not None:
            inputs.reference_chosen_logps = reference_logps["chosen"][idx]
            inputs.reference_rejected_logps = reference_logps["rejected"][idx]
        out = compute_loss(inputs, loss_cfg)
        optimizer.zero_grad()
        out.losses.mean().backward()
        optimizer.step()
        if log is not None and ((step + 1) % cfg.log_every == 0 or step + 1 == cfg.po_steps):
            metrics = {key: value.item() / cfg.batch_size for key, value in metric_sums(inputs, out).items()}
            log(metrics, step + 1)
    return metrics


def policy_returns(policy: GaussianPolicy, env_name: str, episodes: int, seed: int) -> list[float]:
    """The policy's return, acting its mean with the experts' action noise (``experts.episode_returns``)."""
    from rayalign.mujoco_po.experts import episode_returns

    return episode_returns(lambda obs, env: policy.act(obs), env_name, episodes, seed)
