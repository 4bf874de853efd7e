"""`rayalign submit` and `rayalign jobs` against a real two-node Ray cluster on 127.0.0.1.

The cluster is started by cluster/local_two_nodes.sh (so the script is tested too) in its own
directory with free ports, and stopped by ending only its own processes: other tests and helpers
may run Ray on this machine at the same time. The commands run as subprocesses, exactly as a user
types them. One tiny training job (tiny-llama, 3 steps) is shared by the tests that read its
output, logs, run directory and Prometheus metrics.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

from rayalign.errors import RayAlignError
from rayalign.submit import (
    Masker,
    config_in_working_dir,
    entrypoint,
    entrypoint_resources,
    resolve_address,
    runtime_env,
    secret_env,
)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
SCRIPT = REPO / "cluster" / "local_two_nodes.sh"
SECRET = f"wandb-secret-{uuid.uuid4().hex}"
OTHER_SECRET = f"token-{uuid.uuid4().hex}"
TINY = ["model.name=tiny-llama", "train.epochs=1", "train.cpus_per_worker=1", "train.max_steps=3"]


def _clean_env(**extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "WANDB_API_KEY", "RAYALIGN_TEST_TOKEN")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(extra)
    return env


def rayalign(*args, timeout=300, **env):
    done = subprocess.run([str(BIN / "rayalign"), *args], check=False, cwd=REPO, env=_clean_env(**env),
                          capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stdout, done.stderr


# --- no cluster needed ------------------------------------------------------------------------

def test_entrypoint_is_the_local_command_quoted():
    assert entrypoint("train", "jobs/a b.yaml", ["train.lr=1e-5", "name=x;rm"]) == \
        "python -m rayalign.cli train 'jobs/a b.yaml' train.lr=1e-5 'name=x;rm'"


def test_config_must_be_inside_the_shipped_directory(tmp_path):
    assert config_in_working_dir(str(REPO / "jobs" / "dpo_quickstart.yaml"), REPO) == "jobs/dpo_quickstart.yaml"
    outside = tmp_path / "c.yaml"
    outside.write_text("name: x\n")
    with pytest.raises(RayAlignError, match="outside"):
        config_in_working_dir(str(outside), REPO)


def test_env_passthrough_names_only(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", SECRET)
    monkeypatch.setenv("RAYALIGN_TEST_TOKEN", OTHER_SECRET)
    assert secret_env(["RAYALIGN_TEST_TOKEN"]) == {"RAYALIGN_TEST_TOKEN": OTHER_SECRET, "WANDB_API_KEY": SECRET}
    monkeypatch.delenv("RAYALIGN_TEST_TOKEN")
    with pytest.raises(RayAlignError, match="not set"):
        secret_env(["RAYALIGN_TEST_TOKEN"])
    assert Masker([SECRET])(f"key={SECRET}.") == "key=***."


def test_runtime_env_ships_the_project_without_runs_and_adds_what_the_user_configures(tmp_path):
    base = tmp_path / "renv.yaml"
    base.write_text("pip: [numpy]\nenv_vars: {A: '1'}\nexcludes: [big/]\n")
    renv = runtime_env(REPO, {"WANDB_API_KEY": SECRET}, ["requests"], None, str(base))
    assert renv["working_dir"] == str(REPO)
    assert {"runs/", "wandb/", ".git/", ".venv/", "big/"} <= set(renv["excludes"])
    assert renv["pip"] == ["numpy", "requests"]
    assert renv["env_vars"] == {"A": "1", "PYTHONUNBUFFERED": "1", "WANDB_API_KEY": SECRET}
    assert runtime_env(REPO, {}, [], "my/image:1", None)["image_uri"] == "my/image:1"
    assert entrypoint_resources(None, None) == {"entrypoint_num_cpus": 0, "entrypoint_num_gpus": 0}


def test_with_deps_installs_pyprojects_own_list_but_ray():
    """One dependency list: what --with-deps installs is pyproject's (as installed), without Ray and the extras."""
    import tomllib
    from packaging.requirements import Requirement

    from rayalign.submit import project_requirements

    listed = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    expected = sorted(str(Requirement(r)) for r in listed if Requirement(r).name != "ray")
    assert sorted(project_requirements()) == expected and "peft>=0.13" in expected


def test_options_may_sit_between_the_config_and_its_overrides():
    from rayalign.cli import build_parser

    args = build_parser().parse_args(["submit", "jobs/x.yaml", "--wait", "a=1", "--num-gpus", "1", "b=2"])
    assert (args.config, args.overrides, args.wait, args.num_gpus, args.command) == \
        ("jobs/x.yaml", ["a=1", "b=2"], True, 1.0, "train")
    # it follows the job by default, as `ray job submit` does; --no-wait detaches
    assert build_parser().parse_args(["submit", "jobs/x.yaml", "a=1"]).wait is True
    assert build_parser().parse_args(["submit", "jobs/x.yaml", "--no-wait", "a=1"]).wait is False


def test_address_from_flag_then_ray_address(monkeypatch):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:8265")
    assert resolve_address(None) == "http://10.0.0.1:8265"
    assert resolve_address("https://head:8265/") == "https://head:8265"
    monkeypatch.delenv("RAY_ADDRESS")
    with pytest.raises(RayAlignError, match="RAY_ADDRESS"):
        resolve_address(None)
    with pytest.raises(RayAlignError, match="dashboard"):
        resolve_address("ray://head:10001")


def test_unreachable_dashboard_is_one_line():
    rc, out, err = rayalign("jobs", "list", "--address", "http://127.0.0.1:1")
    assert rc == 2 and out == ""
    assert err.strip() == ("error: cannot reach the Ray dashboard at http://127.0.0.1:1: start a cluster "
                           "(cluster/README.md) or set RAY_ADDRESS")


def test_bad_config_fails_before_submitting():
    rc, out, err = rayalign("submit", "jobs/dpo_quickstart.yaml", "train.bogus=1", "--address", "http://127.0.0.1:1")
    assert rc == 2 and out == ""
    assert err.strip().splitlines() == [
        "error: jobs/dpo_quickstart.yaml: unknown config key 'train.bogus': did you mean 'train.epochs'?"]


@pytest.mark.parametrize("override, says", [
    ("loss.name=dpoo", "loss.name 'dpoo' is unknown"),
    ("train.batch_size=6", "train.batch_size (6) must be a multiple of train.micro_batch_size"),
    ("data.path=no_such_pairs.jsonl", "no_such_pairs.jsonl: no such file; check data.path"),
    ("eval.task=nosuch", "unknown task 'nosuch'"),
])
def test_what_would_fail_on_the_cluster_fails_here_without_contacting_it(override, says):
    """The address answers nothing: a job refused before `submit` contacts the cluster says what is wrong instead."""
    rc, out, err = rayalign("submit", "jobs/inco_dpo.yaml", override, "--address", "http://127.0.0.1:1")
    assert rc == 2 and out == "" and len(err.strip().splitlines()) == 1 and says in err, err


# --- a real two-node cluster ------------------------------------------------------------------

@pytest.fixture(scope="module")
def cluster():
    root = tempfile.mkdtemp(prefix="ra-", dir="/tmp")  # short: Ray puts unix sockets under it
    env = _clean_env(RAYALIGN_LOCAL_CLUSTER=root, PYTHON=sys.executable, RAY_metrics_report_interval_ms="1000")
    try:
        started = subprocess.run([str(SCRIPT), "start"], check=False, env=env, capture_output=True, text=True, timeout=300)
        assert started.returncode == 0, started.stdout + started.stderr
        info = dict(line.split("=", 1) for line in (Path(root) / "cluster.env").read_text().split())
        yield info
    finally:
        subprocess.run([str(SCRIPT), "stop"], check=False, env=env, capture_output=True, timeout=120)
        shutil.rmtree(root, ignore_errors=True)


def _client(cluster):
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(cluster["RAY_ADDRESS"])


def _job_id(out: str) -> str:
    found = re.search(r"^job id: (\S+)$", out, re.MULTILINE)
    assert found, out
    return found.group(1)


@pytest.fixture(scope="module")
def failed(cluster):
    """A job whose config is bad only on the cluster (local check skipped), with two secrets passed."""
    rc, out, err = rayalign("submit", "jobs/dpo_quickstart.yaml", "train.lr=fast", "--no-validate", "--wait",
                            "--address", cluster["RAY_ADDRESS"], "--env-var", "RAYALIGN_TEST_TOKEN",
                            WANDB_API_KEY=SECRET, RAYALIGN_TEST_TOKEN=OTHER_SECRET)
    return {"rc": rc, "out": out, "err": err, "job_id": _job_id(out)}


def test_bad_config_on_the_cluster_fails_with_the_one_line_error(failed, cluster):
    assert failed["rc"] == 2, failed["out"] + failed["err"]  # the entrypoint's own exit code
    errors = [line for line in failed["out"].splitlines() if line.startswith("error:")]
    assert errors == [("error: jobs/dpo_quickstart.yaml: config key 'train.lr': Input should be a valid number, "
                       "unable to parse string as a number (got 'fast')")]
    assert "FAILED (exit code 2" in failed["err"]
    logs = _client(cluster).get_job_logs(failed["job_id"])
    assert errors[0] in logs and "Traceback" not in logs


def _assert_secrets_hidden(job, cluster, extra_texts=()):
    assert "values not shown): RAYALIGN_TEST_TOKEN, WANDB_API_KEY" in job["out"]
    client = _client(cluster)
    env_vars = client.get_job_info(job["job_id"]).runtime_env["env_vars"]  # they did reach the job
    assert env_vars["WANDB_API_KEY"] == SECRET and env_vars["RAYALIGN_TEST_TOKEN"] == OTHER_SECRET
    seen = [job["out"], job["err"], client.get_job_logs(job["job_id"]), *extra_texts]
    for args in (("jobs", "list"), ("jobs", "status", job["job_id"]), ("jobs", "logs", job["job_id"])):
        seen.extend(rayalign(*args, "--address", cluster["RAY_ADDRESS"], WANDB_API_KEY=SECRET)[1:])
    for text in seen:
        assert SECRET not in text and OTHER_SECRET not in text


def test_a_job_the_cluster_can_never_fit_is_refused_in_seconds_with_one_line(cluster):
    """The two-node cluster has 2 + 1 CPUs: 2 workers of 2 CPUs never fit, though each alone would."""
    began = time.monotonic()
    rc, out, err = rayalign("submit", "jobs/dpo_quickstart.yaml", "train.num_workers=2", "train.cpus_per_worker=2",
                            "train.micro_batch_size=2", "--wait", "--address", cluster["RAY_ADDRESS"])
    assert rc == 2 and time.monotonic() - began < 60, out + err
    assert err.strip().splitlines() == [(
        "error: the cluster can never run 2 Ray Train worker(s) of 2 CPU each: its nodes have 2 CPU, 1 CPU, room "
        "for 1; lower train.num_workers / train.cpus_per_worker / train.use_gpu, or add nodes (a cluster that "
        "autoscales: submit with --autoscaling CLUSTER_YAML, or set RAYALIGN_NO_FIT_CHECK=1)")]
    assert "submitted" not in out


def test_secrets_reach_the_job_but_are_never_printed_or_logged(failed, cluster):
    _assert_secrets_hidden(failed, cluster)


def test_jobs_stop_stops_a_running_job(cluster, tmp_path):
    rc, out, err = rayalign("submit", "jobs/dpo_quickstart.yaml", "model.name=tiny-llama", "train.max_steps=100000",
                            "train.cpus_per_worker=1", "name=long", f"output_dir={tmp_path}", "--no-wait",
                            "--address", cluster["RAY_ADDRESS"], RAYALIGN_NO_FIT_CHECK="1")
    assert rc == 0, out + err
    job_id, client = _job_id(out), _client(cluster)
    # the job's own fit check reads the setting this process has: submit forwards it
    assert client.get_job_info(job_id).runtime_env["env_vars"]["RAYALIGN_NO_FIT_CHECK"] == "1"
    deadline = time.monotonic() + 60
    while str(client.get_job_status(job_id)) != "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.5)
    assert str(client.get_job_status(job_id)) == "RUNNING"
    rc, out, err = rayalign("jobs", "stop", job_id, "--wait", RAY_ADDRESS=cluster["RAY_ADDRESS"])  # address from env
    assert rc == 0, out + err
    assert f"job {job_id}: STOPPED" in out
    assert str(client.get_job_status(job_id)) == "STOPPED"
    rc, out, _ = rayalign("jobs", "list", RAY_ADDRESS=cluster["RAY_ADDRESS"])
    assert rc == 0 and re.search(rf"^{job_id}\s+STOPPED", out, re.MULTILINE)


# --- a real training job (about a minute on 2 cores: `make test-slow`) --------------------------

def _scrape(ports) -> str:
    texts = []
    for port in ports:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
                texts.append(response.read().decode())
        except OSError:
            pass
    return "\n".join(texts)


TRAIN_METRICS = ("rayalign_train_loss", "rayalign_train_reward_accuracy", "rayalign_train_tokens_per_s",
                 "rayalign_train_steps")


def _has_train_metrics(text: str, run: str) -> bool:
    lines = [line for line in text.splitlines() if f'run="{run}"' in line]
    return all(any(name in line for line in lines) for name in TRAIN_METRICS)


@pytest.fixture(scope="module")
def trained(cluster, tmp_path_factory):
    """`rayalign submit --wait` of a tiny training job, with two secrets in the environment.

    The nodes' Prometheus endpoints are read while the job runs: a gauge goes away with the
    worker process that set it, a little after the job ends.
    """
    out_dir = tmp_path_factory.mktemp("submitted")
    command = [str(BIN / "rayalign"), "submit", "jobs/dpo_quickstart.yaml", *TINY, "name=tiny",
               f"output_dir={out_dir}", "--address", cluster["RAY_ADDRESS"], "--wait",
               "--env-var", "RAYALIGN_TEST_TOKEN"]
    env = _clean_env(WANDB_API_KEY=SECRET, RAYALIGN_TEST_TOKEN=OTHER_SECRET)
    ports = (cluster["HEAD_METRICS_PORT"], cluster["WORKER_METRICS_PORT"])
    metrics, began = "", time.monotonic()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        job = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=err, text=True)
        while job.poll() is None and time.monotonic() - began < 300:
            if not _has_train_metrics(metrics, "tiny"):
                metrics = _scrape(ports)
            time.sleep(0.5)
        if job.poll() is None:
            job.kill()
        if not _has_train_metrics(metrics, "tiny"):
            metrics = _scrape(ports)
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    return {"rc": job.wait(), "out": stdout, "err": stderr, "run_dir": out_dir / "tiny", "job_id": _job_id(stdout),
            "metrics": metrics}


@pytest.mark.slow
def test_submit_wait_trains_and_writes_a_complete_run(trained, cluster):
    assert trained["rc"] == 0, trained["out"][-3000:] + trained["err"][-3000:]
    assert f"dashboard: {cluster['RAY_ADDRESS']}/#/jobs/{trained['job_id']}" in trained["out"]
    assert f"summary: {trained['run_dir']}/summary.json" in trained["out"]  # --wait followed the logs
    assert f"job {trained['job_id']}: SUCCEEDED" in trained["err"]
    run_dir = trained["run_dir"]
    for name in ("config.yaml", "metrics.jsonl", "summary.json"):
        assert (run_dir / name).is_file(), name
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 3
    assert json.loads((run_dir / "summary.json").read_text())["steps"] == 3
    assert [p.name for p in (run_dir / "checkpoints").glob("step_*")] == ["step_000003"]
    assert (run_dir / "checkpoints" / "step_000003" / "model.safetensors").is_file()


@pytest.mark.slow
def test_logs_come_back(trained, cluster):
    rc, out, _ = rayalign("jobs", "logs", trained["job_id"], "--address", cluster["RAY_ADDRESS"])
    assert rc == 0
    assert f"summary: {trained['run_dir']}/summary.json" in out
    assert f"rayalign: watch it on the Ray dashboard {cluster['RAY_ADDRESS']}" in out
    rc, out, _ = rayalign("jobs", "status", trained["job_id"], "--address", cluster["RAY_ADDRESS"])
    assert rc == 0 and "status: SUCCEEDED" in out


@pytest.mark.slow
def test_secrets_stay_out_of_a_training_job_and_its_run_directory(trained, cluster):
    files = [p.read_text(errors="replace") for p in trained["run_dir"].rglob("*")
             if p.is_file() and p.suffix in (".yaml", ".json", ".jsonl", ".log", ".txt")]
    assert files
    _assert_secrets_hidden(trained, cluster, files)


@pytest.mark.slow
def test_training_metrics_reach_the_nodes_prometheus_endpoint(trained):
    assert trained["rc"] == 0
    assert _has_train_metrics(trained["metrics"], "tiny"), trained["metrics"][-2000:]
