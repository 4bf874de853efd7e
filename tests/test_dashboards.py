"""cluster/monitoring: the Grafana dashboard queries what rayalign exports, the KubeRay pieces fit the manifests, and
(slow) a real Prometheus scraping a local Ray cluster sees a rayalign job's metrics under its run tag."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import yaml

from rayalign import monitoring
from tests.conftest import REPO, free_port

MONITORING = REPO / "cluster" / "monitoring"
DASHBOARD = json.loads((MONITORING / "rayalign-dashboard.json").read_text())
PANELS = [p for p in DASHBOARD["panels"] if p["type"] != "row"]
SUFFIXES = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}


def _queried(expr: str) -> list[tuple[str, str]]:
    """(rayalign metric, the suffix it is queried with) for each metric an expression reads."""
    found = []
    for series in re.findall(r"ray_rayalign_([a-z0-9_]+)", expr):
        found += [(name, series[len(name):]) for name in monitoring.METRICS
                  if series.startswith(name) and series[len(name):] in ("", "_total", "_bucket", "_sum", "_count")]
    assert found, f"{expr}: queries no rayalign metric"
    return found


def test_every_panel_queries_exported_metrics_of_the_chosen_runs():
    assert PANELS
    for panel in PANELS:
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            for name, suffix in _queried(target["expr"]):
                kind = monitoring.METRICS[name][0]
                assert suffix in SUFFIXES[kind], f"{panel['title']}: {kind} {name} queried as {name}{suffix}"
            assert 'run=~"$run"' in target["expr"], f"{panel['title']}: not filtered by the run variable"


def test_every_exported_metric_is_on_a_panel():
    shown = {name for panel in PANELS for target in panel["targets"] for name, _ in _queried(target["expr"])}
    missing = set(monitoring.METRICS) - shown
    assert not missing, f"add a panel for {sorted(missing)} to cluster/monitoring/rayalign-dashboard.json"


def test_the_dashboard_has_a_row_per_phase_and_a_run_variable():
    rows = [p["title"] for p in DASHBOARD["panels"] if p["type"] == "row"]
    assert [r.split(" (")[0] for r in rows] == ["Training", "Sampling and scoring", "Online rounds"]
    variables = {v["name"]: v for v in DASHBOARD["templating"]["list"]}
    assert variables["run"]["definition"] == 'label_values({__name__=~"ray_rayalign_.*"}, run)'
    assert variables["datasource"]["type"] == "datasource"
    ids = [p["id"] for p in DASHBOARD["panels"]]
    assert len(ids) == len(set(ids))


def _docs(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def test_kuberay_pieces_scrape_the_ports_the_manifests_open_and_ship_the_dashboard():
    kustomization = _docs(MONITORING / "kustomization.yaml")[0]
    generator = kustomization["configMapGenerator"][0]
    assert generator["files"] == ["rayalign-dashboard.json"]
    assert generator["options"]["labels"] == {"grafana_dashboard": "1"}  # what Grafana's sidecar loads
    monitors = [doc for name in kustomization["resources"] for doc in _docs(MONITORING / name)]
    selected = {m["spec"]["selector"]["matchLabels"]["ray.io/node-type"]: m for m in monitors}
    assert set(selected) == {"head", "worker"} and all(m["kind"] == "PodMonitor" for m in monitors)
    for manifest in ("raycluster.yaml", "rayjob.yaml"):
        doc = _docs(REPO / "cluster" / "kuberay" / manifest)[0]
        spec = doc["spec"].get("rayClusterSpec", doc["spec"])
        groups = {"head": [spec["headGroupSpec"]], "worker": spec["workerGroupSpecs"]}
        for node_type, monitor in selected.items():
            (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
            for group in groups[node_type]:
                ports = {p["name"]: p["containerPort"] for c in group["template"]["spec"]["containers"]
                         for p in c.get("ports", [])}
                assert ports[endpoint["port"]] == int(group["rayStartParams"]["metrics-export-port"]), manifest


def test_the_local_prometheus_config_reads_rays_service_discovery_file():
    from ray._private.ray_constants import PROMETHEUS_SERVICE_DISCOVERY_FILE

    config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
    (job,) = config["scrape_configs"]
    (files,) = job["file_sd_configs"]
    assert files["files"] == [f"/tmp/ray/{PROMETHEUS_SERVICE_DISCOVERY_FILE}"]  # Ray's default temp dir


# --- a real Prometheus ------------------------------------------------------------------------------------------

PROMETHEUS = shutil.which("prometheus")
BIN = Path(sys.executable).parent
RECORD_ALL = """
import time, ray
from rayalign import monitoring as m
ray.init()
m.record_samples(8, 384, 1.5, run="panels"); m.record_scoring(8, 0.04, run="panels"); m.record_pairs(3, run="panels")
m.record_train_step({"loss": 0.69, "rewards/accuracies": 0.5, "rewards/margins": 0.01, "tokens_per_s": 900.0},
                    run="panels")
m.record_d2po_round({"gold/used": 4, "gold/budget": 32, "disc/accuracy_new_gold": 0.75, "silver_gold_agreement": 0.5,
                     "policy/gold_reward": 1.2, "sampler/tokens_per_s": 300.0, "round_s": 40.0,
                     "time/overhead_s": 14.0, "time/sample_s": 9.0}, run="panels")
print("recorded", flush=True)
time.sleep(600)
"""


def _query(url: str, promql: str) -> list[dict]:
    with urllib.request.urlopen(f"{url}/api/v1/query?{urllib.parse.urlencode({'query': promql})}", timeout=10) as r:
        return json.loads(r.read())["data"]["result"]


def _wait_for(predicate, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except OSError:  # Prometheus still starting
            value = None
        if value:
            return value
        time.sleep(1)
    raise AssertionError(f"not seen in {seconds} s: {what}")


@pytest.fixture(scope="module")
def scraped():
    """A two-node Ray cluster on 127.0.0.1 (cluster/local_two_nodes.sh) and Debian's Prometheus scraping it with
    cluster/monitoring/prometheus.yml, its discovery file moved to this cluster's temp dir, scraping every second."""
    root = tempfile.mkdtemp(prefix="ra-", dir="/tmp")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "WANDB_API_KEY")}
    env.update(RAYALIGN_LOCAL_CLUSTER=root, PYTHON=sys.executable, RAY_metrics_report_interval_ms="1000",
               RAY_AUTH_MODE="disabled",
               PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}")
    script = REPO / "cluster" / "local_two_nodes.sh"
    prometheus = None
    try:
        started = subprocess.run([str(script), "start"], env=env, capture_output=True, text=True, timeout=300,
                                 check=False)
        assert started.returncode == 0, started.stdout + started.stderr
        cluster = dict(line.split("=", 1) for line in (Path(root) / "cluster.env").read_text().split())
        config = yaml.safe_load((MONITORING / "prometheus.yml").read_text())
        config["global"]["scrape_interval"] = "1s"
        discovery = config["scrape_configs"][0]["file_sd_configs"][0]
        discovery["files"], discovery["refresh_interval"] = [f"{root}/prom_metrics_service_discovery.json"], "1s"
        (Path(root) / "prometheus.yml").write_text(yaml.safe_dump(config))
        port = free_port()
        prometheus = subprocess.Popen(
            [PROMETHEUS, f"--config.file={root}/prometheus.yml", f"--storage.tsdb.path={root}/tsdb",
             f"--web.listen-address=127.0.0.1:{port}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        _wait_for(lambda: len(_query(url, "up == 1")) >= 2, 120, "both Ray nodes scraped (up == 1)")
        yield {"url": url, "env": env, **cluster}
    finally:
        if prometheus is not None:
            prometheus.terminate()
            prometheus.wait(timeout=30)
        subprocess.run([str(script), "stop"], env=env, capture_output=True, timeout=120, check=False)
        shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow
@pytest.mark.skipif(PROMETHEUS is None, reason="Prometheus is not installed (Debian: apt-get install prometheus)")
def test_a_jobs_training_metrics_reach_prometheus_under_its_run_tag(scraped, tmp_path):
    from rayalign import watch

    command = [str(BIN / "rayalign"), "submit", "jobs/dpo_quickstart.yaml", "model.name=tiny-llama",
               "train.epochs=10", "train.max_steps=40", "train.cpus_per_worker=1", "tracking.wandb=disabled",
               "name=prom", f"output_dir={tmp_path}", "--address", scraped["RAY_ADDRESS"], "--wait"]
    job = subprocess.Popen(command, cwd=REPO, env=scraped["env"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
    url, live = scraped["url"], []
    while job.poll() is None and not live:  # `rayalign watch --prometheus` reads it while it runs
        names = {label for label, _ in watch.prometheus_figures(url, "prom")}
        live = names if {"train_steps", "train_loss"} <= names else []
        time.sleep(0.5)
    out, err = job.communicate(timeout=600)
    assert job.returncode == 0, out[-2000:] + err[-2000:]
    assert {"train_steps", "train_loss", "train_reward_accuracy", "train_tokens_per_s"} <= set(live), live
    losses = {round(row["loss"], 5) for row in map(json.loads, (tmp_path / "prom" / "metrics.jsonl").open())}
    assert len(losses) > 1
    scraped_losses = _query(url, 'ray_rayalign_train_loss{run="prom"}[10m]')
    assert scraped_losses, "no train_loss series with run=prom"
    seen = {round(float(v), 5) for series in scraped_losses for _, v in series["values"]}
    assert seen and seen <= losses, (seen, losses)  # every scraped loss is one the run logged
    steps = _query(url, 'max_over_time(ray_rayalign_train_steps_total{run="prom"}[10m])')
    assert steps and 1 <= max(float(s["value"][1]) for s in steps) <= 40


@pytest.mark.slow
@pytest.mark.skipif(PROMETHEUS is None, reason="Prometheus is not installed (Debian: apt-get install prometheus)")
def test_every_dashboard_query_returns_a_series_through_prometheus(scraped):
    recorder = subprocess.Popen([sys.executable, "-c", RECORD_ALL], env={**scraped["env"],
                                "RAY_ADDRESS": scraped["GCS_ADDRESS"]}, stdout=subprocess.PIPE, text=True)
    try:
        assert recorder.stdout.readline().strip() == "recorded"
        for panel in PANELS:
            for target in panel["targets"]:
                expr = target["expr"].replace("$run", "panels").replace("$__rate_interval", "1m")
                _wait_for(lambda e=expr: _query(scraped["url"], e), 90, f"{panel['title']}: {expr}")
    finally:
        recorder.kill()
