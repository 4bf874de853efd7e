"""`rayalign submit` and `rayalign jobs`: run rayalign commands on a Ray cluster via the Ray Jobs API.

A submitted job runs the command a user would run locally (`rayalign train CONFIG key=value ...`,
as `python -m rayalign.cli ...` so the shipped copy of the project is the code that runs) in a
copy of the working directory, shipped by Ray's runtime environment without runs/, wandb/,
caches and .git. Relative paths in the config therefore resolve as they do locally when you
submit from the project root; the copy on the cluster is temporary, so point `output_dir=` at
storage the cluster shares (s3://bucket/runs or another URI pyarrow opens, a mounted volume, NFS) to keep the
run directory.

Secrets (WANDB_API_KEY, `--env-var NAME`) travel in the runtime environment's env_vars: only
their names are printed, and job logs we print have their values masked. Ray keeps runtime
environments in its job API and runtime-env agent log: see cluster/README.md, "Secrets".
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import shlex
import sys
import time
import uuid
from pathlib import Path

from rayalign.errors import RayAlignError

COMMANDS = ("train", "run", "sweep")
EXCLUDES = ["runs/", "wandb/", ".git/", ".venv/", "venv/", "__pycache__/", "*.pyc", ".cache/",
            ".pytest_cache/", ".ruff_cache/", ".mypy_cache/", "*.egg-info/", ".ipynb_checkpoints/"]
AUTO_SECRETS = ("WANDB_API_KEY",)
FORWARDED_SETTINGS = ("RAYALIGN_NO_FIT_CHECK",)
"""Settings the job reads as this process does (its own fit check), copied to it when set here."""
TERMINAL = ("SUCCEEDED", "FAILED", "STOPPED")


# --- connecting -------------------------------------------------------------------------------

def resolve_address(address: str | None) -> str:
    """--address, else RAY_API_SERVER_ADDRESS or RAY_ADDRESS (as Ray's CLI), as an http(s) URL."""
    address = address or os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS")
    if not address:
        raise RayAlignError("no Ray cluster address: pass --address http://HEAD:8265 or set RAY_ADDRESS "
                            "(to start a cluster, see cluster/README.md)")
    if "://" not in address:
        address = f"http://{address}"
    if not address.startswith(("http://", "https://")):
        raise RayAlignError(f"Ray address {address}: give the dashboard's http(s)://HEAD:8265 address, "
                            f"not a ray:// or GCS address")
    return address.rstrip("/")


def connect(address: str | None):
    """(JobSubmissionClient, dashboard URL), or a one-line error when the dashboard is unreachable."""
    from ray.job_submission import JobSubmissionClient

    url = resolve_address(address)
    for name in ("ray.dashboard.modules.job.sdk", "ray.dashboard.modules.dashboard_sdk",
                 "ray._private.runtime_env.packaging"):
        logging.getLogger(name).setLevel(logging.WARNING)  # keep the output to what the user needs
    # it warns that .git/.venv are now skipped by default: we skip them anyway (EXCLUDES)
    logging.getLogger("ray._private.runtime_env.working_dir").setLevel(logging.ERROR)
    # Ray's SDK lets RAY_ADDRESS override an explicit address; here the flag wins.
    saved = {k: os.environ.pop(k) for k in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS") if k in os.environ}
    try:
        return JobSubmissionClient(url), url
    except (ConnectionError, RuntimeError, ValueError, OSError):
        raise RayAlignError(f"cannot reach the Ray dashboard at {url}: start a cluster (cluster/README.md) "
                            f"or set RAY_ADDRESS") from None
    finally:
        os.environ.update(saved)


def job_url(url: str, job_id: str) -> str:
    return f"{url}/#/jobs/{job_id}"


def _call(fn, job_id: str, url: str):
    """An SDK call about one job, with a one-line error for an unknown id."""
    try:
        return fn(job_id)
    except RuntimeError as error:
        if "404" in str(error) or "does not exist" in str(error):
            raise RayAlignError(f"no job '{job_id}' on {url}: see `rayalign jobs list`") from None
        raise


# --- what gets submitted ----------------------------------------------------------------------

def entrypoint(command: str, config_rel: str, overrides: list[str]) -> str:
    """The shell command the job runs: the local command, run from the shipped project."""
    words = ["python", "-m", "rayalign.cli", command, config_rel, *overrides]
    return " ".join(shlex.quote(w) for w in words)


def config_in_working_dir(config: str, working_dir: Path) -> str:
    """The config's path relative to the shipped directory (it must be inside it)."""
    path = Path(config).resolve()
    if not path.is_file():
        raise RayAlignError(f"{config}: no such config file")
    try:
        return path.relative_to(working_dir).as_posix()
    except ValueError:
        raise RayAlignError(f"{config} is outside {working_dir}, the directory shipped to the cluster: "
                            f"move it under it (e.g. jobs/) or pass --working-dir") from None


def secret_env(names: list[str]) -> dict[str, str]:
    """Env vars copied from here to the job: the named ones (which must be set) and WANDB_API_KEY if set."""
    env = {}
    for name in names:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            raise RayAlignError(f"--env-var {name!r}: not an environment variable name")
        if name not in os.environ:
            raise RayAlignError(f"--env-var {name}: not set in this environment; export it first")
        env[name] = os.environ[name]
    for name in AUTO_SECRETS:
        if os.environ.get(name):
            env.setdefault(name, os.environ[name])
    return env


def _load_yaml(path: str, flag: str = "--runtime-env") -> dict:
    import yaml

    try:
        tree = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        tree = f"cannot read it as YAML ({str(error).splitlines()[0]})"
    if not isinstance(tree, dict):
        raise RayAlignError(f"{flag} {path}: {tree if isinstance(tree, str) else 'must be a mapping'}")
    return tree


def runtime_env(working_dir: Path, env: dict[str, str], pip: list[str], image_uri: str | None,
                base_file: str | None) -> dict:
    """The job's runtime environment: the shipped project, env vars, and pip or an image."""
    renv = _load_yaml(base_file) if base_file else {}
    renv["working_dir"] = str(working_dir)
    renv["excludes"] = [*renv.get("excludes", []), *EXCLUDES]
    renv["env_vars"] = {**renv.get("env_vars", {}), "PYTHONUNBUFFERED": "1", **env}
    if pip:
        renv["pip"] = [*renv.get("pip", []), *pip]
    if image_uri:
        renv["image_uri"] = image_uri
    return renv


def project_requirements() -> list[str]:
    """rayalign's own dependencies, pyproject's one list (read from the installed package), but Ray, which the
    cluster already runs: what `--with-deps` installs in the job's environment."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement

    wanted = [Requirement(line) for line in requires("rayalign") or []]
    return [str(r) for r in wanted if r.marker is None and r.name != "ray"]


def entrypoint_resources(num_cpus: float | None, num_gpus: float | None) -> dict:
    """Reserved for the entrypoint, the driver: nothing unless told. It mostly waits on its workers, and a CPU it
    held would be one the trainer could not have (on a 2-CPU head a 1-CPU entrypoint and 2-CPU trainer never
    start). The trainer's workers ask for their own (from train.*)."""
    return {"entrypoint_num_cpus": num_cpus or 0, "entrypoint_num_gpus": num_gpus or 0}


def cluster_nodes(url: str) -> list[dict[str, float]] | None:
    """{"CPU", "GPU"} of each alive node, through the dashboard's state API; None when it does not answer."""
    from ray.util.state import list_nodes
    from ray.util.state.exception import RayStateApiException

    try:
        rows = list_nodes(address=url, limit=10_000, raise_on_missing_output=False)
    except (RayStateApiException, OSError, ValueError):  # an older or locked-down dashboard: the job goes unchecked
        return None
    return [{"CPU": float(r.resources_total.get("CPU", 0)), "GPU": float(r.resources_total.get("GPU", 0))}
            for r in rows if r.state == "ALIVE"]


def check_cluster_fits(cfg, url: str, entrypoint_cpus: float, grown: list[dict] | None = None) -> None:
    """One line, before submitting, when the cluster can never run the job's trainer or samplers (`grown`: the
    nodes an autoscaling cluster can grow to, instead of those it has now)."""
    from rayalign.cluster_fit import check_fit, check_together, job_demands, together_demands

    nodes = grown if grown is not None else cluster_nodes(url)
    if nodes is None:
        print(f"note: could not list the nodes of {url}; the job's resources are not checked")
        return
    for demand in job_demands(cfg):
        check_fit(demand, nodes, reserved_cpus=entrypoint_cpus)
    check_together(together_demands(cfg), nodes)


def trainer_resources(cfg) -> str:
    t = cfg.train
    if t.local_mode:
        return "local mode: the trainer runs in the job's entrypoint (--num-cpus / --num-gpus reserve its share)"
    if t.num_workers == "auto":
        return (f"1 worker x {t.cpus_per_worker:g} CPU" + (" + 1 GPU" if t.use_gpu else "") +
                " (train.num_workers: auto; a pipeline on a one-node cluster trains in the entrypoint instead)")
    return f"{t.num_workers} worker(s) x {t.cpus_per_worker:g} CPU" + (" + 1 GPU" if t.use_gpu else "")


def submission_id(name: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9_-]+", "-", name)[:40].strip("-") or "job"
    return f"rayalign-{safe}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:4]}"


# --- following a job --------------------------------------------------------------------------

class Masker:
    """Replaces the values of secrets with *** in text we print."""

    def __init__(self, secrets):
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


def follow(client, job_id: str, mask: Masker) -> None:
    """Print the job's logs as they come, until the job ends."""
    import asyncio

    async def tail():
        pending = ""  # masked a whole line at a time, so a secret split over two chunks is caught
        async for chunk in client.tail_job_logs(job_id):
            lines, _, pending = (pending + chunk).rpartition("\n")
            if lines:
                sys.stdout.write(mask(lines + "\n"))
                sys.stdout.flush()
        sys.stdout.write(mask(pending))

    asyncio.run(tail())


def wait_terminal(client, job_id: str, timeout_s: float = 60.0):
    """The job's info once it has a terminal status (the log stream can end a moment before)."""
    deadline = time.monotonic() + timeout_s
    while True:
        info = client.get_job_info(job_id)
        if str(info.status) in TERMINAL or time.monotonic() > deadline:
            return info
        time.sleep(0.5)


def exit_code(info) -> int:
    """0 when the job succeeded; its entrypoint's exit code when it failed (1 if unknown); 1 when stopped."""
    status = str(info.status)
    if status == "SUCCEEDED":
        return 0
    if status == "FAILED":
        return getattr(info, "driver_exit_code", None) or 1
    return 1


def follow_to_end(client, url: str, job_id: str, mask: Masker) -> int:
    try:
        follow(client, job_id, mask)
        info = wait_terminal(client, job_id)
    except KeyboardInterrupt:
        print(f"\nstopped following; the job keeps running. Stop it with: rayalign jobs stop {job_id}",
              file=sys.stderr)
        return 130
    except (OSError, RuntimeError) as error:
        raise RayAlignError(f"lost contact with {url} while following {job_id} ({error}); the job may still "
                            f"run: rayalign jobs status {job_id}") from None
    print(f"job {job_id}: {info.status}{_why(info, mask)}", file=sys.stderr)
    return exit_code(info)


def _why(info, mask: Masker) -> str:
    """' (exit code 2)' for a failed job, else the first line of Ray's message for an unsuccessful one."""
    if str(info.status) == "SUCCEEDED":
        return ""
    code = getattr(info, "driver_exit_code", None)
    if str(info.status) == "FAILED" and code:
        return f" (exit code {code}; the error is in the logs above)"
    first = (info.message or "").strip().splitlines()
    return f" ({mask(first[0])})" if first else ""


# --- commands ---------------------------------------------------------------------------------

def validate(command: str, path: str, overrides: list[str]):
    """Check the config here, as the command will on the cluster; the Config for train and run."""
    if command == "sweep":
        from rayalign.tune import load_sweep

        load_sweep(path, overrides)
        return None
    from rayalign import config as config_lib
    from rayalign.preflight import check_job

    cfg = config_lib.load(path, overrides)
    check_job(cfg)
    return cfg


def cmd_submit(args) -> int:
    working_dir = Path(args.working_dir or ".").resolve()
    config_rel = config_in_working_dir(args.config, working_dir)
    cfg = None if args.no_validate else validate(args.command, args.config, list(args.overrides))
    env = secret_env(args.env_var or [])
    settings = {name: os.environ[name] for name in FORWARDED_SETTINGS if os.environ.get(name)}
    grown = None
    if args.autoscaling:
        from rayalign.cluster_fit import NODES_ENV, autoscaling_nodes

        grown = autoscaling_nodes(_load_yaml(args.autoscaling, "--autoscaling"), f"--autoscaling {args.autoscaling}")
        settings[NODES_ENV] = json.dumps(grown)  # the job's own fit check follows the same rule
    pip = [*(project_requirements() if args.with_deps else []), *(args.pip or [])]
    renv = runtime_env(working_dir, {**settings, **env}, pip, args.image_uri, args.runtime_env)
    client, url = connect(args.address)
    job_id = args.submission_id or submission_id(cfg.name if cfg else Path(config_rel).stem)
    resources = entrypoint_resources(args.num_cpus, args.num_gpus)
    if cfg is not None:
        check_cluster_fits(cfg, url, resources["entrypoint_num_cpus"], grown)
    command = entrypoint(args.command, config_rel, list(args.overrides))
    try:
        job_id = client.submit_job(entrypoint=command, submission_id=job_id, runtime_env=renv,
                                   metadata={"rayalign_command": args.command, "config": config_rel},
                                   **resources)
    except (RuntimeError, ValueError, OSError) as error:
        raise RayAlignError(f"the cluster at {url} refused the job: {str(error).strip().splitlines()[0]}") from None
    mask = Masker(env.values())
    print(f"submitted: {command}")
    if cfg is not None:
        print(f"trainer: {trainer_resources(cfg)}; run directory on the cluster: {cfg.run_dir}")
        if not Path(cfg.output_dir).is_absolute() and "://" not in cfg.output_dir:
            print("note: a relative output_dir ends up in the job's temporary copy of the project; "
                  "pass output_dir=s3://bucket/runs (or /shared/storage/path) to keep the run")
    if env:
        print(f"env passed to the job (values not shown): {', '.join(sorted(env))}")
    print(f"job id: {job_id}")
    print(f"dashboard: {job_url(url, job_id)}")
    if not args.wait:
        print(f"follow: rayalign jobs logs {job_id} --follow    stop: rayalign jobs stop {job_id}")
        return 0
    sys.stdout.flush()
    return follow_to_end(client, url, job_id, mask)


def _when(ms) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ms / 1000)) if ms else "-"


def cmd_jobs_list(args) -> int:
    client, _ = connect(args.address)
    jobs = sorted(client.list_jobs(), key=lambda j: j.start_time or 0)
    print(f"{'job id':44s} {'status':10s} {'started':19s}  entrypoint")
    for job in jobs:
        ident = job.submission_id or job.job_id or "-"
        command = (job.entrypoint or "")[:80]
        print(f"{ident:44s} {job.status!s:10s} {_when(job.start_time):19s}  {command}")
    return 0


def cmd_jobs_status(args) -> int:
    client, url = connect(args.address)
    info = _call(client.get_job_info, args.job_id, url)
    mask = Masker(os.environ.get(k) for k in AUTO_SECRETS)
    print(f"job id: {args.job_id}")
    print(f"status: {info.status}")
    if info.message:
        print(f"message: {mask(info.message.strip().splitlines()[0])}")
    print(f"entrypoint: {info.entrypoint}")
    print(f"started: {_when(info.start_time)}    ended: {_when(info.end_time)}")
    print(f"dashboard: {job_url(url, args.job_id)}")
    return 0


def cmd_jobs_logs(args) -> int:
    client, url = connect(args.address)
    mask = Masker(os.environ.get(k) for k in AUTO_SECRETS)
    if args.follow:
        _call(client.get_job_info, args.job_id, url)
        return follow_to_end(client, url, args.job_id, mask)
    sys.stdout.write(mask(_call(client.get_job_logs, args.job_id, url)))
    return 0


def cmd_jobs_stop(args) -> int:
    client, url = connect(args.address)
    stopped = _call(client.stop_job, args.job_id, url)
    if not stopped:
        print(f"job {args.job_id} was not running ({client.get_job_status(args.job_id)})")
        return 0
    print(f"stop requested for {args.job_id}")
    if args.wait:
        info = wait_terminal(client, args.job_id)
        print(f"job {args.job_id}: {info.status}")
    return 0


class _Intermixed(argparse.ArgumentParser):
    """Options may sit between the config and its overrides: `submit CONFIG --wait key=value`."""

    _inner = False

    def parse_known_args(self, args=None, namespace=None):
        if self._inner:  # parse_known_intermixed_args calls back into this method
            return super().parse_known_args(args, namespace)
        self._inner = True
        try:
            return self.parse_known_intermixed_args(args, namespace)
        finally:
            self._inner = False


def add_parsers(sub) -> None:
    """The `submit` and `jobs` subcommands (called from rayalign.cli.build_parser)."""
    address_help = "Ray dashboard address, e.g. http://HEAD:8265 (default: $RAY_ADDRESS)"
    submit = sub.add_parser("submit", help="run a rayalign command on a Ray cluster (Ray Jobs API)",
                            description=__doc__.split("\n\n")[1])
    submit.__class__ = _Intermixed
    submit.add_argument("config", help="YAML config inside the working directory (e.g. jobs/dpo_quickstart.yaml)")
    submit.add_argument("overrides", nargs="*", help="dotted overrides, as for the local command")
    submit.add_argument("--address", help=address_help)
    submit.add_argument("--command", choices=COMMANDS, default="train", help="the rayalign command to run")
    submit.add_argument("--wait", action=argparse.BooleanOptionalAction, default=True,
                        help="follow the logs and exit with the job's status, as `ray job submit` does (the default); "
                        "--no-wait prints the job id and returns")
    submit.add_argument("--num-cpus", type=float, help="CPUs reserved for the entrypoint (default 0)")
    submit.add_argument("--num-gpus", type=float, help="GPUs reserved for the entrypoint (default 0: the "
                        "trainer's workers ask for their own, from train.use_gpu and train.num_workers)")
    submit.add_argument("--env-var", action="append", metavar="NAME",
                        help="copy this variable from here to the job (repeatable; WANDB_API_KEY goes when set)")
    submit.add_argument("--autoscaling", metavar="CLUSTER_YAML", help="the cluster autoscales: check the job "
                        "against the nodes this cluster launcher config or KubeRay RayCluster lets it grow to")
    submit.add_argument("--with-deps", action="store_true", help="install rayalign's dependencies (pyproject's "
                        "list) in the job's environment: for a cluster image that has Ray but not them")
    submit.add_argument("--pip", action="append", metavar="REQ", help="pip requirement or requirements file")
    submit.add_argument("--image-uri", help="container image to run the job in")
    submit.add_argument("--runtime-env", metavar="YAML", help="a runtime_env YAML to start from")
    submit.add_argument("--working-dir", help="directory shipped to the cluster (default: the current one)")
    submit.add_argument("--submission-id", help="job id to use (default: rayalign-<name>-<time>-<random>)")
    submit.add_argument("--no-validate", action="store_true",
                        help="skip the local config check (the job then fails on the cluster with the same one-line error)")
    submit.set_defaults(func=cmd_submit)

    jobs = sub.add_parser("jobs", help="list, inspect, follow or stop jobs on a Ray cluster")
    jobs_sub = jobs.add_subparsers(dest="jobs_command", required=True)
    for name, func, text in (("list", cmd_jobs_list, "jobs on the cluster"),
                             ("status", cmd_jobs_status, "one job's status"),
                             ("logs", cmd_jobs_logs, "one job's logs"),
                             ("stop", cmd_jobs_stop, "stop a running job")):
        p = jobs_sub.add_parser(name, help=text)
        if name != "list":
            p.add_argument("job_id")
        p.add_argument("--address", help=address_help)
        if name == "logs":
            p.add_argument("--follow", action="store_true", help="follow until the job ends; exit with its status")
        if name == "stop":
            p.add_argument("--wait", action="store_true", help="wait until the job has stopped")
        p.set_defaults(func=func)
