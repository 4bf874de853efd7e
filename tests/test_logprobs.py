"""Log-probs of response tokens: the chunked, shared-prompt path against the textbook computation."""

import pytest
import torch

from rayalign.data import TokenizedPair, collate_pairs
from rayalign.logprobs import ResponseLogps, naive_token_logps, takes_block_masks
from rayalign.models import load_causal_lm

PAD = 0


def _pairs(seed=0, n=3):
    """Pairs of unequal prompt and response lengths (one rejected response of a single token)."""
    g = torch.Generator().manual_seed(seed)
    ids = lambda k: torch.randint(5, 49152, (k,), generator=g).tolist()
    shapes = [(6, 9, 4), (11, 3, 8), (4, 7, 1)][:n]
    return [TokenizedPair(ids(p), ids(c), ids(r)) for p, c, r in shapes]


@pytest.fixture(scope="module")
def lm():
    return load_causal_lm("tiny-llama")


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_shared_prompt_logps_and_gradients_equal_the_naive_padded_ones(lm, attn):
    lm.config._attn_implementation = attn
    try:
        pairs = _pairs()
        shared = ResponseLogps(lm, chunk_size=7)(collate_pairs(pairs, PAD))  # 7 divides none of the counts
        naive = naive_token_logps(lm, collate_pairs(pairs, PAD, shared_prompt=False))
        mask = collate_pairs(pairs, PAD)["response_mask"]
        assert shared.shape == naive.shape == (6, 9)
        torch.testing.assert_close(shared, naive, atol=1e-5, rtol=1e-5)
        assert (shared[~mask] == 0).all() and (shared[mask] < 0).all()
        weights = torch.randn(shared.shape, generator=torch.Generator().manual_seed(1))
        for param in (lm.lm_head.weight, lm.model.layers[0].self_attn.q_proj.weight):
            grad_shared = torch.autograd.grad((shared * weights).sum(), param, retain_graph=True)[0]
            grad_naive = torch.autograd.grad((naive * weights).sum(), param, retain_graph=True)[0]
            torch.testing.assert_close(grad_shared, grad_naive, atol=1e-5, rtol=1e-4)
    finally:
        lm.config._attn_implementation = "sdpa"


def test_logps_match_a_hand_gathered_log_softmax_of_each_sequence_alone(lm):
    pairs = _pairs(1)
    out = ResponseLogps(lm)(collate_pairs(pairs, PAD))
    for i, pair in enumerate(pairs):
        for row, response in ((i, pair.chosen_ids), (len(pairs) + i, pair.rejected_ids)):
            sequence = torch.tensor([pair.prompt_ids + response])
            with torch.no_grad():
                logits = lm(input_ids=sequence).logits[0].double()
            start = len(pair.prompt_ids)
            expected = [torch.log_softmax(logits[start + k - 1], -1)[token].item() for k, token in enumerate(response)]
            assert out[row, :len(response)].tolist() == pytest.approx(expected, abs=1e-4)


def test_the_tiny_model_takes_block_masks_and_a_flash_attention_one_would_not(lm):
    assert takes_block_masks(lm)
    lm.config._attn_implementation = "flash_attention_2"
    try:
        assert not takes_block_masks(lm)
    finally:
        lm.config._attn_implementation = "sdpa"
