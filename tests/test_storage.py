"""A run whose output_dir is an s3:// URI, against a real S3-compatible server (moto's server mode) on 127.0.0.1.

Between the stopped run and its resumption the local staging copy is deleted: whatever the resumed run knows, it
read from the bucket."""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import pytest
import torch

from rayalign import config
from rayalign.cli import main
from rayalign.train.driver import run_training
from tests.conftest import QUICKSTART_DATA, S3_ENV, S3_PORT

BUCKET = "rayalign-test"
BASE = ["model.name=tiny-llama", f"data.path={QUICKSTART_DATA}", "data.limit=16", "data.max_length=128",
        "train.batch_size=4", "train.micro_batch_size=4", "train.max_steps=4", "train.save_every=2",
        "train.warmup_ratio=0.0", "train.lr=1e-3", "tracking.wandb=offline"]


@pytest.fixture(scope="module")
def s3():
    pytest.importorskip("moto", reason="moto (a dev dependency) runs the local S3-compatible server")
    import boto3
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()
    client = boto3.client("s3", endpoint_url=S3_ENV["AWS_ENDPOINT_URL"])
    client.create_bucket(Bucket=BUCKET)
    yield client
    server.stop()


def _keys(client, prefix: str) -> set[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return {item["Key"].removeprefix(prefix) for page in pages for item in page.get("Contents", [])}


# The Ray Train worker's variant (37 s) is slow, to keep the default suite under 15 min on a fresh clone.
@pytest.mark.parametrize("workers", [pytest.param("1", marks=pytest.mark.slow), "0"],
                         ids=["ray_train_worker", "local_mode"])
def test_a_run_on_s3_finishes_resumes_and_writes_everything_there(s3, ray_local, workers):
    from transformers import AutoModelForCausalLM

    from rayalign.models import resolve_model

    name = f"s3run{workers}"
    # A run before the suite may have left one (CI met one, from a sweep trial an hour before): only ours count.
    staged_before = set(Path(tempfile.gettempdir()).glob("rayalign-checkpoint-*"))
    overrides = [*BASE, f"output_dir=s3://{BUCKET}/runs", f"name={name}", f"train.num_workers={workers}"]
    cfg = config.load(None, overrides + ["train.stop_at_step=2"])
    first = run_training(cfg)
    assert first["steps"] == 2 and first["checkpoint"] == f"s3://{BUCKET}/runs/{name}/checkpoints/step_000002"
    stored = _keys(s3, f"runs/{name}/")
    assert {"config.yaml", "metrics.jsonl", "summary.json", "checkpoints/step_000002/dcp/.metadata",
            "checkpoints/step_000002/trainer/state.json"} <= stored, stored
    shutil.rmtree(cfg.run_dir)  # the staging copy: the resumed run must find everything in the bucket

    final = run_training(config.load(None, overrides))
    assert final["status"] == "ok" and final["steps"] == 4 and final["resumed_from_step"] == 2
    prefix = f"runs/{name}/"
    summary = json.loads(s3.get_object(Bucket=BUCKET, Key=prefix + "summary.json")["Body"].read())
    assert summary["steps"] == 4 and summary["checkpoint"].endswith("checkpoints/step_000004")
    rows = [json.loads(line) for line in
            s3.get_object(Bucket=BUCKET, Key=prefix + "metrics.jsonl")["Body"].read().decode().splitlines()]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert "checkpoints/step_000004/model.safetensors" in _keys(s3, prefix)
    model = AutoModelForCausalLM.from_pretrained(resolve_model(summary["checkpoint"]))  # downloaded from the URI
    assert model.config.num_hidden_layers == 2
    # A Ray Train worker uploads in the background (train.async_upload's default for a URI); what it wrote for
    # each upload is gone once uploaded.
    assert not set(Path(tempfile.gettempdir()).glob("rayalign-checkpoint-*")) - staged_before


@pytest.mark.parametrize("uri, says", [("nosuch://bucket/runs", "Unrecognized filesystem"),
                                       (f"s3://no-such-bucket-{os.getpid()}/runs", "no-such-bucket")])
def test_an_output_dir_that_cannot_be_opened_is_one_line(s3, capsys, tmp_path, uri, says):
    (tmp_path / "job.yaml").write_text("name: bad\n")
    code = main(["train", str(tmp_path / "job.yaml"), *BASE, f"output_dir={uri}"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith(f"error: output_dir {uri}: ")
    assert says in err


def test_export_reads_a_checkpoint_in_the_bucket(s3, tmp_path):
    """`rayalign export` of a run directory URI: its newest checkpoint, downloaded with its shards."""
    from safetensors.torch import load_file

    from rayalign.models import resolve_model

    assert main(["export", f"s3://{BUCKET}/runs/s3run0", str(tmp_path / "out")]) == 0
    trained = load_file(f"{resolve_model(f's3://{BUCKET}/runs/s3run0/checkpoints/step_000004')}/model.safetensors")
    exported = load_file(tmp_path / "out" / "model.safetensors")
    assert exported.keys() == trained.keys() and all(torch.equal(exported[k], v) for k, v in trained.items())


def test_sdpo_stages_live_in_the_bucket_and_resume_from_it(s3, ray_local):
    """A pipeline's nested runs (sDPO's stages) write their checkpoints to the URI too: stopped in stage 1, every
    staging copy deleted, the rerun resumes stage 1 from the bucket, and stage 2 starts from stage 1's checkpoint
    there (policy = reference = M_1, so its first loss is log 2)."""
    from rayalign.files import cache_root
    from rayalign.pipelines import run_pipeline
    from rayalign.tracking import read_metrics

    overrides = ["model.name=tiny-llama", f"data.path={QUICKSTART_DATA}", "data.limit=16", "data.max_length=128",
                 "train.batch_size=4", "train.micro_batch_size=4", "train.save_every=1", "train.warmup_ratio=0.0",
                 "train.lr=1e-3", "train.num_workers=0", "tracking.wandb=disabled", "eval.enabled=false",
                 "pipeline=sdpo", "sdpo.stages=2", f"output_dir=s3://{BUCKET}/runs", "name=sdpo"]
    stopped = run_pipeline(config.load(None, overrides + ["train.stop_at_step=1"]))
    assert stopped["train"]["status"] == "stopped"
    assert "stage_1/checkpoints/step_000001/trainer/state.json" in _keys(s3, "runs/sdpo/")
    shutil.rmtree(cache_root() / "staging")

    cfg = config.load(None, overrides)
    finished = run_pipeline(cfg)["train"]
    stage1, stage2 = finished["stages"]
    assert stage1["resumed_from_step"] == 1 and stage1["steps"] == 2 and stage2["steps"] == 2
    assert stage1["checkpoint"] == f"s3://{BUCKET}/runs/sdpo/stage_1/checkpoints/step_000002"
    assert stage2["checkpoint"] == f"s3://{BUCKET}/runs/sdpo/stage_2/checkpoints/step_000002"
    assert read_metrics(cfg.run_dir / "stage_2")[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    stored = _keys(s3, "runs/sdpo/")
    assert {"summary.json", "chunks.json", "stage_2/summary.json", "stage_2/metrics.jsonl",
            "stage_2/checkpoints/step_000002/model.safetensors"} <= stored, stored
    assert not any(key.startswith("checkpoints/") for key in stored)  # the pipeline itself trains nothing
