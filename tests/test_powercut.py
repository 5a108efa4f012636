"""Power-cut simulation: ``kill -9``, then throw away what the kernel had not yet put on the disk.

The daemon runs under ``strace`` (see ``test_write_order``), so for every file the test knows exactly
which bytes were covered by a completed ``fsync``/``fdatasync``. After the kill each file that grew past
that point is cut back to a random length between its synced size and its current size (segments,
the SQLite catalog and its WAL, the audit log, the status file), and a segment rename that no
directory ``fsync`` followed is undone at random. This is what a power cut can do to data the
kernel had accepted but not written.

What it does not model (see docs/reliability.md): the loss of a file's directory entry when a new file's
directory was never synced, reordering of unsynced writes inside a file (only a lost suffix is
modelled), writes that overwrote synced bytes (kept), and hardware that lies about its cache flushes.

Then the daemon's start-up repair runs and the crash-loop checks apply, with a loss limit of
``flush_seconds + fsync_seconds`` (plus the poll interval and the encoder's latency), and every incident
acknowledged over MQTT before the cut must still be in the catalog, holding its footage.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgerec.timefmt import rfc3339
from tests.helpers.broker import Broker, Listener, needs_mosquitto
from tests.helpers.crashloop import (
    CAMERA,
    LATENCY_ALLOWANCE_S,
    CrashLedger,
    CrashRig,
    S,
    partial_files,
)
from tests.helpers.daemon import REPO, OfficerKey, wait_for
from tests.helpers.strace import Call, needs_strace, parse_strace, strace_cmd

POLL_INTERVAL_S = 0.2  # the recorder's flush timer: an fdatasync may come this much after fsync_seconds


@dataclass(frozen=True)
class FileState:
    synced_bytes: int
    size_bytes: int
    renamed_from: str | None = None  # a rename no directory fsync followed (it may be undone)


def file_states(calls: list[Call], initial: dict[str, int]) -> dict[str, FileState]:
    """Per path: the bytes a completed fsync/fdatasync covered, and the bytes written, from a trace.

    Files that existed before the trace began count as synced (the run started after a cut). Writes
    without an offset (``write``) append; ``pwrite64`` extends the file to offset + count.
    """
    extent = dict(initial)
    synced = dict(initial)
    pending_rename: dict[str, str] = {}
    events: list[tuple[int, int, Call]] = []  # (position, kind order, call)
    for c in calls:
        if c.name in ("fsync", "fdatasync"):
            events.append((c.start, 0, c))  # a sync covers what was written before it started
        elif c.end is not None:
            events.append((c.end, 1, c))
    for _, _, c in sorted(events, key=lambda e: (e[0], e[1])):
        path = c.fd_path
        if c.name in ("fsync", "fdatasync"):
            if path is None:
                continue
            if c.ok:  # completed before the kill: it covers what was written before it started
                synced[path] = max(synced.get(path, 0), extent.get(path, 0))
                for final in [f for f in pending_rename if str(Path(f).parent) == path]:
                    del pending_rename[final]
            continue
        if not c.ok:
            continue
        if c.name == "openat" and c.result_path and "O_TRUNC" in c.args:
            extent[c.result_path] = synced[c.result_path] = 0
        elif c.name == "write" and path:
            extent[path] = extent.get(path, 0) + c.size
        elif c.name == "pwrite64" and path:
            extent[path] = max(extent.get(path, 0), (c.offset or 0) + c.size)
        elif c.name == "ftruncate" and path:
            n = int(re.search(r",\s*(\d+)\)", c.args).group(1))  # type: ignore[union-attr]
            extent[path] = n
            synced[path] = min(synced.get(path, 0), n)
        elif c.name.startswith("rename"):
            src, dst = c.paths[-2], c.paths[-1]
            extent[dst] = extent.pop(src, 0)
            synced[dst] = synced.pop(src, 0)
            pending_rename[dst] = src
        elif c.name.startswith("unlink"):
            for p in c.paths[-1:]:
                extent.pop(p, None)
                synced.pop(p, None)
    # A sync of a file after the trace's last write may be unfinished: counted above only if completed.
    return {p: FileState(min(synced.get(p, 0), n), n, pending_rename.get(p)) for p, n in extent.items()}


def sizes_under(root: Path) -> dict[str, int]:
    return {str(p): p.stat().st_size for p in root.rglob("*") if p.is_file()}


def cut_like_a_power_failure(data_dir: Path, states: dict[str, FileState], rng: random.Random) -> list[str]:
    """Apply the simulated power cut; returns what was done (for the failure message)."""
    done = []
    for path, st in sorted(states.items()):
        p = Path(path)
        if not p.is_file() or data_dir not in p.parents:
            continue
        if st.renamed_from is not None and path.endswith(".seg") and rng.random() < 0.5:
            os.rename(p, st.renamed_from)
            done.append(f"undid rename {p.name}")
            p = Path(st.renamed_from)
        size = p.stat().st_size
        if size > st.synced_bytes:
            cut = rng.randint(st.synced_bytes, size)
            os.truncate(p, cut)
            done.append(f"{p.relative_to(data_dir)}: {size} -> {cut} (synced {st.synced_bytes})")
    return done


def daemon_pid_of(strace: subprocess.Popen[bytes]) -> int:
    """The traced daemon: strace's child once it runs Python (strace forks short-lived probes first)."""
    def child() -> int | None:
        with contextlib.suppress(OSError, ValueError):
            for kid in Path(f"/proc/{strace.pid}/task/{strace.pid}/children").read_text().split():
                if "strace" not in os.readlink(f"/proc/{kid}/exe"):  # exec'd: no longer a probe
                    return int(kid)
        return None

    return wait_for(child, 30, "the traced daemon process")


def power_cut_round(rig: CrashRig, ledger: CrashLedger, rng: random.Random, round_no: int,
                    listener: Listener | None, sent: dict[str, dict[str, Any]]) -> float | None:
    data_dir = rig.data_dir
    initial = sizes_under(data_dir) if data_dir.exists() else {}
    trace = rig.root / f"cut{round_no}.trace"
    log = open(rig.root / f"cut{round_no}.log", "wb")  # noqa: SIM115 - closed below
    cmd = [*strace_cmd(trace), sys.executable, "-m", "edgerec", "--log-level", "debug", "run",
           "-c", str(rig.config_path)]
    strace = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
    try:
        pid = daemon_pid_of(strace)
        wait_for(lambda: any(p.stat().st_size > 1200 for p in partial_files(data_dir))
                 or strace.poll() is not None, 60, "footage on disk", interval=0.05)
        assert strace.poll() is None, (rig.root / f"cut{round_no}.log").read_text()[-3000:]
        if listener is not None and round_no % 2 == 1:
            tx = uuid.uuid4().hex[:12]
            now = time.time_ns()
            command = {"action": "open", "id": f"cut{round_no}", "camera": CAMERA,
                       "from": rfc3339(now - 4 * S), "to": rfc3339(now), "reason": "power cut", "by": "t"}
            sent[tx] = command
            listener.publish(rig.command_topic, {**command, "transaction": tx})
            listener.wait_for(rig.result_topic, lambda m: m.json().get("transaction") == tx, timeout_s=20)
        time.sleep(rng.uniform(0.3, rig.segment_seconds * 2))
        killed_ns = time.time_ns()
        os.kill(pid, signal.SIGKILL)
        strace.wait(30)
    finally:
        if strace.poll() is None:
            strace.kill()
            strace.wait(10)
        log.close()
    ledger.record_replies(listener, sent)
    states = file_states(parse_strace(trace.read_text()), initial)
    done = cut_like_a_power_failure(data_dir, states, rng)
    ledger.repair()
    limit = rig.flush_seconds + rig.fsync_seconds + POLL_INTERVAL_S + LATENCY_ALLOWANCE_S
    try:
        return ledger.check(killed_ns, loss_limit_s=limit)
    except AssertionError as exc:
        raise AssertionError(f"round {round_no}, after the cut: {done}\n{exc}") from None


@pytest.mark.slow
@needs_strace
@needs_mosquitto
def test_power_cuts_lose_at_most_flush_plus_fsync_seconds_and_keep_acknowledged_incidents(
        tmp_path: Path, officer: OfficerKey) -> None:
    rng = random.Random(1123)
    with Broker(tmp_path / "broker") as broker:
        rig = CrashRig(tmp_path, officer, broker, retention_seconds=3600)
        rig.write_config()
        ledger = CrashLedger(rig)
        sent: dict[str, dict[str, Any]] = {}
        with Listener(broker, [rig.result_topic]) as listener:
            losses = [power_cut_round(rig, ledger, rng, i, listener, sent) for i in range(4)]
    assert len(ledger.acked) == 2
    assert ledger.must_keep
    assert all(loss is not None for loss in losses)
