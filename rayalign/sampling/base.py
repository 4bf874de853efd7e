"""The sampler contract every engine (hf, vllm) and the Ray pool share.

Prompts travel as token ids with the chat template already applied, so every engine sees exactly
the same tokens and a pipeline never depends on an engine's own templating. InCo-DPO continues a
prefix of an off-policy response, so `generate` takes optional response prefixes, and a
`Completion` carries the prefix tokens first: the response a trainer scores is prefix + continuation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from rayalign.errors import ConfigError

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. `temperature` 0 means greedy decoding (top_p is then ignored).

    `seed` makes a call reproducible: the same call with the same seed gives the same outputs.
    `stop` strings end a completion at the first occurrence in the generated text; the string
    itself is left out of `Completion.text` (OpenAI's convention).
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self):
        if isinstance(self.stop, str):  # a lone string is a common slip; accept it as one stop
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop))
        problems = []
        if self.n < 1:
            problems.append(f"n must be >= 1 (got {self.n})")
        if self.temperature < 0:
            problems.append(f"temperature must be >= 0 (got {self.temperature})")
        if not 0 < self.top_p <= 1:
            problems.append(f"top_p must be in (0, 1] (got {self.top_p})")
        if self.max_new_tokens < 1:
            problems.append(f"max_new_tokens must be >= 1 (got {self.max_new_tokens})")
        if any(not s for s in self.stop):
            problems.append("stop strings must be non-empty")
        if problems:
            raise ConfigError("sampling: " + "; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


@dataclass
class Completion:
    """One sampled response.

    token_ids: the prefix tokens (unchanged) followed by the generated ones; an EOS token that
        ended generation is kept, because training responses end with EOS too.
    prefix_len: how many of token_ids are the given prefix.
    text: the decoded response (prefix included), special tokens and any stop string removed.
    logprobs: one per generated token (token_ids[prefix_len:]), under the raw model (temperature 1,
        no top-p), i.e. what a teacher-forced forward pass gives: the number DPO needs.
    finish_reason: "stop" (EOS or a stop string) or "length" (max_new_tokens reached).
    """

    token_ids: list[int]
    prefix_len: int
    text: str
    logprobs: list[float]
    finish_reason: FinishReason

    @property
    def generated_ids(self) -> list[int]:
        return self.token_ids[self.prefix_len:]


@runtime_checkable
class Sampler(Protocol):
    """What pipelines call: `generate` returns, per prompt and in input order, `params.n` completions."""

    def generate(self, prompts: list[list[int]], params: SamplingParams,
                 prefixes: list[list[int]] | None = None) -> list[list[Completion]]:
        ...

    def load_weights(self, source: str | dict) -> None:
        """Replace the weights: an HF-format checkpoint directory (safetensors) or a state dict."""
        ...

    def weights_info(self) -> tuple[str, int, str]:
        """(the dtype its weights are computed in, how many processes hold them, their device type)."""
        ...

    def receive_weights(self, meet, rank: int, plan, dtype: str) -> None:
        """Replace the weights with those a trainer broadcasts (`rayalign.sampling.weight_sync`): join its group as
        `rank` (and the next ranks, one per further process) and load them bucket by bucket."""
        ...


def make_sampler(engine: str, model: str, **kwargs) -> Sampler:
    """Build an engine by name; imports it only now (vLLM and its CUDA stack are heavy)."""
    if engine == "hf":
        from rayalign.sampling.hf import HFSampler

        return HFSampler(model, **kwargs)
    if engine == "vllm":
        from rayalign.sampling.vllm_engine import VLLMSampler

        return VLLMSampler(model, **kwargs)
    raise ConfigError(f"sampling: unknown engine '{engine}'; use 'hf' (CPU or GPU) or 'vllm' (GPU)")


def check_inputs(prompts: list[list[int]], prefixes: list[list[int]] | None) -> list[list[int]]:
    """Shared validation; returns prefixes with [] for "no prefix" so engines need no None checks."""
    if prefixes is None:
        prefixes = [[] for _ in prompts]
    if len(prefixes) != len(prompts):
        raise ConfigError(f"sampling: got {len(prompts)} prompts but {len(prefixes)} prefixes; give one per prompt")
    for index, prompt in enumerate(prompts):
        if len(prompt) == 0:
            raise ConfigError(f"sampling: prompt {index} has no tokens; the first token needs something to follow")
    return [list(p) for p in prefixes]


__all__ = ["Completion", "FinishReason", "Sampler", "SamplingParams", "check_inputs", "make_sampler"]
