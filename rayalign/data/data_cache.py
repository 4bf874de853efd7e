"""Tokenised pairs of a data file, cached: reading the same file with the same data settings and tokenizer again
skips tokenising. The key covers the file's bytes, every `data.*` setting and the tokenizer's full definition
(vocabulary, merges, normaliser, chat template), so any change to them misses. Datasets read by name are not
cached here: `datasets` keeps its own copy of them. Entries live in `<cache_root>/data/<key>.parquet`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

VERSION = "1"  # bump when the tokenisation itself changes
FIELDS = ("prompt_ids", "chosen_ids", "rejected_ids")


def _digest(chunks) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
    return digest.hexdigest()


def _file_digest(path: Path) -> str:
    with open(path, "rb") as handle:
        return _digest(iter(lambda: handle.read(1 << 20), b""))


def _tokenizer_digest(tokenizer) -> str | None:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow tokenizer has no full definition to hash: not cached
        return None
    parts = (backend.to_str(), str(getattr(tokenizer, "chat_template", None)), str(tokenizer.eos_token_id))
    return _digest(part.encode() for part in parts)


def key(cfg, tokenizer) -> str | None:
    """The cache key of `prepare_data(cfg, tokenizer)`, or None where it is not cached."""
    from rayalign.files import cache_key

    path = Path(cfg.path).expanduser()
    tokenizer_digest = _tokenizer_digest(tokenizer)
    if not path.is_file() or tokenizer_digest is None:
        return None
    settings = {k: v for k, v in dataclasses.asdict(cfg).items() if k != "path"}
    return cache_key({"version": VERSION, "file": _file_digest(path), "tokenizer": tokenizer_digest,
                      "data": settings})


def _path(cache_key: str) -> Path:
    from rayalign.files import cache_root

    return cache_root() / "data" / f"{cache_key}.parquet"


def read(cache_key: str | None) -> tuple[list, dict] | None:
    """(pairs, stats) of a cached preparation, or None."""
    if cache_key is None or not _path(cache_key).is_file():
        return None
    import pyarrow.parquet as pq

    from rayalign.data.tokenize import TokenizedPair

    table = pq.read_table(_path(cache_key))
    columns = [table.column(name).to_pylist() for name in FIELDS]
    stats = json.loads(table.schema.metadata[b"rayalign_stats"])
    return [TokenizedPair(*ids) for ids in zip(*columns)], stats


def write(cache_key: str | None, pairs: list, stats: dict) -> None:
    if cache_key is None:
        return
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rayalign.files import atomic_write

    columns = {name: pa.array([getattr(p, name) for p in pairs], type=pa.list_(pa.int32())) for name in FIELDS}
    table = pa.table(columns).replace_schema_metadata({"rayalign_stats": json.dumps(stats)})
    atomic_write(_path(cache_key), lambda tmp: pq.write_table(table, tmp))
