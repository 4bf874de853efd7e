"""From a DataConfig to tokenised pairs: read, normalise, tokenise, mark, count.

Bad rows are either fatal (``on_bad_row=error``: the first one is raised, as one line) or dropped
and counted by reason (``skip``), so a user sees at a glance why their data shrank.
"""

from __future__ import annotations

import hashlib
import sys
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Optional

from rayalign.config import DataConfig
from rayalign.data.bad_rows import BadRow
from rayalign.data.formats import normalise
from rayalign.data.readers import iter_rows
from rayalign.data.tokenize import TokenizedPair, Truncation, pair_from_ids, tokenize_example
from rayalign.errors import DataError

MarkFn = Callable[[list[int], list[int]], tuple[list[bool], list[bool]]]


@dataclass
class PreparedData:
    """The usable pairs, in file order, and what happened to the rest (see `new_stats`)."""

    pairs: list[TokenizedPair]
    stats: dict = field(default_factory=lambda: new_stats())


def new_stats() -> dict:
    return {"rows_read": 0, "rows_used": 0, "bad_rows": {}, "truncated_prompts": 0, "truncated_responses": 0}


def prepare_data(cfg: DataConfig, tokenizer, mark_fn: Optional[MarkFn] = None) -> PreparedData:
    """Read `cfg.path` and return tokenised pairs; stops reading once `cfg.limit` good rows are in.

    `mark_fn(chosen_ids, rejected_ids) -> (chosen_marks, rejected_marks)` runs on the truncated
    ids (BMC marks the tokens its edit changed), so the marks always align with what is trained.
    """
    if not cfg.path:
        raise DataError("data.path", None, None, "no data given; set data.path to a file or a datasets name")
    prepared = PreparedData(pairs=[])
    bad_rows: Counter = Counter()
    for row, raw in iter_rows(cfg.path, cfg.split):
        if cfg.limit is not None and len(prepared.pairs) >= cfg.limit:
            break
        prepared.stats["rows_read"] += 1
        try:
            pair, truncation = _prepare_row(cfg, tokenizer, row, raw)
        except BadRow as bad:
            if cfg.on_bad_row == "error":
                raise
            bad_rows[bad.reason] += 1
            continue
        _count_truncation(prepared.stats, truncation)
        if mark_fn is not None:
            _attach_marks(pair, mark_fn)
        prepared.pairs.append(pair)
    prepared.stats["rows_used"] = len(prepared.pairs)
    prepared.stats["bad_rows"] = dict(sorted(bad_rows.items()))
    return prepared


def _prepare_row(cfg: DataConfig, tokenizer, row: int, raw) -> tuple[TokenizedPair, Truncation]:
    if isinstance(raw, DataError):
        raise raw
    if cfg.format == "token_ids" or (cfg.format == "auto" and "chosen_ids" in raw):
        return pair_from_ids(raw, row, cfg.path, cfg, len(tokenizer))
    example = normalise(raw, row, cfg.path, cfg.format)
    return tokenize_example(example, tokenizer, cfg)


def _count_truncation(stats: dict, truncation: Truncation) -> None:
    stats["truncated_prompts"] += int(truncation.prompt_cut)
    stats["truncated_responses"] += truncation.responses_cut


def _attach_marks(pair: TokenizedPair, mark_fn: MarkFn) -> None:
    chosen_marks, rejected_marks = mark_fn(pair.chosen_ids, pair.rejected_ids)
    if len(chosen_marks) != len(pair.chosen_ids) or len(rejected_marks) != len(pair.rejected_ids):
        raise ValueError("mark_fn must return one mark per response token "
                         f"(got {len(chosen_marks)}/{len(rejected_marks)} for "
                         f"{len(pair.chosen_ids)}/{len(pair.rejected_ids)} tokens)")
    pair.chosen_marks = [bool(mark) for mark in chosen_marks]
    pair.rejected_marks = [bool(mark) for mark in rejected_marks]


def fingerprint(pairs: list[TokenizedPair]) -> str:
    """sha256 over every token id, with each sequence's length, so moving a boundary between
    prompt and response changes it too. A cache key for things computed from the ids."""
    digest = hashlib.sha256()
    for pair in pairs:
        for ids in (pair.prompt_ids, pair.chosen_ids, pair.rejected_ids):
            digest.update(_as_le_bytes([len(ids)]))
            digest.update(_as_le_bytes(ids))
    return digest.hexdigest()


def _as_le_bytes(ids: list[int]) -> bytes:
    """Fixed-width little-endian bytes, so the fingerprint is the same on every machine."""
    packed = array("q", ids)
    if sys.byteorder != "little":
        packed.byteswap()
    return packed.tobytes()
