"""BMC (arXiv 2408.07471): bridge each pair with a targeted edit, then train with the token-weighted loss.

1. Pairs: `data.path` (any form rayalign reads), or when it is empty, pairs synthesised as the inco
   pipeline does (the `inco` section: e.g. inco.mode=on_policy, the policy's best vs worst sample).
2. Bridging: for each pair an editor (`bmc.editor`: the task's own, or an LLM) rewrites y_l toward y_w
   into ỹ_w; an edit that fails a gate (`rayalign.editing.gate`) keeps the original pair or drops it
   (`bmc.on_rejected`). y_l keeps the token ids it had; ỹ_w is new text, tokenised once here.
3. Training on (ỹ_w, y_l) with `loss.name` (bmc: varied tokens marked by difflib, up-weighted by
   min(1/p, δ)); then the evaluation every pipeline ends with.

`<run>/data/bridged.parquet` holds what trains (texts to read, token ids, each pair's edit status and
marked-token counts before and after the edit); `<run>/data/bridging.json` the counts. A rerun reuses
both, and an LLM editor's answers are cached on disk, so redoing the edits sends no request either.
"""

from __future__ import annotations

import dataclasses
import json
import statistics
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from rayalign import config as config_lib
from rayalign.editing import gate, words

if TYPE_CHECKING:
    from rayalign.pipelines.run import Run


def _task_name(cfg: config_lib.Config) -> str | None:
    return cfg.bmc.task or (None if cfg.data.path else cfg.inco.task)


def source_pairs(run: Run):
    """The pairs to bridge, tokenised and with their texts: `data.path`, else the inco pipeline's synthesis (on the
    run's pool)."""
    from rayalign.data import prepare_data

    data = run.cfg.data
    if not data.path:
        from rayalign.pipelines.inco import synthesise

        data = dataclasses.replace(data, path=str(synthesise(run)))
    return prepare_data(data, run.tokenizer, keep_text=True)


def make_editor(cfg: config_lib.Config, task):
    """(editor, a function that stops what the editor started); None for bmc.editor=none."""
    if cfg.bmc.editor == "none":
        return None, lambda: None
    if cfg.bmc.editor == "task":
        from rayalign.editing import TaskEditor
        from rayalign.errors import ConfigError

        if task is None:
            raise ConfigError("bmc.editor=task needs the task the pairs come from: set bmc.task, or use bmc.editor=llm")
        return TaskEditor(task), lambda: None
    return _llm_editor(cfg)


def _llm_editor(cfg: config_lib.Config):
    import os

    from rayalign.editing import LLMEditor
    from rayalign.llm_client import LLMClient
    from rayalign.models import cache_root

    b, stop = cfg.bmc, (lambda: None)
    url, model = b.llm_base_url or os.environ.get("RAYALIGN_LLM_BASE_URL"), b.llm_model
    if not url:  # rayalign's own OpenAI-compatible endpoint, on the cluster
        from ray import serve

        from rayalign.models import PLAIN
        from rayalign.sampling.serve import start_server

        model, app = model or cfg.model.name, f"{cfg.name}-editor"
        url = start_server(model, port=b.llm_port, engine=cfg.sampling.engine, name=app,
                           num_cpus=b.llm_cpus, num_gpus=b.llm_gpus,
                           options=cfg.model.options if model == cfg.model.name else PLAIN)
        stop = lambda: serve.delete(app)
    client = LLMClient(base_url=url, model=model, max_retries=b.max_retries)
    editor = LLMEditor(client, cache_root() / "edits", b.concurrency, b.max_new_tokens, b.temperature)
    return editor, stop


def _marked(marks_of, chosen: list[int], rejected: list[int]) -> int:
    chosen_marks, rejected_marks = marks_of(chosen, rejected)
    return sum(chosen_marks) + sum(rejected_marks)


def edit_ids(edit: str | None, pair, tokenizer, max_length: int) -> list[int] | None:
    """The edit's token ids: it ends as y_l did (with EOS only if y_l's sampled ids end with it: a loser cut off by
    the token budget did not stop, nor does its edit), cut to the room the prompt leaves."""
    if edit is None or not edit.strip():
        return None if edit is None else []
    ids = list(tokenizer.encode(edit, add_special_tokens=False))
    if pair.rejected_ids[-1:] == [tokenizer.eos_token_id]:
        ids.append(tokenizer.eos_token_id)
    return ids[:max_length - len(pair.prompt_ids)]


def bridge(cfg: config_lib.Config, prepared, tokenizer, editor, task) -> tuple[list[dict], dict]:
    """Edit, gate and tokenise every pair; returns the rows to train on and the counts."""
    from rayalign.losses.bmc import varied_marker

    marks_of = varied_marker(tokenizer)
    finish = lambda ids: "stop" if ids[-1:] == [tokenizer.eos_token_id] else "length"
    edits = editor.edit(prepared.texts) if editor is not None else [None] * len(prepared.pairs)
    rows, status = [], Counter()
    for pair, (prompt, chosen, rejected), edit in zip(prepared.pairs, prepared.texts, edits):
        before = _marked(marks_of, pair.chosen_ids, pair.rejected_ids)
        new_chosen, new_ids, outcome = chosen, pair.chosen_ids, "not_edited"
        if editor is not None:
            ids = edit_ids(edit, pair, tokenizer, cfg.data.max_length)
            gains = None
            if task is not None and edit is not None:
                gains = task.gold_reward(prompt, edit) - task.gold_reward(prompt, rejected)
            if cfg.bmc.closeness == "words":
                outcome = gate(words(chosen), words(rejected), None if ids is None else words(edit), gains)
            else:
                outcome = gate(pair.chosen_ids, pair.rejected_ids, ids, gains)
            outcome = outcome or "accepted"
            if outcome == "accepted":
                new_chosen, new_ids = edit, ids
            elif cfg.bmc.on_rejected == "drop":
                status[outcome] += 1
                continue
        status[outcome] += 1
        rows.append({"prompt": prompt, "chosen": new_chosen, "rejected": rejected, "original_chosen": chosen,
                     "prompt_ids": pair.prompt_ids, "chosen_ids": new_ids, "rejected_ids": pair.rejected_ids,
                     "chosen_finish": finish(new_ids), "rejected_finish": finish(pair.rejected_ids),
                     "edit_status": outcome, "marked_before": before,
                     "marked_after": _marked(marks_of, new_ids, pair.rejected_ids)})
    return rows, _counts(cfg, prepared, rows, status, editor)


def _counts(cfg, prepared, rows: list[dict], status: Counter, editor) -> dict:
    accepted = [row for row in rows if row["edit_status"] == "accepted"]
    mean = lambda values: round(statistics.fmean(values), 2) if values else None
    return {"editor": cfg.bmc.editor, "pairs_in": len(prepared.pairs), "pairs_out": len(rows),
            "accepted": len(accepted), "outcomes": dict(sorted(status.items())), "on_rejected": cfg.bmc.on_rejected,
            "llm_requests": getattr(editor, "requests", 0), "llm_cached": getattr(editor, "cached", 0),
            "marked_tokens_per_pair": {"before": mean([r["marked_before"] for r in rows]),
                                       "after": mean([r["marked_after"] for r in rows]),
                                       "edited_before": mean([r["marked_before"] for r in accepted]),
                                       "edited_after": mean([r["marked_after"] for r in accepted])}}


def bridged_pairs(run: Run) -> tuple[Path, dict]:
    """Write `<run>/data/bridged.parquet` and `bridging.json` (reused when both exist)."""
    import pyarrow as pa

    from rayalign.files import atomic_write_text
    from rayalign.pipelines.pairs import write_pairs

    cfg, tokenizer = run.cfg, run.tokenizer
    path, counts_path = run.dir / "data" / "bridged.parquet", run.dir / "data" / "bridging.json"
    if path.is_file() and counts_path.is_file():
        return path, json.loads(counts_path.read_text())
    task = run.task(_task_name(cfg)) if _task_name(cfg) else None
    prepared = source_pairs(run)
    editor, stop = make_editor(cfg, task)
    try:
        print(f"rayalign: bridging {len(prepared.pairs)} pairs with the {cfg.bmc.editor} editor", flush=True)
        rows, counts = bridge(cfg, prepared, tokenizer, editor, task)
    finally:
        stop()
    extra = {"original_chosen": pa.string(), "edit_status": pa.string(), "marked_before": pa.int64(),
             "marked_after": pa.int64()}
    for row in rows:  # pair_row's score columns: the gold rewards where a task gives them
        row["chosen_score"] = task.gold_reward(row["prompt"], row["chosen"]) if task else float("nan")
        row["rejected_score"] = task.gold_reward(row["prompt"], row["rejected"]) if task else float("nan")
    write_pairs(rows, path, extra)
    atomic_write_text(counts_path, json.dumps(counts, indent=2))  # last: its presence says the edits are done
    print(f"rayalign: {counts['accepted']} of {counts['pairs_in']} edits accepted {counts['outcomes']}; marked "
          f"tokens per pair {counts['marked_tokens_per_pair']['before']} -> {counts['marked_tokens_per_pair']['after']}",
          flush=True)
    return path, counts


def run_bmc(run: Run) -> dict:
    """Pairs, edits, training (the run's ending evaluates); see the module docstring."""
    from rayalign.train.driver import run_training

    cfg = run.cfg
    path, counts = bridged_pairs(run)
    train_cfg = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, path=str(path), format="token_ids"))
    run.pools.make_room(cfg.train)
    return {"bridging": counts, "train": run_training(train_cfg)}
