"""Sampling: the Sampler protocol and its engines.

Only the cheap base types are imported here; engines load torch, transformers, Ray or vLLM when
their own modules are imported: ``rayalign.sampling.hf.HFSampler``,
``rayalign.sampling.vllm_engine.VLLMSampler``, ``rayalign.sampling.pool.SamplerPool``,
``rayalign.sampling.serve`` (the OpenAI-compatible endpoint).
"""

from rayalign.sampling.base import Completion, Sampler, SamplingParams

__all__ = ["Completion", "Sampler", "SamplingParams"]
