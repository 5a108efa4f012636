"""The crash loop's machinery: a rig (data directory, config, officer key, broker), the rounds that kill
the daemon at chosen moments, and the ledger whose ``check`` asserts every promise after each kill.

Used by ``tests/test_crashloop.py``, ``tests/test_powercut.py`` and ``bench/crashloop.py``.
"""

from __future__ import annotations

import contextlib
import json
import random
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgerec import keys, segfile
from edgerec.audit import verify_audit
from edgerec.catalog import Catalog
from edgerec.errors import SegmentError
from edgerec.timefmt import rfc3339
from tests.helpers.broker import Broker, Listener
from tests.helpers.daemon import Daemon, OfficerKey, open_daemon_state, wait_for, write_config

S = 1_000_000_000
DEVICE = "crashdev"
CAMERA = "cam"
PHASES = ("write", "rotation", "sweep", "incident")
# The recorder notes a chunk's media end when it seals it; the newest frames are still in the
# encoder (testsrc is encoded live) and the muxer when the process dies. Measured: ~0.2-0.4 s.
LATENCY_ALLOWANCE_S = 0.6
START_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class KillRecord:
    round: int
    phase: str
    killed_ns: int | None
    lost_s: float | None  # wall time of the kill minus the end of the newest footage on disk


@dataclass
class CrashRig:
    """A data directory, its config, the officer key, and (optionally) a private broker."""

    root: Path
    officer: OfficerKey
    broker: Broker | None
    segment_seconds: float = 2.0
    flush_seconds: float = 1.0
    fsync_seconds: float = 2.0
    retention_seconds: float = 8.0

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    @property
    def config_path(self) -> Path:
        return self.root / "edgerec.yaml"

    @property
    def command_topic(self) -> str:
        return f"edgerec/{DEVICE}/incident/set"

    @property
    def result_topic(self) -> str:
        return f"edgerec/{DEVICE}/incident/result"

    def write_config(self) -> Path:
        extra: dict[str, Any] = {}
        if self.broker is not None:
            extra["mqtt"] = {"enabled": True, "host": self.broker.host, "port": self.broker.port,
                             "discovery": False, "site_topic": None}
        return write_config(
            self.config_path, officer=self.officer, data_dir=self.data_dir, device_id=DEVICE,
            segment_seconds=self.segment_seconds,
            durability={"flush_seconds": self.flush_seconds, "fsync_seconds": self.fsync_seconds},
            retention={"days": self.retention_seconds / 86_400, "sweep_interval_s": 1},
            # A long grace: closed incidents keep holding, so "held footage is still held" stays simple.
            incidents={"pre_roll_s": 1, "post_roll_s": 1, "release_grace_days": 1},
            cameras=[{"name": CAMERA, "url": "testsrc:size=160x120:rate=10", "health": False}],
            **extra,
        )


def segment_files(data_dir: Path) -> list[Path]:
    return sorted(p for p in data_dir.glob("*/*/*.seg") if p.parts[-3] != "quarantine")


def partial_files(data_dir: Path) -> list[Path]:
    return sorted(data_dir.glob("*/*/*.seg.partial"))


class DigestWatcher:
    """Remembers the digest of every sealed segment that appears while the daemon runs (retention may
    delete one before the next check; its digest is what explains the hole in the chain then)."""

    def __init__(self, data_dir: Path, into: dict[bytes, str]):
        self.data_dir = data_dir
        self.into = into
        self._seen: set[str] = set(into.values())
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> DigestWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def scan(self) -> None:
        for path in segment_files(self.data_dir):
            rel = path.relative_to(self.data_dir).as_posix()
            if rel in self._seen:
                continue
            try:
                info = segfile.read_info(path)
            except (SegmentError, OSError):
                continue  # deleted meanwhile, or not complete yet: the next check reads it
            self.into[info.digest] = rel
            self._seen.add(rel)

    def _run(self) -> None:
        while not self._stop.wait(0.2):
            self.scan()


@dataclass
class CrashLedger:
    """What the checks have learnt across rounds."""

    rig: CrashRig
    digests: dict[bytes, str] = field(default_factory=dict)  # every sealed segment ever seen
    verified: set[tuple[str, int]] = field(default_factory=set)  # (path, size) fully decrypted already
    acked: dict[str, dict[str, Any]] = field(default_factory=dict)  # incident id -> acknowledged command
    must_keep: set[str] = field(default_factory=set)  # footage an acknowledged incident held
    kills: list[KillRecord] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def record_replies(self, listener: Listener | None, sent: dict[str, dict[str, Any]]) -> None:
        if listener is None:
            return
        for m in listener.on(self.rig.result_topic):
            with contextlib.suppress(ValueError):
                reply = m.json()
                tx = reply.get("transaction")
                if reply.get("ok") and tx in sent and sent[tx]["action"] == "open":
                    self.acked[sent[tx]["id"]] = sent[tx]

    def repair(self) -> None:
        """Run the daemon's start-up (key, catalog, reconciliation) in this process, then close it."""
        open_daemon_state(self.rig.config_path).catalog.close()

    def check(self, killed_ns: int | None, loss_limit_s: float | None = None) -> float | None:
        """Assert every invariant on the repaired data directory; returns the footage lost to the kill
        (at most ``loss_limit_s``: by default ``flush_seconds`` plus the encoder's latency)."""
        rig = self.rig
        if loss_limit_s is None:
            loss_limit_s = rig.flush_seconds + LATENCY_ALLOWANCE_S
        data_dir = rig.data_dir
        problems: list[str] = []
        assert not partial_files(data_dir), f"partials left after start-up: {partial_files(data_dir)}"
        quarantine = data_dir / "quarantine"
        assert not (quarantine.exists() and any(quarantine.rglob("*.seg*"))), \
            f"quarantined: {list(quarantine.rglob('*'))}"

        device_key = keys.load_device_public_key(data_dir / "device.pub")
        private = keys.load_private_key(rig.officer.private_path)
        infos: dict[str, segfile.SealedSegment] = {}
        for path in segment_files(data_dir):
            rel = path.relative_to(data_dir).as_posix()
            try:
                info = segfile.read_info(path, device_key)
            except SegmentError as exc:
                problems.append(f"{rel}: {exc}")
                continue
            infos[rel] = info
            self.digests[info.digest] = rel
            if info.state not in ("sealed", "recovered"):
                problems.append(f"{rel}: state {info.state}")
            if (rel, info.size_bytes) not in self.verified:
                errors = segfile.verify(path, private_key=private, device_key=device_key)
                problems += [f"{rel}: {e}" for e in errors]
                self.verified.add((rel, info.size_bytes))

        audit = verify_audit(data_dir / "audit.log")
        if not audit.ok:
            problems.append(f"audit log: {audit.message}")
        deleted_paths = audit_deleted_paths(data_dir / "audit.log")

        cat = Catalog.open(data_dir)
        try:
            rows = {r.path: r for r in cat.segments()}
            for rel in sorted(rows.keys() - infos.keys()):
                problems.append(f"catalog row without a file: {rel}")
            for rel in sorted(infos.keys() - rows.keys()):
                problems.append(f"file not in the catalog: {rel}")
            for rel in sorted(rows.keys() & infos.keys()):
                row, info = rows[rel], infos[rel]
                if row.deleting_ns is not None:
                    problems.append(f"{rel}: still marked for deletion")
                if (row.digest, row.size_bytes, row.state) != (info.digest.hex(), info.size_bytes,
                                                               info.state):
                    problems.append(f"{rel}: catalog row differs from the file")
            problems += chain_problems(infos, self.digests, deleted_paths)
            for inc_id, cmd in self.acked.items():
                inc = cat.get_incident(inc_id)
                if inc is None:
                    problems.append(f"acknowledged incident {inc_id} is not in the catalog")
                    continue
                for row in rows.values():
                    if row.end_ns >= inc.hold_start_ns and (inc.hold_end_ns is None
                                                            or row.start_ns <= inc.hold_end_ns):
                        self.must_keep.add(row.path)
                del cmd
        finally:
            cat.close()
        for rel in sorted(self.must_keep):
            if rel not in infos:
                problems.append(f"held footage gone: {rel}")
            if rel in deleted_paths:
                problems.append(f"held footage named in a deletion audit line: {rel}")

        lost_s = None
        if killed_ns is not None and infos:
            newest = max(i.end_ns for i in infos.values())
            lost_s = (killed_ns - newest) / S
            if lost_s > loss_limit_s:
                problems.append(f"lost {lost_s:.2f} s of footage (limit {loss_limit_s:.2f} s)")
        assert not problems, "\n".join(problems)
        return lost_s


def audit_deleted_paths(path: Path) -> set[str]:
    """Every segment path an audit line says was deleted (retention, or an interrupted deletion)."""
    out: set[str] = set()
    if not path.exists():
        return out
    for line in path.read_bytes().splitlines():
        with contextlib.suppress(ValueError):
            obj = json.loads(line)
            if obj.get("event") in ("segments_deleted", "partials_removed"):
                out.update(obj.get("paths") or [])
    return out


def chain_problems(infos: dict[str, segfile.SealedSegment], digests: dict[bytes, str],
                   deleted_paths: set[str]) -> list[str]:
    """Each camera's chain, by sequence: unbroken, or broken only where a deleted segment was."""
    problems = []
    by_camera: dict[str, list[tuple[str, segfile.SealedSegment]]] = {}
    for rel, info in infos.items():
        by_camera.setdefault(info.meta.camera, []).append((rel, info))
    for camera, items in by_camera.items():
        items.sort(key=lambda x: x[1].meta.sequence)
        seqs = [i.meta.sequence for _, i in items]
        if len(set(seqs)) != len(seqs):
            problems.append(f"{camera}: repeated sequence numbers {seqs}")
        prev: segfile.SealedSegment | None = None
        for rel, info in items:
            link = info.meta.prev_digest
            if prev is not None and link == prev.digest:
                prev = info
                continue
            if prev is None and info.meta.sequence == 0 and link == bytes(32):
                prev = info
                continue
            before = digests.get(link)
            if before is None or before not in deleted_paths:
                problems.append(f"{rel}: hash chain broken (previous segment {before or 'unknown'} "
                                "was not deleted by retention)")
            prev = info
    return problems


# ----- one round ------------------------------------------------------------------------------------------
def wait_recording(data_dir: Path, daemon: Daemon, timeout_s: float = START_TIMEOUT_S) -> None:
    """Until a segment is open and has chunks (footage is reaching the disk)."""
    def ready() -> bool:
        if daemon.proc.poll() is not None:
            raise AssertionError(f"daemon exited {daemon.proc.returncode}:\n{daemon.log()[-3000:]}")
        for p in partial_files(data_dir):
            with contextlib.suppress(OSError):
                if p.stat().st_size > 1200:
                    return True
        return False

    wait_for(ready, timeout_s, "the daemon to write footage", interval=0.02)


def kill_at(phase: str, rig: CrashRig, daemon: Daemon, rng: random.Random, listener: Listener | None,
            sent: dict[str, dict[str, Any]], round_no: int) -> int:
    """Wait for the phase's moment, SIGKILL the daemon, return the wall time of the kill."""
    data_dir = rig.data_dir
    if phase == "write":
        time.sleep(rng.uniform(0.2, rig.segment_seconds * 1.5))
    elif phase == "rotation":
        before = set(segment_files(data_dir))
        wait_for(lambda: set(segment_files(data_dir)) - before, rig.segment_seconds * 4, "a rotation",
                 interval=0.002)
    elif phase == "sweep":
        audit = data_dir / "audit.log"
        size = audit.stat().st_size if audit.exists() else 0
        wait_for(lambda: audit.exists() and audit.stat().st_size != size, rig.retention_seconds * 3,
                 "an audit line (a retention deletion)", interval=0.002)
    elif phase == "incident":
        assert listener is not None
        tx = uuid.uuid4().hex[:12]
        now = time.time_ns()
        cmd = {"action": "open", "id": f"r{round_no}-{tx[:6]}", "camera": CAMERA,
               "from": rfc3339(now - 5 * S), "to": rfc3339(now - 1 * S), "reason": "crash loop", "by": "t"}
        sent[tx] = cmd
        listener.publish(rig.command_topic, {**cmd, "transaction": tx})
        time.sleep(rng.uniform(0.0, 0.05))
    else:
        raise ValueError(phase)
    killed_ns = time.time_ns()
    daemon.kill()
    return killed_ns


def crash_rounds(rig: CrashRig, kills: int, seed: int, log_dir: Path, progress: Any = None,
                 keep_going: bool = False) -> CrashLedger:
    """Record, kill, repair and check ``kills`` times; return the ledger. Raises on the first problem, or
    with ``keep_going`` notes it in ``ledger.failures`` and carries on (long runs)."""
    rng = random.Random(seed)
    rig.write_config()
    ledger = CrashLedger(rig)
    sent: dict[str, dict[str, Any]] = {}
    listener = Listener(rig.broker, [rig.result_topic]) if rig.broker is not None else None
    phases = [p for p in PHASES if p != "incident" or listener is not None]
    try:
        for round_no in range(kills):
            phase = phases[round_no % len(phases)] if round_no < len(phases) else rng.choice(phases)
            log_path = log_dir / f"round{round_no:03d}.log"
            with DigestWatcher(rig.data_dir, ledger.digests) as watcher, \
                    Daemon(rig.config_path, log_path) as daemon:
                try:
                    wait_recording(rig.data_dir, daemon)
                    killed_ns = kill_at(phase, rig, daemon, rng, listener, sent, round_no)
                except AssertionError as exc:  # e.g. no rotation in time: the daemon is killed on exit
                    if not keep_going:
                        raise
                    ledger.failures.append(f"round {round_no} ({phase}) did not get its moment: {exc}")
                    killed_ns = None
                watcher.scan()
            if listener is not None:
                time.sleep(0.2)  # a reply published just before the kill is still on its way
            ledger.record_replies(listener, sent)
            ledger.repair()
            try:
                lost = ledger.check(killed_ns)
            except AssertionError as exc:
                if not keep_going:
                    raise
                ledger.failures.append(f"round {round_no} ({phase}): {exc}")
                lost = None
            ledger.kills.append(KillRecord(round_no, phase, killed_ns, lost))
            if progress is not None:
                progress(ledger.kills[-1])
    finally:
        if listener is not None:
            listener.close()
    return ledger
