"""The one step path (rayalign.train.step): against the textbook computation, and the benchmark's step against
the trainer's, in a real one-process gloo group (the trainer's functions are collective)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist

from rayalign import config
from rayalign.bench import NaiveLogps, bench_step, synthetic_pairs
from rayalign.data import TokenizedPair
from rayalign.logprobs import ResponseLogps
from rayalign.models import load_causal_lm
from rayalign.train import reference as ref_lib
from rayalign.train.loop import train_step, used_pairs
from rayalign.train.step import clip_gradients, micro_step, optimizer_step, pair_batch

PAD = 0


@pytest.fixture(scope="module")
def gloo(tmp_path_factory):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path_factory.mktemp('pg')}/store", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _pairs(n=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = lambda k: torch.randint(5, 49152, (k,), generator=g).tolist()
    return [TokenizedPair(ids(3 + i % 4), ids(2 + (5 * i) % 7), ids(1 + (3 * i) % 5)) for i in range(n)]


def test_the_step_gives_the_textbook_dpo_loss_and_gradients():
    lm = load_causal_lm("tiny-llama")
    pairs = _pairs()
    reference = pair_batch(pairs, PAD, "cpu")["response_mask"] * -10.0
    _, out = micro_step(ResponseLogps(lm, chunk_size=5), pair_batch(pairs, PAD, "cpu"), reference,
                             config.LossConfig(name="dpo", beta=0.1), progress=0.0, scale=1 / len(pairs))
    ours = {name: p.grad.clone() for name, p in lm.named_parameters()}
    lm.zero_grad()

    naive = NaiveLogps(lm)(pair_batch(pairs, PAD, "cpu", shared_prompt=False)).sum(-1)  # full logits, padded rows
    b = len(pairs)
    ref = reference.sum(-1)
    textbook = -torch.nn.functional.logsigmoid(0.1 * ((naive[:b] - ref[:b]) - (naive[b:] - ref[b:]))).mean()
    textbook.backward()
    torch.testing.assert_close(out.losses.mean(), textbook, atol=1e-6, rtol=1e-5)
    for name, p in lm.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, atol=1e-6, rtol=1e-4, msg=name)


def test_the_benchmark_step_is_the_trainers_step(gloo):
    """Two steps of `bench_step` and of the trainer's train_step + clipping + AdamW, from the same weights on the
    same pairs: the same losses and the same weights after."""
    cfg = config.load(None, ["train.batch_size=4", "train.micro_batch_size=4", "loss.name=dpo"])
    lm = load_causal_lm("tiny-llama")
    twin = copy.deepcopy(lm)
    pairs = synthetic_pairs(lm.config.vocab_size, 4, 12)
    bench_model, trainer_model = ResponseLogps(lm), ResponseLogps(twin)
    bench_opt = torch.optim.AdamW(lm.parameters(), lr=1e-3)
    trainer_opt = torch.optim.AdamW(twin.parameters(), lr=1e-3)
    batch = pair_batch(pairs, PAD, "cpu")
    reference = batch["response_mask"] * -10.0
    values = {i: (reference[i][batch["response_mask"][i]], reference[4 + i][batch["response_mask"][4 + i]])
              for i in range(4)}
    for _ in range(2):
        bench_loss = bench_step(bench_model, bench_opt, batch, reference)
        sums = train_step(trainer_model, None, values, pairs, [0, 1, 2, 3], cfg, PAD, "cpu", 0.0, True)
        clip_gradients(trainer_model, cfg.train.max_grad_norm)
        optimizer_step(trainer_opt)
        assert bench_loss == pytest.approx(float(sums["loss"]) / 4, rel=1e-5)
    for (name, a), b in zip(lm.named_parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)


def test_reference_of_the_used_pairs_equals_the_full_pass_on_them(gloo, tmp_path):
    cfg = config.load(None, ["train.batch_size=4", "train.max_steps=2"])
    pairs = _pairs(12)
    used = used_pairs(cfg, len(pairs), total=2)
    assert len(used) == 8 and used == sorted(set(used))  # 2 steps × 4 pairs of one epoch's permutation
    assert used_pairs(cfg, len(pairs), total=3) is None  # three steps use all twelve
    model = ResponseLogps(load_causal_lm("tiny-llama").eval())
    full = ref_lib.compute_reference(model, pairs, list(range(12)), PAD, 4, "cpu")
    part = ref_lib.compute_reference(model, pairs, used, PAD, 3, "cpu", shared_prompt=False)
    assert sorted(part) == used
    for i in used:
        for ours, theirs in zip(part[i], full[i]):
            torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    path = tmp_path / "ref.safetensors"
    ref_lib.save_reference(path, part)
    loaded = ref_lib.load_reference(path)
    assert sorted(loaded) == used and all(torch.equal(loaded[i][0], part[i][0]) for i in used)
