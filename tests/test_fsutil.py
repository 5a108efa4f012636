"""fsync_dir: strict callers see the error, best-effort callers do not."""

from __future__ import annotations

import pytest

from edgerec.fsutil import fsync_dir


def test_fsync_dir_syncs_an_existing_directory(tmp_path):
    (tmp_path / "new").write_bytes(b"x")
    fsync_dir(tmp_path, strict=True)
    fsync_dir(str(tmp_path), strict=False)


def test_strict_fsync_dir_raises_and_best_effort_ignores_a_missing_directory(tmp_path):
    missing = tmp_path / "gone"
    with pytest.raises(FileNotFoundError):
        fsync_dir(missing, strict=True)
    fsync_dir(missing, strict=False)


def test_strict_fsync_dir_refuses_a_file(tmp_path):
    plain = tmp_path / "file"
    plain.write_bytes(b"x")
    with pytest.raises(NotADirectoryError):
        fsync_dir(plain, strict=True)
    fsync_dir(plain, strict=False)
