"""`rayalign bench`: DPO training-step throughput and peak memory, the trainer's step vs the textbook one.

One step = log-probs of both responses of `batch` pairs (prompt, chosen and rejected of seq_len/2 random
tokens each, so each sequence has seq_len tokens) → DPO loss against fixed reference log-probs (a cached
reference) → backward → clipping → AdamW step. Two variants differ only in the log-probs:

- ``rayalign``: the trainer's own step (`rayalign.train.step`): shared-prompt rows, response positions only,
  512-token slices of the vocabulary projection with activation checkpointing;
- ``naive``: :func:`naive_token_logps` on padded rows, full float32 [2B, L, vocab] logits, the textbook reference.

Each variant runs in its own fresh spawned process, so neither sees the other's memory: one
warm-up step (allocates AdamW's state), then `steps` timed steps. Reported: the median step time
and tokens/s from it (2·batch·seq_len sequence tokens per step for both), the process's peak RSS, and the peak
RSS during the steps minus the RSS just after loading the model and making its weights resident (the step's own
memory: activations, logits, gradients, AdamW state). Medians and rayalign/naive ratios, not means or
absolute figures, are the numbers to compare: shared and laptop machines are noisy, a median
ignores the odd slow step, and a ratio measured in one run cancels part of the machine's speed.

Peak memory is the kernel's per-process high-water mark (`rayalign.memory`).

`rayalign bench --peer trl` is the other comparison, whole processes against TRL: `rayalign.peer_bench`.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

import torch

from rayalign.config import LossConfig
from rayalign.errors import RayAlignError
from rayalign.logprobs import ResponseLogps, naive_token_logps
from rayalign.memory import memory_mib, reset_peak
from rayalign.models import load_causal_lm, resolve_model
from rayalign.train.step import clip_gradients, micro_step, optimizer_step, pair_batch

VARIANTS = ("rayalign", "naive")


def synthetic_pairs(vocab: int, batch: int, seq_len: int) -> list:
    """Seeded random pairs: prompt, chosen and rejected of seq_len/2 tokens each."""
    from rayalign.data import TokenizedPair

    gen = torch.Generator().manual_seed(0)
    half = seq_len // 2
    ids = lambda: torch.randint(1, vocab, (half,), generator=gen).tolist()
    return [TokenizedPair(ids(), ids(), ids()) for _ in range(batch)]


class NaiveLogps(torch.nn.Module):
    def __init__(self, lm):
        super().__init__()
        self.lm = lm

    def forward(self, batch: dict) -> torch.Tensor:
        return naive_token_logps(self.lm, batch)


def bench_step(model, optimizer, batch: dict, reference: torch.Tensor) -> float:
    """One DPO step through the trainer's functions (max_grad_norm 1, as the trainer's default); returns the loss."""
    pairs = batch["lengths"].shape[0] // 2
    _, out = micro_step(model, batch, reference, LossConfig(name="dpo"), progress=0.0, scale=1 / pairs)
    clip_gradients(model, 1.0)
    optimizer_step(optimizer)
    return float(out.losses.detach().mean())


def _measure(variant: str, model_path: str, steps: int, batch: int, seq_len: int) -> dict:
    """Run in a fresh process: load the model, one warm-up step, `steps` timed steps."""
    torch.manual_seed(0)
    lm = load_causal_lm(model_path).train()
    with torch.no_grad():  # weights come memory-mapped, paged in lazily: make them resident before the baseline
        for param in lm.parameters():
            param.data = param.data.clone()
    model = ResponseLogps(lm) if variant == "rayalign" else NaiveLogps(lm)
    optimizer = torch.optim.AdamW(lm.parameters(), lr=1e-6)
    data = pair_batch(synthetic_pairs(lm.config.vocab_size, batch, seq_len), 0, "cpu", variant == "rayalign")
    reference = data["response_mask"] * -math.log(lm.config.vocab_size)  # fixed: a cached reference's values
    rss_after_load, load_peak = memory_mib()
    exact = reset_peak()  # from here the high-water mark is the steps' own
    times, losses = [], []
    for _ in range(steps + 1):
        began = time.perf_counter()
        losses.append(bench_step(model, optimizer, data, reference))
        times.append(time.perf_counter() - began)
    step_peak = memory_mib()[1]
    median = statistics.median(times[1:])
    return {
        "median_step_s": median, "step_times_s": times[1:], "warmup_step_s": times[0],
        "tokens_per_s": 2 * batch * seq_len / median, "final_loss": losses[-1],
        "peak_rss_mib": max(load_peak, step_peak), "rss_after_load_mib": rss_after_load,
        "step_peak_increase_mib": step_peak - rss_after_load, "peak_reset_after_load": exact,
        "torch_threads": torch.get_num_threads(),
        "params": sum(p.numel() for p in lm.parameters()), "vocab_size": lm.config.vocab_size,
    }


def _in_fresh_process(*args) -> dict:
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        return pool.submit(_measure, *args).result()


def run_bench(model: str, steps: int, batch: int, seq_len: int) -> dict:
    """rayalign's and the naive DPO step on `model`, each in its own spawned process; see the module doc."""
    if steps < 1 or batch < 1 or seq_len < 4:
        raise RayAlignError(f"bench needs steps >= 1, batch >= 1 and seq_len >= 4, not {steps}, {batch}, {seq_len}")
    path = resolve_model(model)  # provision once, here, not inside a measured process
    variants, sizes = {}, {}
    for variant in VARIANTS:
        print(f"bench {variant}: {model}, {batch} pairs x {seq_len} tokens, 1 warm-up + {steps} steps "
              f"in a fresh process...", file=sys.stderr, flush=True)
        variants[variant] = _in_fresh_process(variant, path, steps, batch, seq_len)
        sizes = {key: variants[variant].pop(key) for key in ("params", "vocab_size")}
    ours, naive = variants["rayalign"], variants["naive"]
    return {
        "model": model, **sizes, "torch_threads": ours["torch_threads"], "batch_pairs": batch, "seq_len": seq_len,
        "steps": steps, "tokens_per_step": 2 * batch * seq_len, "variants": variants,
        "ratios": {
            "tokens_per_s_rayalign_over_naive": ours["tokens_per_s"] / naive["tokens_per_s"],
            "step_peak_mem_rayalign_over_naive": ours["step_peak_increase_mib"] / naive["step_peak_increase_mib"],
        },
    }
