"""`rayalign bench`: DPO training-step throughput and peak memory, chunked vs naive log-probs.

One step = log-probs of 2·batch sequences (chosen rows first; the last half of each sequence is
the response) → DPO loss against fixed reference log-probs (a cached reference) → backward →
AdamW step. Two variants differ only in the log-probs:

- ``chunked``: rayalign's :class:`ResponseLogps` (response positions only, 512-token slices,
  activation checkpointing);
- ``naive``: :func:`naive_token_logps`, full float32 [2B, L, vocab] logits, the textbook reference.

Each variant runs in its own fresh spawned process, so neither sees the other's memory: one
warm-up step (allocates AdamW's state), then `steps` timed steps. Reported: the median step time
and tokens/s from it, the process's peak RSS, and the peak RSS during the steps minus the RSS
just after loading the model and making its weights resident (the step's own memory:
activations, logits, gradients, AdamW state). Medians and chunked/naive ratios, not means or
absolute figures, are the numbers to compare: shared and laptop machines are noisy, a median
ignores the odd slow step, and a ratio measured in one run cancels part of the machine's speed.

Peak memory is the kernel's per-process high-water mark (VmHWM), not ``ru_maxrss``: on Linux a
spawned child's ``ru_maxrss`` starts at its parent's peak (it survives fork + exec), so it would
report the parent's memory whenever that is larger.
"""

from __future__ import annotations

import math
import re
import resource
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch

from rayalign.config import LossConfig
from rayalign.errors import RayAlignError
from rayalign.logprobs import ResponseLogps, naive_token_logps
from rayalign.losses import LossInputs, compute_loss
from rayalign.models import load_causal_lm, resolve_model

VARIANTS = ("chunked", "naive")
CHUNK_SIZE = 512


def _memory_mib() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB; where /proc is missing, both are ru_maxrss."""
    try:
        fields = dict(re.findall(r"^(VmRSS|VmHWM):\s+(\d+) kB", Path("/proc/self/status").read_text(), re.M))
        return int(fields["VmRSS"]) / 1024, int(fields["VmHWM"]) / 1024
    except (OSError, KeyError):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (2**20 if sys.platform == "darwin" else 2**10)
        return peak, peak


def _reset_peak() -> bool:
    """Reset this process's peak RSS to its current RSS (Linux); False where that is not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _batch(vocab: int, batch: int, seq_len: int):
    """Seeded random token ids [2B, L], all attended; the last half of each row is the response."""
    gen = torch.Generator().manual_seed(0)
    input_ids = torch.randint(0, vocab, (2 * batch, seq_len), generator=gen)
    response_mask = torch.zeros_like(input_ids, dtype=torch.bool)
    response_mask[:, seq_len - seq_len // 2:] = True
    reference = -math.log(vocab) * response_mask.sum(-1).float()  # fixed: a cached reference's sums
    return input_ids, torch.ones_like(input_ids), response_mask, reference


def _train_step(logps_fn, optimizer, input_ids, attention_mask, response_mask, reference) -> float:
    """One DPO step as the trainer does it; returns the loss."""
    b = input_ids.shape[0] // 2
    sums = (logps_fn(input_ids, attention_mask, response_mask) * response_mask).sum(-1)
    lengths = response_mask.sum(-1).float()
    inputs = LossInputs(sums[:b], sums[b:], lengths[:b], lengths[b:], reference[:b], reference[b:])
    loss = compute_loss(inputs, LossConfig(name="dpo")).losses.mean()
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def _measure(variant: str, model_path: str, steps: int, batch: int, seq_len: int) -> dict:
    """Run in a fresh process: load the model, one warm-up step, `steps` timed steps."""
    torch.manual_seed(0)
    lm = load_causal_lm(model_path).train()
    with torch.no_grad():  # weights come memory-mapped, paged in lazily: make them resident before the baseline
        for param in lm.parameters():
            param.data = param.data.clone()
    if variant == "chunked":
        logps_fn = ResponseLogps(lm, chunk_size=CHUNK_SIZE)
    else:
        logps_fn = lambda ids, att, resp: naive_token_logps(lm, ids, att, resp)  # noqa: E731
    optimizer = torch.optim.AdamW(lm.parameters(), lr=1e-6)
    data = _batch(lm.config.vocab_size, batch, seq_len)
    rss_after_load, load_peak = _memory_mib()
    exact = _reset_peak()  # from here the high-water mark is the steps' own
    times, losses = [], []
    for _ in range(steps + 1):
        began = time.perf_counter()
        losses.append(_train_step(logps_fn, optimizer, *data))
        times.append(time.perf_counter() - began)
    step_peak = _memory_mib()[1]
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
    """Chunked and naive DPO steps on `model`, each in its own spawned process; see the module doc."""
    if steps < 1 or batch < 1 or seq_len < 4:
        raise RayAlignError(f"bench needs steps >= 1, batch >= 1 and seq_len >= 4, not {steps}, {batch}, {seq_len}")
    path = resolve_model(model)  # provision once, here, not inside a measured process
    variants, sizes = {}, {}
    for variant in VARIANTS:
        print(f"bench {variant}: {model}, {batch} pairs x {seq_len} tokens, 1 warm-up + {steps} steps "
              f"in a fresh process...", file=sys.stderr, flush=True)
        variants[variant] = _in_fresh_process(variant, path, steps, batch, seq_len)
        sizes = {key: variants[variant].pop(key) for key in ("params", "vocab_size")}
    chunked, naive = variants["chunked"], variants["naive"]
    return {
        "model": model, **sizes, "torch_threads": chunked["torch_threads"], "batch_pairs": batch, "seq_len": seq_len,
        "steps": steps, "tokens_per_step": 2 * batch * seq_len, "variants": variants,
        "ratios": {
            "tokens_per_s_chunked_over_naive": chunked["tokens_per_s"] / naive["tokens_per_s"],
            "step_peak_mem_chunked_over_naive": chunked["step_peak_increase_mib"] / naive["step_peak_increase_mib"],
        },
    }
