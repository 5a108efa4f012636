"""The security claims of docs/security.md, each shown by a test.

- The device holds no private key that decrypts footage, and nothing it writes (segments, catalog and
  its WAL, audit log, status file, logs) holds plaintext video, decoded frames or the officer's key.
- Key and state files are private to the service user (files 0600, directories 0700), whatever the
  umask it was started with.
- Segment metadata (camera, device, times) is readable without any key: authenticated, not secret.
- A forged incident command can only keep footage longer: for any incidents whatsoever, retention by
  age deletes a subset of what it deletes without them, and a close (forged or not) releases footage
  only after the grace period, counted from the daemon's clock, never the sender's.
- MQTT over TLS refuses a broker whose certificate the configured CA did not sign (no credentials are
  sent to an impostor). TLS with user/password and the documented ACL: ``tests/test_mqtt.py`` and
  ``tests/test_daemon_mqtt.py``; the systemd sandbox exposure score: ``tests/test_systemd_unit.py``.
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import av
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgerec import keys, segfile
from edgerec.catalog import IncidentRow, SegmentRow
from edgerec.config import CameraConfig, Config, MqttConfig, TlsConfig
from edgerec.incidents import parse_command
from edgerec.retention import DiskState, RetentionPolicy, plan_deletions
from tests.helpers.broker import Broker, make_test_ca, needs_mosquitto
from tests.helpers.daemon import REPO, OfficerKey, wait_for, write_config
from tests.helpers.media import make_h264_clip, plaintext_video_findings, scan_tree_for_plaintext

S = 1_000_000_000
DAY = 86_400 * S


# ----- what the device writes -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory, officer: OfficerKey) -> tuple[Path, Path, Path]:
    """A daemon run started with a permissive umask: (data dir, its log, the clip)."""
    tmp = tmp_path_factory.mktemp("security")
    clip = tmp / "clip.mp4"
    make_h264_clip(clip, seconds=4, fps=25, gop=25)
    data_dir = tmp / "data"
    cfg = write_config(tmp / "edgerec.yaml", officer=officer, data_dir=data_dir, segment_seconds=1,
                       cameras=[{"name": "hall", "url": str(clip), "realtime": False, "loop": False}])
    run = subprocess.run([sys.executable, "-m", "edgerec", "--log-level", "debug", "run", "-c", str(cfg),
                          "--exit-at-eof"], capture_output=True, timeout=120, cwd=REPO,
                         preexec_fn=lambda: os.umask(0o022))
    assert run.returncode == 0, run.stderr[-3000:]
    log = tmp / "daemon.log"
    log.write_bytes(run.stdout + run.stderr)
    return data_dir, log, clip


def all_files(data_dir: Path, log: Path) -> list[Path]:
    return [*sorted(p for p in data_dir.rglob("*") if p.is_file()), log]


def test_nothing_written_holds_plaintext_video(recorded: tuple[Path, Path, Path]) -> None:
    data_dir, log, _ = recorded
    names = {p.name for p in data_dir.rglob("*")}
    assert {"catalog.sqlite3", "device.key", "status.json"} <= names
    assert any(n.endswith(".seg") for n in names)
    assert scan_tree_for_plaintext(data_dir) == {}
    assert plaintext_video_findings(log.read_bytes()) == []


def _luma_rows(clip: Path, frames: int = 3) -> list[bytes]:
    """Distinctive rows of decoded luma from the first frames (what a leaked thumbnail would contain)."""
    rows = []
    with av.open(str(clip)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i >= frames:
                break
            plane = frame.reformat(format="gray").to_ndarray()
            for y in range(0, plane.shape[0], 8):
                row = bytes(plane[y, :64])
                if len(set(row)) >= 12:  # skip flat rows: they occur anywhere
                    rows.append(row)
    assert rows
    return rows


def test_no_decoded_frame_reaches_the_disk(recorded: tuple[Path, Path, Path]) -> None:
    data_dir, log, clip = recorded
    rows = _luma_rows(clip)
    for path in all_files(data_dir, log):
        data = path.read_bytes()
        leaked = [r for r in rows if r in data]
        assert not leaked, f"{path}: holds {len(leaked)} rows of decoded video"


def test_no_private_key_that_decrypts_is_on_the_device(recorded: tuple[Path, Path, Path],
                                                       officer: OfficerKey) -> None:
    data_dir, log, _ = recorded
    private = keys.load_private_key(officer.private_path)
    from cryptography.hazmat.primitives import serialization

    raw = private.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    secret_text = keys.format_private_key(private).encode()
    for path in all_files(data_dir, log):
        data = path.read_bytes()
        assert raw not in data and secret_text not in data, f"{path} holds the officer's private key"
        if path.suffix in (".key", ".pub") or path.name.endswith(".key"):
            # The only key file is the device's signing key, which cannot be loaded as a decryption key.
            with pytest.raises(Exception):  # noqa: B017 - any refusal will do
                keys.load_private_key(path)


def test_files_are_private_to_the_service_user_despite_a_permissive_umask(
        recorded: tuple[Path, Path, Path]) -> None:
    data_dir, _, _ = recorded
    assert stat.S_IMODE(data_dir.stat().st_mode) == 0o700  # so nothing inside is reachable by others
    assert stat.S_IMODE((data_dir / "device.key").stat().st_mode) == 0o600
    # Public by design: the device's public key, and the status file (group-readable for monitoring,
    # when it is placed outside the data directory).
    public = {"device.pub", "status.json"}
    loose = []
    for path in data_dir.rglob("*"):
        mode = stat.S_IMODE(path.lstat().st_mode)
        if mode & 0o077 and path.name not in public:
            loose.append(f"{path.relative_to(data_dir)} {mode:o}")
    assert not loose, f"readable by group or others: {loose}"


def test_segment_metadata_is_readable_without_any_key(recorded: tuple[Path, Path, Path]) -> None:
    """A documented limitation: the header is authenticated, not encrypted."""
    data_dir, _, _ = recorded
    seg = next(iter(sorted(data_dir.rglob("*.seg"))))
    header = segfile.read_header(seg)
    assert header.meta.camera == "hall" and header.meta.device_id == "testdev"
    assert header.meta.start_ns > 0 and header.meta.boot_id


# ----- forged incident commands ----------------------------------------------------------------------
NOW = 1_800_000_000 * S
POLICY = RetentionPolicy(default_days=28, min_free_pct=None, min_free_bytes=0, release_grace_ns=7 * DAY)
ROOMY_DISK = DiskState(total_bytes=10**12, free_bytes=10**12)


def _segments(starts: list[int]) -> list[SegmentRow]:
    """Segments recorded on a healthy clock: on the retention clock they ended when they say they did."""
    return [SegmentRow(i, "cam" if i % 2 else "door", i, f"x/{i}.seg", s, s + 60 * S, 1000, 1500, "00",
                       "sealed", True, "b", 0, rclock_end_ns=s + 60 * S) for i, s in enumerate(starts)]


TIMES = st.integers(NOW - 60 * DAY, NOW + DAY)


@st.composite
def forged_incidents(draw: st.DrawFn) -> list[IncidentRow]:
    out = []
    for i in range(draw(st.integers(0, 6))):
        frm = draw(TIMES)
        to = draw(st.none() | st.integers(frm, NOW + 2 * DAY))
        opened = draw(st.integers(NOW - 60 * DAY, NOW))
        closed = draw(st.none() | st.integers(opened, NOW))
        out.append(IncidentRow(f"F{i}", draw(st.sampled_from(["*", "cam", "door", "nope"])), frm, to, "",
                               "mallory", opened, closed, None, draw(st.integers(0, DAY)),
                               draw(st.integers(0, DAY))))
    return out


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(NOW - 60 * DAY, NOW), max_size=40), forged_incidents())
def test_incidents_never_make_retention_delete_anything_it_would_have_kept(
        starts: list[int], incidents: list[IncidentRow]) -> None:
    segments = _segments(starts)
    without = {d.segment_id for d in plan_deletions(segments, [], NOW, POLICY, ROOMY_DISK)}
    with_incidents = {d.segment_id for d in plan_deletions(segments, incidents, NOW, POLICY, ROOMY_DISK)}
    assert with_incidents <= without


def test_a_close_releases_footage_only_after_the_grace_period_of_the_daemons_clock() -> None:
    # Whatever the sender writes, a close carries no time: the service stamps it with its own clock.
    cmd = parse_command({"action": "close", "id": "INC-1", "by": "mallory"}, cameras=["cam"], now_ns=NOW)
    assert (cmd.from_ns, cmd.to_ns) == (None, None)
    with pytest.raises(Exception, match="unknown field"):
        parse_command({"action": "close", "id": "INC-1", "closed": "1970-01-01T00:00:00Z"}, cameras=["cam"],
                      now_ns=NOW)
    old = _segments([NOW - 40 * DAY])  # past its 28 days: held only by the incident
    inc = IncidentRow("INC-1", "*", NOW - 41 * DAY, NOW - 39 * DAY, "", "officer", NOW - 40 * DAY,
                      closed_ns=NOW, closed_by="mallory")
    for later, deleted in ((0, False), (7 * DAY - S, False), (7 * DAY, True)):
        plan = plan_deletions(old, [inc], NOW + later, POLICY, ROOMY_DISK)
        assert bool(plan.deletions) == deleted, f"{later / DAY:.2f} days after the close"


# ----- MQTT over TLS --------------------------------------------------------------------------------
@needs_mosquitto
def test_tls_link_refuses_a_broker_signed_by_another_ca_and_never_sends_the_password(tmp_path: Path) -> None:
    from edgerec.mqtt import MqttLink, MqttLinkSettings

    real_ca = make_test_ca(tmp_path / "real")
    impostor_ca = make_test_ca(tmp_path / "impostor")
    password = tmp_path / "mqtt.password"
    password.write_text("device-secret\n")
    password.chmod(0o600)
    with Broker(tmp_path / "impostor-broker", tls=impostor_ca, users={"dev": "device-secret"}) as impostor:
        cfg = Config(device_id="dev", data_dir=tmp_path, recipients=(),
                     cameras=(CameraConfig("gate", "testsrc"),),
                     mqtt=MqttConfig(enabled=True, host="127.0.0.1", port=impostor.port,
                                     client_id="edgerec-dev", username="dev", password_file=password,
                                     tls=TlsConfig(ca_file=real_ca.ca_cert)))
        link = MqttLink(MqttLinkSettings.from_config(cfg), status=dict, incidents=list,
                        on_command=lambda obj: {"ok": False})
        link.start()
        try:
            # The device aborts the handshake (the certificate does not verify): mosquitto logs the alert.
            wait_for(lambda: "OpenSSL Error" in impostor.log_text, 15, "the handshake refused")
            assert not link.connected
        finally:
            link.stop()
        log = impostor.log_text
        assert "New client connected" not in log, log  # no CONNECT, so no user name or password, was sent
