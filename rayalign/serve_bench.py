"""`rayalign bench serve`: the HTTP endpoints under load, and what they answer to bad requests.

Starts, on a local Ray cluster, Serve's proxy on 127.0.0.1 with the discriminator (`POST /discriminator/score`,
a fresh minilm head: load, not accuracy, is measured) and the sampler's OpenAI endpoint
(`POST /v1/completions`). From another process (spawned, as an outside client would be), each gets
`requests` requests, `concurrency` in flight (httpx, asyncio), one pair or one prompt each. Reported per
endpoint: errors (anything but a 200, or no answer within the client's timeout), the p50 and p99 latency, requests/s
over the whole run; then the status codes of malformed bodies (must be 4xx) and of an oversized one (413).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context

from rayalign.ray_setup import init_ray

BAD_BODIES = {"not_json": b"{not json", "wrong_type": b'{"prompts": 1, "responses": 2}',
              "oversized": b'{"prompts": ["' + b"a" * (2 << 20) + b'"], "responses": ["b"]}'}
BAD_COMPLETIONS = {"not_json": b"{not json", "wrong_type": b'{"prompt": 5, "max_tokens": "x"}',
                   "oversized": b'{"prompt": "' + b"a" * (2 << 20) + b'"}'}


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between order statistics (numpy's default)."""
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = int(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


async def _load(url: str, bodies: list[dict], concurrency: int, timeout_s: float) -> dict:
    import httpx

    limit = asyncio.Semaphore(concurrency)
    latencies, errors = [], {}

    async def one(client, body):
        async with limit:
            began = time.perf_counter()
            try:
                status = (await client.post(url, json=body)).status_code
            except httpx.HTTPError as error:
                status = type(error).__name__
            if status == 200:
                latencies.append(time.perf_counter() - began)
            else:
                errors[str(status)] = errors.get(str(status), 0) + 1

    began = time.perf_counter()
    async with httpx.AsyncClient(timeout=timeout_s, limits=httpx.Limits(max_connections=concurrency)) as client:
        await asyncio.gather(*(one(client, body) for body in bodies))
    wall = time.perf_counter() - began
    return {"requests": len(bodies), "concurrency": concurrency, "errors": sum(errors.values()),
            "error_kinds": errors, "p50_ms": round(1000 * percentile(latencies, 50), 1) if latencies else None,
            "p99_ms": round(1000 * percentile(latencies, 99), 1) if latencies else None,
            "requests_per_s": round(len(bodies) / wall, 1), "wall_s": round(wall, 1)}


def _bad(url: str, bodies: dict[str, bytes]) -> dict[str, int]:
    import httpx

    return {name: httpx.post(url, content=body, headers={"content-type": "application/json"}, timeout=60).status_code
            for name, body in bodies.items()}


def client_run(base: str, requests: int, concurrency: int, max_tokens: int, timeout_s: float) -> dict:
    """In the client process: load on both endpoints, then the bad bodies."""
    score = [{"prompts": [f"Question {i}?"], "responses": [f"Answer number {i}."]} for i in range(requests)]
    complete = [{"prompt": f"Tip {i}:", "max_tokens": max_tokens, "temperature": 0.7, "seed": i}
                for i in range(requests)]
    return {
        "discriminator /score": {**asyncio.run(_load(f"{base}/discriminator/score", score, concurrency, timeout_s)),
                                 "bad_requests": _bad(f"{base}/discriminator/score", BAD_BODIES)},
        "sampler /v1/completions": {**asyncio.run(_load(f"{base}/v1/completions", complete, concurrency, timeout_s)),
                                    "bad_requests": _bad(f"{base}/v1/completions", BAD_COMPLETIONS)},
    }


def bench_serve(model: str = "smollm2-135m-instruct", requests: int = 1000, concurrency: int = 32,
                max_tokens: int = 8, port: int = 8000, timeout_s: float = 120.0) -> dict:
    """Start both endpoints, load them from a spawned client process, shut down; the figures as a dict."""
    from ray import serve

    from rayalign.sampling.serve import start_server
    from rayalign.scoring.discriminator import Discriminator
    from rayalign.scoring.serve import DiscriminatorService

    init_ray()
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = str(Discriminator().save(f"{tmp}/disc"))
        DiscriminatorService(checkpoint, route_prefix="/discriminator", num_cpus=1, port=port)
        start_server(model, port=port, name="bench-sampler", num_cpus=1)
        try:
            with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as client:
                result = client.submit(client_run, f"http://127.0.0.1:{port}", requests, concurrency, max_tokens,
                                       timeout_s).result()
        finally:
            serve.shutdown()
    return {"model": model, "max_tokens": max_tokens, **result}


def summary_lines(result: dict) -> list[str]:
    """One line per endpoint, for the terminal and the README."""
    lines = []
    for name, figures in result.items():
        if isinstance(figures, dict):
            lines.append(f"{name}: {figures['requests']} requests, {figures['concurrency']} in flight: "
                         f"{figures['errors']} errors, p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms, "
                         f"{figures['requests_per_s']} req/s; bad requests {json.dumps(figures['bad_requests'])}")
    return lines
