"""The one way rayalign calls an LLM by API (BMC's editor, an LLM judge): the `openai` package.

Any OpenAI-compatible server works: OpenAI itself, vLLM's or SGLang's server, or rayalign's own
sampler endpoint (`rayalign.sampling.serve`). Configuration, first found wins:

- base URL: the `base_url` argument, else ``RAYALIGN_LLM_BASE_URL`` (e.g. ``http://127.0.0.1:8000/v1``);
- model: the `model` argument, else ``RAYALIGN_LLM_MODEL``, else the server's first listed model;
- API key: the `api_key` argument, else ``RAYALIGN_LLM_API_KEY``, else ``OPENAI_API_KEY``, else a
  placeholder (local servers need none, but the client insists on one).

Errors a user can act on (no server there, a 4xx/5xx answer) become one-line `RayAlignError`s.
"""

from __future__ import annotations

import os

from rayalign.errors import ConfigError, MissingPackageError, RayAlignError


class LLMClient:
    """`complete` / `chat` return the first choice's text; the `*_response` forms return the whole
    OpenAI response object (all choices, usage, logprobs). Keyword parameters are OpenAI's
    (max_tokens, temperature, top_p, n, stop, seed, ...)."""

    def __init__(self, base_url: str | None = None, model: str | None = None, api_key: str | None = None,
                 timeout: float = 120.0, max_retries: int = 2):
        try:
            import openai
        except ImportError:
            raise MissingPackageError("openai", "calling an LLM by API", "pip install openai") from None
        self.base_url = base_url or os.environ.get("RAYALIGN_LLM_BASE_URL")
        if not self.base_url:
            raise ConfigError("no LLM endpoint configured: pass base_url or set RAYALIGN_LLM_BASE_URL "
                              "(e.g. http://127.0.0.1:8000/v1)")
        key = api_key or os.environ.get("RAYALIGN_LLM_API_KEY") or os.environ.get("OPENAI_API_KEY") or "unused"
        self._openai = openai
        self.client = openai.OpenAI(base_url=self.base_url, api_key=key, timeout=timeout, max_retries=max_retries)
        self._model = model or os.environ.get("RAYALIGN_LLM_MODEL")

    @property
    def model(self) -> str:
        if not self._model:
            listed = self._call(self.client.models.list)
            if not listed.data:
                raise ConfigError(f"the LLM endpoint {self.base_url} lists no models; pass model= or set RAYALIGN_LLM_MODEL")
            self._model = listed.data[0].id
        return self._model

    def complete_response(self, prompt: str | list[str], **params):
        return self._call(self.client.completions.create, model=params.pop("model", None) or self.model,
                          prompt=prompt, **params)

    def chat_response(self, messages: list[dict], **params):
        return self._call(self.client.chat.completions.create, model=params.pop("model", None) or self.model,
                          messages=messages, **params)

    def complete(self, prompt: str, **params) -> str:
        return self.complete_response(prompt, **params).choices[0].text

    def chat(self, messages: list[dict], **params) -> str:
        return self.chat_response(messages, **params).choices[0].message.content or ""

    def _call(self, method, **kwargs):
        try:
            return method(**kwargs)
        except self._openai.APIConnectionError as error:
            raise RayAlignError(f"could not reach the LLM endpoint {self.base_url} ({error}); is the server "
                                "running, and is its URL (RAYALIGN_LLM_BASE_URL, bmc.llm_base_url) right?") from None
        except self._openai.APIStatusError as error:
            raise RayAlignError(f"the LLM endpoint {self.base_url} answered {error.status_code}: "
                                f"{_short(error)}") from None


def _short(error) -> str:
    """The server's message in one line (OpenAI's {"error": {"message"}} or FastAPI's {"detail"})."""
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        inner = body.get("error", body)
        message = inner.get("message") or inner.get("detail") if isinstance(inner, dict) else None
        if message:
            return " ".join(str(message).split())[:500]
    return " ".join(str(error).split())[:500]
