"""The command line as a user meets it: one-line errors and exit code 2 for their mistakes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import QUICKSTART_DATA, REPO


def rayalign(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "rayalign.cli", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=300)


def _one_line_error(result) -> str:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_help_lists_commands_and_config_keys():
    result = rayalign("train", "--help")
    assert result.returncode == 0
    assert "train.lr" in result.stdout and "loss.name" in result.stdout
    # list-valued keys show their default factory's value, not pydantic's placeholder
    assert "PydanticUndefined" not in result.stdout
    assert "train.lora_target_modules = ['all-linear']" in result.stdout and "  recipes = []" in result.stdout


def _keys(help_text: str) -> set[str]:
    return {line.split(" = ")[0].strip() for line in help_text.splitlines() if line.startswith("  ") and " = " in line
            and not line.startswith("      ")}


def test_help_lists_the_keys_of_the_pipeline_asked(capsys):
    """`run --help pipeline=d2po` (or a job file) lists the keys that pipeline reads, each with its default; train's
    help has no pipeline's own section and no sampling; a bare `run --help` says how to ask."""
    from rayalign.cli import main

    listed = {}
    for argv in (["run", "--help", "pipeline=d2po"], ["run", "--help", "jobs/inco_dpo.yaml"], ["train", "--help"],
                 ["run", "--help"]):
        with pytest.raises(SystemExit) as done:
            main(argv)
        assert done.value.code == 0
        listed[" ".join(argv)] = capsys.readouterr().out
    d2po, inco = _keys(listed["run --help pipeline=d2po"]), _keys(listed["run --help jobs/inco_dpo.yaml"])
    train = _keys(listed["train --help"])
    assert {"d2po.gold_budget", "sampling.num_actors", "eval.num_prompts", "train.lr"} <= d2po
    assert not any(key.startswith(("inco.", "bmc.", "sdpo.", "mujoco.")) for key in d2po)
    assert "inco.ratio" in inco and not any(key.startswith("d2po.") for key in inco)
    assert "train.lr" in train and not any(key.startswith(("d2po.", "inco.", "sampling.", "eval.")) for key in train)
    assert "  d2po.gold_budget = 32\n" in listed["run --help pipeline=d2po"]
    assert "rayalign run --help pipeline=NAME" in listed["run --help"] and not _keys(listed["run --help"])


def test_train_takes_key_value_overrides_without_a_yaml_file(tmp_path, capsys):
    from rayalign.cli import main

    code = main(["train", "model.name=tiny-llama", f"data.path={QUICKSTART_DATA}", "data.limit=8",
                 "train.max_steps=1", "train.batch_size=2", "train.micro_batch_size=2", "train.num_workers=0",
                 f"output_dir={tmp_path}", "name=no_yaml", "tracking.wandb=disabled"])
    assert code == 0, capsys.readouterr().err
    summary = json.loads((tmp_path / "no_yaml" / "summary.json").read_text())
    assert summary["steps"] == 1 and summary["status"] == "ok"


@pytest.mark.parametrize("args, expected", [
    (["train", "no_such.yaml"], "no_such.yaml: no such config file"),
    (["run", "--help", "pipeline=nope"], "unknown pipeline 'nope'"),
    (["train", "jobs/dpo_quickstart.yaml", "train.lrr=1"], "unknown config key 'train.lrr': did you mean 'train.lr'?"),
    (["train", "jobs/dpo_quickstart.yaml", "train.lr=fast"], "config key 'train.lr'"),
    (["train", "jobs/dpo_quickstart.yaml", "loss.name=dpoo"], "loss.name 'dpoo' is unknown"),
    (["train", "jobs/dpo_quickstart.yaml", "train.batch_size=6", "train.micro_batch_size=4"],
     "train.batch_size (6) must be a multiple"),
    (["train", "jobs/dpo_quickstart.yaml", "model.name=./no/such/model"], "no such directory"),
])
def test_config_mistakes_get_one_line(args, expected):
    assert expected in _one_line_error(rayalign(*args))


def test_a_relative_model_directory_becomes_absolute(tmp_path, monkeypatch):
    """A job naming runs/x/checkpoints/... must work in Ray workers, which start in another directory."""
    from rayalign import config as config_lib

    (tmp_path / "runs" / "policy").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    cfg = config_lib.load(None, ["model.name=runs/policy", "model.reference=runs/policy"])
    assert cfg.model.name == cfg.model.reference == str(tmp_path / "runs" / "policy")
    hub = config_lib.load(None, ["model.name=HuggingFaceTB/SmolLM2-135M-Instruct"])  # no such directory here
    assert hub.model.name == "HuggingFaceTB/SmolLM2-135M-Instruct" and hub.model.reference is None


def test_malformed_sweep_yaml_gets_one_line(tmp_path):
    sweep = tmp_path / "sweep.yaml"
    sweep.write_text("name: s\nbase: jobs/d2po.yaml\nsearch:\n  d2po.mode: {grid: [d2po, frozen]\n")
    line = _one_line_error(rayalign("sweep", str(sweep)))
    assert f"{sweep} line" in line and "not valid YAML" in line
    sweep.write_text("- a list\n")
    assert f"{sweep}: a sweep must be a mapping of keys" in _one_line_error(rayalign("sweep", str(sweep)))


def test_unknown_key_hint_names_a_command_that_exists():
    line = _one_line_error(rayalign("train", "jobs/dpo_quickstart.yaml", "zzzz.qqqq=1"))
    assert "`rayalign train --help` lists the keys" in line
    assert rayalign("train", "--help").returncode == 0


def test_bad_data_row_names_file_row_and_field_and_writes_nothing(tmp_path):
    rows = [json.loads(line) for line in QUICKSTART_DATA.read_text().splitlines()[:6]]
    rows[4]["rejected"] = rows[4]["chosen"]
    data = tmp_path / "prefs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = rayalign("train", "jobs/dpo_quickstart.yaml", "model.name=tiny-llama", f"data.path={data}",
                      f"output_dir={tmp_path / 'runs'}")
    line = _one_line_error(result)
    assert str(data) in line and "row 5" in line and "identical" in line
    assert not (tmp_path / "runs").exists()  # stopped before writing a run directory


def test_an_unwritable_run_directory_is_one_line(tmp_path):
    """A file where the run directory should go (as a full disk or a read-only mount would): one line, exit 2."""
    blocker = tmp_path / "runs"
    blocker.write_text("not a directory")
    line = _one_line_error(rayalign("train", "jobs/dpo_quickstart.yaml", "model.name=tiny-llama",
                                    f"output_dir={blocker}"))
    assert line.startswith(f"error: cannot write {blocker}/dpo_quickstart: Not a directory; free some space")
    assert blocker.read_text() == "not a directory"
