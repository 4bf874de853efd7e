"""rayalign's Ray metrics: no-ops without Ray, cheap to import, and really exported by a Ray node.

The end-to-end check after a real training job on a two-node cluster is in test_submit.py
(`test_training_metrics_reach_the_nodes_prometheus_endpoint`, slow); here an actor of the local
test cluster records every metric, and the node's Prometheus endpoint must serve them all.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
import types
import urllib.request

import pytest

from rayalign import monitoring


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)


def test_import_is_cheap_and_records_nothing_without_ray():
    done = _python(
        "import sys\n"
        "import rayalign.monitoring as m\n"
        "m.record_train_step({'loss': 0.5, 'rewards/accuracies': 1.0}); m.record_samples(4, 100, 1.0)\n"
        "m.record_scoring(4, 0.1); m.record_pairs(2)\n"
        "assert 'ray' not in sys.modules and not m._objects, sorted(sys.modules)\n"
        "import ray\n"
        "m.record_pairs(2)  # imported but not initialised: still nothing\n"
        "assert not ray.is_initialized() and not m._objects\n"
        "print('ok')\n")
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr


def test_metric_names_are_prometheus_names_with_the_prefix():
    for name in monitoring.METRICS:
        full = monitoring.PREFIX + name
        assert re.fullmatch(r"rayalign_[a-z][a-z0-9_]*", full), full
        assert monitoring.METRICS[name][0] in ("counter", "gauge", "histogram")


def test_announce_prints_the_dashboard_when_there_is_one(capsys):
    monitoring.announce(types.SimpleNamespace(dashboard_url="127.0.0.1:8265"))
    monitoring.announce(types.SimpleNamespace(dashboard_url=""))
    monitoring.announce(object())
    assert capsys.readouterr().out == "rayalign: watch it on the Ray dashboard http://127.0.0.1:8265\n"


EXPECTED = ("rayalign_samples_generated", "rayalign_sampler_tokens", "rayalign_sampler_tokens_per_s",
            "rayalign_scoring_requests", "rayalign_scoring_latency_s_bucket", "rayalign_pairs_written",
            "rayalign_train_steps", "rayalign_train_loss", "rayalign_train_reward_accuracy",
            "rayalign_train_reward_margin", "rayalign_train_tokens_per_s", "rayalign_d2po_rounds",
            "rayalign_d2po_gold_used", "rayalign_d2po_gold_budget", "rayalign_d2po_discriminator_accuracy",
            "rayalign_d2po_round_seconds",
            "rayalign_d2po_round_overhead_seconds", "rayalign_d2po_phase_seconds")


def _names(text: str, run: str) -> set[str]:
    """Metric names (without Ray's `ray_` namespace and `_total`) of the series tagged run=<run>."""
    names = set()
    for line in text.splitlines():
        if not line.startswith("#") and f'run="{run}"' in line:
            name = line.split("{")[0].removeprefix("ray_").removesuffix("_total")
            names.add(name)
    return names


def test_metrics_reach_the_nodes_prometheus_endpoint(ray_local):
    ray = ray_local
    port = ray._private.worker.global_worker.node.metrics_export_port

    @ray.remote(num_cpus=0)
    class Pipeline:
        """Stands in for a sampler, a scorer, a pair writer and a trainer of a tiny pipeline."""

        def work(self):
            from rayalign import monitoring as m

            m.record_samples(8, 384, 1.5, run="mon-test")
            m.record_scoring(8, 0.04, run="mon-test")
            m.record_pairs(3, run="mon-test")
            m.record_train_step({"loss": 0.69, "rewards/accuracies": 0.5, "rewards/margins": 0.01,
                                 "tokens_per_s": 900.0}, run="mon-test")
            m.record_d2po_round({"gold/used": 4, "gold/budget": 32, "disc/accuracy_new_gold": 0.75,
                                 "silver_gold_agreement": 0.5,
                                 "policy/gold_reward": 1.2, "sampler/tokens_per_s": 300.0, "round_s": 40.0,
                                 "time/overhead_s": 14.0, "time/weight_sync_s": 1.5}, run="mon-test")
            return sorted(m._objects)

    actor = Pipeline.remote()  # alive while we read: a gauge goes away with its process
    assert ray.get(actor.work.remote()) == sorted(monitoring.METRICS)
    deadline, found = time.monotonic() + 60, set()
    while time.monotonic() < deadline:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
        found = _names(text, "mon-test")
        if set(EXPECTED) <= found:
            break
        time.sleep(1)
    ray.kill(actor)
    assert set(EXPECTED) <= found, sorted(set(EXPECTED) - found)
    assert 'phase="weight_sync_s"' in text and 'phase="overhead_s"' in text  # one series per phase of the clock


def test_a_bad_value_warns_once_and_never_raises(ray_local, monkeypatch):
    monkeypatch.setattr(monitoring, "_warned", False)
    with pytest.warns(UserWarning, match="Ray metrics not recorded"):
        monitoring.record_train_step({"loss": "not a number"}, run="mon-test")
    monitoring.record_train_step({"loss": "still not"}, run="mon-test")  # no second warning, no error
