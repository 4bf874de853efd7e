"""`rayalign bench data`: pairs/s of `prepare_data` (read, check, tokenise) against tokenising row by row.

The reference is how rayalign tokenised before batching: per row, the chat template rendered and encoded by
`apply_chat_template(tokenize=True)` and each response encoded by `tokenizer.encode`, then the same truncation. The
data is `rows` rows cycled from a preference file (default: the team's HH-RLHF sample when present, else the
quickstart's pairs). Measured in one process, alternating, medians of `repeats`: the reference, `prepare_data`
with an empty cache (cold), and `prepare_data` again (its cache of the file's pairs).
"""

from __future__ import annotations

import itertools
import os
import statistics
import tempfile
import time
from pathlib import Path

HH_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "hh-rlhf-harmless-base.jsonl.gz"
QUICKSTART = Path("jobs") / "data" / "word_collector_prefs.jsonl"


def row_by_row(cfg, tokenizer) -> int:
    """The reference: every usable row tokenised alone. Returns the pairs made."""
    from rayalign.data.bad_rows import BadRow
    from rayalign.data.formats import normalise
    from rayalign.data.readers import iter_rows
    from rayalign.data.tokenize import truncate_pair

    made = 0
    eos = [tokenizer.eos_token_id]
    for row, raw in iter_rows(cfg):
        try:
            example = normalise(raw, row, cfg.path, cfg.format)
            prompt = tokenizer.apply_chat_template(example.prompt, add_generation_prompt=True, tokenize=True)
            prompt = list(prompt["input_ids"] if hasattr(prompt, "keys") else prompt)
            responses = [tokenizer.encode(text, add_special_tokens=False) + eos
                         for text in (example.chosen, example.rejected)]
            truncate_pair(prompt, responses, cfg, example.source, example.row)
        except BadRow:
            continue
        made += 1
    return made


def _source(data: str | None) -> Path:
    from rayalign.errors import RayAlignError

    path = Path(data) if data else (HH_SAMPLE if HH_SAMPLE.is_file() else QUICKSTART)
    if not path.is_file():
        raise RayAlignError(f"bench data: no file {path}; give one with --data FILE.jsonl[.gz]")
    return path


def _rows_file(source: Path, rows: int, out: Path) -> Path:
    import gzip

    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rt") as handle:
        lines = [line.rstrip("\n") for line in handle if line.strip()]
    path = out / "pairs.jsonl"
    path.write_text("\n".join(itertools.islice(itertools.cycle(lines), rows)) + "\n")
    return path


def _timed(function) -> tuple[float, object]:
    began = time.perf_counter()
    result = function()
    return time.perf_counter() - began, result


def run_data_bench(model: str, rows: int, repeats: int, data: str | None = None) -> dict:
    from rayalign.config import DataConfig
    from rayalign.data.prepare import prepare_data
    from rayalign.models import load_tokenizer

    source = _source(data)
    tokenizer = load_tokenizer(model)
    seconds = {"row_by_row": [], "prepare_cold": [], "prepare_cached": []}
    with tempfile.TemporaryDirectory(prefix="rayalign-data-bench-") as tmp:
        cfg = DataConfig(path=str(_rows_file(source, rows, Path(tmp))), on_bad_row="skip")
        saved = os.environ.get("RAYALIGN_CACHE")
        try:
            for repeat in range(repeats):
                os.environ["RAYALIGN_CACHE"] = str(Path(tmp) / f"cache_{repeat}")  # empty: a cold run
                elapsed, reference_pairs = _timed(lambda: row_by_row(cfg, tokenizer))
                seconds["row_by_row"].append(elapsed)
                elapsed, prepared = _timed(lambda: prepare_data(cfg, tokenizer))
                seconds["prepare_cold"].append(elapsed)
                elapsed, cached = _timed(lambda: prepare_data(cfg, tokenizer))
                seconds["prepare_cached"].append(elapsed)
        finally:
            if saved is None:
                os.environ.pop("RAYALIGN_CACHE", None)
            else:
                os.environ["RAYALIGN_CACHE"] = saved
    if not (reference_pairs == len(prepared.pairs) == len(cached.pairs)):
        raise AssertionError(f"pairs differ: {reference_pairs}, {len(prepared.pairs)}, {len(cached.pairs)}")
    medians = {name: statistics.median(values) for name, values in seconds.items()}
    return {"source": str(source), "rows": rows, "pairs": len(prepared.pairs), "model": model,
            "cpus": os.cpu_count(), "seconds": seconds, "median_s": medians,
            "pairs_per_s": {name: len(prepared.pairs) / s for name, s in medians.items()},
            "speedup_cold": medians["row_by_row"] / medians["prepare_cold"],
            "speedup_cached": medians["row_by_row"] / medians["prepare_cached"]}


def summary_lines(result: dict) -> list[str]:
    rate, median = result["pairs_per_s"], result["median_s"]
    return [f"data: {result['pairs']} pairs from {result['rows']} rows of {result['source']} (medians)",
            f"  row by row (reference): {median['row_by_row']:.2f} s, {rate['row_by_row']:.0f} pairs/s",
            (f"  prepare_data, cold:     {median['prepare_cold']:.2f} s, {rate['prepare_cold']:.0f} pairs/s "
             f"({result['speedup_cold']:.2f}x)"),
            (f"  prepare_data, cached:   {median['prepare_cached']:.2f} s, {rate['prepare_cached']:.0f} pairs/s "
             f"({result['speedup_cached']:.1f}x)")]
