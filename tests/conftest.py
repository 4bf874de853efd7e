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


def free_port() -> int:
    """Bind port 0 and let the OS pick: other test runs may have Serve on 8000 already."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# The local S3-compatible server of tests/test_storage.py: its address and credentials are in the environment
# before the test session's Ray cluster starts, as a cluster's nodes have theirs (every Ray process inherits them).
S3_PORT = free_port()
S3_ENV = {"AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_REGION": "us-east-1",
          "AWS_ENDPOINT_URL": f"http://127.0.0.1:{S3_PORT}", "AWS_EC2_METADATA_DISABLED": "true"}
os.environ.update(S3_ENV)


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

