"""Shared fixtures: one real local Ray cluster per test session, and paths to real data."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HH_SAMPLE = REPO.parent / "shared" / "data" / "hh-rlhf-harmless-base.jsonl.gz"
QUICKSTART_DATA = REPO / "jobs" / "data" / "word_collector_prefs.jsonl"

os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def ray_local():
    """A real local Ray cluster (2 CPUs), started once and shut down at the end."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray
    ray.shutdown()


def hh_sample() -> Path:
    if not HH_SAMPLE.is_file():
        pytest.skip(f"the HH-RLHF sample is not present at {HH_SAMPLE} (it ships in the team's shared/ folder)")
    return HH_SAMPLE


def free_port() -> int:
    """Bind port 0 and let the OS pick: other test runs may have Serve on 8000 already."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
