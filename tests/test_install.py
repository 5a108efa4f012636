"""scripts/install and scripts/uninstall into a throwaway root (DESTDIR): a real virtualenv with a real,
non-editable pip install of edgerec; idempotent; configuration and recordings survive until --purge.

pip needs a package index (or a wheelhouse: set EDGEREC_TEST_WHEELHOUSE to a directory holding wheels of
edgerec's dependencies, of its offload extra (minio) and of setuptools, for offline runs). Without either,
the test is skipped.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / "scripts" / "install"
UNINSTALL = REPO / "scripts" / "uninstall"
EXAMPLE_CONFIG = REPO / "config" / "edgerec.example.yaml"

pytestmark = pytest.mark.slow


def pip_args() -> str:
    wheelhouse = os.environ.get("EDGEREC_TEST_WHEELHOUSE")
    return f"--no-index --find-links {wheelhouse}" if wheelhouse else ""


@pytest.fixture(scope="module")
def index_reachable(tmp_path_factory) -> None:
    """Building edgerec needs setuptools >= 77 from the index (or the wheelhouse)."""
    dest = tmp_path_factory.mktemp("probe")
    probe = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--disable-pip-version-check", "--no-deps", "-q",
         *pip_args().split(), "-d", str(dest), "setuptools>=77"],
        capture_output=True, text=True, timeout=120,
    )
    if probe.returncode != 0:
        last_line = (probe.stderr.strip().splitlines() or [""])[-1]
        pytest.skip(
            f"no package index reachable for pip (set EDGEREC_TEST_WHEELHOUSE for offline runs): {last_line}"
        )


def run(script: Path, root: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "DESTDIR": str(root), "PYTHON": sys.executable, "EDGEREC_PIP_ARGS": pip_args()}
    env.pop("PYTHONPATH", None)
    result = subprocess.run([str(script), *args], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{script.name} failed:\n{result.stdout}\n{result.stderr}"
    return result


def test_install_is_idempotent_and_uninstall_keeps_data_until_purge(tmp_path, index_reachable):
    root = tmp_path / "root"
    venv = root / "opt/edgerec/venv"
    config = root / "etc/edgerec/edgerec.yaml"
    unit = root / "etc/systemd/system/edgerec.service"
    wants = root / "etc/systemd/system/multi-user.target.wants/edgerec.service"
    build_dir_existed = (REPO / "build").exists()

    first = run(INSTALL, root)
    assert "skipped (DESTDIR): useradd" in first.stderr  # nothing done to this machine's users
    assert "Next steps" in first.stderr

    # A real, non-editable install whose entry point works.
    edgerec = str(venv / "bin/edgerec")
    help_out = subprocess.run([edgerec, "--help"], capture_output=True, text=True, timeout=60)
    assert help_out.returncode == 0 and "usage: edgerec" in help_out.stdout
    where = subprocess.run(
        [str(venv / "bin/python"), "-c", "import edgerec, av, cryptography; print(edgerec.__file__)"],
        capture_output=True, text=True, timeout=60, cwd=tmp_path,
    )
    assert where.returncode == 0, where.stderr
    assert Path(where.stdout.strip()).is_relative_to(venv / "lib")
    assert not imports(venv, "minio", tmp_path)  # the S3 client only when asked for (--with-offload)
    assert not (REPO / "build").exists() or build_dir_existed  # the checkout is left alone

    assert config.read_bytes() == EXAMPLE_CONFIG.read_bytes()
    assert (config.stat().st_mode & 0o777) == 0o640
    # The service's own user: the config root:edgerec 0640 (edgerec refuses one others can write), the
    # data directory edgerec's alone.
    assert "skipped (DESTDIR): useradd --system --gid edgerec" in first.stderr
    assert "skipped (DESTDIR): usermod --append --groups video edgerec" in first.stderr
    assert "skipped (DESTDIR): chown root:edgerec /etc/edgerec/edgerec.yaml" in first.stderr
    assert "skipped (DESTDIR): chown root:edgerec /etc/edgerec" in first.stderr
    assert "skipped (DESTDIR): chown edgerec:edgerec /var/lib/edgerec" in first.stderr
    assert (config.parent.stat().st_mode & 0o777) == 0o750
    assert ((root / "var/lib/edgerec").stat().st_mode & 0o777) == 0o700
    from edgerec.filetrust import check_trusted

    check_trusted([config])  # the installed config passes the rule
    assert unit.read_bytes() == (REPO / "systemd/edgerec.service").read_bytes()
    offload_unit = root / "etc/systemd/system/edgerec-offload.service"
    assert offload_unit.read_bytes() == (REPO / "systemd/edgerec-offload.service").read_bytes()
    assert wants.is_symlink() and os.readlink(wants) == "/etc/systemd/system/edgerec.service"
    assert os.readlink(root / "usr/local/bin/edgerec") == "/opt/edgerec/venv/bin/edgerec"
    assert (root / "var/lib/edgerec").is_dir()
    assert (root / "var/lib/edgerec").stat().st_mode & 0o777 == 0o700

    # Second run: an upgrade in place, now with the offload S3 client. The operator's configuration is
    # never overwritten.
    config.write_text(config.read_text() + "\n# site-specific edit\n")
    second = run(INSTALL, root, "--with-offload")
    assert "keeping existing /etc/edgerec/edgerec.yaml" in second.stderr
    assert "installing edgerec and the offload S3 client" in second.stderr
    assert config.read_text().endswith("# site-specific edit\n")
    assert "Successfully uninstalled edgerec" in (root / "opt/edgerec/pip.log").read_text()  # new code in
    assert subprocess.run([edgerec, "--help"], capture_output=True, timeout=60).returncode == 0
    assert imports(venv, "minio", tmp_path)
    offload_help = subprocess.run([edgerec, "offload", "--help"], capture_output=True, text=True, timeout=60)
    assert offload_help.returncode == 0 and "--once" in offload_help.stdout
    # Third run, without the option: the client stays and is upgraded with edgerec.
    third = run(INSTALL, root)
    assert "the offload S3 client is installed: upgrading it too" in third.stderr
    assert imports(venv, "minio", tmp_path)

    # Uninstall: program and unit go, recordings and configuration stay. Twice is fine.
    footage = root / "var/lib/edgerec/segments/gate/0001.seg"
    footage.parent.mkdir(parents=True)
    footage.write_bytes(b"encrypted footage")
    for _ in range(2):
        out = run(UNINSTALL, root)
        assert not (root / "opt/edgerec").exists()
        assert not unit.exists() and not wants.is_symlink()
        assert not offload_unit.exists()
        assert not (root / "usr/local/bin/edgerec").is_symlink()
        assert footage.read_bytes() == b"encrypted footage"
        assert config.read_text().endswith("# site-specific edit\n")
        assert "kept recordings" in out.stderr

    # --purge: everything goes.
    run(UNINSTALL, root, "--purge")
    assert not (root / "var/lib/edgerec").exists()
    assert not (root / "etc/edgerec").exists()
    run(UNINSTALL, root, "--purge")


def imports(venv: Path, module: str, cwd: Path) -> bool:
    return subprocess.run([str(venv / "bin/python"), "-c", f"import {module}"], capture_output=True,
                          timeout=60, cwd=cwd).returncode == 0


def test_install_rejects_unknown_arguments_before_changing_anything(tmp_path):
    result = subprocess.run(
        [str(INSTALL), "--with-ofload"], env={**os.environ, "DESTDIR": str(tmp_path / "root")},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and "unknown argument --with-ofload" in result.stderr
    assert "--with-offload" in result.stderr
    assert not (tmp_path / "root").exists()


def test_uninstall_rejects_unknown_arguments(tmp_path):
    result = subprocess.run(
        [str(UNINSTALL), "--everything"], env={**os.environ, "DESTDIR": str(tmp_path)},
        capture_output=True, text=True, timeout=60,
    )
    assert result.returncode == 2 and "unknown argument --everything" in result.stderr
