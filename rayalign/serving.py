"""What every Ray Serve app of rayalign shares: starting Serve, a request-size limit, and (`rayalign serve ...`)
waiting until stopped."""

from __future__ import annotations


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

    if not ray.is_initialized():
        ray.init(logging_level="WARNING")

    def start() -> None:
        serve.start(http_options={"host": host, "port": port}, logging_config=logging_config)

    outside = PlacementGroupSchedulingStrategy(placement_group=None)
    ray.get(ray.remote(start).options(num_cpus=0, scheduling_strategy=outside).remote())
    from ray.serve.context import _get_global_client  # Serve has no public call for its HTTP options

    return _get_global_client().http_config.port


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
