"""Starting or joining Ray, the one way rayalign does it, with Ray's own noise kept out of a successful run.

Every Ray process of a rayalign job first runs `setup_ray_process` (Ray's documented `worker_process_setup_hook`):
- It sets RAY_ADDRESS to the process's own cluster where none is set. Ray's state API finds its cluster by
  looking for one on the machine, and with two local clusters (a test session's and a run's) it fails: Ray
  Train's placement-group cleaner, which asks the state API whether the controller lives, died with a
  "Found multiple active Ray instances" traceback in the middle of a successful run.
- It drops two messages of Ray's, each where it is logged; nothing else is touched.
  Ray Train's controller, shutting down, waits 12 s for its placement-group cleaner to stop and, when that wait
  runs out (seen on GPU runs), logs "Failed to stop PlacementGroupCleaner gracefully" with a `GetTimeoutError`
  traceback. The cleaner goes with the controller regardless and the run's result is unaffected; the line only
  makes a user think the run failed.
  And a new local cluster warns that token authentication is on, the safe default that needs nothing from the
  user (the warning that it is off stays).
"""

from __future__ import annotations

import logging

SETUP_HOOK = "rayalign.ray_setup.setup_ray_process"
CLEANER_LOGGER = "ray.train.v2._internal.callbacks.placement_group_callback"
AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"


class DropCleanerStopTimeout(logging.Filter):
    """Drops Ray Train's "Failed to stop PlacementGroupCleaner" when its cause is only a `GetTimeoutError`."""

    def filter(self, record: logging.LogRecord) -> bool:
        from ray.exceptions import GetTimeoutError

        timed_out = record.exc_info is not None and isinstance(record.exc_info[1], GetTimeoutError)
        return not (timed_out and record.getMessage().startswith("Failed to stop PlacementGroupCleaner"))


class DropAuthEnabledNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Token authentication is enabled")


def setup_ray_process() -> None:
    import os

    import ray

    if ray.is_initialized() and "RAY_ADDRESS" not in os.environ:
        os.environ["RAY_ADDRESS"] = ray.get_runtime_context().gcs_address
    quiet_ray_noise()


def quiet_ray_noise() -> None:
    for name, noise in ((CLEANER_LOGGER, DropCleanerStopTimeout), (AUTH_LOGGER, DropAuthEnabledNotice)):
        logger = logging.getLogger(name)
        if not any(isinstance(f, noise) for f in logger.filters):
            logger.addFilter(noise())


def init_ray(**kwargs):
    """`ray.init` (a local cluster, or the one RAY_ADDRESS or a submitted job names) unless this process is already
    connected; Ray's own logs at WARNING, `setup_ray_process` in every Ray process. Returns Ray's context, or None."""
    import ray

    if ray.is_initialized():
        return None
    quiet_ray_noise()
    return ray.init(logging_level="WARNING", runtime_env={"worker_process_setup_hook": SETUP_HOOK}, **kwargs)
