"""`rayalign watch`: a run's live figures in a terminal, for a user without Grafana.

From the run directory (on this machine or on storage it shares with the cluster): the last row of each of its
metrics logs (`metrics.jsonl`: a training's steps or a D2PO run's rounds; a round's or an sDPO stage's training
beside it), then with `--follow` one line per new row until the run writes its summary. From Prometheus (a job
submitted to a cluster whose run directory is out of reach): the latest value of every `rayalign_*` metric with
the run's tag, as the Grafana dashboard's panels show them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from rayalign.errors import RayAlignError

# (metrics.jsonl key, label) in the order a line shows them; keys a row lacks are left out
SHOWN = (("loss", "loss"), ("rewards/accuracies", "acc"), ("rewards/margins", "margin"), ("grad_norm", "grad"),
         ("learning_rate", "lr"), ("tokens_per_s", "tok/s"), ("gold/used", "gold"),
         ("disc/accuracy_new_gold", "disc_acc"), ("silver_gold_agreement", "agree"),
         ("policy/gold_reward", "policy_gold"), ("round_s", "round_s"), ("time/overhead_s", "overhead_s"))
LOG_NAMES = ("metrics.jsonl", "train_metrics.jsonl")


def find_run(run: str | None, output_dir: str = "runs") -> Path:
    """The run directory: RUN as a path, else <output_dir>/RUN, else (no RUN) the newest run in output_dir."""
    root = Path(output_dir)
    if run is None:
        runs = sorted((p for p in root.glob("*/config.yaml")), key=lambda p: p.stat().st_mtime)
        if not runs:
            raise RayAlignError(f"no runs in {root}/: name one (rayalign watch RUN, a directory or a run name)")
        return runs[-1].parent
    for candidate in (Path(run), root / run):
        if candidate.is_dir():
            return candidate
    names = sorted(p.parent.name for p in root.glob("*/config.yaml"))[:8]
    there = f"; runs in {root}/: {', '.join(names)}" if names else ""
    raise RayAlignError(f"no run '{run}' (neither a directory nor {root / run}){there}")


def logs(run_dir: Path) -> list[Path]:
    """The run's metrics logs, its own first, then those of its parts (rounds, stages) by path."""
    found = [p for name in LOG_NAMES for p in run_dir.rglob(name) if "wandb" not in p.relative_to(run_dir).parts]
    return sorted(found, key=lambda p: (p.parent != run_dir, str(p)))


def _number(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def line(row: dict) -> str:
    """One row of a metrics log as `step N  loss 0.61  acc 0.75 ...`."""
    parts = [f"step {row.get('step', '?')}"]
    for key, label in SHOWN:
        if row.get(key) is None:
            continue
        value = _number(row[key])
        if key == "gold/used" and row.get("gold/budget") is not None:
            value += f"/{row['gold/budget']}"
        parts.append(f"{label} {value}")
    return "  ".join(parts)


def status(run_dir: Path) -> str:
    from rayalign.summary import read_summary

    summary = read_summary(run_dir)
    if summary is None:
        return "no summary.json yet (running, or ended before writing one)"
    state = summary.get("status") or summary.get("train", {}).get("status", "written")
    reason = summary.get("reason") or summary.get("train", {}).get("reason")
    return f"{state}{f' ({reason})' if reason else ''}"


def look(run_dir: Path) -> tuple[bool, list[Path]]:
    """(whether the run has written its summary after its last metrics row, its metrics logs). The summary is looked
    at first: when it is there, every row written before it is in the logs read after (a resumed run's old summary
    is older than its new rows)."""
    summary = run_dir / "summary.json"
    written = summary.stat().st_mtime if summary.is_file() else None
    found = logs(run_dir)
    return written is not None and all(written >= p.stat().st_mtime for p in found), found


def _rows(path: Path) -> list[dict]:
    """Complete rows only: a line being appended is read on the next look."""
    text = path.read_text()
    return [json.loads(row) for row in text[:text.rfind("\n") + 1].splitlines() if row.strip()]


def watch_directory(run_dir: Path, follow: bool, interval: float, out=print) -> None:
    out(f"run {run_dir}: {status(run_dir)}")
    seen: dict[Path, int] = {}
    for path in logs(run_dir):
        rows = _rows(path)
        seen[path] = len(rows)
        if rows:
            out(f"  {path.relative_to(run_dir)}: {line(rows[-1])}")
    if not seen:
        out("  no metrics yet")
    if not follow or look(run_dir)[0]:
        return
    done = False
    while not done:  # the rows of the look that finds the summary are printed too: the last ones come with it
        time.sleep(interval)
        done, found = look(run_dir)
        for path in found:
            rows = _rows(path)
            for row in rows[seen.get(path, 0):]:
                out(f"  {path.relative_to(run_dir)}: {line(row)}")
            seen[path] = len(rows)
    out(f"run {run_dir}: {status(run_dir)}")


def _query(url: str, promql: str) -> list[dict]:
    import urllib.parse
    import urllib.request

    address = f"{url.rstrip('/')}/api/v1/query?{urllib.parse.urlencode({'query': promql})}"
    try:
        with urllib.request.urlopen(address, timeout=10) as response:
            answer = json.loads(response.read())
    except OSError as error:
        raise RayAlignError(f"cannot reach Prometheus at {url} ({error}); give its address with --prometheus "
                            "(kubectl port-forward to it on KubeRay)") from None
    return answer["data"]["result"]


def prometheus_figures(url: str, run: str) -> list[tuple[str, float]]:
    """(label, value) for every rayalign metric with series of `run`: counters summed over processes, gauges the
    largest, the round clock per phase, the latency histogram as its mean."""
    from rayalign.monitoring import METRICS, PHASE_TAGGED

    figures, tag = [], f'{{run="{run}"}}'
    for name, (kind, _) in METRICS.items():
        metric = f"ray_rayalign_{name}"
        if kind == "counter":
            promql = f"sum({metric}_total{tag})"
        elif kind == "histogram":
            promql = f"sum({metric}_sum{tag}) / sum({metric}_count{tag})"
        else:
            promql = f"max by (phase) ({metric}{tag})" if name in PHASE_TAGGED else f"max({metric}{tag})"
        for result in _query(url, promql):
            phase = result["metric"].get("phase")
            figures.append((f"{name}[{phase}]" if phase else name, float(result["value"][1])))
    return figures


def watch_prometheus(url: str, run: str, follow: bool, interval: float, out=print) -> None:
    last = None
    while True:
        figures = prometheus_figures(url, run)
        if not figures:
            raise RayAlignError(f"Prometheus at {url} has no rayalign metrics of run '{run}': is the job running "
                                "under that name, and does Prometheus scrape the cluster (cluster/monitoring/)?")
        if figures != last:
            out(f"run {run} ({url}, {time.strftime('%H:%M:%S')}):")
            for label, value in figures:
                out(f"  {label} {_number(value)}")
            last = figures
        if not follow:
            return
        time.sleep(interval)
