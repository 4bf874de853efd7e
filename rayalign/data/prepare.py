"""From a DataConfig to tokenised pairs: read, normalise, tokenise, count; and BMC's marks on them.

Bad rows are either fatal (``on_bad_row=error``: the first one is raised, as one line) or dropped
and counted by reason (``skip``), so a user sees at a glance why their data shrank.
"""

from __future__ import annotations

import hashlib
import sys
from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from rayalign.config import DataConfig
from rayalign.data.bad_rows import BadRow
from rayalign.data.formats import PreferenceExample, normalise
from rayalign.data.readers import iter_sources, their_field
from rayalign.data.tokenize import TokenizedPair, Truncation, pair_from_ids, tokenize_examples
from rayalign.errors import DataError

MarkFn = Callable[[list[int], list[int]], tuple[list[bool], list[bool]]]


@dataclass
class PreparedData:
    """The usable pairs, in file order, and what happened to the rest (see `new_stats`)."""

    pairs: list[TokenizedPair]
    stats: dict = field(default_factory=lambda: new_stats())
    texts: list[tuple[str, str, str]] = field(default_factory=list)
    """(prompt, chosen, rejected) as text, parallel to `pairs`, when asked for (BMC's editors read text)."""
    eval_pairs: list[TokenizedPair] = field(default_factory=list)
    """Held-out pairs the training evaluates on (`hold_out`), never trained on."""


def new_stats() -> dict:
    return {"rows_read": 0, "rows_used": 0, "bad_rows": {}, "truncated_prompts": 0, "truncated_responses": 0}


CHUNK = 4096
"""Rows validated, then tokenised together (one encode call per field): large enough for the tokenizer's threads,
small enough that `data.limit` reads no more rows than it uses."""


def prepare_data(cfg: DataConfig, tokenizer, keep_text: bool = False) -> PreparedData:
    """Read `cfg.path` (or `cfg.mix`) and return tokenised pairs; stops reading once `cfg.limit` good rows are in.

    Rows are checked one by one as they are read (a bad row is named as it comes), then tokenised a chunk at a
    time. A data file's pairs are cached (`data_cache`): the same file, settings and tokenizer read again take
    no tokenising. `keep_text` also keeps each pair's texts: a conversation's messages joined by blank lines, and
    for rows of token ids their text columns (pipelines write them), else the decoded ids.
    """
    if not cfg.path and not cfg.mix:
        raise DataError("data.path", None, None, "no data given; set data.path to a file or a datasets name, or "
                        "data.mix to several")
    from rayalign.data import data_cache

    key = None if keep_text else data_cache.key(cfg, tokenizer)
    cached = data_cache.read(key)
    if cached is not None:
        return PreparedData(*cached)
    prepared = PreparedData(pairs=[])
    bad_rows: Counter = Counter()
    rows, by_source = iter_sources(cfg), Counter()
    while cfg.limit is None or len(prepared.pairs) < cfg.limit:
        wanted = CHUNK if cfg.limit is None else min(CHUNK, cfg.limit - len(prepared.pairs))
        chunk = _checked_rows(tokenizer, rows, wanted, prepared.stats, bad_rows)
        if not chunk:
            break
        for source, done in _tokenized(chunk, tokenizer, cfg):
            if isinstance(done, BadRow):
                _bad(source, done, bad_rows)
                continue
            pair, truncation, texts = done
            by_source[source.path] += 1
            _count_truncation(prepared.stats, truncation)
            prepared.pairs.append(pair)
            if keep_text:
                prepared.texts.append(texts())
    prepared.stats["rows_used"] = len(prepared.pairs)
    prepared.stats["bad_rows"] = dict(sorted(bad_rows.items()))
    if cfg.mix:
        prepared.stats["pairs_by_source"] = {s.path: by_source[s.path] for s in cfg.mix}
    data_cache.write(key, prepared.pairs, prepared.stats)
    return prepared


def hold_out(cfg: DataConfig, tokenizer, prepared: PreparedData, seed: int) -> None:
    """Set `prepared.eval_pairs`: `data.eval_fraction` of its pairs (drawn by `seed`, then taken out of the
    training pairs), or the pairs of `data.eval_path` / `data.eval_split`, read with the other `data.*` settings."""
    import dataclasses
    import random

    if cfg.eval_fraction:
        count = max(1, round(len(prepared.pairs) * cfg.eval_fraction))
        held = set(random.Random(seed).sample(range(len(prepared.pairs)), count))
        prepared.eval_pairs = [pair for i, pair in enumerate(prepared.pairs) if i in held]
        prepared.pairs = [pair for i, pair in enumerate(prepared.pairs) if i not in held]
        prepared.texts = [text for i, text in enumerate(prepared.texts) if i not in held]
    elif cfg.eval_path or cfg.eval_split:
        eval_cfg = dataclasses.replace(cfg, path=cfg.eval_path or cfg.path, split=cfg.eval_split or cfg.split,
                                       mix=[], limit=None, eval_path=None, eval_split=None)
        prepared.eval_pairs = prepare_data(eval_cfg, tokenizer).pairs
    if prepared.eval_pairs:
        prepared.stats["eval_pairs"] = len(prepared.eval_pairs)


def _bad(cfg: DataConfig, bad: BadRow, bad_rows: Counter) -> None:
    if cfg.on_bad_row == "error":
        raise their_field(bad, cfg.columns) from None
    bad_rows[bad.reason] += 1


def _checked_rows(tokenizer, rows, wanted: int, stats: dict, bad_rows: Counter) -> list:
    """Up to `wanted` usable rows from `rows` (`iter_sources`), each (source, a `PreferenceExample` to tokenise or,
    for a row of token ids, its (pair, truncation, texts) already); bad ones raised or counted."""
    chunk = []
    for source, row, raw in rows:
        stats["rows_read"] += 1
        try:
            chunk.append((source, _checked_row(source, tokenizer, row, raw)))
        except BadRow as bad:
            _bad(source, bad, bad_rows)
        if len(chunk) == wanted:
            break
    return chunk


def _checked_row(cfg: DataConfig, tokenizer, row: int, raw):
    if isinstance(raw, DataError):
        raise raw
    if cfg.format == "token_ids" or (cfg.format == "auto" and "chosen_ids" in raw):
        pair, truncation = pair_from_ids(raw, row, cfg.path, cfg, len(tokenizer))

        def texts():
            return tuple(raw[key] if isinstance(raw.get(key), str) else
                         tokenizer.decode(getattr(pair, f"{key}_ids"), skip_special_tokens=True)
                         for key in ("prompt", "chosen", "rejected"))
        return pair, truncation, texts
    return normalise(raw, row, cfg.path, cfg.format)


def _tokenized(chunk: list, tokenizer, cfg: DataConfig) -> list:
    """The chunk in order, each example replaced by (pair, truncation, texts) or its BadRow."""
    examples = [item for _, item in chunk if isinstance(item, PreferenceExample)]
    encoded = iter(tokenize_examples(examples, tokenizer, cfg))
    done = []
    for source, item in chunk:
        if not isinstance(item, PreferenceExample):
            done.append((source, item))
            continue
        result = next(encoded)
        if isinstance(result, BadRow):
            done.append((source, result))
            continue
        def texts(e=item) -> tuple[str, str, str]:  # joined only when texts are kept
            return "\n\n".join(m["content"] for m in e.prompt), e.chosen, e.rejected

        done.append((source, (*result, texts)))
    return done


def _count_truncation(stats: dict, truncation: Truncation) -> None:
    stats["truncated_prompts"] += int(truncation.prompt_cut)
    stats["truncated_responses"] += truncation.responses_cut


def attach_marks(pairs: list[TokenizedPair], mark_fn: MarkFn) -> None:
    """Set each pair's marks to `mark_fn(chosen_ids, rejected_ids) -> (chosen_marks, rejected_marks)`.

    Runs on the ids as they train (after truncation), so the marks always align with the labels.
    """
    for pair in pairs:
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
