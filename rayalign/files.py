"""Files: the cache root and cache keys, writing a file or directory so that a reader never sees half of
it, and JSON-lines logs read and cut back.

Every file that a later step or a rerun takes as complete once it exists (a parquet shard, a
cache entry) is written here: into a temp file of its own beside the target (so two writers
never share one), then renamed over it. A crash leaves the target absent or whole.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path


def cache_root() -> Path:
    """Where rayalign caches what it can recompute (models, reference log-probs, samples, edits):
    ``$RAYALIGN_CACHE``, default ``~/.cache/rayalign``."""
    return Path(os.environ.get("RAYALIGN_CACHE", Path.home() / ".cache" / "rayalign"))


def cache_key(payload) -> str:
    """24 hex digits of sha256 over `payload` as canonical JSON: the name of a cache entry. Everything that
    changes the cached value (weights, ids, settings, numerics) must be in the payload."""
    text = payload if isinstance(payload, str) else json.dumps(payload, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call `write(tmp_path)`, then rename the temp file to `path`; the last writer wins."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(Path(tmp))
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes the file private; give it the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_dir(dest: Path, build: Callable[[Path], None]) -> Path:
    """Build a directory in a temp dir beside `dest`, then rename it into place.

    Several Ray workers may provision at once: the first rename wins, the others discard theirs.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{dest.name}-"))
    try:
        build(tmp)
        os.rename(tmp, dest)
    except OSError:
        if not (dest / "config.json").is_file():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return dest


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def read_jsonl(path: str | Path) -> list[dict]:
    """The rows of a JSON-lines log rayalign wrote (metrics, gold calls); none when it does not exist."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def truncate_jsonl(path: str | Path, key: str, last: int) -> None:
    """Keep the rows whose `key` (a step, a round) is at most `last`: a resumed run redoes the rest and logs
    them again. Rewritten atomically, so a crash here loses no finished row."""
    path = Path(path)
    if path.is_file():
        kept = [row for row in read_jsonl(path) if row[key] <= last]
        atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in kept))
