"""Who may change what the daemon runs (filetrust.py), and the modes of what edgerec creates (fsutil.py).

The attack: a local user who can write the config file (0666), or a directory above it, adds an
``exec:`` camera; the daemon, reloading by itself, would run it with the daemon's rights. The rule
refuses the file at start-up (exit 2) and on reload (the old config keeps running, the refusal is logged
and audited), and the program never runs.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import time
from pathlib import Path

import pytest

from edgerec import fsutil
from edgerec.config import load_config
from edgerec.errors import EdgerecError, UntrustedFileError
from edgerec.filetrust import FileStat, check_trusted, untrusted_reason
from edgerec.timefmt import rfc3339
from tests.helpers.daemon import Daemon, OfficerKey, run_cli, segment_count, wait_for, write_config

SERVICE_UID = 990
OTHER_UID = 1234
FILE = stat.S_IFREG
DIR = stat.S_IFDIR


# ----- the rule, from stat results --------------------------------------------------------------------------
@pytest.mark.parametrize("uid", [0, SERVICE_UID])
@pytest.mark.parametrize("mode", [FILE | 0o640, FILE | 0o600, FILE | 0o644, DIR | 0o755, DIR | 0o750,
                                  DIR | 0o1777])
def test_files_of_root_or_the_service_user_not_writable_by_others_are_trusted(uid: int, mode: int) -> None:
    assert untrusted_reason(FileStat("/etc/edgerec/edgerec.yaml", uid, mode), SERVICE_UID) is None


@pytest.mark.parametrize(("mode", "who"), [(FILE | 0o666, "group and others"), (FILE | 0o620, "its group"),
                                           (FILE | 0o602, "others"), (DIR | 0o777, "group and others"),
                                           (DIR | 0o775, "its group"), (DIR | 0o1775, "its group")])
def test_a_file_or_directory_writable_by_group_or_others_is_refused_naming_the_fix(mode: int,
                                                                                  who: str) -> None:
    reason = untrusted_reason(FileStat("/etc/edgerec/edgerec.yaml", 0, mode), SERVICE_UID)
    assert reason is not None
    assert reason.startswith("/etc/edgerec/edgerec.yaml: refusing to use a ")
    assert f"writable by {who}" in reason
    assert reason.endswith("fix: chmod go-w /etc/edgerec/edgerec.yaml")


def test_a_file_owned_by_another_user_is_refused_even_when_only_its_owner_may_write_it() -> None:
    reason = untrusted_reason(FileStat("/srv/cfg.yaml", OTHER_UID, FILE | 0o600, "mallory"), SERVICE_UID)
    assert reason is not None and "owned by mallory" in reason and "fix: chown root /srv/cfg.yaml" in reason
    assert "uid 1234" in (untrusted_reason(FileStat("/x", OTHER_UID, FILE | 0o600), SERVICE_UID) or "")


def test_a_sticky_world_writable_directory_of_root_is_trusted_but_not_one_of_another_user() -> None:
    assert untrusted_reason(FileStat("/tmp", 0, DIR | 0o1777), SERVICE_UID) is None
    assert untrusted_reason(FileStat("/tmp/x", OTHER_UID, DIR | 0o1777), SERVICE_UID) is not None


def test_check_trusted_checks_every_directory_above_and_skips_files_not_there_yet(tmp_path: Path) -> None:
    parent = tmp_path / "etc"
    parent.mkdir()
    config = parent / "edgerec.yaml"
    config.write_text("x")
    config.chmod(0o640)
    check_trusted([config, parent / "missing.pass"])
    parent.chmod(0o777)
    with pytest.raises(UntrustedFileError) as caught:
        check_trusted([parent / "missing.pass"])
    assert caught.value.problems == [f"{parent}: refusing to use a directory writable by group and others "
                                     f"(mode 0777: another user could change what edgerec runs); fix: chmod "
                                     f"go-w {parent}"]
    assert caught.value.exit_code == 2


def test_a_symbolic_link_is_judged_by_the_file_it_points_to_too(tmp_path: Path) -> None:
    target_dir = tmp_path / "open"
    target_dir.mkdir(mode=0o777)
    target_dir.chmod(0o777)
    (target_dir / "real.yaml").write_text("x")
    link = tmp_path / "edgerec.yaml"
    link.symlink_to(target_dir / "real.yaml")
    with pytest.raises(UntrustedFileError, match="open: refusing"):
        check_trusted([link])


# ----- through load_config: the config, password files and key files ----------------------------------------
def test_load_config_refuses_a_password_file_writable_by_others(tmp_path: Path, officer: OfficerKey) -> None:
    secret = tmp_path / "cam.pass"
    secret.write_text("pw\n")
    secret.chmod(0o646)
    config = write_config(tmp_path / "edgerec.yaml", officer=officer, data_dir=tmp_path / "data",
                          cameras=[{"name": "gate", "url": "rtsp://10.0.0.2/s", "username": "admin",
                                    "password_file": str(secret)}])
    with pytest.raises(UntrustedFileError, match=f"{secret}: refusing .* fix: chmod go-w {secret}"):
        load_config(config)
    secret.chmod(0o600)
    os.chown(secret, OTHER_UID, -1)
    with pytest.raises(UntrustedFileError, match=f"{secret}: refusing to use a file owned by"):
        load_config(config)
    os.chown(secret, os.geteuid(), -1)
    assert load_config(config).cameras[0].password_file == secret


def test_load_config_refuses_an_mqtt_key_file_of_another_user(tmp_path: Path, officer: OfficerKey) -> None:
    key = tmp_path / "client.key"
    key.write_text("-----BEGIN PRIVATE KEY-----\n")
    key.chmod(0o600)
    os.chown(key, OTHER_UID, -1)
    config = write_config(tmp_path / "edgerec.yaml", officer=officer, data_dir=tmp_path / "data",
                          cameras=[{"name": "gate", "url": "testsrc"}],
                          mqtt={"enabled": True, "tls": {"cert_file": str(key), "key_file": str(key)}})
    with pytest.raises(UntrustedFileError, match="client.key: refusing to use a file owned by"):
        load_config(config)


# ----- through the real CLI and daemon ----------------------------------------------------------------------
def exec_camera(marker: Path) -> dict[str, object]:
    """A camera whose program would leave ``marker`` behind if it ever ran."""
    return {"name": "evil", "url": f"exec:touch {marker}"}


def test_a_world_writable_config_with_an_added_exec_camera_is_refused_at_start(
        tmp_path: Path, officer: OfficerKey) -> None:
    marker = tmp_path / "ran"
    config = write_config(tmp_path / "edgerec.yaml", officer=officer, data_dir=tmp_path / "data",
                          cameras=[exec_camera(marker)])
    config.chmod(0o666)
    result = run_cli("run", "-c", str(config), timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"edgerec: {config}: refusing to use a file writable by group and "
                                      f"others (mode 0666: another user could change what edgerec runs); "
                                      f"fix: chmod go-w {config}")
    assert not marker.exists()
    assert not (tmp_path / "data").exists()  # refused before anything was created


def test_a_config_made_world_writable_while_running_is_refused_on_reload_and_the_old_one_keeps_recording(
        tmp_path: Path, officer: OfficerKey) -> None:
    data_dir = tmp_path / "data"
    marker = tmp_path / "ran"
    config = write_config(tmp_path / "edgerec.yaml", officer=officer, data_dir=data_dir, segment_seconds=1,
                          cameras=[{"name": "gate", "url": "testsrc:size=160x120:rate=10"}])
    with Daemon(config, tmp_path / "daemon.log") as daemon:
        wait_for(lambda: segment_count(data_dir) >= 1, 30, "the first segment")
        # The attacker's edit: the file was left world-writable, and someone else adds a camera.
        config.chmod(0o666)
        write_config(config, officer=officer, data_dir=data_dir, segment_seconds=1,
                     cameras=[{"name": "gate", "url": "testsrc:size=160x120:rate=10"}, exec_camera(marker)])
        daemon.proc.send_signal(signal.SIGHUP)

        def refusal() -> dict[str, object] | None:
            log = data_dir / "audit.log"
            for line in (log.read_text().splitlines() if log.exists() else []):
                entry = json.loads(line)
                if entry["event"] == "config_refused":
                    return entry
            return None

        entry = wait_for(refusal, 30, "the refused reload in the audit log")
        assert entry["path"] == str(config)
        assert entry["problems"] == [f"{config}: refusing to use a file writable by group and others (mode "
                                     f"0666: another user could change what edgerec runs); fix: chmod go-w "
                                     f"{config}"]
        assert "config reload rejected" in daemon.log() and f"chmod go-w {config}" in daemon.log()
        before = segment_count(data_dir)
        wait_for(lambda: segment_count(data_dir) > before, 30, "the old config still recording")
        assert daemon.terminate() == 0
    assert not marker.exists()
    assert "camera=evil" not in daemon.log()


# ----- modes of what edgerec creates ------------------------------------------------------------------------
@pytest.mark.parametrize(("mode", "uid", "action"), [(0o700, 5, "ok"), (0o755, 5, "tighten"),
                                                    (0o777, 5, "tighten"), (0o710, 5, "tighten"),
                                                    (0o700, 6, "refuse"), (0o755, 0, "refuse")])
def test_private_dir_action_decides_from_mode_and_owner(mode: int, uid: int, action: str) -> None:
    assert fsutil.private_dir_action(DIR | mode, uid, 5) == action


def test_an_existing_data_dir_open_to_others_is_tightened_and_another_users_is_refused(
        tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir()
    loose.chmod(0o777)
    assert fsutil.ensure_private_dir(loose) == (f"data_dir {loose} had mode 0777: tightened to 0700 "
                                                "(footage metadata is private)")
    assert stat.S_IMODE(loose.stat().st_mode) == 0o700
    assert fsutil.ensure_private_dir(loose) is None
    foreign = tmp_path / "foreign"
    foreign.mkdir(mode=0o755)
    os.chown(foreign, OTHER_UID, -1)
    with pytest.raises(EdgerecError, match=f"data_dir {foreign}: owned by uid {OTHER_UID}, not by this"):
        fsutil.ensure_private_dir(foreign)
    assert stat.S_IMODE(foreign.stat().st_mode) == 0o755  # not ours: left alone


def test_create_private_makes_0600_despite_the_umask_and_tightens_an_existing_file(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        os.close(fsutil.create_private(tmp_path / "new"))
        os.close(fsutil.create_private(tmp_path / "pub", mode=fsutil.PUBLIC_FILE_MODE))
        loose = tmp_path / "loose"
        loose.write_text("x")
        loose.chmod(0o666)
        os.close(fsutil.create_private(loose, os.O_RDONLY))
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "new").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "pub").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "loose").stat().st_mode) == 0o600


def test_the_cli_creating_the_catalog_first_under_umask_022_makes_every_file_private(
        tmp_path: Path, officer: OfficerKey) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir(mode=0o755)
    data_dir.chmod(0o755)
    config = write_config(tmp_path / "edgerec.yaml", officer=officer, data_dir=data_dir,
                          cameras=[{"name": "gate", "url": "testsrc"}])
    old = os.umask(0o022)
    try:
        result = run_cli("incident", "open", "-c", str(config), "--id", "inc-1", "--camera", "gate",
                         "--from", rfc3339(time.time_ns() - 60 * 10**9), "--reason", "test", timeout=60)
    finally:
        os.umask(old)
    assert result.returncode == 0, result.stderr
    assert f"data_dir {data_dir} had mode 0755: tightened to 0700" in result.stderr
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700
    files = [p for p in data_dir.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"catalog.sqlite3", "audit.log"}
    assert {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in files} == {p.name: "0o600" for p in files}
