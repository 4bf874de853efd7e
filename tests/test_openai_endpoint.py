"""The sampler's OpenAI-compatible endpoint on real Ray Serve over HTTP (127.0.0.1, a free port),
called through the `openai` package (`rayalign.llm_client`) and raw HTTP for malformed requests."""

from __future__ import annotations

import socket

import httpx
import pytest
import torch

from rayalign.data.tokenize import encode_prompt
from rayalign.errors import ConfigError, RayAlignError
from rayalign.llm_client import LLMClient
from rayalign.sampling import SamplingParams
from tests.conftest import free_port

PROMPT = "The three primary colours are"
MESSAGES = [{"role": "user", "content": "Name a colour."}]


@pytest.fixture(scope="module")
def server():
    import ray
    from ray import serve

    from rayalign.sampling.serve import start_server

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    url = start_server("tiny-llama", host="127.0.0.1", port=free_port(), num_cpus=1)
    yield url
    serve.shutdown()
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def client(server):
    return LLMClient(base_url=server, api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def local():
    from rayalign.sampling.hf import HFSampler

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield HFSampler("tiny-llama")
    torch.set_num_threads(before)


def greedy_text(sampler, prompt_ids: list[int], max_tokens: int) -> str:
    (c,), = sampler.generate([prompt_ids], SamplingParams(temperature=0, max_new_tokens=max_tokens))
    return c.text


def test_completions_schema_and_greedy_text(client, local):
    response = client.complete_response(PROMPT, max_tokens=8, temperature=0)
    assert response.id.startswith("cmpl-") and response.object == "text_completion"
    assert response.model == "tiny-llama" and response.created > 0
    (choice,) = response.choices
    assert choice.index == 0 and choice.finish_reason in ("stop", "length") and choice.logprobs is None
    prompt_ids = local.tokenizer.encode(PROMPT, add_special_tokens=True)
    assert choice.text == greedy_text(local, prompt_ids, 8)
    assert response.usage.prompt_tokens == len(prompt_ids)
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens
    assert client.complete(PROMPT, max_tokens=8, temperature=0) == choice.text
    assert client.model == "tiny-llama"  # found through GET /v1/models


def test_completions_batch_n_seed_stop_and_logprobs(client):
    kwargs = {"max_tokens": 6, "temperature": 1.0, "n": 2, "seed": 11, "logprobs": 0}
    response = client.complete_response([PROMPT, "Hello"], **kwargs)
    assert [c.index for c in response.choices] == [0, 1, 2, 3]
    for choice in response.choices:
        assert len(choice.logprobs.token_logprobs) == len(choice.logprobs.tokens) > 0
        assert all(lp <= 0 for lp in choice.logprobs.token_logprobs)
    again = client.complete_response([PROMPT, "Hello"], **kwargs)
    assert [c.text for c in again.choices] == [c.text for c in response.choices]
    first = response.choices[0].text
    stop = first[len(first) // 2:][:1]
    if stop.strip():
        cut = client.complete_response([PROMPT, "Hello"], **kwargs, stop=[stop]).choices[0]
        assert cut.finish_reason == "stop" and cut.text == first[:first.index(stop)]


def test_chat_schema_and_greedy_text(client, local):
    response = client.chat_response(MESSAGES, max_tokens=8, temperature=0, logprobs=True)
    assert response.id.startswith("chatcmpl-") and response.object == "chat.completion"
    (choice,) = response.choices
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert choice.message.content == greedy_text(local, encode_prompt(MESSAGES, local.tokenizer), 8)
    assert len(choice.logprobs.content) == response.usage.completion_tokens
    assert client.chat(MESSAGES, max_tokens=8, temperature=0) == choice.message.content


@pytest.mark.parametrize("path, body, status", [
    ("/completions", b"{not json", 422),
    ("/completions", b'{"max_tokens": 4}', 422),  # no prompt
    ("/completions", b'{"prompt": "hi", "temperature": -1}', 422),
    ("/completions", b'{"prompt": [], "max_tokens": 4}', 422),
    ("/completions", b'{"prompt": "hi", "stop": ["", "x"]}', 422),
    ("/completions", b'{"prompt": "", "max_tokens": 4}', 422),
    ("/completions", b'{"prompt": ["hi", ""], "max_tokens": 4}', 400),  # the second encodes to no tokens
    ("/completions", b'{"prompt": "hi", "stream": true}', 400),
    ("/chat/completions", b'{"messages": []}', 422),
    ("/chat/completions", b'{"messages": [{"role": "wizard", "content": "hi"}]}', 422),
    ("/chat/completions", b'[1, 2]', 422),
    ("/completions", b'{"prompt": "%s"}' % (b"a" * (1 << 20)), 413),  # over 1 MiB: refused unread
])
def test_malformed_requests_get_a_4xx_with_a_message(server, path, body, status):
    response = httpx.post(server + path, content=body, headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == status, response.text
    assert response.json()["detail"]


def test_client_errors_are_one_line(client, server, monkeypatch):
    with pytest.raises(RayAlignError, match="answered 422") as error:
        client.complete(PROMPT, max_tokens=0)
    assert "\n" not in str(error.value)
    monkeypatch.delenv("RAYALIGN_LLM_BASE_URL", raising=False)
    with pytest.raises(ConfigError, match="RAYALIGN_LLM_BASE_URL"):
        LLMClient()
    monkeypatch.setenv("RAYALIGN_LLM_BASE_URL", f"http://127.0.0.1:{free_port()}/v1")
    with pytest.raises(RayAlignError, match="could not reach"):
        LLMClient(model="x", max_retries=0, timeout=5).complete("hi")


def test_d2po_judge_labels_through_this_endpoint_and_never_past_its_budget(server, monkeypatch, tmp_path):
    """D2PO's `judge` labeller asks an LLM through `LLMClient`: each answer is a label (A, B, or no preference
    for anything else), every call is logged and counted, and a call past the budget is refused."""
    from rayalign.config import D2POConfig
    from rayalign.files import read_jsonl
    from rayalign.pipelines.d2po import GoldLabeller

    monkeypatch.setenv("RAYALIGN_LLM_BASE_URL", server)
    log = tmp_path / "gold_calls.jsonl"
    labeller = GoldLabeller(D2POConfig(labeller="judge", gold_budget=2), task=None, used=0, log=log)
    labels = [labeller.label(1, i, "Name a colour.", "Blue.", "A fish.") for i in range(2)]
    assert all(label in (0, 1, None) for label in labels) and labeller.left == 0
    entries = read_jsonl(log)
    assert [(e["round"], e["pair"], e["labeller"], e["used"]) for e in entries] == [(1, 0, "judge", 1),
                                                                                      (1, 1, "judge", 2)]
    with pytest.raises(RuntimeError, match="budget exhausted"):
        labeller.label(1, 2, "Name a colour.", "Blue.", "A fish.")
    assert len(log.read_text().splitlines()) == 2


def _other_address() -> str | None:
    """This machine's address on its network (not loopback), if it has one: where outsiders would connect."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        probe.connect(("192.0.2.1", 9))  # no packet is sent: this only picks the outgoing interface
        address = probe.getsockname()[0]
    except OSError:
        return None
    finally:
        probe.close()
    return None if address.startswith("127.") else address


def test_the_endpoint_listens_on_loopback_only(server):
    """Serve's proxy binds 127.0.0.1 by default: the machine's own network address gets no answer."""
    port = int(server.rsplit(":", 1)[1].split("/")[0])
    assert httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=10).status_code == 200
    other = _other_address()
    if other is None:
        pytest.skip("this machine has no network address besides loopback to try")
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://{other}:{port}/v1/models", timeout=5)
