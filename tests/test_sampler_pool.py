"""SamplerPool on a real local Ray cluster: order and seeds match one HFSampler, an actor killed
mid-run loses and duplicates nothing, weight updates reach every actor (and survive a restart)."""

from __future__ import annotations

import dataclasses
import threading

import pytest
import torch

from rayalign.data.tokenize import encode_prompt
from rayalign.errors import RayAlignError
from rayalign.sampling import SamplingParams

N_PROMPTS = 10


@pytest.fixture(scope="module")
def ray_cluster():
    """A 2-CPU local cluster for this module; one already running (another module's) is reused
    and left running."""
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def reference():
    """The single-process sampler the pool must agree with (one thread, as the actors have)."""
    from rayalign.sampling.hf import HFSampler

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield HFSampler("tiny-llama", batch_size=4)
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def prompts(reference):
    return [encode_prompt([{"role": "user", "content": f"Question {i}: what comes after {i}?"}], reference.tokenizer)
            for i in range(N_PROMPTS)]


@pytest.fixture(scope="module")
def pool(ray_cluster):
    from rayalign.sampling.pool import SamplerPool

    pool = SamplerPool(engine="hf", model="tiny-llama", num_actors=2, num_cpus=1, max_restarts=1,
                       chunk_size=3, max_in_flight=2, batch_size=4)
    yield pool
    pool.shutdown()


def tags(count: int) -> list[list[int]]:
    """A distinct one-token prefix per prompt: returned unchanged, it says which prompt an answer is for."""
    return [[1000 + i] for i in range(count)]


def reference_run(sampler, prompts, params, prefixes, chunk_size):
    from rayalign.sampling.pool import chunk_seed

    out = []
    for start in range(0, len(prompts), chunk_size):
        chunk_params = dataclasses.replace(params, seed=chunk_seed(params.seed, start))
        out += sampler.generate(prompts[start:start + chunk_size], chunk_params, prefixes[start:start + chunk_size])
    return out


def assert_same(actual, expected):
    assert [[c.token_ids for c in cs] for cs in actual] == [[c.token_ids for c in cs] for cs in expected]
    assert [[c.finish_reason for c in cs] for cs in actual] == [[c.finish_reason for c in cs] for cs in expected]
    flat = [(a, e) for cs, es in zip(actual, expected) for a, e in zip(cs, es)]
    for a, e in flat:
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(e.logprobs), atol=1e-4, rtol=0)


def test_a_sampler_that_cannot_start_is_one_line(ray_cluster):
    """Runs before the `pool` fixture takes the cluster's CPUs (pytest keeps file order)."""
    from rayalign.sampling.pool import SamplerPool

    with pytest.raises(RayAlignError, match="did not start") as error:
        SamplerPool(model="./no/such/model", num_actors=1, max_restarts=0)
    assert "\n" not in str(error.value)


def test_order_and_seeds_match_a_single_sampler(pool, reference, prompts):
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=8, seed=7)
    seen = []
    out = pool.generate(prompts, params, prefixes=tags(N_PROMPTS), on_chunk=lambda c, a: seen.append(a))
    assert len(out) == N_PROMPTS and all(len(cs) == 2 for cs in out)
    assert [cs[0].token_ids[0] for cs in out] == [1000 + i for i in range(N_PROMPTS)]
    assert set(seen) == {0, 1}, "both actors should have taken chunks"
    assert_same(out, reference_run(reference, prompts, params, tags(N_PROMPTS), pool.chunk_size))
    assert pool.last_stats["chunks"] == 4 and not pool.last_stats.get("actor_failures")


def test_an_actor_killed_mid_run_loses_and_duplicates_nothing(pool, reference, prompts, ray_cluster):
    params = SamplingParams(temperature=1.0, max_new_tokens=48, seed=3)
    many = prompts * 2
    killed = []

    def kill_after_first_chunk(chunk, actor):
        if not killed:  # the actor that just answered still holds another chunk: kill it now
            killed.append(actor)
            victim = pool.actors[actor]
            threading.Thread(target=ray_cluster.kill, args=(victim,), kwargs={"no_restart": False}).start()

    out = pool.generate(many, params, prefixes=tags(len(many)), on_chunk=kill_after_first_chunk)
    assert pool.last_stats.get("actor_failures", 0) >= 1, pool.last_stats  # the kill really hit work in flight
    assert pool.last_stats["chunks_redispatched"] >= 1
    answered = [c.token_ids[0] - 1000 for cs in out for c in cs]
    assert sorted(answered) == list(range(len(many)))  # every prompt exactly once, in order
    assert answered == list(range(len(many)))
    assert_same(out, reference_run(reference, many, params, tags(len(many)), pool.chunk_size))
    again = pool.generate(prompts, SamplingParams(temperature=0, max_new_tokens=4))  # the pool still works
    assert len(again) == N_PROMPTS


def test_update_weights_reaches_every_actor_and_survives_a_restart(pool, reference, prompts, ray_cluster, tmp_path):
    greedy = SamplingParams(temperature=0, max_new_tokens=6)
    before = pool.generate(prompts, greedy)
    model = reference.model
    original = {k: v.clone() for k, v in model.state_dict().items()}
    generator = torch.Generator().manual_seed(1)
    model.load_state_dict({k: v + 0.5 * torch.randn(v.shape, generator=generator) for k, v in original.items()})
    model.save_pretrained(tmp_path)
    try:
        expected = reference.generate(prompts, greedy)
        pool.update_weights(str(tmp_path))
        after = pool.generate(prompts, greedy)
        assert [c[0].token_ids for c in after] == [c[0].token_ids for c in expected]
        assert [c[0].token_ids for c in after] != [c[0].token_ids for c in before]
        ray_cluster.kill(pool.actors[0], no_restart=False)  # restarts from the constructor's checkpoint...
        restarted = pool.generate(prompts, greedy)  # ...so the pool must reload the new weights into it
        assert [c[0].token_ids for c in restarted] == [c[0].token_ids for c in expected]
        with pytest.raises(RayAlignError, match="safetensors"):
            pool.update_weights(str(tmp_path / "nothing-here"))  # the pool keeps its weights
        assert [c[0].token_ids for c in pool.generate(prompts, greedy)] == [c[0].token_ids for c in expected]
        pool.update_weights(original)  # a state dict, through the object store
        assert [c[0].token_ids for c in pool.generate(prompts, greedy)] == [c[0].token_ids for c in before]
    finally:
        model.load_state_dict(original)


def test_a_pool_the_cluster_cannot_place_is_one_line(pool):
    """`pool` holds both CPUs, so a second pool cannot be placed: a clear error, not a hang."""
    from rayalign.sampling.pool import SamplerPool

    with pytest.raises(RayAlignError, match="cannot place") as error:
        SamplerPool(num_actors=1, ready_timeout_s=2)
    assert "\n" not in str(error.value)


def test_vllm_pool_skips_without_gpu():
    import importlib.util

    if importlib.util.find_spec("vllm") is None or not torch.cuda.is_available():
        pytest.skip("the vllm engine needs vLLM and a CUDA GPU; this machine lacks "
                    + ("vLLM" if importlib.util.find_spec("vllm") is None else "a GPU"))
    from rayalign.sampling.pool import SamplerPool

    with SamplerPool(engine="vllm", model="tiny-llama", num_actors=1, num_cpus=1, num_gpus=0.5,
                     gpu_memory_utilization=0.3) as vpool:
        out = vpool.generate([[1, 2, 3]], SamplingParams(temperature=0, max_new_tokens=4))
        assert len(out) == 1 and len(out[0][0].logprobs) == len(out[0][0].token_ids)
