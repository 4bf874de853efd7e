"""What every `rayalign serve ...` does once its Ray Serve app runs: wait, then shut Serve down."""

from __future__ import annotations


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
