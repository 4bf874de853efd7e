"""rayalign.files: a file written atomically is whole or absent, with the usual permissions."""

from __future__ import annotations

import os
import stat

import pytest

from rayalign.files import atomic_write, atomic_write_text


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path):
    target = tmp_path / "sub" / "entry.json"
    atomic_write_text(target, "first")

    def half_then_crash(tmp):
        tmp.write_text("half of the second")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, half_then_crash)
    assert target.read_text() == "first"
    assert [p.name for p in target.parent.iterdir()] == ["entry.json"]
    atomic_write_text(target, "second")
    assert target.read_text() == "second"


def test_written_files_get_the_mode_the_umask_gives(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "shared.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
