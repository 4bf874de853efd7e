"""What every Ray Serve app of rayalign shares: starting Serve, a request-size limit, the gateway's forwarding
that outlives a dead replica, and (`rayalign serve ...`) waiting until stopped.

Each app is two deployments: a gateway (FastAPI ingress, no CPU, no model) that checks requests and forwards
them through a deployment handle to the model's replicas. Serve's HTTP proxy answers 500 to a request whose
replica died under it and cannot be told otherwise; the gateway instead resends the request to the replica
Serve starts in its place, and answers 503 with a message once `REPLICA_WAIT_S` has passed without one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from rayalign.ray_setup import init_ray

QUIET = {"log_level": "WARNING", "enable_access_log": False}  # not a line per request in the driver's output

REPLICA_WAIT_S = 120.0
"""How long the gateway keeps resending a request whose replica died (Serve restarts one in ~5-15 s on CPU)."""


def start_serve(host: str, port: int, logging_config: dict | None = None) -> int:
    """Start Ray (if needed) and Serve's HTTP proxy on host:port; returns the port it listens on (where Serve was
    already running, its own: one proxy serves every app of a cluster).

    Serve's controller is a detached, cluster-wide actor. Started from inside a Ray Tune trial it would be
    captured into the trial's placement group, which cannot hold it ("Cannot schedule ServeController with
    the placement group"), so it starts from a task that opts out of any placement group.
    """
    import ray
    from ray import serve
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    init_ray()

    def start() -> None:
        serve.start(http_options={"host": host, "port": port}, logging_config=logging_config)

    outside = PlacementGroupSchedulingStrategy(placement_group=None)
    ray.get(ray.remote(start).options(num_cpus=0, scheduling_strategy=outside).remote())
    from ray.serve.context import _get_global_client  # Serve has no public call for its HTTP options

    return _get_global_client().http_config.port


def free_port(host: str = "127.0.0.1") -> int:
    """A port on `host` that is free now (the OS picks it): for a server that must not take a fixed one."""
    import socket

    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


MAX_BODY_BYTES = 1 << 20
"""Largest request body an endpoint reads (1 MiB: thousands of prompts); a larger one is answered 413 unread."""


def limit_body_size(app, max_bytes: int = MAX_BODY_BYTES) -> None:
    """Answer 413 to a request whose Content-Length is over `max_bytes`, before its body is read or parsed."""
    from fastapi.responses import JSONResponse

    @app.middleware("http")
    async def _limit(request, call_next):
        length = request.headers.get("content-length", "")
        if length.isdigit() and int(length) > max_bytes:
            return JSONResponse(status_code=413, content={"detail": f"request body of {length} bytes is over this "
                                                          f"endpoint's {max_bytes}-byte limit; send fewer or shorter texts"})
        return await call_next(request)


async def forward(call: Callable[[], Awaitable], wait_s: float = REPLICA_WAIT_S):
    """Await `call()`, a handle call on the model deployment; resend it while its replica is dead (Serve drops the
    dead one from routing and queues the resend for its replacement), for at most `wait_s` seconds in all.

    The model's own errors come back as they were raised (an HTTPException keeps its status); a request that
    no replica answers in time gets 503 with what happened and what to do.
    """
    from fastapi import HTTPException
    from ray.exceptions import RayActorError, RayTaskError

    deadline = time.monotonic() + wait_s
    while True:
        try:
            return await asyncio.wait_for(call(), timeout=max(deadline - time.monotonic(), 0.001))
        except RayTaskError as error:
            raise error.cause from None
        except (RayActorError, TimeoutError) as error:
            if time.monotonic() >= deadline or isinstance(error, TimeoutError):
                raise HTTPException(503, f"no replica answered within {wait_s:g} s (the model's replica died and its "
                                         "replacement is not up yet, or it is busy); retry the request later") from None
            await asyncio.sleep(0.2)


GATEWAY_OPTIONS = {"max_ongoing_requests": 1024, "ray_actor_options": {"num_cpus": 0}}  # it only waits on the model


class Gateway:
    """What each app's gateway deployment (`@serve.deployment(**GATEWAY_OPTIONS)` and `@serve.ingress(app)` on a
    subclass with the routes) holds: the model deployment's handle and its limit; `call` forwards to it."""

    def __init__(self, server, wait_s: float = REPLICA_WAIT_S):
        self.server, self.wait_s = server, wait_s

    async def call(self, method: str, *args):
        """`server.<method>(*args)` through `forward`."""
        return await forward(lambda: getattr(self.server, method).remote(*args), self.wait_s)


def block_until_stopped(message: str) -> int:
    """Print `message`, wait for Ctrl-C or SIGTERM, shut Serve down; exit code 0."""
    import signal
    import time

    from ray import serve

    def _interrupt(*_):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, _interrupt)  # after ray.init, which sets its own: a stop shuts Serve down too
    print(message + "; Ctrl-C to stop", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("stopping", flush=True)
    finally:
        serve.shutdown()
    return 0
