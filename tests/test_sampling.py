"""HFSampler against the model itself: teacher-forced log-probs, greedy = argmax, seeds, prefixes,
stop strings, weight loading. Uses tiny-llama (random weights, SmolLM2 tokenizer)."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from rayalign.data.tokenize import encode_prompt
from rayalign.errors import ConfigError, RayAlignError
from rayalign.sampling import Completion, Sampler, SamplingParams

QUESTIONS = ["Hi there", "What is the capital of France? Answer in one word, please.", "x", "Name two colours."]


@pytest.fixture(scope="module")
def one_thread():
    """One intra-op thread: on a busy 2-core machine OpenMP's spinning threads slow a tiny model 50x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def sampler(one_thread):
    from rayalign.sampling.hf import HFSampler

    return HFSampler("tiny-llama", batch_size=3)  # 3 does not divide the rows: several batches per call


@pytest.fixture(scope="module")
def prompts(sampler):
    return [encode_prompt([{"role": "user", "content": q}], sampler.tokenizer) for q in QUESTIONS]


def teacher_forced(model, prompt: list[int], completion: Completion) -> torch.Tensor:
    """log_softmax of one unpadded forward over prompt + completion, at the generated positions."""
    ids = torch.tensor([prompt + completion.token_ids])
    with torch.no_grad():
        logps = model(input_ids=ids).logits[0].double().log_softmax(-1)
    start = len(prompt) + completion.prefix_len
    positions = torch.arange(start, ids.shape[1])
    return logps[positions - 1, ids[0, positions]], logps[positions - 1]


def assert_same_completions(actual, expected, atol=1e-4):
    """Same tokens, text and finish reasons; log-probs to `atol` (two model copies with equal weights
    may pick different SIMD kernels, so bitwise equality of floats is not promised)."""
    assert [[(c.token_ids, c.text, c.finish_reason) for c in cs] for cs in actual] == \
        [[(c.token_ids, c.text, c.finish_reason) for c in cs] for cs in expected]
    for got, want in zip((c for cs in actual for c in cs), (c for cs in expected for c in cs)):
        torch.testing.assert_close(torch.tensor(got.logprobs), torch.tensor(want.logprobs), atol=atol, rtol=0)


def test_sampler_satisfies_the_protocol_and_base_import_is_cheap(sampler):
    assert isinstance(sampler, Sampler)
    import subprocess
    import sys

    code = "import sys, rayalign.sampling; print(any(m in sys.modules for m in ('ray', 'vllm', 'torch')))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"


def test_logprobs_equal_a_teacher_forced_recomputation(sampler, prompts):
    prefixes = [[], sampler.tokenizer.encode(" Paris is", add_special_tokens=False), [], [28, 29]]
    out = sampler.generate(prompts, SamplingParams(n=2, temperature=0.8, top_p=0.9, max_new_tokens=12, seed=5),
                           prefixes=prefixes)
    assert [len(c) for c in out] == [2] * len(prompts)
    for prompt, completions in zip(prompts, out):
        for c in completions:
            assert len(c.logprobs) == len(c.token_ids) - c.prefix_len > 0
            expected, _ = teacher_forced(sampler.model, prompt, c)
            torch.testing.assert_close(torch.tensor(c.logprobs, dtype=torch.float64), expected, atol=1e-4, rtol=0)


def test_greedy_is_the_argmax_and_tiny_top_p_is_greedy(sampler, prompts):
    """Greedy tokens are the raw model's argmax: no hidden repetition penalty or other processor."""
    greedy = sampler.generate(prompts, SamplingParams(temperature=0, max_new_tokens=8))
    for prompt, (c,) in zip(prompts, greedy):
        _, full = teacher_forced(sampler.model, prompt, c)
        assert c.generated_ids == full.argmax(-1).tolist()
    nucleus = sampler.generate(prompts, SamplingParams(temperature=1.0, top_p=1e-6, max_new_tokens=8, seed=0))
    assert [c[0].token_ids for c in nucleus] == [c[0].token_ids for c in greedy]


def test_sampling_has_no_hidden_top_k(sampler, prompts):
    """transformers' global default is top_k=50; ours is off. tiny-llama's distribution is nearly flat
    over 49k tokens, so untruncated samples land far outside the top 50 almost always."""
    (c,), = sampler.generate(prompts[:1], SamplingParams(temperature=1.0, max_new_tokens=32, seed=1))
    _, full = teacher_forced(sampler.model, prompts[0], c)
    ranks = [(row > row[t]).sum().item() for row, t in zip(full, c.generated_ids)]
    assert max(ranks) > 50, ranks


def test_seeded_sampling_is_reproducible_and_leaves_the_global_rng_alone(sampler, prompts):
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=10, seed=123)
    torch.manual_seed(0)
    first = sampler.generate(prompts, params)
    after_call = torch.rand(1)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(1), after_call)  # the call did not consume the caller's RNG
    second = sampler.generate(prompts, params)
    assert first == second
    other = sampler.generate(prompts, SamplingParams(n=3, temperature=1.0, max_new_tokens=10, seed=124))
    assert [c.token_ids for cs in other for c in cs] != [c.token_ids for cs in first for c in cs]
    copies = [c.token_ids for c in first[0]]
    assert len({tuple(t) for t in copies}) == 3  # the n copies are independent draws


def test_prefix_continuation_keeps_the_prefix_tokens(sampler, prompts):
    prefix = sampler.tokenizer.encode(" The answer is", add_special_tokens=False)
    (c,), (g,) = sampler.generate(prompts[1:3], SamplingParams(temperature=0, max_new_tokens=6),
                                  prefixes=[prefix, []])
    assert c.prefix_len == len(prefix) and c.token_ids[:len(prefix)] == prefix
    assert len(c.generated_ids) == 6 and c.text.startswith(" The answer is")
    assert g.prefix_len == 0
    # the continuation is conditioned on the prefix: greedy from prompt+prefix as a plain prompt agrees
    (plain,), = sampler.generate([prompts[1] + prefix], SamplingParams(temperature=0, max_new_tokens=6))
    assert plain.token_ids == c.generated_ids


def test_stop_strings_cut_text_and_tokens(sampler, prompts):
    params = SamplingParams(temperature=1.0, max_new_tokens=24, seed=9)
    (full,), = sampler.generate(prompts[:1], params)
    assert full.finish_reason == "length" and len(full.generated_ids) == 24
    stop = full.text[len(full.text) // 2:][:2]  # a piece of the middle of the text
    assert stop.strip(), full.text
    (cut,), = sampler.generate(prompts[:1], SamplingParams(temperature=1.0, max_new_tokens=24, seed=9, stop=(stop,)))
    assert cut.finish_reason == "stop"
    assert cut.text == full.text[:full.text.index(stop)]
    assert cut.token_ids == full.token_ids[:len(cut.token_ids)] and len(cut.token_ids) < len(full.token_ids)
    assert cut.logprobs == full.logprobs[:len(cut.logprobs)]
    assert stop in sampler.tokenizer.decode(cut.token_ids) and stop not in sampler.tokenizer.decode(cut.token_ids[:-1])


def test_eos_ends_a_completion_with_stop(sampler):
    eos = sampler.tokenizer.eos_token_id
    c = sampler._completion([7], [300, 301, eos, eos, eos], [-1.0, -2.0, -3.0, -4.0, -5.0], ())
    assert c.token_ids == [7, 300, 301, eos] and c.logprobs == [-1.0, -2.0, -3.0]
    assert c.finish_reason == "stop" and c.prefix_len == 1
    assert sampler._completion([], [300, 301], [-1.0, -2.0], ()).finish_reason == "length"


def test_bad_params_and_inputs_get_one_line_errors(sampler, prompts):
    with pytest.raises(ConfigError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ConfigError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ConfigError, match="prefixes"):
        sampler.generate(prompts, SamplingParams(max_new_tokens=2), prefixes=[[]])
    with pytest.raises(ConfigError, match="no tokens"):
        sampler.generate([[]], SamplingParams(max_new_tokens=2))
    assert SamplingParams(stop="\n").stop == ("\n",)


def test_load_weights_changes_outputs_like_a_fresh_sampler(sampler, prompts, tmp_path):
    from rayalign.sampling.hf import HFSampler

    greedy = SamplingParams(temperature=0, max_new_tokens=8)
    before = sampler.generate(prompts, greedy)
    original = {k: v.clone() for k, v in sampler.model.state_dict().items()}
    generator = torch.Generator().manual_seed(0)
    perturbed = {k: v + 0.5 * torch.randn(v.shape, generator=generator) for k, v in original.items()}
    sampler.model.load_state_dict(perturbed)
    sampler.model.save_pretrained(tmp_path)  # an HF checkpoint directory, as training writes
    sampler.tokenizer.save_pretrained(tmp_path)
    sampler.model.load_state_dict(original)
    try:
        assert sampler.generate(prompts, greedy) == before
        sampler.load_weights(str(tmp_path))
        after = sampler.generate(prompts, greedy)
        assert [c[0].token_ids for c in after] != [c[0].token_ids for c in before]
        fresh = HFSampler(str(tmp_path))
        assert_same_completions(fresh.generate(prompts, greedy), after)
        sampler.load_weights(original)  # a state dict works too
        assert_same_completions(sampler.generate(prompts, greedy), before)
        with pytest.raises(RayAlignError, match="do not fit"):
            sampler.load_weights({"not.a.weight": torch.zeros(1)})
    finally:
        sampler.model.load_state_dict(original)


def test_load_weights_from_an_empty_directory_says_what_is_missing(sampler, tmp_path):
    with pytest.raises(RayAlignError, match="safetensors"):
        sampler.load_weights(str(tmp_path))


def test_vllm_sampler_without_vllm_or_cuda_raises_a_one_line_error():
    from rayalign.sampling.vllm_engine import VLLMSampler

    if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available():
        pytest.skip("vLLM and CUDA are both present: the missing-dependency path cannot be exercised")
    with pytest.raises(RayAlignError) as error:
        VLLMSampler("tiny-llama")
    assert "\n" not in str(error.value)


@pytest.mark.gpu
def test_vllm_sampler_logprobs_match_hf_and_weights_update(prompts, tmp_path):
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed (pip install 'rayalign[gpu]'); the vLLM engine needs it")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a CUDA GPU; none is visible")
    from rayalign.sampling.hf import HFSampler
    from rayalign.sampling.vllm_engine import VLLMSampler

    hf = HFSampler("tiny-llama")  # the CPU float32 model is the reference
    engine = VLLMSampler("tiny-llama", gpu_memory_utilization=0.3)
    out = engine.generate(prompts, SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=1))
    for prompt, completions in zip(prompts, out):
        for c in completions:
            expected, _ = teacher_forced(hf.model, prompt, c)
            torch.testing.assert_close(torch.tensor(c.logprobs, dtype=torch.float64), expected, atol=2e-2, rtol=0)
    greedy = SamplingParams(temperature=0, max_new_tokens=8)
    before = engine.generate(prompts, greedy)
    perturbed = {k: v + 0.5 * torch.randn_like(v) for k, v in hf.model.state_dict().items()}
    engine.load_weights(perturbed)
    assert engine.generate(prompts, greedy) != before


@pytest.mark.gpu
def test_vllm_engine_options_from_the_config_reach_vllm_llm():
    if importlib.util.find_spec("vllm") is None:
        pytest.skip("vLLM is not installed (pip install 'rayalign[gpu]'); the vLLM engine needs it")
    if not torch.cuda.is_available():
        pytest.skip("vLLM needs a CUDA GPU; none is visible")
    from rayalign import config
    from rayalign.sampling.base import make_sampler
    from rayalign.sampling.pool import engine_options

    cfg = config.load(None, ["sampling.engine=vllm", "sampling.vllm_options={gpu_memory_utilization: 0.25, "
                             "max_model_len: 512, enforce_eager: true, tensor_parallel_size: 1}"])
    engine = make_sampler("vllm", "tiny-llama", **engine_options(cfg.sampling))
    vllm_config = engine.llm.llm_engine.vllm_config
    assert vllm_config.cache_config.gpu_memory_utilization == 0.25
    assert vllm_config.model_config.max_model_len == 512 and vllm_config.model_config.enforce_eager
    assert vllm_config.parallel_config.tensor_parallel_size == 1
