"""Quiet success: a run that succeeds prints no exception text (also with a second local Ray cluster on the machine,
as in this test session); the two messages of Ray's that are noise are dropped and nothing else."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

import pytest

from rayalign.ray_setup import AUTH_LOGGER, CLEANER_LOGGER, quiet_ray_noise
from tests.conftest import REPO


def _real_get_timeout(ray_local) -> BaseException:
    """The exception Ray Train's controller logs: a `ray.get` whose timeout runs out."""
    slow = ray_local.remote(num_cpus=0)(lambda: time.sleep(5)).remote()
    try:
        ray_local.get(slow, timeout=0.01)
    except ray_local.exceptions.GetTimeoutError as error:
        return error
    raise AssertionError("ray.get did not time out")


def _logged(logger: logging.Logger, message: str, error: BaseException, caplog) -> bool:
    caplog.clear()
    try:
        raise error
    except BaseException:
        logger.exception(message)
    return any(record.getMessage() == message for record in caplog.records)


def test_the_cleaner_stop_timeout_is_dropped_and_nothing_else(ray_local, caplog):
    timeout = _real_get_timeout(ray_local)
    cleaner = logging.getLogger(CLEANER_LOGGER)
    assert _logged(cleaner, "Failed to stop PlacementGroupCleaner gracefully.", timeout, caplog)  # before the hook
    quiet_ray_noise()
    try:
        assert not _logged(cleaner, "Failed to stop PlacementGroupCleaner gracefully.", timeout, caplog)
        assert _logged(cleaner, "Failed to stop PlacementGroupCleaner gracefully.", RuntimeError("real"), caplog)
        assert _logged(cleaner, "Failed to launch PlacementGroupCleaner", timeout, caplog)
        assert _logged(logging.getLogger("ray.train.other"), "Failed to stop PlacementGroupCleaner gracefully.",
                       timeout, caplog)
    finally:
        cleaner.filters.clear()


def test_the_auth_enabled_notice_is_dropped_and_the_disabled_warning_kept(caplog):
    auth = logging.getLogger(AUTH_LOGGER)
    quiet_ray_noise()
    try:
        caplog.clear()
        auth.warning("Token authentication is enabled for this Ray cluster. Set RAY_AUTH_MODE=disabled to opt out.")
        auth.warning("Token authentication is disabled for this Ray cluster. Anyone with network access ...")
        assert [r.getMessage()[:33] for r in caplog.records] == ["Token authentication is disabled "]
    finally:
        auth.filters.clear()


@pytest.mark.slow  # 40 s: a whole `rayalign train` in a subprocess; keeps the default suite under 15 min on 2 cores
def test_a_successful_run_prints_no_exception_text(tmp_path):
    """`rayalign train` end to end in its own process (its own Ray cluster): exit 0, and neither stream shows a
    traceback or an exception's name."""
    result = subprocess.run([sys.executable, "-m", "rayalign.cli", "train", "jobs/dpo_quickstart.yaml",
                             "model.name=tiny-llama", "train.max_steps=2", "tracking.wandb=disabled",
                             f"output_dir={tmp_path}"], check=False, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    output = result.stdout + result.stderr
    for noise in ("Traceback", "Error:", "Exception", "Token authentication is enabled"):
        assert noise not in output, output[max(0, output.find(noise) - 1500):output.find(noise) + 500]
