"""How much batching buys the transformers engine: tokens/s with all prompts in one `generate`
(left-padded, KV cache) against one prompt at a time, same prompts, greedy, medians of repeats.

Greedy decoding makes both modes produce the same tokens, so the token counts match and the
ratio is a pure throughput comparison. Tokens counted are the ones kept (up to and with EOS).
"""

from __future__ import annotations

import statistics
import time

QUESTIONS = [
    "What is the capital of France?", "Give me two tips for sleeping better.", "Explain what a prime number is.",
    "Write a haiku about autumn.", "How do I boil an egg?", "Why is the sky blue?",
    "Name three uses of a paperclip.", "What does a compiler do?", "Suggest a name for a cat.",
    "How far is the Moon from the Earth?", "What is photosynthesis?", "Translate 'good morning' into Spanish.",
]


def _timed(sampler, prompts, params, batch_size: int) -> tuple[float, int]:
    sampler.batch_size = batch_size
    start = time.perf_counter()
    if batch_size >= len(prompts):
        out = sampler.generate(prompts, params)
    else:
        out = [cs for p in prompts for cs in sampler.generate([p], params)]
    elapsed = time.perf_counter() - start
    return elapsed, sum(len(c.generated_ids) for cs in out for c in cs)


def bench_sampler(model: str = "smollm2-135m-instruct", num_prompts: int = 8, max_new_tokens: int = 32,
                  repeats: int = 3, device: str = "cpu", num_threads: int | None = None) -> dict:
    """Median tokens/s batched vs sequential and their ratio, after one warm-up call.
    `num_threads` sets torch's intra-op threads (on a shared, busy machine 1 is steadier)."""
    import torch

    if num_threads:
        torch.set_num_threads(num_threads)
    from rayalign.data.tokenize import encode_prompt
    from rayalign.sampling.base import SamplingParams
    from rayalign.sampling.hf import HFSampler

    sampler = HFSampler(model, device=device)
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(num_prompts)]
    prompts = [encode_prompt([{"role": "user", "content": q}], sampler.tokenizer) for q in questions]
    params = SamplingParams(temperature=0, max_new_tokens=max_new_tokens)
    _timed(sampler, prompts[:2], SamplingParams(temperature=0, max_new_tokens=4), len(prompts))  # warm-up
    modes = {"batched": len(prompts), "sequential": 1}
    rates: dict[str, list[float]] = {mode: [] for mode in modes}
    tokens: dict[str, int] = {}
    for _ in range(repeats):
        for mode, batch_size in modes.items():
            elapsed, count = _timed(sampler, prompts, params, batch_size)
            rates[mode].append(count / elapsed)
            tokens[mode] = count
    batched, sequential = statistics.median(rates["batched"]), statistics.median(rates["sequential"])
    return {
        "model": model, "device": device, "torch_threads": torch.get_num_threads(), "num_prompts": num_prompts,
        "max_new_tokens": max_new_tokens, "repeats": repeats, "tokens_batched": tokens["batched"],
        "tokens_sequential": tokens["sequential"], "tokens_per_s_batched": round(batched, 1),
        "tokens_per_s_sequential": round(sequential, 1), "speedup": round(batched / sequential, 2),
    }
