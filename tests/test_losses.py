"""Tests of rayalign.losses: hand-computed values, the MPO endpoints, gradients, the registry."""

from __future__ import annotations

import math

import pytest
import torch

from rayalign.config import LossConfig
from rayalign.errors import ConfigError
from rayalign.losses import LOSSES, LossInputs, compute_loss, get_loss, needs_reference
from rayalign.losses import bmc as bmc_mod
from rayalign.losses import mpo as mpo_mod
from rayalign.losses.bmc import bmc_loss, bmc_weights, stopword_token_ids, varied_token_marks
from rayalign.losses.pairwise import dpo_loss, log1mexp

F64 = torch.float64

# Three made-up pairs. By hand: Δw = PC − RC = [0.5, −0.5, 0.3], Δl = PR − RR = [−0.5, 0.5, −0.2],
# d = Δw − Δl = [1.0, −1.0, 0.5]; per-token means PC/LC = [−0.5, −0.75, −0.2],
# PR/LR = [−1, −0.4, −0.6].
PC, PR = [-1.0, -3.0, -0.2], [-3.0, -2.0, -1.2]
RC, RR = [-1.5, -2.5, -0.5], [-2.5, -2.5, -1.0]
LC, LR = [2.0, 4.0, 1.0], [3.0, 5.0, 2.0]
D = [1.0, -1.0, 0.5]
MW, ML = [-0.5, -0.75, -0.2], [-1.0, -0.4, -0.6]


def t(values, requires_grad=False):
    return torch.tensor(values, dtype=F64, requires_grad=requires_grad)


def inputs(**overrides) -> LossInputs:
    fields = dict(policy_chosen_logps=t(PC), policy_rejected_logps=t(PR), chosen_lengths=t(LC),
                  rejected_lengths=t(LR), reference_chosen_logps=t(RC), reference_rejected_logps=t(RR))
    fields.update(overrides)
    return LossInputs(**fields)


def losses_of(name, **cfg):
    return compute_loss(inputs(), LossConfig(name=name, **cfg)).losses.tolist()


def neg_log_sigmoid(z):
    return -math.log(1 / (1 + math.exp(-z)))


# ---------------------------------------------------------------- hand-computed values

def test_dpo_by_hand():
    expected = [-math.log(1 / (1 + math.exp(-0.1 * d))) for d in D]
    assert losses_of("dpo", beta=0.1) == pytest.approx(expected, abs=1e-12)
    out = compute_loss(inputs(), LossConfig(name="dpo", beta=0.1))
    assert out.chosen_rewards.tolist() == pytest.approx([0.05, -0.05, 0.03], abs=1e-12)
    assert out.rejected_rewards.tolist() == pytest.approx([-0.05, 0.05, -0.02], abs=1e-12)
    assert not out.chosen_rewards.requires_grad


def test_dpo_label_smoothing_by_hand():
    eps, beta = 0.2, 0.1
    expected = [(1 - eps) * neg_log_sigmoid(beta * d) + eps * neg_log_sigmoid(-beta * d) for d in D]
    assert losses_of("dpo", beta=beta, label_smoothing=eps) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_dpo_is_ln2_when_policy_is_reference(eps):
    logps = torch.tensor([-12.3, -40.0, -0.7])
    losses, chosen, rejected = dpo_loss(logps, logps + 1, logps, logps + 1, beta=0.1, label_smoothing=eps)
    assert torch.allclose(losses, torch.full((3,), math.log(2)), rtol=0, atol=1e-7)
    assert chosen.abs().max() == 0 and rejected.abs().max() == 0
    exact, *_ = dpo_loss(logps.double(), logps.double(), logps.double(), logps.double(), label_smoothing=eps)
    assert exact.tolist() == pytest.approx([math.log(2)] * 3, rel=1e-15)


def test_ipo_by_hand_both_forms():
    # length-normalised: h = Δw/|yw| − Δl/|yl| = [0.25 + 1/6, −0.125 − 0.1, 0.3 + 0.1]; 1/(2β) = 5
    h = [0.25 + 1 / 6, -0.225, 0.4]
    assert losses_of("ipo", beta=0.1) == pytest.approx([(x - 5) ** 2 for x in h], abs=1e-12)
    # sums (OpenRLHF): h = d
    assert losses_of("ipo", beta=0.1, ipo_length_normalised=False) == pytest.approx([16.0, 36.0, 20.25])


def test_hinge_by_hand():
    assert losses_of("hinge", beta=0.1) == pytest.approx([0.9, 1.1, 0.95], abs=1e-12)
    assert losses_of("hinge", beta=2.0) == pytest.approx([0.0, 3.0, 0.0], abs=1e-12)


def test_simpo_by_hand():
    # z = β(mw − ml) − γ with β = 2, γ = 0.5
    z = [2 * 0.5 - 0.5, 2 * -0.35 - 0.5, 2 * 0.4 - 0.5]
    out = compute_loss(inputs(reference_chosen_logps=None, reference_rejected_logps=None),
                       LossConfig(name="simpo", beta=2.0, simpo_gamma=0.5))
    assert out.losses.tolist() == pytest.approx([math.log(1 + math.exp(-x)) for x in z], abs=1e-12)
    assert out.chosen_rewards.tolist() == pytest.approx([-1.0, -1.5, -0.4], abs=1e-12)


def test_orpo_by_hand():
    lam = 0.1

    def log_odds(m):
        return m - math.log(1 - math.exp(m))

    expected = [-mw + lam * neg_log_sigmoid(log_odds(mw) - log_odds(ml)) for mw, ml in zip(MW, ML)]
    out = compute_loss(inputs(reference_chosen_logps=None, reference_rejected_logps=None),
                       LossConfig(name="orpo", orpo_lambda=lam, beta=0.1))
    assert out.losses.tolist() == pytest.approx(expected, abs=1e-12)
    assert out.metrics["nll_loss"].item() == pytest.approx(-sum(MW) / 3, abs=1e-12)
    assert out.chosen_rewards.tolist() == pytest.approx([0.1 * m for m in MW], abs=1e-12)


def test_orpo_is_finite_at_the_extremes():
    pc = torch.tensor([0.0, -1e-9, -300.0], requires_grad=True)  # p = 1, p ≈ 1, p ≈ 0
    out = compute_loss(LossInputs(pc, torch.tensor([-1.0, -2.0, -0.5]), torch.ones(3), torch.ones(3)),
                       LossConfig(name="orpo"))
    out.losses.sum().backward()
    assert torch.isfinite(out.losses).all() and torch.isfinite(pc.grad).all()


def test_log1mexp_matches_math():
    xs = [-1e-10, -1e-5, -0.3, -0.7, -2.0, -40.0]
    assert log1mexp(t(xs)).tolist() == pytest.approx([math.log(-math.expm1(x)) for x in xs], rel=1e-12)


def test_dpop_by_hand():
    # penalty = max(0, RC − PC) = [0, 0.5, 0]; z = β(d − λ·penalty)
    z = [0.1 * 1.0, 0.1 * (-1.0 - 50 * 0.5), 0.1 * 0.5]
    assert losses_of("dpop", beta=0.1, dpop_lambda=50.0) == pytest.approx([neg_log_sigmoid(x) for x in z], abs=1e-12)


def test_mpo_by_hand_general_point():
    # a = 0.5, κ = 0.5, λ = 2, β = 0.5, α = 0.3, length-normalised: φ = ψ'(m_θ) − κψ'(m_ref)
    def psi(m):
        return m - 0.5 * math.log(1 - math.exp(m))

    cfg = LossConfig(name="mpo", beta=0.5, mpo_a=0.5, mpo_kappa=0.5, mpo_lambda=2.0, mpo_alpha=0.3,
                     mpo_length_power=1.0)
    expected = []
    for pc, pr, rc, rr, lc, lr in zip(PC, PR, RC, RR, LC, LR):
        phi_w = psi(pc / lc) - 0.5 * psi(rc / lc)
        phi_l = psi(pr / lr) - 0.5 * psi(rr / lr)
        expected.append(2.0 * neg_log_sigmoid(0.5 * (phi_w - phi_l)) + 0.3 * (-pc / lc))
    assert compute_loss(inputs(), cfg).losses.tolist() == pytest.approx(expected, abs=1e-12)


def test_mpo_length_power_between_the_endpoints_by_hand():
    # s = 0.5, a = 0, κ = 1: φ(y) = (logp_θ(y) − logp_ref(y)) / √|y|, so β scales each side by its own length
    cfg = LossConfig(name="mpo", beta=0.2, mpo_length_power=0.5)
    expected = [neg_log_sigmoid(0.2 * ((pc - rc) / math.sqrt(lc) - (pr - rr) / math.sqrt(lr)))
                for pc, pr, rc, rr, lc, lr in zip(PC, PR, RC, RR, LC, LR)]
    assert compute_loss(inputs(), cfg).losses.tolist() == pytest.approx(expected, abs=1e-12)


def test_mpo_time_aware_alpha():
    cfg = dict(mpo_alpha=1.0, mpo_alpha_end=0.0)
    at_half = compute_loss(inputs(progress=0.5), LossConfig(name="mpo", **cfg))
    no_nll = compute_loss(inputs(), LossConfig(name="mpo"))
    diff = (at_half.losses - no_nll.losses).tolist()
    assert diff == pytest.approx([0.5 * -m for m in MW], abs=1e-12)
    assert at_half.metrics["alpha"].item() == pytest.approx(0.5)
    end = compute_loss(inputs(progress=1.0), LossConfig(name="mpo", **cfg))
    assert torch.allclose(end.losses, no_nll.losses, atol=1e-12)


def test_ta_mpo_starts_at_dpo_plus_nll_and_ends_at_dpo():
    """TA-MPO at the DPO point of the family with α from 1 to 0: at the start it is the DPO loss plus the chosen
    response's length-normalised NLL, at the end exactly DPO (both computed by other code: the dpo loss, by hand)."""
    x = random_inputs(5)
    cfg = LossConfig(name="mpo", beta=0.1, mpo_a=0.0, mpo_kappa=1.0, mpo_lambda=1.0, mpo_alpha=1.0,
                     mpo_alpha_end=0.0)
    dpo = compute_loss(x, LossConfig(name="dpo", beta=0.1)).losses
    x.progress = 0.0
    start = compute_loss(x, cfg).losses
    assert torch.allclose(start, dpo - x.policy_chosen_logps / x.chosen_lengths, rtol=0, atol=1e-6)
    x.progress = 1.0
    assert torch.allclose(compute_loss(x, cfg).losses, dpo, rtol=0, atol=1e-6)


def test_mpo_with_a_zero_never_evaluates_log1mexp(monkeypatch):
    def boom(x):
        raise AssertionError("log(1 - p) evaluated with a = 0")

    monkeypatch.setattr(mpo_mod, "log1mexp", boom)
    compute_loss(inputs(), LossConfig(name="mpo", mpo_a=0.0))
    compute_loss(inputs(), LossConfig(name="mpo", mpo_a=0.0, mpo_length_power=1.0))


# ---------------------------------------------------------------- MPO endpoints

def random_inputs(seed: int, with_reference: bool = True) -> LossInputs:
    g = torch.Generator().manual_seed(seed)
    B = 16
    lc = torch.randint(1, 60, (B,), generator=g).to(F64)
    lr = torch.randint(1, 60, (B,), generator=g).to(F64)
    mean = lambda: -3 * torch.rand(B, generator=g, dtype=F64) - 1e-3  # noqa: E731 (per-token mean logp)
    x = LossInputs(mean() * lc, mean() * lr, lc, lr)
    if with_reference:
        x.reference_chosen_logps, x.reference_rejected_logps = mean() * lc, mean() * lr
    return x


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_mpo_dpo_endpoint(seed, beta):
    x = random_inputs(seed)
    mpo = compute_loss(x, LossConfig(name="mpo", beta=beta, mpo_a=0.0, mpo_kappa=1.0, mpo_lambda=1.0,
                                     mpo_alpha=0.0, mpo_length_power=0.0))
    dpo = compute_loss(x, LossConfig(name="dpo", beta=beta))
    assert torch.allclose(mpo.losses, dpo.losses, rtol=0, atol=1e-6)
    assert torch.allclose(mpo.chosen_rewards, dpo.chosen_rewards, rtol=0, atol=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("lam", [0.1, 0.5, 2.0])
def test_mpo_orpo_endpoint(seed, lam):
    x = random_inputs(seed, with_reference=False)  # κ = 0: no reference needed
    mpo = compute_loss(x, LossConfig(name="mpo", beta=1.0, mpo_a=1.0, mpo_kappa=0.0, mpo_lambda=lam,
                                     mpo_alpha=1.0, mpo_length_power=1.0))
    orpo = compute_loss(x, LossConfig(name="orpo", orpo_lambda=lam))
    assert torch.allclose(mpo.losses, orpo.losses, rtol=0, atol=1e-6)


def test_mpo_orpo_endpoint_float32():
    x64 = random_inputs(7, with_reference=False)
    x = LossInputs(*(v.float() for v in (x64.policy_chosen_logps, x64.policy_rejected_logps,
                                          x64.chosen_lengths, x64.rejected_lengths)))
    mpo = compute_loss(x, LossConfig(name="mpo", beta=1.0, mpo_a=1.0, mpo_kappa=0.0, mpo_lambda=0.3,
                                     mpo_alpha=1.0, mpo_length_power=1.0))
    orpo = compute_loss(x, LossConfig(name="orpo", orpo_lambda=0.3))
    assert torch.allclose(mpo.losses, orpo.losses, rtol=0, atol=1e-6)


# ---------------------------------------------------------------- gradients

@pytest.mark.parametrize("eps", [0.0, 0.25])
def test_dpo_gradient_matches_finite_differences(eps):
    args = tuple(t(v, requires_grad=True) for v in (PC, PR, RC, RR))
    assert torch.autograd.gradcheck(lambda *a: dpo_loss(*a, beta=0.7, label_smoothing=eps)[0], args)
    # and the closed form: ∂L/∂logp_θ(y_w) = −β·σ(−βd) for ε = 0
    if eps == 0:
        losses, *_ = dpo_loss(*args, beta=0.7)
        losses.sum().backward()
        expected = [-0.7 / (1 + math.exp(0.7 * d)) for d in D]
        assert args[0].grad.tolist() == pytest.approx(expected, abs=1e-12)


def token_batch(seed, logp_range):
    g = torch.Generator().manual_seed(seed)
    lo, hi = logp_range
    shape = (3, 6)
    mask = torch.ones(shape, dtype=torch.bool)
    mask[0, 4:] = False
    mask[2, 5:] = False
    marks = torch.rand(shape, generator=g) < 0.5
    logps = [lo + (hi - lo) * torch.rand(shape, generator=g, dtype=F64) for _ in range(4)]
    return logps, mask, marks


def test_bmc_gradient_matches_finite_differences_where_weights_are_capped():
    # all token probabilities below 1/δ: every marked weight is the constant 1 + δ, so the loss is
    # locally linear in the weights' inputs and plain finite differences are the true gradient.
    logps, mask, marks = token_batch(0, (-4.0, -1.0))
    logps = [x.requires_grad_() for x in logps]

    def f(pc, pr, rc, rr):
        return bmc_loss(pc, pr, rc, rr, mask, mask, marks, ~marks, beta=0.3, delta=2.0)[0]

    assert torch.autograd.gradcheck(f, tuple(logps))


def test_bmc_weights_carry_no_gradient():
    logps, mask, marks = token_batch(1, (-0.6, -0.05))  # 1/p < δ = 3: the weights vary with p
    pc = logps[0].clone().requires_grad_()
    w = bmc_weights(pc, marks, mask, 3.0)
    assert not w.requires_grad

    def loss(x):
        return bmc_loss(x, logps[1], logps[2], logps[3], mask, mask, marks, marks, beta=0.5, delta=3.0)[0].sum()

    loss(pc).backward()
    # finite differences of the loss with the weights frozen at their current value
    w_rej = bmc_weights(logps[1], marks, mask, 3.0)
    w_ref_c, w_ref_r = bmc_weights(logps[2], marks, mask, 3.0), bmc_weights(logps[3], marks, mask, 3.0)

    def frozen(x):
        chosen = (w * x).sum(-1) - (w_ref_c * logps[2]).sum(-1)
        z = chosen - ((w_rej * logps[1]).sum(-1) - (w_ref_r * logps[3]).sum(-1))
        return -torch.nn.functional.logsigmoid(0.5 * z).sum()

    h, numeric = 1e-6, torch.zeros_like(pc)
    base = pc.detach()
    for idx in mask.nonzero().tolist():
        e = torch.zeros_like(base)
        e[tuple(idx)] = h
        numeric[tuple(idx)] = (frozen(base + e) - frozen(base - e)) / (2 * h)
    assert torch.allclose(pc.grad, numeric, atol=1e-7)
    assert (pc.grad[~mask] == 0).all()
    # the full derivative (weights differentiated too) is different: so they are really detached
    full = torch.autograd.functional.jacobian(
        lambda x: loss_with_live_weights(x, logps, mask, marks), base)
    assert not torch.allclose(full, pc.grad, atol=1e-4)


def loss_with_live_weights(x, logps, mask, marks, beta=0.5, delta=3.0):
    w = torch.where(mask, 1 + marks * torch.exp(-x).clamp(max=delta), torch.zeros_like(x))
    z = (w * x).sum(-1) - (bmc_weights(logps[2], marks, mask, delta) * logps[2]).sum(-1)
    z = z - ((bmc_weights(logps[1], marks, mask, delta) * logps[1]).sum(-1)
             - (bmc_weights(logps[3], marks, mask, delta) * logps[3]).sum(-1))
    return -torch.nn.functional.logsigmoid(beta * z).sum()


# ---------------------------------------------------------------- BMC marks and weights

def test_varied_token_marks_hand_example():
    # rejected [5, 9, 8] → chosen [5, 6, 7, 8]: equal 5; replace 9 ↔ 6, 7; equal 8.
    assert varied_token_marks([5, 6, 7, 8], [5, 9, 8], set()) == ([False, True, True, False], [False, True, False])
    # 7 is a stopword: never marked
    assert varied_token_marks([5, 6, 7, 8], [5, 9, 8], {7}) == ([False, True, False, False], [False, True, False])
    assert varied_token_marks([5, 6, 7, 8], [5, 9, 8], {9}) == ([False, True, True, False], [False, False, False])
    # pure insert (chosen gains 2) and pure delete (rejected loses 2)
    assert varied_token_marks([1, 2, 3], [1, 3], set()) == ([False, True, False], [False, False])
    assert varied_token_marks([1, 3], [1, 2, 3], set()) == ([False, False], [False, True, False])


def test_bmc_weights_hand_example():
    # δ = 3. chosen p = [0.5, 0.25, 0.8, 0.9], marks [F, T, T, F]:
    #   token 1: 1/p = 4 → capped at 3 → w = 4; token 2: 1/p = 1.25 → w = 2.25; unmarked → 1.
    # rejected p = [0.9, 0.5, 0.1] (padded to 4), marks [F, T, F]: w = [1, 1 + 2, 1, 0 (padding)].
    logps = torch.log(torch.tensor([[0.5, 0.25, 0.8, 0.9], [0.9, 0.5, 0.1, 1.0]], dtype=F64))
    marks = torch.tensor([[False, True, True, False], [False, True, False, False]])
    mask = torch.tensor([[True, True, True, True], [True, True, True, False]])
    w = bmc_weights(logps, marks, mask, 3.0)
    assert w.flatten().tolist() == pytest.approx([1.0, 4.0, 2.25, 1.0, 1.0, 3.0, 1.0, 0.0], abs=1e-12)


def test_bmc_loss_hand_example():
    L = math.log
    beta, delta = 0.5, 3.0
    # chosen marks [F, T, T, F]; rejected [F, T, F] padded with one masked slot
    w_pol_c = L(0.5) + 4 * L(0.25) + 2.25 * L(0.8) + L(0.9)      # w = [1, 4, 2.25, 1]
    w_ref_c = L(0.5) + 3 * L(0.5) + 3.5 * L(0.4) + L(0.9)        # w = [1, 3, 3.5, 1]
    w_pol_r = L(0.9) + 3 * L(0.5) + L(0.1)                       # w = [1, 3, 1]
    w_ref_r = L(0.9) + 4 * L(0.2) + L(0.1)                       # w = [1, 4, 1]
    expected = neg_log_sigmoid(beta * ((w_pol_c - w_ref_c) - (w_pol_r - w_ref_r)))

    def logs(values):
        return torch.log(torch.tensor([values], dtype=F64))

    x = LossInputs(
        policy_chosen_logps=t([0.0]), policy_rejected_logps=t([0.0]), chosen_lengths=t([4.0]),
        rejected_lengths=t([3.0]), reference_chosen_logps=t([0.0]), reference_rejected_logps=t([0.0]),
        policy_chosen_token_logps=logs([0.5, 0.25, 0.8, 0.9]), reference_chosen_token_logps=logs([0.5, 0.5, 0.4, 0.9]),
        policy_rejected_token_logps=logs([0.9, 0.5, 0.1, 0.3]),
        reference_rejected_token_logps=logs([0.9, 0.2, 0.1, 0.3]),
        chosen_mask=torch.tensor([[True] * 4]), rejected_mask=torch.tensor([[True, True, True, False]]),
        chosen_marks=torch.tensor([[False, True, True, False]]),
        rejected_marks=torch.tensor([[False, True, False, True]]))  # the padded slot's mark is ignored
    out = compute_loss(x, LossConfig(name="bmc", beta=beta, bmc_delta=delta))
    assert out.losses.item() == pytest.approx(expected, abs=1e-12)
    assert out.chosen_rewards.item() == pytest.approx(beta * (w_pol_c - w_ref_c), abs=1e-12)


def test_bmc_without_marks_is_dpo_on_token_sums():
    logps, mask, marks = token_batch(3, (-3.0, -0.1))
    none = torch.zeros_like(marks)
    got, *_ = bmc_loss(*logps, mask, mask, none, none, beta=0.2, delta=2.0)
    sums = [torch.where(mask, x, torch.zeros_like(x)).sum(-1) for x in logps]
    want, *_ = dpo_loss(sums[0], sums[1], sums[2], sums[3], beta=0.2)
    assert torch.allclose(got, want, atol=1e-12)


def test_stopword_token_ids_with_the_real_tokenizer():
    from rayalign.models import load_tokenizer

    tokenizer = load_tokenizer("tiny-llama")
    ids = stopword_token_ids(tokenizer)
    for word in ("the", " the", " of", " and", "The"):
        [token] = tokenizer.encode(word, add_special_tokens=False)  # single tokens in SmolLM2's vocabulary
        assert token in ids, word
    [data] = tokenizer.encode(" data", add_special_tokens=False)
    assert data not in ids  # a content word is never a stopword
    assert {"a", "an", "the", "is", "of", "to", "and"} <= bmc_mod.ENGLISH_STOPWORDS
    assert 120 <= len(bmc_mod.ENGLISH_STOPWORDS) <= 200


# ---------------------------------------------------------------- registry

def test_every_reference_loss_at_the_first_step_has_its_hand_computed_value():
    """Policy = reference (the first step): d = 0 for every pair, so each loss is a constant by hand:
    dpo, dpop, mpo (its default is DPO) ln 2; ipo (0 − 1/(2β))² = 25 at β = 0.1; hinge max(0, 1) = 1.
    A loss added to the registry without a case here fails the test."""
    expected = {"dpo": math.log(2), "dpop": math.log(2), "mpo": math.log(2), "ipo": 25.0, "hinge": 1.0}
    at_start = inputs(reference_chosen_logps=t(PC), reference_rejected_logps=t(PR))
    checked = set()
    for name, spec in LOSSES.items():
        if spec.needs_token_logps or not needs_reference(LossConfig(name=name)):
            continue  # bmc has its own tests below; reference-free losses have their formulas above
        out = compute_loss(at_start, LossConfig(name=name, beta=0.1))
        assert out.losses.tolist() == pytest.approx([expected[name]] * 3, abs=1e-12), name
        checked.add(name)
    assert checked == set(expected)


def test_unknown_loss_is_a_config_error():
    with pytest.raises(ConfigError, match="loss.name 'dpoo' is unknown: choose one of dpo, ipo"):
        get_loss("dpoo")
    with pytest.raises(ConfigError):
        compute_loss(inputs(), LossConfig(name="nope"))


def test_needs_reference():
    assert needs_reference(LossConfig(name="dpo"))
    assert needs_reference(LossConfig(name="bmc"))
    assert not needs_reference(LossConfig(name="simpo"))
    assert not needs_reference(LossConfig(name="orpo"))
    assert needs_reference(LossConfig(name="mpo", mpo_kappa=1.0))
    assert not needs_reference(LossConfig(name="mpo", mpo_kappa=0.0))
    assert LOSSES["bmc"].needs_token_logps and not LOSSES["dpo"].needs_token_logps
    assert LOSSES["orpo"].needs_nll and LOSSES["simpo"].length_normalised


def test_compute_loss_uses_the_config_hyperparameters():
    for beta in (0.1, 0.2, 1.0):
        assert losses_of("dpo", beta=beta) == pytest.approx([neg_log_sigmoid(beta * d) for d in D], abs=1e-12)
    assert losses_of("orpo", orpo_lambda=0.5) != losses_of("orpo", orpo_lambda=0.1)
    assert losses_of("simpo", simpo_gamma=1.0) != losses_of("simpo", simpo_gamma=0.5)


def test_compute_loss_reports_missing_inputs():
    with pytest.raises(ValueError, match="reference_chosen_logps"):
        compute_loss(inputs(reference_chosen_logps=None), LossConfig(name="dpo"))
    with pytest.raises(ValueError, match="policy_chosen_token_logps"):
        compute_loss(inputs(), LossConfig(name="bmc"))
    with pytest.raises(ValueError):
        compute_loss(inputs(reference_chosen_logps=None), LossConfig(name="mpo", mpo_kappa=1.0))


def test_a_config_written_before_the_length_power_still_loads(tmp_path):
    """Runs written with loss.mpo_length_normalised (a switch) are read as the power at its ends, so compare and
    resume still read their config.yaml."""
    from rayalign import config

    old = tmp_path / "config.yaml"
    old.write_text("loss:\n  name: mpo\n  mpo_length_normalised: true\n")
    assert config.load(old).loss.mpo_length_power == 1.0
    assert config.load(None, ["loss.mpo_length_normalised=false"]).loss.mpo_length_power == 0.0
