"""`rayalign bench memory`: what one rank holds while a model that must be sharded loads, trains, saves and resumes.

A Llama of about `params` parameters is built from a config (random weights, untied embeddings like the 8B and
70B models) and saved as safetensors; then `rayalign train` runs it on a local Ray cluster with `workers` gloo
workers: load, 2 steps, checkpoint (stopped there as if interrupted), and a second run that resumes from that
checkpoint and trains a third step. Every worker process writes the rise of its resident memory above what it held
before it built the model (`rayalign.memory.RiseProbe`), through load, steps, save and resume.

`full_state_bytes` is the unsharded training state: fp32 weights, gradients and AdamW's two moments (16 bytes a
parameter). `peak_rss_ratio` = the largest rise of any rank ÷ (full state ÷ workers): 1 is a rank holding exactly
its share; a rank that ever holds a whole copy of the weights and moments is far above it.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

FULL_STATE_BYTES_PER_PARAM = 16  # fp32 weight + fp32 gradient + AdamW's two fp32 moments


def llama_config(params: float, vocab: int, **special):
    """A Llama config of about `params` parameters: hidden 1536, GQA 12/4 heads, MLP 4096, untied head; the
    decoder layers fill what the two embedding matrices leave."""
    from transformers import LlamaConfig

    hidden, inter, heads, kv = 1536, 4096, 12, 4
    per_layer = 2 * hidden * hidden + 2 * hidden * hidden * kv // heads + 3 * hidden * inter + 2 * hidden
    layers = max(1, round((params - 2 * vocab * hidden) / per_layer))
    return LlamaConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
                       num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=2048,
                       tie_word_embeddings=False, **special)


def make_model(out: Path, params: float) -> int:
    """Save a random Llama of about `params` parameters (and tiny-llama's tokenizer) to `out`; its size."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from rayalign.models import TINY, resolve_model

    tokenizer = AutoTokenizer.from_pretrained(resolve_model(TINY))
    config = llama_config(params, len(tokenizer), bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    size = sum(p.numel() for p in model.parameters())
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return size


def make_pairs(path: Path, count: int, vocab: int, tokens: int = 16) -> None:
    """`count` pairs of random token ids (prompt, chosen, rejected of `tokens` each), as pipelines write them."""
    import random

    rng = random.Random(0)
    ids = lambda: [rng.randrange(1, vocab) for _ in range(tokens)]
    path.write_text("".join(json.dumps({"prompt_ids": ids(), "chosen_ids": ids(), "rejected_ids": ids()}) + "\n"
                            for _ in range(count)))


def run_memory_bench(params: float, workers: int, out: str | None = None, extra: list[str] | None = None) -> dict:
    """Build, train 2 steps, checkpoint, resume for a 3rd on `workers` Ray Train workers (`extra`: config overrides
    of the runs); the JSON line's dict. Its files (the model, checkpoints: about 14 GB at 5e8 parameters) stay in
    `out`; without it they go in a temporary directory removed at the end."""
    if out is not None:
        return _measure(params, workers, Path(out), extra)
    with tempfile.TemporaryDirectory(prefix="rayalign-bench-memory-") as tmp:
        return {**_measure(params, workers, Path(tmp), extra), "run_dir": None}


def _measure(params: float, workers: int, root: Path, extra: list[str] | None) -> dict:
    import os

    from rayalign import config as config_lib
    from rayalign.memory import PROBE_ENV
    from rayalign.ray_setup import init_ray
    from rayalign.train.driver import run_training

    model_dir, probes = root / "model", root / "probes"
    print(f"bench memory: building a {params:.2g}-parameter Llama in {model_dir}", file=sys.stderr, flush=True)
    size = make_model(model_dir, params)
    from transformers import AutoConfig

    make_pairs(root / "pairs.jsonl", 2 * workers, AutoConfig.from_pretrained(model_dir).vocab_size)
    os.environ[PROBE_ENV] = str(probes)
    init_ray(num_cpus=workers + 1)  # logical CPUs: every worker is scheduled, whatever the cores
    overrides = [f"model.name={model_dir}", f"data.path={root / 'pairs.jsonl'}", "data.format=token_ids",
                 f"train.num_workers={workers}", f"train.batch_size={workers}", "train.micro_batch_size=1",
                 "train.max_steps=3", "train.warmup_ratio=0", "train.lr=1e-5", "tracking.wandb=disabled",
                 f"output_dir={root}", "name=run", *(extra or [])]
    began = time.time()
    try:
        for stop in ("train.stop_at_step=2", "train.stop_at_step=null"):
            summary = run_training(config_lib.load(None, overrides + [stop]))
    finally:
        os.environ.pop(PROBE_ENV, None)
    records = [json.loads(p.read_text()) for p in sorted(probes.glob("*.json"))]
    full = FULL_STATE_BYTES_PER_PARAM * size
    rise = max(r["rise_mib"] for r in records) * 2**20
    names = dict.fromkeys(p for r in records for p in r["phase_rise_mib"])
    phases = {p: round(max(r["phase_rise_mib"].get(p, 0) for r in records)) for p in names}
    return {"params": size, "workers": workers, "full_state_bytes": full, "peak_rss_bytes_per_rank": int(rise),
            "peak_rss_ratio": round(rise / (full / workers), 3), "steps": summary["steps"],
            "resumed_from_step": summary["resumed_from_step"], "rank_processes": len(records),
            "phase_peak_rise_mib": phases,
            "peak_exact": all(r["exact"] for r in records), "wall_s": round(time.time() - began, 1),
            "run_dir": str(root / "run")}
