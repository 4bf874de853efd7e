"""Pipelines on a user's prompts and reward model (`prompts.*`) in place of a built-in task."""

from __future__ import annotations

import json

import pytest

from rayalign import config
from rayalign.errors import ConfigError, RayAlignError
from rayalign.tasks.user import NAME, read_prompts
from tests.test_data import write_jsonl
from tests.test_discriminator import word_pairs


def _hh(human: str, assistant: str, more: str = "") -> str:
    return f"\n\nHuman: {human}\n\nAssistant: {assistant}{more}"


def test_prompts_come_from_prompt_columns_and_one_turn_transcripts(tmp_path):
    theirs = write_jsonl(tmp_path / "theirs.jsonl", [
        {"question": "Name a colour.", "good": "Blue."},
        {"question": "Name a colour.", "good": "Red."},  # a repeat: the first one stays
        {"question": "Count to 3.", "good": None},
    ])
    cfg = config.PromptsConfig(path=str(theirs), judge="unused", columns={"prompt": "question", "chosen": "good"})
    assert read_prompts(cfg) == ({"Name a colour.": "Blue.", "Count to 3.": None}, 0)
    path = write_jsonl(tmp_path / "hh.jsonl", [
        {"chosen": _hh("Say hi.", "Hi!"), "rejected": _hh("Say hi.", "No.")},
        {"chosen": _hh("Hi", "Hello", "\n\nHuman: and?\n\nAssistant: yes"),
         "rejected": _hh("Hi", "Hello", "\n\nHuman: and?\n\nAssistant: no")},  # two human turns: skipped
    ])
    assert read_prompts(config.PromptsConfig(path=str(path), judge="unused")) == ({"Say hi.": "Hi!"}, 1)
    empty = write_jsonl(tmp_path / "e.jsonl", [{"text": "no prompt here"}])
    with pytest.raises(RayAlignError, match="holds no usable prompt"):
        read_prompts(config.PromptsConfig(path=str(empty), judge="unused"))
    with pytest.raises(ConfigError, match="prompts.path needs prompts.judge"):
        config.build({"prompts": {"path": str(path)}})


@pytest.fixture(scope="module")
def judge_dir(tmp_path_factory):
    """A reward model preferring word-collector target words (a head fitted on frozen tiny-llama features)."""
    from rayalign.scoring.discriminator import Discriminator

    model = Discriminator(backbone="tiny-llama", max_length=64, pooling="response_mean", pool_layers=[1, 2], seed=0)
    model.fit_head(word_pairs("train", 64, seed=0))
    return str(model.save(tmp_path_factory.mktemp("judge") / "discriminator"))


@pytest.mark.slow  # 22 s (a whole pipeline): keeps the default suite under 15 min on 2 cores
def test_a_pipeline_on_your_prompts_trains_on_their_train_split_and_is_judged_by_your_model(tmp_path, judge_dir,
                                                                                            ray_local):
    """InCo on a prompts file: its synthesis labels with the reward model, its report is the reward model's (on
    Ray Serve) over held-out prompts of the file that it never trained on."""
    from rayalign.pipelines import run_pipeline
    from rayalign.scoring.reward_model import load_reward_model
    from tests.test_inco import TINY

    prompts = [f"What should I know about topic number {i}?" for i in range(60)]
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p, "chosen": f"Help: {p} safe"} for p in prompts])
    cfg = config.load(None, TINY + [f"output_dir={tmp_path}", "name=yours", f"prompts.path={path}",
                                    f"prompts.judge={judge_dir}"])
    summary = run_pipeline(cfg)
    run_dir = tmp_path / "yours"
    report = json.loads((run_dir / "report.json").read_text())
    assert report["task"] == NAME and report["scorer"] == judge_dir and report["win_rate"]["prompts"] == 4
    import pyarrow.parquet as pq

    pairs = pq.read_table(run_dir / "data" / "pairs.parquet").to_pylist()
    trained = {pair["prompt"] for pair in pairs}
    evaluated = {json.loads(line)["prompt"] for line in (run_dir / "samples.jsonl").read_text().splitlines()}
    assert trained <= set(prompts) and evaluated <= set(prompts) and not trained & evaluated
    judge = load_reward_model(judge_dir)
    for pair in pairs[:3]:  # the labels are the reward model's scores
        assert pair["chosen_score"] == pytest.approx(judge.score([pair["prompt"]], [pair["chosen"]])[0], abs=1e-5)
    rows = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert rows[0]["reward"] == pytest.approx(judge.score([rows[0]["prompt"]], [rows[0]["response"]])[0], abs=1e-4)
    assert summary["synthesis"]["prompts"] == 8


def test_rayalign_eval_on_your_prompts_is_scored_by_your_reward_model(tmp_path, judge_dir, capsys, ray_local):
    from rayalign import cli
    from rayalign.scoring.reward_model import load_reward_model

    prompts = [f"Tell me about item {i}." for i in range(40)]
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p} for p in prompts])
    out = tmp_path / "eval"
    code = cli.main(["eval", "--policy", "tiny-llama", "--reference", "tiny-llama", "--num-prompts", "3",
                     "--samples", "1", "--max-new-tokens", "4", "--out", str(out), f"prompts.path={path}",
                     f"prompts.judge={judge_dir}"])
    assert code == 0, capsys.readouterr().err
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == NAME and report["scorer"] == judge_dir
    rows = [json.loads(line) for line in (out / "samples.jsonl").read_text().splitlines()]
    assert {row["prompt"] for row in rows} <= set(prompts) and len(rows) == 6
    judge = load_reward_model(judge_dir)
    assert rows[0]["reward"] == pytest.approx(judge.score([rows[0]["prompt"]], [rows[0]["response"]])[0], abs=1e-4)


@pytest.mark.slow  # three small pipelines (a BMC with its editor endpoint, an sDPO, a D2PO): 90 s on 2 cores
def test_bmc_sdpo_and_d2po_run_on_your_prompts_and_report_with_your_judge(tmp_path, judge_dir, ray_local,
                                                                           monkeypatch):
    """Each pipeline's report is your reward model's, on held-out prompts of your file that it never trained on."""
    import pyarrow.parquet as pq
    from ray import serve

    from rayalign.pipelines import run_pipeline
    from tests.conftest import QUICKSTART_DATA, free_port
    from tests.test_bmc import TINY_INCO
    from tests.test_d2po import TINY as TINY_D2PO

    monkeypatch.delenv("RAYALIGN_LLM_BASE_URL", raising=False)
    prompts = [f"What should I know about topic number {i}?" for i in range(60)]
    path = write_jsonl(tmp_path / "prompts.jsonl", [{"prompt": p, "chosen": f"Help: {p} safe"} for p in prompts])
    yours = [f"prompts.path={path}", f"prompts.judge={judge_dir}", "eval.enabled=true", "eval.num_prompts=3",
             "eval.samples=1", "eval.max_new_tokens=4", f"output_dir={tmp_path}"]
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(QUICKSTART_DATA.read_text().splitlines(keepends=True)[:8]))
    jobs = {
        "bmc": TINY_INCO + ["pipeline=bmc", "bmc.editor=llm", f"bmc.llm_port={free_port()}", "bmc.max_new_tokens=8",
                            "train.max_steps=1"],
        "sdpo": ["model.name=tiny-llama", "pipeline=sdpo", f"data.path={pairs}", "sdpo.stages=2", "sdpo.split=random",
                 "train.batch_size=2", "train.micro_batch_size=2", "train.cpus_per_worker=1"],
        "d2po": TINY_D2PO + [f"d2po.http_port={free_port()}"],
    }
    for name, job in jobs.items():
        serve.shutdown()  # each pipeline starts Serve where it needs it (the editor's port, D2PO's)
        run_pipeline(config.load(None, job + yours + [f"name={name}"]))
        run_dir = tmp_path / name
        report = json.loads((run_dir / "report.json").read_text())
        assert report["task"] == NAME and report["scorer"] == judge_dir, name
        evaluated = {json.loads(line)["prompt"] for line in (run_dir / "samples.jsonl").read_text().splitlines()}
        assert evaluated <= set(prompts) and len(evaluated) == 3, name
        trained = {row["prompt"] for table in [*run_dir.glob("data/*.parquet"), *run_dir.glob("rounds/*/pairs.parquet")]
                   for row in pq.read_table(table).to_pylist()}  # sDPO trains on the quickstart's pairs
        assert (trained <= set(prompts) and trained and not trained & evaluated) or name == "sdpo", name
