"""The discriminator on Ray Serve: ``POST /score`` over HTTP, or a deployment handle.

Request ``{"prompts": [...], "responses": [...]}`` (strings, equal lengths) → ``{"scores": [...]}``.
Each (prompt, response) pair is one item for ``@serve.batch``, so pairs from concurrent requests
share a forward pass: D2PO's samplers call it with a few pairs at a time, from many actors.

Bad input never reaches the model: FastAPI and pydantic answer 422 with a message for bad JSON,
a missing field, a wrong type or unequal lengths, and for more than ``MAX_ITEMS`` pairs; a body over
1 MiB gets 413 before it is read. A replica that dies under a request costs it only time: the gateway
resends it to the replica Serve starts in its place (503 with a message after `wait_s`). HTTP
binds 127.0.0.1 unless the caller asks for another host: the endpoint has no authentication.
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI
from pydantic import BaseModel, ConfigDict, Field, model_validator
from ray import serve

from rayalign.serving import GATEWAY_OPTIONS, QUIET, REPLICA_WAIT_S, Gateway, limit_body_size

MAX_ITEMS = 4096
SCORE_CHUNK = 256
"""Pairs per request when a pipeline scores through the handle: each request far inside `MAX_ITEMS` and the
gateway's time limit, all of a call's requests in flight at once (Serve batches them across replicas)."""

app = FastAPI(title="rayalign discriminator")
limit_body_size(app)


class ScoreRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    prompts: list[str] = Field(max_length=MAX_ITEMS)
    responses: list[str] = Field(max_length=MAX_ITEMS)

    @model_validator(mode="after")
    def _same_length(self):
        if len(self.prompts) != len(self.responses):
            raise ValueError(f"got {len(self.prompts)} prompts but {len(self.responses)} responses; "
                             "give one response per prompt")
        return self


class ScoreResponse(BaseModel):
    scores: list[float]


@serve.deployment(max_ongoing_requests=64)  # ≥ the batch size, so concurrent requests can fill a batch
class DiscriminatorServer:
    """One replica holds one discriminator, loaded from a `Discriminator.save` directory.

    The directory arrives as `user_config={"checkpoint": DIR, "latest": FILE, "device": ...}`, which Serve passes to
    `reconfigure` when a replica starts. A redeploy with another directory (`DiscriminatorService.swap`) is, through
    `serve.run`, a rolling update: Serve starts a replica with the new weights and only then stops the old one, so
    every request is answered by one set of weights or the other. `update` trains the model where it runs (D2PO's
    rounds) and swaps it in place, no new replica; it records the new directory in the `latest` file, which a
    replica that restarts later loads instead of the deployed one.
    """

    def __init__(self):
        self.checkpoint, self.model, self.device = None, None, "cpu"

    def reconfigure(self, config: dict) -> None:
        from pathlib import Path

        self.device, self.latest = config.get("device", "cpu"), config.get("latest")
        latest = Path(self.latest) if self.latest else None
        checkpoint = latest.read_text() if latest is not None and latest.is_file() else config["checkpoint"]
        if checkpoint != self.checkpoint:
            from rayalign.scoring.reward_model import load_reward_model

            model = load_reward_model(checkpoint).to(self.device)
            self.model, self.checkpoint = model, checkpoint

    async def update(self, pairs: list[dict], known: list[dict], directory: str, storage=None,
                     relative: str | None = None, refit_head: bool = False) -> dict:
        """Train on new gold `pairs` where this replica runs (its CPUs, its GPU): a copy of the served model with a
        fresh AdamW (as a load of its checkpoint would give), or, `refit_head`, its head refitted on frozen features
        of all of them (`known` + `pairs`); its accuracy on them and on all gold pairs so far is measured first. The
        trained model is saved to `directory` (and to the run's URI: `storage`, `relative`), then replaces the served
        one: requests meanwhile are answered by the old one."""
        from rayalign.files import atomic_write_text

        def train() -> tuple:
            model = self.model.copy()
            metrics = {"disc/accuracy_new_gold": model.accuracy(pairs),
                       "disc/accuracy_gold_so_far": model.accuracy(known + pairs)}
            if refit_head:
                model.fit_head(known + pairs)
            else:
                model.update(pairs)
            model.save(directory)
            if storage is not None:
                storage.push(relative)
            if self.latest:
                atomic_write_text(self.latest, directory)
            return model, metrics

        model, metrics = await asyncio.to_thread(train)
        self.model, self.checkpoint = model, directory
        return metrics

    def current_checkpoint(self) -> dict:
        import os

        return {"checkpoint": self.checkpoint, "replica_pid": os.getpid()}

    async def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        return list(await asyncio.gather(*(self._score_pair((p, r)) for p, r in zip(prompts, responses))))

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.01)
    async def _score_pair(self, pairs: list[tuple[str, str]]) -> list[float]:
        # in a thread: a CPU-bound forward pass must not block the replica's event loop
        return await asyncio.to_thread(self.model.score, [p for p, _ in pairs], [r for _, r in pairs])


@serve.deployment(**GATEWAY_OPTIONS)
@serve.ingress(app)
class DiscriminatorGateway(Gateway):
    """HTTP and the handle's entry point: checks each request, forwards it to a `DiscriminatorServer` replica
    (resent if that replica dies, see `rayalign.serving.forward`)."""

    @app.get("/checkpoint")
    async def current_checkpoint(self) -> dict:
        """Which weights answer, and which replica process."""
        return await self.call("current_checkpoint")

    @app.post("/score")
    async def score_http(self, request: ScoreRequest) -> ScoreResponse:
        return ScoreResponse(scores=await self.score(request.prompts, request.responses))

    async def score(self, prompts: list[str], responses: list[str]) -> list[float]:
        """The handle entry point: `await handle.score.remote(prompts, responses)`."""
        request = ScoreRequest(prompts=list(prompts), responses=list(responses))  # same checks as HTTP
        return await self.call("score", request.prompts, request.responses)


def build_app(checkpoint: str, num_cpus: float = 1.0, wait_s: float = REPLICA_WAIT_S, num_gpus: float = 0.0,
              latest: str | None = None):
    """The Serve application for `serve.run`; `num_cpus` and `num_gpus` are what the model's replica reserves (with a
    GPU it computes there); `latest`: the file in which `update` records the newest checkpoint."""
    server = DiscriminatorServer.options(
        ray_actor_options={"num_cpus": num_cpus, "num_gpus": num_gpus}, logging_config=QUIET,
        user_config={"checkpoint": checkpoint, "latest": latest, "device": "cuda" if num_gpus else "cpu"})
    return DiscriminatorGateway.options(logging_config=QUIET).bind(server.bind(), wait_s)


class DiscriminatorService:
    """A pipeline's discriminator on Ray Serve: `score` through the deployment handle (in-process),
    `POST <route_prefix>/score` over HTTP for outsiders, `swap` to new weights without dropping a request."""

    def __init__(self, checkpoint: str, name: str = "discriminator", route_prefix: str = "/discriminator",
                 num_cpus: float = 0.0, host: str = "127.0.0.1", port: int = 8000, num_gpus: float = 0.0,
                 latest: str | None = None):
        """`latest`: a file for `update` to record the newest checkpoint in (a restarted replica loads that one);
        it starts as `checkpoint`."""
        from rayalign.files import atomic_write_text
        from rayalign.serving import start_serve

        start_serve(host, port, logging_config=QUIET)
        self.name, self.route_prefix, self.num_cpus, self.num_gpus = name, route_prefix, num_cpus, num_gpus
        self.latest = latest
        if latest:
            atomic_write_text(latest, checkpoint)
        self.handle = self._deploy(checkpoint)

    def _deploy(self, checkpoint: str):
        return serve.run(build_app(checkpoint, self.num_cpus, num_gpus=self.num_gpus, latest=self.latest),
                         name=self.name, route_prefix=self.route_prefix)

    def score(self, prompts: list[str], responses: list[str], chunk: int = SCORE_CHUNK) -> list[float]:
        """The score of every (prompt, response), in order: a round of any size, sent as requests of `chunk`
        pairs, all in flight at once."""
        from rayalign.errors import RayAlignError

        if len(prompts) != len(responses):
            raise RayAlignError(f"got {len(prompts)} prompts but {len(responses)} responses to score")
        calls = [self.handle.score.remote(list(prompts[i:i + chunk]), list(responses[i:i + chunk]))
                 for i in range(0, len(prompts), chunk)]
        return [value for call in calls for value in call.result()]

    def swap(self, checkpoint: str) -> None:
        """Serve replaces the replicas with ones holding `checkpoint` (rolling: no request is dropped);
        returns once every replica serves it."""
        if self.latest:
            from rayalign.files import atomic_write_text

            atomic_write_text(self.latest, checkpoint)
        self.handle = self._deploy(checkpoint)

    def update(self, pairs: list[dict], known: list[dict], directory: str, storage=None,
               relative: str | None = None, refit_head: bool = False) -> dict:
        """Train on new gold pairs in the model's replica (`DiscriminatorServer.update`), straight to it (no gateway
        time limit on training); it then serves them. Returns its accuracies measured before training."""
        server = serve.get_deployment_handle("DiscriminatorServer", app_name=self.name)
        return server.update.remote(pairs, known, directory, storage, relative, refit_head).result()

    def shutdown(self) -> None:
        serve.delete(self.name)


def start(checkpoint: str, host: str = "127.0.0.1", port: int = 8000, name: str = "discriminator",
          route_prefix: str = "/", num_cpus: float = 1.0):
    """Start Ray (if needed), Serve's HTTP proxy on host:port, and the app; returns its handle."""
    return DiscriminatorService(checkpoint, name, route_prefix, num_cpus, host, port).handle


def serve_forever(checkpoint: str, host: str = "127.0.0.1", port: int = 8000) -> int:
    """`rayalign serve discriminator`: start, print the URL, block until Ctrl-C, then shut down."""
    from pathlib import Path

    from rayalign.errors import RayAlignError
    from rayalign.serving import block_until_stopped

    if not (Path(checkpoint) / "discriminator.json").is_file():
        raise RayAlignError(f"--checkpoint {checkpoint}: not a discriminator checkpoint (no discriminator.json); "
                            "give a directory written by Discriminator.save")
    start(checkpoint, host=host, port=port)
    return block_until_stopped(f"discriminator serving at http://{host}:{port}/score  "
                               "(POST {\"prompts\": [...], \"responses\": [...]})")
