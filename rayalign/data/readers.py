"""Read raw rows from a preference-data file or a `datasets` dataset.

Every reader yields ``(row_number, row)`` with 1-based row numbers a user can find in their file:
the line number for JSON Lines (blank lines are skipped but still counted), the position in the
list for JSON and Parquet, the index in the split for a `datasets` dataset. A row that cannot be
read (bad UTF-8, not JSON) is yielded as a :class:`BadRow` in place of the dict, so one bad line
does not hide the rest of the file; a file that cannot be read at all raises a :class:`DataError`.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Iterator

from rayalign.data.bad_rows import INVALID_JSON, UNDECODABLE_TEXT, BadRow
from rayalign.errors import DataError

RawRows = Iterator[tuple[int, "dict | DataError"]]
FILE_KINDS = (".jsonl", ".json", ".parquet")
_SUPPORTED = ".jsonl, .json or .parquet, each optionally .gz"


def file_kind(path: str) -> str | None:
    """'.jsonl', '.json' or '.parquet' when the name ends in one of them (optionally + '.gz')."""
    name = path.lower().removesuffix(".gz")
    return next((kind for kind in FILE_KINDS if name.endswith(kind)), None)


def iter_rows(cfg) -> RawRows:
    """Raw rows of `cfg.path` (a `DataConfig`): a data file, or else a `datasets` name or directory (with its split,
    config name and data_dir; streamed when `cfg.limit` is set, so no more is read than is used), each row with
    `cfg.columns` renamed to rayalign's names."""
    path = cfg.path
    if _local(path).is_file():
        rows = _iter_file(path)
    else:
        check_exists(path)
        rows = _iter_dataset(path, cfg.split, cfg.name, cfg.data_dir, streaming=cfg.limit is not None)
    return _renamed(rows, cfg.columns) if cfg.columns else rows


def iter_sources(cfg) -> Iterator[tuple[object, int, dict | DataError]]:
    """(source, row number, raw row) of `cfg.path` (a pattern: of each file it matches, in name order), or of
    `cfg.mix` drawn at random by weight (seeded by `cfg.mix_seed`) until a source runs out, so the shares hold however
    far the caller reads. The source is a DataConfig reading one source with `cfg`'s other settings: its path, format
    and columns name its rows."""
    import dataclasses

    if not cfg.mix and is_glob(cfg.path):  # each matching file in name order, its rows named by it
        for path in matching_files(cfg.path):
            source = dataclasses.replace(cfg, path=path)
            yield from ((source, row, raw) for row, raw in iter_rows(source))
        return
    if not cfg.mix:
        yield from ((cfg, row, raw) for row, raw in iter_rows(cfg))
        return
    import random

    sources = [dataclasses.replace(cfg, path=s.path, split=s.split, name=s.name, data_dir=s.data_dir,
                                   columns=dict(s.columns), format=s.format, mix=[]) for s in cfg.mix]
    readers = [iter_rows(source) for source in sources]
    draw, weights = random.Random(cfg.mix_seed), [s.weight for s in cfg.mix]
    while True:
        i = draw.choices(range(len(sources)), weights)[0]
        item = next(readers[i], None)
        if item is None:
            return
        yield sources[i], *item


def _renamed(rows: RawRows, columns: dict[str, str]) -> RawRows:
    """Rows with the user's column names (`columns`: rayalign's name -> theirs) replaced by rayalign's."""
    theirs = {column: ours for ours, column in columns.items()}
    for number, raw in rows:
        if isinstance(raw, dict):
            raw = {theirs.get(key, key): value for key, value in raw.items() if key not in columns or key in theirs}
        yield number, raw


def their_field(error: DataError, columns: dict[str, str]) -> DataError:
    """`error` naming the user's column (`data.columns`) where it names one of rayalign's fields mapped from it."""
    ours = (error.field or "").split("[")[0].split(".")[0]
    if ours in columns:
        DataError.__init__(error, error.source, error.row, f"{columns[ours]} (data.columns: {ours})", error.problem)
    return error


def is_glob(path: str) -> bool:
    """Whether `path` is a pattern of data files (`data/*.jsonl`) rather than a file, a directory or a name."""
    return any(c in path for c in "*?[") and not _local(path).exists()


def matching_files(pattern: str) -> list[str]:
    """The data files `pattern` matches, sorted; one line when there are none."""
    import glob

    files = sorted(p for p in glob.glob(str(_local(pattern))) if Path(p).is_file())
    if not files:
        raise DataError(pattern, None, None, "no file matches this pattern; check data.path")
    return files


def check_exists(path: str) -> None:
    """A DataError when `path` names a local file or directory that is not there (a data file's name, or a path
    starting with . / ~) or is a pattern that matches no file; a hub dataset name passes."""
    if _local(path).is_file():
        return
    if is_glob(path):
        matching_files(path)
        return
    if file_kind(path) is not None:
        raise DataError(path, None, None, "no such file; check data.path")
    if path.startswith((".", "/", "~")) and not _local(path).is_dir():
        raise DataError(path, None, None, "no such file or directory; check data.path")


def _local(path: str) -> Path:
    return Path(path).expanduser()


def _iter_file(path: str) -> RawRows:
    kind = file_kind(path)
    if kind is None:
        raise DataError(path, None, None, f"unsupported file type; give data.path as {_SUPPORTED}")
    readers = {".jsonl": _iter_jsonl, ".json": _iter_json, ".parquet": _iter_parquet}
    return _fail_as_data_error(path, readers[kind](path))


def _fail_as_data_error(path: str, rows: RawRows) -> RawRows:
    """Turn a broken gzip stream or an unreadable file met mid-way into one DataError line."""
    try:
        yield from rows
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(path, None, None, f"could not read the file: {_first_line(error)}") from None


def _open_bytes(path: str):
    return gzip.open(_local(path), "rb") if path.lower().endswith(".gz") else open(_local(path), "rb")


def _iter_jsonl(path: str) -> RawRows:
    """Decode each line on its own, so one bad line is one bad row at its own line number."""
    with _open_bytes(path) as stream:
        for number, raw in enumerate(stream, start=1):
            if raw.strip():
                yield number, _parse_jsonl_line(path, number, raw)


def _parse_jsonl_line(path: str, number: int, raw: bytes) -> "dict | DataError":
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        return BadRow(UNDECODABLE_TEXT, path, number, _field_with_bad_bytes(raw),
                      f"undecodable text (not UTF-8 at byte {error.start} of the line); "
                      "re-save the file as UTF-8")
    try:
        row = json.loads(text)
    except json.JSONDecodeError as error:
        return BadRow(INVALID_JSON, path, number, None,
                      f"not valid JSON ({error.msg} at column {error.colno}); fix the line")
    return _as_object(path, number, row)


def _field_with_bad_bytes(raw: bytes) -> str | None:
    """Which top-level field holds the undecodable bytes, so the message can point at it.

    Bad bytes decode to lone surrogates under 'surrogateescape'; JSON parses around them.
    """
    try:
        row = json.loads(raw.decode("utf-8", errors="surrogateescape"))
    except json.JSONDecodeError:
        return None
    if not isinstance(row, dict):
        return None
    fields = (key for key, value in row.items()
              if _has_surrogate(json.dumps(value, ensure_ascii=False)) and not _has_surrogate(key))
    return next(fields, None)


def _has_surrogate(text: str) -> bool:
    return any("\udc80" <= char <= "\udcff" for char in text)


def _as_object(path: str, number: int, row) -> "dict | DataError":
    if isinstance(row, dict):
        return row
    return BadRow(INVALID_JSON, path, number, None,
                  f"the row is a JSON {type(row).__name__}, not an object; make it an object "
                  "with 'chosen' and 'rejected' fields")


def _iter_json(path: str) -> RawRows:
    """A .json file holds one top-level list of row objects."""
    with _open_bytes(path) as stream:
        data = stream.read()
    try:
        rows = json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as error:
        raise DataError(path, None, None, f"undecodable text (not UTF-8 at byte {error.start}); "
                        "re-save the file as UTF-8") from None
    except json.JSONDecodeError as error:
        raise DataError(path, None, None, f"not valid JSON ({error.msg} at line {error.lineno}, "
                        f"column {error.colno}); fix the file") from None
    if not isinstance(rows, list):
        raise DataError(path, None, None, f"the file holds a JSON {type(rows).__name__}; a .json "
                        "data file must be a list of row objects (or use .jsonl)")
    for number, row in enumerate(rows, start=1):
        yield number, _as_object(path, number, row)


def _iter_parquet(path: str) -> RawRows:
    import pyarrow as pa
    import pyarrow.parquet as pq

    source = str(_local(path))
    if path.lower().endswith(".gz"):  # Parquet needs random access: unpack into memory
        with _open_bytes(path) as stream:
            source = pa.BufferReader(stream.read())
    try:
        table = pq.ParquetFile(source)
    except (pa.ArrowException, OSError) as error:
        raise DataError(path, None, None,
                        f"not a readable Parquet file ({_first_line(error)}); check data.path") from None
    number = 0
    for batch in table.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            number += 1
            yield number, row


def _iter_dataset(path: str, split: str, name: str | None = None, data_dir: str | None = None,
                  streaming: bool = False) -> RawRows:
    """A local dataset directory or a hub name, through `datasets.load_dataset` (`streaming`: rows read as they
    are taken), or a directory `save_to_disk` wrote, through `datasets.load_from_disk` (memory-mapped: rows are read
    as they are taken too)."""
    try:
        import datasets

        target = str(_local(path)) if _local(path).is_dir() else path
        if any((_local(path) / marker).is_file() for marker in ("dataset_dict.json", "state.json")):
            dataset = datasets.load_from_disk(target)
            dataset = dataset[split] if isinstance(dataset, datasets.DatasetDict) else dataset
        else:
            dataset = datasets.load_dataset(target, name, data_dir=data_dir, split=split, streaming=streaming)
    except Exception as error:  # datasets raises many types; the user needs one line, not a traceback
        raise DataError(path, None, None, f"could not load dataset '{path}' (split '{split}'): "
                        f"{_first_line(error)}; check data.path, data.split, data.name and data.data_dir") from None
    return _dataset_rows(path, dataset)


def _dataset_rows(path: str, dataset) -> RawRows:
    try:
        for number, row in enumerate(dataset, start=1):
            yield number, dict(row)
    except Exception as error:  # noqa: BLE001 - a streamed file that breaks mid-way: one line, not a traceback
        raise DataError(path, None, None, f"could not read the dataset: {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0].rstrip(".") if text else type(error).__name__
