"""BMC: Bridging and Modelling Correlations in pairwise data (Jiang et al. 2024, arXiv 2408.07471).

The "modelling" half of BMC, as the authors' code does it (github YJiangcm/BMC,
``scripts/dpo_bmc_trainer.py``): tokens that differ between the pseudo-winning response and the
losing one ("varied" tokens, found with difflib) get a larger weight in the sequence log-prob,
``w_t = 1 + m_t·min(1/p_t, δ)``, with p_t the model's own probability of the token taken without
gradient. The policy's log-probs are weighted by the policy's 1/p, the reference's by the
reference's 1/p, and the DPO sigmoid is applied to the weighted sums.

Differences from the authors' code, on purpose: SequenceMatcher runs with ``autojunk=False`` (the
default heuristic treats tokens that fill >1% of a sequence of ≥200 items as junk, so frequent
tokens of long responses would never be matched); and we diff response tokens only (the authors
diff prompt + response, but the shared prompt always matches, so the marks are the same).
Only the DPO form is implemented (papers.md: for ipo/orpo the weighted sum would be divided by length).
"""

from __future__ import annotations

import difflib

import torch
import torch.nn.functional as F
from torch import Tensor

# Written for rayalign: the usual English function words (articles, pronouns, auxiliaries,
# prepositions, conjunctions, common adverbs). Lower case; stopword_token_ids adds capitalised forms.
ENGLISH_STOPWORDS: frozenset[str] = frozenset("""
a an the this that these those
i me my mine myself we us our ours ourselves you your yours yourself yourselves
he him his himself she her hers herself it its itself they them their theirs themselves
what which who whom whose when where why how
am is are was were be been being have has had having do does did doing done
will would shall should can could may might must ought
and but or nor so if then else than because as until while although though unless
of at by for with about against between into through during before after above below
to from up down in out on off over under again further once
within without since among across around along upon
here there all any both each few more most other some such no not only own same too very
just now also s t don
""".split())


def varied_token_marks(chosen_ids: list[int], rejected_ids: list[int],
                       stopword_ids: set[int]) -> tuple[list[bool], list[bool]]:
    """Mark the tokens that differ between the chosen and the rejected response.

    Diffs rejected → chosen with ``difflib.SequenceMatcher(None, rejected_ids, chosen_ids,
    autojunk=False)``: rejected tokens in replace/delete opcodes and chosen tokens in
    replace/insert opcodes are marked; a token whose id is in ``stopword_ids`` is never marked.
    Returns ``(chosen_marks, rejected_marks)``, aligned with the given id lists.
    """
    chosen_marks = [False] * len(chosen_ids)
    rejected_marks = [False] * len(rejected_ids)
    matcher = difflib.SequenceMatcher(None, rejected_ids, chosen_ids, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag in ("replace", "delete"):
            for i in range(i1, i2):
                rejected_marks[i] = rejected_ids[i] not in stopword_ids
        if tag in ("replace", "insert"):
            for j in range(j1, j2):
                chosen_marks[j] = chosen_ids[j] not in stopword_ids
    return chosen_marks, rejected_marks


def stopword_token_ids(tokenizer) -> set[int]:
    """Ids of the ENGLISH_STOPWORDS that the tokenizer encodes as one token.

    Each word is tried bare and after a space (BPE vocabularies have both forms, e.g. "the" and
    "Ġthe"), in lower case and capitalised (the authors' code adds capitalised stopwords too).
    Words that take several tokens are skipped: marking only some of their pieces would be noise.
    """
    ids: set[int] = set()
    for word in ENGLISH_STOPWORDS:
        for form in {word, word.capitalize()}:
            for text in (form, " " + form):
                encoded = tokenizer.encode(text, add_special_tokens=False)
                if len(encoded) == 1:
                    ids.add(int(encoded[0]))
    return ids


def varied_marker(tokenizer):
    """`(chosen_ids, rejected_ids) -> (chosen_marks, rejected_marks)` with this tokenizer's stopwords: what training
    marks and what the BMC pipeline counts."""
    stopwords = stopword_token_ids(tokenizer)
    return lambda chosen, rejected: varied_token_marks(chosen, rejected, stopwords)


def bmc_weights(token_logps: Tensor, marks: Tensor, mask: Tensor, delta: float) -> Tensor:
    """Token weights w_t = 1 + m_t·min(1/p_t, δ), p_t = exp(token_logp_t); 0 where mask is False.

    Computed without gradient: the weight rescales a token's log-prob but is not itself trained
    (the authors detach it). 1/p is exp(−logp), capped at δ, so a marked token weighs in
    [2, 1 + δ] for δ ≥ 1 and an unmarked one 1. Shapes [B, T]; marks and mask are bool.
    """
    with torch.no_grad():
        inverse_p = torch.exp(-token_logps.detach()).clamp(max=delta)
        weights = 1 + marks.to(token_logps.dtype) * inverse_p
        return torch.where(mask, weights, torch.zeros_like(weights))


def weighted_logps(token_logps: Tensor, marks: Tensor, mask: Tensor, delta: float) -> Tensor:
    """Σ_t w_t·logp_t over real tokens, with the weights from the same log-probs (no gradient)."""
    weights = bmc_weights(token_logps, marks, mask, delta)
    # where() rather than a product so that padding holding inf/nan cannot leak into the sum.
    terms = torch.where(mask, weights * token_logps, torch.zeros_like(token_logps))
    return terms.sum(-1)


def bmc_loss(policy_chosen_token_logps: Tensor, policy_rejected_token_logps: Tensor,
             reference_chosen_token_logps: Tensor, reference_rejected_token_logps: Tensor,
             chosen_mask: Tensor, rejected_mask: Tensor,
             chosen_marks: Tensor, rejected_marks: Tensor,
             beta: float = 0.1, delta: float = 2.0) -> tuple[Tensor, Tensor, Tensor]:
    """DPO-BMC loss (arXiv 2408.07471, token-weighted DPO; as in the authors' dpo_bmc_trainer.py).

    W(y) = Σ_t w_t·logp_t with w_t = 1 + m_t·min(1/p_t, δ) from ``bmc_weights`` (policy weights from
    the policy's probabilities, reference weights from the reference's; no gradient through w);
    loss = −log σ(β[(W_θ(y_w) − W_ref(y_w)) − (W_θ(y_l) − W_ref(y_l))]).
    Token tensors are [B, T] (padded; masks say which are real). Per pair [B]; the caller takes
    the mean. Rewards: β·(W_θ(y) − W_ref(y)), detached.
    """
    chosen = (weighted_logps(policy_chosen_token_logps, chosen_marks, chosen_mask, delta)
              - weighted_logps(reference_chosen_token_logps, chosen_marks, chosen_mask, delta))
    rejected = (weighted_logps(policy_rejected_token_logps, rejected_marks, rejected_mask, delta)
                - weighted_logps(reference_rejected_token_logps, rejected_marks, rejected_mask, delta))
    losses = -F.logsigmoid(beta * (chosen - rejected))
    return losses, (beta * chosen).detach(), (beta * rejected).detach()
