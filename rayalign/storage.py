"""Where a run's directory lives: a local path, or a URI (s3://, gs://, abfs://, hdfs://, ...) that pyarrow's
filesystems understand, the filesystems Ray Train's `storage_path` uses.

With a URI, every process works in a staging directory on its own node's disk (under $RAYALIGN_CACHE/staging,
at the URI's path) and the URI is the truth: the driver pulls the run directory before it starts (a resumed run
finds its metrics, data and state), training workers hand their checkpoints to Ray Train (each rank uploads its
own shards to the URI), rank 0 pushes the metrics and the training state it wrote, and the driver pulls them
after training and pushes the summary and reports. No process reads a file another node wrote except through the
URI. A model named by a URI (a checkpoint of such a run) is downloaded once per node into the cache.
"""

from __future__ import annotations

from pathlib import Path

from rayalign.errors import RayAlignError


def is_uri(path: str | Path) -> bool:
    return "://" in str(path)


def _filesystem(uri: str, what: str):
    """(pyarrow filesystem, path inside it) of `uri`; a URI pyarrow cannot open is a one-line error about `what`."""
    import pyarrow.fs as pafs

    try:
        fs, path = pafs.FileSystem.from_uri(uri)
        bucket = path.split("/", 1)[0]  # object stores: the bucket (reaching it checks the credentials too)
        found = fs.get_file_info(bucket if not path.startswith("/") else path)
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise RayAlignError(f"{what}: {str(error).splitlines()[0]} (a URI pyarrow's filesystems open, "
                            "e.g. s3://bucket/runs, with the store's credentials in the environment)") from None
    if not path.startswith("/") and found.type == pafs.FileType.NotFound:
        raise RayAlignError(f"{what}: the bucket '{bucket}' does not exist; create it or fix the URI")
    return fs, path


def local_run_dir(output_dir: str, name: str) -> Path:
    """Where this process reads and writes the run directory `name`: under a local `output_dir`, or this node's
    staging copy of it when `output_dir` is a URI. The staging tree mirrors the URI's path, so a run nested in
    another (sDPO's stages, D2PO's rounds) stages inside its pipeline's staging copy, as it lives inside it."""
    if not is_uri(output_dir):
        return Path(output_dir) / name
    from urllib.parse import urlsplit

    from rayalign.files import cache_root

    uri = urlsplit(f"{output_dir.rstrip('/')}/{name}")
    return cache_root() / "staging" / uri.scheme / uri.netloc / uri.path.lstrip("/")


def _outside_checkpoints(relative: str) -> bool:
    """Whether a run directory's file is not in a `checkpoints` directory (its own or a nested run's): Ray Train's
    workers upload those themselves, and a pipeline's copy must not carry its stages' checkpoints down or back."""
    return "checkpoints" not in relative.split("/")[:-1]


def _copy_down(fs, path: str, dest: Path, keep) -> None:
    """Copy every file under `path` in `fs` whose relative path `keep` accepts to the same place under `dest`."""
    import pyarrow.fs as pafs

    for info in fs.get_file_info(pafs.FileSelector(path, recursive=True, allow_not_found=True)):
        relative = info.path[len(path) + 1:]
        if info.type == pafs.FileType.File and keep(relative):
            (dest / relative).parent.mkdir(parents=True, exist_ok=True)
            pafs.copy_files(info.path, str(dest / relative), source_filesystem=fs,
                            destination_filesystem=pafs.LocalFileSystem())


class RunStorage:
    """A run directory: `local` is where this process reads and writes it; `uri` (None for a local output_dir)
    where it lives. Picklable: Ray Train's workers get it with the filesystem the driver opened."""

    def __init__(self, output_dir: str, name: str):
        self.uri = f"{output_dir.rstrip('/')}/{name}" if is_uri(output_dir) else None
        self.fs = self.path = None
        if self.uri:
            self.fs, self.path = _filesystem(self.uri, f"output_dir {output_dir}")
        self.local = local_run_dir(output_dir, name)

    @property
    def root(self) -> str:
        """The run directory as the `output_dir` of runs nested in it (sDPO's stages, D2PO's rounds): its URI, so
        their workers write there too, or its local path."""
        return self.uri or str(self.local.resolve())

    def checkpoint_root(self) -> tuple[str, object]:
        """(storage_path, storage_filesystem) for Ray Train: its runs land in <run>/checkpoints."""
        return (self.path, self.fs) if self.uri else (str(self.local.resolve()), None)

    def checkpoints(self) -> list[str]:
        """The run's checkpoint directories (URIs when remote), oldest first."""
        if not self.uri:
            return [str(p) for p in sorted((self.local.resolve() / "checkpoints").glob("step_*"))]
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(f"{self.path}/checkpoints", allow_not_found=True))
        names = sorted(i.base_name for i in infos if i.base_name.startswith("step_")
                       and i.type == pafs.FileType.Directory)
        return [f"{self.uri}/checkpoints/{n}" for n in names]

    def pull(self, checkpoints: bool = False, fresh: bool = False) -> None:
        """Copy the run directory from the URI into `local` (checkpoints too when asked: then the local ones are
        replaced, as a stale staging copy must never be resumed from). `fresh` (a run's start) first deletes this
        node's staging copy: the URI is the truth, and a copy left by an earlier attempt may be older than it, or
        of a run since deleted from it."""
        if not self.uri:
            return
        import shutil

        if fresh:
            shutil.rmtree(self.local, ignore_errors=True)
        if checkpoints:
            shutil.rmtree(self.local / "checkpoints", ignore_errors=True)
        _copy_down(self.fs, self.path, self.local, lambda relative: _outside_checkpoints(relative)
                   or (checkpoints and relative.startswith("checkpoints/")))

    def push(self, relative: str = "") -> None:
        """Copy `local`/`relative` (a file or directory, by default the whole run directory) to the URI, but for
        the checkpoint directories inside it (each pushed as it is written)."""
        if not self.uri:
            return
        import pyarrow.fs as pafs

        source = self.local / relative
        files = [source] if source.is_file() else sorted(f for f in source.rglob("*") if f.is_file()
                                                          and _outside_checkpoints(f.relative_to(source).as_posix()))
        for file in files:
            pafs.copy_files(str(file), f"{self.path}/{file.relative_to(self.local).as_posix()}",
                            source_filesystem=pafs.LocalFileSystem(), destination_filesystem=self.fs)

    def remove(self, relative: str) -> None:
        """Delete `relative` (a directory) from the URI, if it is there."""
        import pyarrow.fs as pafs

        if self.uri and self.fs.get_file_info(f"{self.path}/{relative}").type != pafs.FileType.NotFound:
            self.fs.delete_dir(f"{self.path}/{relative}")

    def remove_checkpoint(self, checkpoint: str) -> None:
        """Delete one of `checkpoints()`: from the URI and from this node's staging copy."""
        import shutil

        name = checkpoint.rstrip("/").rsplit("/", 1)[-1]
        self.remove(f"checkpoints/{name}")
        shutil.rmtree(self.local / "checkpoints" / name, ignore_errors=True)


def download_model(uri: str, with_state: bool = False) -> str:
    """A local copy of the model directory at `uri` (a checkpoint: written once, so the URI is its key); with
    `with_state` its DCP shards and trainer state too (what `rayalign export` reads)."""
    from rayalign.files import atomic_write_dir, cache_key, cache_root

    local = cache_root() / "remote_models" / cache_key(f"{uri}:{with_state}")
    if not local.is_dir():
        fs, path = _filesystem(uri, f"model {uri}")
        atomic_write_dir(local, lambda tmp: _copy_down(
            fs, path, tmp, lambda relative: with_state or not relative.startswith(("dcp/", "trainer/"))))
    return str(local)
