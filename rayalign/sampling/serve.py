"""An OpenAI-compatible endpoint for a sampler, on Ray Serve with its FastAPI ingress.

Routes: ``POST /v1/completions``, ``POST /v1/chat/completions``, ``GET /v1/models``. Bodies follow
OpenAI's schema, so the `openai` package (and `rayalign.llm_client`) talks to it unchanged: the
policy being trained can be the BMC editor or a judge of a later run, or be inspected by hand.

Choices are the decoded completions; `logprobs` (when asked) are the raw model's log-probs of the
sampled tokens (see `rayalign.sampling.hf`), not top-k alternatives. The request's `model` field
is accepted and ignored: one deployment serves one model, named in the responses.
No `from __future__ import annotations` here: FastAPI must see the request models as real
classes in the signatures Serve's ingress rewrites, or it takes them for query parameters.
Malformed requests get FastAPI's 422 (pydantic's message), sampling errors a 400 and a body over 1 MiB a 413,
never a 500. A request whose replica dies is resent to its replacement (`rayalign.serving.Gateway`).
By default Serve's HTTP proxy binds 127.0.0.1: a model endpoint is not for the whole network.
"""

import threading
import time
import uuid
from typing import Literal

from fastapi import FastAPI, HTTPException
from pydantic import BaseModel, ConfigDict, Field, field_validator
from ray import serve

from rayalign.errors import RayAlignError
from rayalign.sampling.base import Completion, SamplingParams, make_sampler
from rayalign.serving import GATEWAY_OPTIONS, QUIET, Gateway, limit_body_size

REQUEST_WAIT_S = 600.0
"""A completion may take minutes on CPU: the gateway's limit on one request, replica restarts included."""

app = FastAPI(title="rayalign sampler", description="OpenAI-compatible completions from a rayalign sampler")
limit_body_size(app)


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore")  # OpenAI clients send fields we do not use (user, ...)

    model: str | None = None
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False

    @field_validator("stop")
    @classmethod
    def _stops(cls, value):
        stops = [value] if isinstance(value, str) else (value or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ValueError("stop takes up to 4 non-empty strings")
        return value

    def params(self, max_tokens: int) -> SamplingParams:
        if self.stream:
            raise HTTPException(400, "stream=true is not supported by this endpoint; send stream=false")
        stop = (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())
        return SamplingParams(n=self.n, temperature=self.temperature, top_p=self.top_p,
                              max_new_tokens=max_tokens, seed=self.seed, stop=stop)


class CompletionRequest(_Sampling):
    prompt: str | list[str] = Field(min_length=1)
    max_tokens: int = Field(16, ge=1, le=8192)
    logprobs: int | None = Field(None, ge=0, le=5)


class ChatMessage(BaseModel):
    role: Literal["system", "user", "assistant"]
    content: str


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1, le=8192)
    max_completion_tokens: int | None = Field(None, ge=1, le=8192)
    logprobs: bool = False


def _usage(prompts: list[list[int]], choices: list[Completion]) -> dict:
    prompt_tokens = sum(len(p) for p in prompts)
    completion_tokens = sum(len(c.generated_ids) for c in choices)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


@serve.deployment(max_ongoing_requests=8)
class SamplerServer:
    """One replica holds one sampler; requests take turns on it (a seeded call must own the RNG)."""

    def __init__(self, model: str, engine: str = "hf", engine_kwargs: dict | None = None):
        self.model = model
        self.sampler = make_sampler(engine, model, **(engine_kwargs or {}))
        self.tokenizer = self.sampler.tokenizer
        self.lock = threading.Lock()

    def _sample(self, prompts: list[list[int]], request: _Sampling, max_tokens: int) -> list[list[Completion]]:
        if any(len(p) == 0 for p in prompts):
            raise HTTPException(400, "a prompt encodes to no tokens; send a non-empty prompt")
        try:
            params = request.params(max_tokens)
            with self.lock:
                return self.sampler.generate(prompts, params)
        except RayAlignError as error:
            raise HTTPException(400, str(error)) from None

    def models(self) -> dict:
        return {"object": "list", "data": [{"id": self.model, "object": "model", "created": 0, "owned_by": "rayalign"}]}

    def completions(self, request: CompletionRequest) -> dict:
        texts = [request.prompt] if isinstance(request.prompt, str) else request.prompt
        prompts = [list(self.tokenizer.encode(text, add_special_tokens=True)) for text in texts]
        results = self._sample(prompts, request, request.max_tokens)
        flat = [c for completions in results for c in completions]  # OpenAI order: prompt-major
        choices = [{"index": i, "text": c.text, "finish_reason": c.finish_reason,
                    "logprobs": self._completion_logprobs(c) if request.logprobs is not None else None}
                   for i, c in enumerate(flat)]
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": self.model, "choices": choices, "usage": _usage(prompts, flat)}

    def chat_completions(self, request: ChatRequest) -> dict:
        from rayalign.data.tokenize import encode_prompt

        messages = [m.model_dump() for m in request.messages]
        prompt = encode_prompt(messages, self.tokenizer, chat_template=True)
        max_tokens = request.max_completion_tokens or request.max_tokens or 256
        (completions,) = self._sample([prompt], request, max_tokens)
        choices = [{"index": i, "message": {"role": "assistant", "content": c.text}, "finish_reason": c.finish_reason,
                    "logprobs": self._chat_logprobs(c) if request.logprobs else None}
                   for i, c in enumerate(completions)]
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": self.model, "choices": choices, "usage": _usage([prompt], completions)}

    def _pieces(self, c: Completion) -> list[str]:
        return [self.tokenizer.decode([t]) for t in c.generated_ids]

    def _completion_logprobs(self, c: Completion) -> dict:
        return {"tokens": self._pieces(c), "token_logprobs": c.logprobs, "top_logprobs": None, "text_offset": None}

    def _chat_logprobs(self, c: Completion) -> dict:
        return {"content": [{"token": piece, "logprob": lp, "bytes": list(piece.encode()), "top_logprobs": []}
                            for piece, lp in zip(self._pieces(c), c.logprobs)]}


@serve.deployment(**GATEWAY_OPTIONS)
@serve.ingress(app)
class SamplerGateway(Gateway):
    """The HTTP routes: FastAPI checks each request, `Gateway.call` hands it to a `SamplerServer` replica."""

    @app.get("/v1/models")
    async def models(self) -> dict:
        return await self.call("models")

    @app.post("/v1/completions")
    async def completions(self, request: CompletionRequest) -> dict:
        return await self.call("completions", request)

    @app.post("/v1/chat/completions")
    async def chat_completions(self, request: ChatRequest) -> dict:
        return await self.call("chat_completions", request)


def build_app(model: str, engine: str = "hf", num_cpus: float = 1, num_gpus: float = 0, wait_s: float = REQUEST_WAIT_S,
              **engine_kwargs):
    """The Serve application for `model`: the gateway and one model replica with these resources."""
    options = {"num_cpus": num_cpus, "num_gpus": num_gpus}
    server = SamplerServer.options(ray_actor_options=options, logging_config=QUIET).bind(model, engine, engine_kwargs)
    return SamplerGateway.options(logging_config=QUIET).bind(server, wait_s)


def start_server(model: str, host: str = "127.0.0.1", port: int = 8000, engine: str = "hf",
                 name: str = "rayalign-sampler", **app_kwargs) -> str:
    """Start Serve's HTTP proxy on host:port (127.0.0.1 unless told otherwise) and deploy the sampler;
    returns the OpenAI base URL, e.g. ``http://127.0.0.1:8000/v1``. Stop it with `serve.shutdown()`."""
    from rayalign.serving import start_serve

    port = start_serve(host, port, logging_config=QUIET)
    serve.run(build_app(model, engine, **app_kwargs), name=name, route_prefix="/")
    return f"http://{host}:{port}/v1"


def serve_forever(model: str, host: str = "127.0.0.1", port: int = 8000, engine: str = "hf") -> int:
    """`rayalign serve sampler`: start, print the base URL, block until Ctrl-C, then shut down."""
    from rayalign.serving import block_until_stopped

    url = start_server(model, host=host, port=port, engine=engine)
    return block_until_stopped(f"sampler '{model}' serving OpenAI-compatible at {url}  "
                               "(POST /completions, /chat/completions)")
