"""A real small filesystem for disk-full tests: ``small_fs`` mounts size-limited tmpfs file systems (root
only), and ``fill_to``/``fill_up`` fill them with real blocks."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

MIB = 1024 * 1024


NEEDS_ROOT = "needs root to mount a tmpfs (CAP_SYS_ADMIN)"
# Full-disk tests fill a real small filesystem: skipped up front, with the reason, when not run as root.
needs_root_for_tmpfs = pytest.mark.skipif(os.geteuid() != 0, reason=NEEDS_ROOT)


def mount_tmpfs(path: Path, size: str) -> str | None:
    """Mount a tmpfs of ``size`` at ``path``; None, or why it cannot be done here."""
    if os.geteuid() != 0:
        return NEEDS_ROOT
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
                          capture_output=True, text=True, timeout=30)
    return None if proc.returncode == 0 else f"mount -t tmpfs failed: {proc.stderr.strip()}"


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Callable[[str], Path]]:
    """``small_fs("4m")`` mounts a tmpfs of that size and returns its directory; all are unmounted after
    the test."""
    mounted: list[Path] = []

    def mount(size: str) -> Path:
        path = tmp_path / f"fs{len(mounted)}"
        path.mkdir()
        why = mount_tmpfs(path, size)
        if why is not None:
            pytest.skip(f"{why}; disk pressure is tested with an injected free-space reading in "
                        "tests/test_retention.py instead")
        mounted.append(path)
        return path

    try:
        yield mount
    finally:
        for path in reversed(mounted):
            if subprocess.run(["umount", str(path)], capture_output=True, timeout=30).returncode != 0:
                subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def fill_to(path: Path, filler: Path, free_left: int) -> None:
    """Grow ``filler`` (with real blocks) until ``path`` has about ``free_left`` bytes free."""
    grow = free_bytes(path) - free_left
    assert grow > 0, "already below the wanted free space"
    size = filler.stat().st_size if filler.exists() else 0
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        os.posix_fallocate(fd, size, grow)
    finally:
        os.close(fd)


def fill_up(filler: Path) -> None:
    """Write ``filler`` until the filesystem says ENOSPC (in smaller and smaller pieces, so nothing is
    left)."""
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for piece in (MIB, 64 * 1024, 4096, 512):
            block = bytes(piece)
            with contextlib.suppress(OSError):
                while True:
                    os.write(fd, block)
        with pytest.raises(OSError) as exc:
            os.write(fd, b"x" * 4096)
        assert exc.value.errno == errno.ENOSPC
    finally:
        os.close(fd)


def read_status(base: Path) -> dict[str, Any]:
    """The status file a test daemon writes beside its config (``{}`` while there is none yet)."""
    try:
        return json.loads((base / "status.json").read_text())
    except (OSError, ValueError):
        return {}


def sealed(data_dir: Path, camera: str = "gate") -> list[Path]:
    """A camera's sealed segment files, oldest first."""
    return sorted(data_dir.glob(f"{camera}/*/*.seg"), key=lambda p: p.name)
