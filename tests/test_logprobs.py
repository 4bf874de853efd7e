import torch

from rayalign.logprobs import ResponseLogps, naive_token_logps
from rayalign.models import load_causal_lm


def _batch(seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 49152, (4, 20), generator=g)
    attention = torch.ones_like(ids)
    attention[3, 14:] = 0  # right padding
    response = torch.zeros_like(ids, dtype=torch.bool)
    response[:, 8:14] = True
    response[1, 14:] = True
    return ids, attention, response


def test_chunked_logps_equal_naive_and_so_do_their_gradients():
    lm = load_causal_lm("tiny-llama")
    ids, attention, response = _batch()
    chunked = ResponseLogps(lm, chunk_size=7)(ids, attention, response)  # 7 does not divide the 30 tokens
    naive = naive_token_logps(lm, ids, attention, response)
    torch.testing.assert_close(chunked, naive, atol=1e-5, rtol=1e-5)
    assert (chunked[~response] == 0).all() and (chunked[response] < 0).all()

    grad_chunked = torch.autograd.grad(chunked.sum(), lm.lm_head.weight)[0]
    grad_naive = torch.autograd.grad(naive.sum(), lm.lm_head.weight)[0]
    torch.testing.assert_close(grad_chunked, grad_naive, atol=1e-5, rtol=1e-4)


def test_logps_match_a_hand_gathered_log_softmax():
    lm = load_causal_lm("tiny-llama")
    ids, attention, response = _batch(1)
    out = ResponseLogps(lm, chunk_size=512)(ids, attention, response)
    with torch.no_grad():
        logits = lm(input_ids=ids[:1], attention_mask=attention[:1]).logits[0].double()
    t = 9  # the token at position 9 is predicted from position 8
    expected = torch.log_softmax(logits[t - 1], -1)[ids[0, t]]
    assert abs(out[0, t].item() - expected.item()) < 1e-4
