"""One camera's recorder: source -> keyframe segmenter -> encrypted segment files, in its own thread.

The recorder connects to the camera, hands every packet to the segmenter (which muxes MPEG-TS straight
into an encrypting ``SegmentWriter``), seals segments, reconnects with capped exponential backoff and
jitter, and reports the gaps in the footage. A live camera's end of input, a read error, a read timeout
and a stall (no packet for ``stall_seconds``) are all disconnects: the open segment is sealed, the camera
is reported down at once (``on_connection``), and up again with its first packet after reconnecting; the
gap (from the last footage to the next) is reported when it ends (``on_gap``).

A segment that cannot be sealed (the disk is full) keeps its ``.partial``; no new segment starts until it
is recovered (its complete chunks and a signed ``recovered`` trailer), so the hash chain never forks. A
recorder that ends with it still unrecovered hands it over with its chain head (``handover``): the camera's
next recorder recovers it before its own first segment.

The camera's audio track follows its ``audio`` policy: kept, it is muxed into the segments alongside the
video (``payloadstreams`` declares it in the segment header); dropped, each connection logs once that it
was there. Only video packets count as the camera delivering (the stall watchdog, rates, health).

A small timer thread polls the open writer so footage reaches the disk within ``flush_seconds`` even when
the camera is quiet, and is the stall watchdog. Nothing decoded, and nothing unencrypted, is ever written
to the data directory.
"""

from __future__ import annotations

import errno
import logging
import random
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PublicKey

from . import clock as kernel_clock
from . import segfile
from .config import CameraConfig, DurabilityConfig, HealthThresholds
from .errors import EdgerecError, SegmentError, SourceError
from .layout import partial_path, segment_path
from .payloadstreams import PayloadStreams
from .segfile import SUITE_AES_256_GCM, SealedSegment, SegmentMeta, SegmentWriter
from .segmenter import Segmenter, SegmentSummary, SinkFailed
from .source import NETWORK_KINDS, Source, is_live, open_source
from .timefmt import rfc3339

if TYPE_CHECKING:  # the health module (numpy) is imported only when a camera analyses its picture
    from .health import HealthChange, HealthWorker

log = logging.getLogger(__name__)

CONTAINER = "mpegts"
POLL_INTERVAL_S = 0.2
BACKOFF_INITIAL_S = 1.0
BACKOFF_MAX_S = 30.0
# For the first FAST_RETRY_WINDOW_S of an outage a camera is retried at least every FAST_RETRY_MAX_S (a
# rebooting camera or a switch port flapping is back within a minute: it records again within seconds).
# After that the waits grow, doubling every further FAST_RETRY_WINDOW_S, up to BACKOFF_MAX_S.
FAST_RETRY_WINDOW_S = 60.0
FAST_RETRY_MAX_S = 3.0
PAST_ERRORS_KEPT = 5  # a camera's errors that have ended, kept for the status
RATE_WINDOW_S = 5  # fps and bitrate are averaged over this many whole seconds
NS_PER_MS = 1_000_000
NAME_COLLISION_TRIES = 1000
PENDING_RETRY_S = 1.0  # how often an unsealed segment's recovery is retried while it waits for space
# A recovery failing for another reason than space (EIO, EACCES, ...) for this long is given up: the file is
# left where it is for start-up reconciliation, and the camera records again. Waiting for space has no
# such limit: the space comes back (retention), and a new segment would need it too.
UNSEALED_GIVE_UP_S = 30.0
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


# ----- pure helpers -------------------------------------------------------------------------------------
def _check_next_link(unsealed: UnsealedSegment, chain: ChainState, camera: str) -> None:
    """A handed-over unsealed segment is the chain's next link: recovered, it is what ``chain`` goes on
    with. Anything else would fork the chain, so a recorder refuses to be made with it."""
    meta = unsealed.meta
    if (meta.camera, meta.sequence, meta.prev_digest) != (camera, chain.next_sequence, chain.prev_digest):
        raise ValueError(f"unsealed segment {unsealed.partial} (camera {meta.camera}, sequence "
                         f"{meta.sequence}) is not the next link of camera {camera}'s chain "
                         f"(sequence {chain.next_sequence})")


def backoff_delay(attempt: int, rand: Callable[[], float] = random.random,
                  initial_s: float = BACKOFF_INITIAL_S, max_s: float = BACKOFF_MAX_S, *,
                  down_for_s: float = 0.0) -> float:
    """Seconds to wait before reconnect ``attempt`` (0-based) of an outage ``down_for_s`` old: doubling
    from ``initial_s``, capped at FAST_RETRY_MAX_S while the outage is younger than FAST_RETRY_WINDOW_S,
    then at a cap that doubles every further FAST_RETRY_WINDOW_S up to ``max_s``; with "equal jitter"
    (between half and all of it) so that many cameras do not retry in step."""
    base = min(max_s, initial_s * 2 ** min(attempt, 30))
    past_window_s = max(0.0, down_for_s - FAST_RETRY_WINDOW_S)
    cap_s = FAST_RETRY_MAX_S * 2 ** min(past_window_s / FAST_RETRY_WINDOW_S, 30)
    base = min(base, cap_s)
    return base / 2 + base / 2 * rand()


def timeline_for(camera: CameraConfig) -> str:
    """How segments are placed in time: by the local clock at their keyframe (anything that arrives in
    real time), or by the stream's own timestamps (a file or graph read as fast as possible)."""
    return "arrival" if is_live(camera.kind) or camera.realtime else "stream"


def stall_age_s(now_s: float, attempt_started_s: float, last_packet_s: float | None) -> float:
    """Seconds the current connection attempt has gone without a packet (since it began, or since its
    last packet)."""
    since = attempt_started_s if last_packet_s is None else max(attempt_started_s, last_packet_s)
    return max(0.0, now_s - since)


@dataclass(frozen=True)
class CameraError:
    """One error of a camera: ``message``, first seen at ``since_ns``, last seen at ``at_ns`` (a retry that
    fails the same way), and, once it has ended (the camera recovered, or failed otherwise),
    ``until_ns``."""

    message: str
    since_ns: int
    at_ns: int
    until_ns: int | None = None


@dataclass(frozen=True)
class ConnectionChange:
    """A camera stopped delivering (``up=False``) or delivers again (``up=True``)."""

    camera: str
    up: bool
    at_ns: int  # when the change was noticed (wall clock)
    since_ns: int  # the last footage before the outage (its start), for both directions
    reason: str  # why the camera went down


@dataclass(frozen=True)
class ChainState:
    """Where this camera's hash chain continues: from the catalog's last segment of the camera."""

    next_sequence: int
    prev_digest: bytes


@dataclass(frozen=True)
class RecorderClock:
    """The clocks the recorder reads; injectable for tests."""

    wall_ns: Callable[[], int] = time.time_ns
    monotonic_ns: Callable[[], int] = kernel_clock.monotonic_ns
    clock_synced: Callable[[], bool] = kernel_clock.clock_synced
    boot_id: Callable[[], str] = kernel_clock.boot_id


@dataclass(frozen=True)
class RecorderStats:
    """A snapshot of one recorder, cheap to take from any thread."""

    camera: str
    state: str  # connecting | recording | backoff | waiting_disk | stopped | error
    connected: bool
    fps: float
    bitrate_bps: float
    last_packet_monotonic: float | None
    last_packet_age_s: float | None
    segments: int  # sealed by this recorder since it started
    bytes: int  # segment file bytes sealed by this recorder
    error: CameraError | None  # the current error; None once the camera recovered
    reconnects: int
    dropped_packets: int = 0  # leading non-keyframes, refused by the muxer, or while the disk was full
    health: dict[str, Any] | None = None
    down_since_ns: int | None = None  # set while the camera is down: its last footage before the outage
    down_reason: str | None = None
    last_gap: tuple[int, int, str] | None = None  # (from_ns, to_ns, reason) of the last gap reported
    stalls: int = 0  # connections closed by the stall watchdog
    discontinuities: int = 0  # timestamp jumps repaired (each also cuts the segment)
    past_errors: tuple[CameraError, ...] = ()  # errors that have ended, oldest first
    audio: CameraAudio | None = None  # the audio track of the last connection; None when it had none

    @property
    def last_error(self) -> str | None:
        """The current error's message."""
        return self.error.message if self.error is not None else None


@dataclass(frozen=True)
class CameraAudio:
    """A camera's audio track and what became of it."""

    codec: str
    kept: bool
    dropped_packets: int = 0  # kept track: packets outside a segment or with unusable timestamps


@dataclass(frozen=True)
class UnsealedSegment:
    """A segment whose sealing failed (a full disk; or an I/O error after the rename, which leaves the
    sealed file under its final name): ``recover_partial(partial)`` closes it, or confirms the renamed
    file, before the next segment starts, so the hash chain goes on from it. Only the file with this
    ``meta`` and header (``header_hash``) is taken: a segment put there in its place is not adopted."""

    partial: Path
    meta: SegmentMeta
    header_hash: bytes


@dataclass(frozen=True)
class Handover:
    """Where a camera's next recorder goes on once this one has ended: the chain head, and the segment
    it could neither seal nor recover (``unsealed``), which is the chain's next link. The next recorder
    recovers that one before its own first segment; starting one from the head alone would give two
    segments one sequence number and one ``prev_digest`` (a fork) once the ``.partial`` is recovered."""

    chain: ChainState
    unsealed: UnsealedSegment | None = None


@dataclass
class _Attempt:
    """One connection attempt, as the stall watchdog sees it (guarded by the recorder's lock)."""

    started_mono: float
    cancel: threading.Event  # aborts an open that waits on a camera program
    source: Source | None = None
    stall_reason: str | None = None


@dataclass(frozen=True)
class _Outcome:
    packets: int
    ended: bool  # the input ended by itself
    reason: str  # why the connection ended (when it is a disconnect)


class _RateWindow:
    """Packets and bytes per second over the last whole seconds (1-second buckets; O(1) per packet).

    The packet loop counts into ``bucket`` (the current second's ``[packets, bytes]``) without a lock and
    calls ``start`` under the lock when a new second begins; ``rates`` reads only whole past seconds."""

    def __init__(self, seconds: int = RATE_WINDOW_S):
        self.seconds = seconds
        self._buckets: dict[int, list[int]] = {}
        self.second = -1  # the current bucket's second
        self.bucket = [0, 0]

    def start(self, second: int) -> None:
        """Begin the bucket of ``second`` (call with the lock that ``rates`` is read under)."""
        for old in [s for s in self._buckets if s <= second - self.seconds - 1]:
            del self._buckets[old]
        self.bucket = self._buckets.setdefault(second, [0, 0])
        self.second = second

    def rates(self, now_s: float) -> tuple[float, float]:
        """(packets/s, bits/s) over the last ``seconds`` complete seconds."""
        current = int(now_s)
        seen = {s: b for s, b in list(self._buckets.items()) if current - self.seconds <= s < current}
        if not seen:
            return 0.0, 0.0
        span_s = current - min(seen)  # shorter than the window just after (re)connecting
        return (sum(b[0] for b in seen.values()) / span_s, sum(b[1] for b in seen.values()) * 8 / span_s)


class Recorder:
    """Records one camera in a thread named ``rec-<camera>``."""

    def __init__(
        self,
        camera: CameraConfig,
        *,
        data_dir: Path,
        device_id: str,
        segment_seconds: float,
        durability: DurabilityConfig,
        recipients: Sequence[X25519PublicKey],
        suite: int = SUITE_AES_256_GCM,
        signing_key: Ed25519PrivateKey,
        chain: ChainState,
        unsealed: UnsealedSegment | None = None,
        on_sealed: Callable[[SealedSegment], None],
        on_gap: Callable[[str, int, int, str], None] = lambda camera, from_ns, to_ns, reason: None,
        may_start_segment: Callable[[], bool] = lambda: True,
        exit_at_eof: bool = False,
        clock: RecorderClock | None = None,
        health_thresholds: HealthThresholds | None = None,
        on_health: Callable[[str, HealthChange], None] | None = None,
        on_connection: Callable[[ConnectionChange], None] | None = None,
        open_source_fn: Callable[..., Source] = open_source,
        rand: Callable[[], float] = random.random,
    ):
        self.camera = camera
        self.data_dir = Path(data_dir)
        self.device_id = device_id
        self.segment_seconds = segment_seconds
        self.durability = durability
        self.suite = suite  # cipher suite of new segments (segfile.SUITE_NAMES)
        self.recipients = list(recipients)
        self.signing_key = signing_key
        self.chain = chain
        if unsealed is not None:
            _check_next_link(unsealed, chain, camera.name)
        self.exit_at_eof = exit_at_eof
        self._on_sealed = on_sealed
        self._on_gap = on_gap
        self._may_start_segment = may_start_segment
        self._clock = clock or RecorderClock()
        self._open_source = open_source_fn
        self._rand = rand
        self._health_thresholds = health_thresholds
        self._on_health = on_health
        self._on_connection = on_connection

        self._stop = threading.Event()
        self._done = threading.Event()  # set when the recording thread has finished
        self._lock = threading.Lock()  # guards the fields read by stats()
        self._thread = threading.Thread(target=self._run, name=f"rec-{camera.name}", daemon=True)
        self._flusher = threading.Thread(target=self._flush_loop, name=f"rec-{camera.name}-flush",
                                         daemon=True)
        self._source: Source | None = None
        self._writer: SegmentWriter | None = None
        self._codec = "h264"
        self._health: HealthWorker | None = None
        self.finished = False

        self._state = "connecting"
        self._connected = False
        self._rate = _RateWindow()
        self._last_packet_mono: float | None = None
        self._segments = 0
        self._bytes = 0
        self._error: CameraError | None = None
        self._past_errors: deque[CameraError] = deque(maxlen=PAST_ERRORS_KEPT)
        self._reconnects = 0
        self._dropped = 0
        self._gap_from_ns: int | None = None  # start of a gap in the footage not reported yet
        self._gap_reason = ""
        self._last_end_ns: int | None = None
        self._started_wall_ns = 0
        self._attempt: _Attempt | None = None
        self._down: tuple[int, str] | None = None  # (since_ns, reason) while the camera is down
        self._last_packet_wall_ns: int | None = None
        self._last_gap: tuple[int, int, str] | None = None
        self._stalls = 0
        self._discontinuities = 0
        # A segment left unsealed (by this recorder, or by the camera's previous one: ``unsealed``).
        self._unsealed: UnsealedSegment | None = unsealed
        self._unsealed_retry_mono = 0.0
        self._unsealed_error: str | None = None  # why the last recovery try failed, until it is shown
        self._unsealed_failing_since: float | None = None  # the first of its failures not for want of space
        self._audio: CameraAudio | None = None

    # ----- public ---------------------------------------------------------------------------------------
    def start(self) -> None:
        self._start_health()
        self._thread.start()
        self._flusher.start()

    def stop(self, timeout: float) -> None:
        """Seal the open segment, close the source and join the threads (waits at most ``timeout``)."""
        self.request_stop()
        if self._thread.is_alive():
            self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("recorder did not stop in time camera=%s timeout_s=%.1f", self.camera.name, timeout)
        if self._flusher.is_alive():
            self._flusher.join(max(1.0, POLL_INTERVAL_S * 5))

    def request_stop(self) -> None:
        """Ask the recording thread to seal its open segment and end, without waiting for it. Only once
        the thread has ended (``is_alive`` False) is ``handover`` what a successor may go on from."""
        self._stop.set()
        with self._lock:
            attempt = self._attempt
            if attempt is not None:
                attempt.cancel.set()
        source = self._source
        if source is not None:
            source.interrupt()

    def handover(self) -> Handover:
        """What the camera's next recorder goes on from: the chain head, with the segment this one could
        neither seal nor recover (if any). Only once the thread has ended: until then both may move."""
        if self._thread.is_alive():
            raise RuntimeError(f"recorder of camera {self.camera.name} is still running")
        return Handover(self.chain, self._unsealed)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def stats(self) -> RecorderStats:
        now = time.monotonic()
        with self._lock:
            fps, bitrate = self._rate.rates(now)
            last = self._last_packet_mono
            health = self._health.snapshot() if self._health is not None else None
            return RecorderStats(
                camera=self.camera.name,
                state=self._state,
                connected=self._connected,
                fps=fps,
                bitrate_bps=bitrate,
                last_packet_monotonic=last,
                last_packet_age_s=None if last is None else max(0.0, now - last),
                segments=self._segments,
                bytes=self._bytes,
                error=self._error,
                reconnects=self._reconnects,
                dropped_packets=self._dropped,
                health=health,
                down_since_ns=self._down[0] if self._down is not None else None,
                down_reason=self._down[1] if self._down is not None else None,
                last_gap=self._last_gap,
                stalls=self._stalls,
                discontinuities=self._discontinuities,
                past_errors=tuple(self._past_errors),
                audio=self._audio,
            )

    # ----- the recording thread ---------------------------------------------------------------------------
    def _run(self) -> None:
        attempt = 0
        outage_started_s: float | None = None  # monotonic: when the camera last stopped delivering
        self._started_wall_ns = self._clock.wall_ns()
        try:
            while not self._stop.is_set():
                self._set(state="connecting")
                outcome = self._record_once()
                if self._stop.is_set():
                    break
                if outcome.ended and self._ends_recording():
                    self.finished = True
                    log.info("source ended camera=%s", self.camera.name)
                    break
                now_s = time.monotonic()
                if outcome.packets or outage_started_s is None:
                    attempt, outage_started_s = 0, now_s
                self._went_down(outcome.reason)
                delay = backoff_delay(attempt, self._rand, down_for_s=now_s - outage_started_s)
                attempt += 1
                with self._lock:
                    self._reconnects += 1
                    self._state = "backoff"
                log.warning("camera disconnected camera=%s reason=%s retry_in_s=%.1f", self.camera.name,
                            outcome.reason, delay)
                self._stop.wait(delay)
        except Exception as exc:
            self._set(state="error", last_error=f"{type(exc).__name__}: {exc}")
            log.exception("recorder failed camera=%s", self.camera.name)
            raise
        finally:
            self._recover_unsealed_at_stop()
            self._report_pending_gap(self._clock.wall_ns())
            self._stop_health()
            with self._lock:
                self._connected = False
                self._attempt = None
                if self._state != "error":
                    self._state = "stopped"
            self._done.set()

    def _ends_recording(self) -> bool:
        """Does the end of input end the recording? Never for a camera: for it that is a disconnect."""
        if is_live(self.camera.kind):
            return False
        return self.exit_at_eof or (self.camera.kind == "file" and not self.camera.loop)

    def _record_once(self) -> _Outcome:
        """One connection: open, record until the input ends, fails or stalls."""
        attempt = _Attempt(started_mono=time.monotonic(), cancel=threading.Event())
        with self._lock:
            self._attempt = attempt
        if self._stop.is_set():
            attempt.cancel.set()
        try:
            return self._connect_and_record(attempt)
        finally:
            with self._lock:
                self._attempt = None

    def _connect_and_record(self, attempt: _Attempt) -> _Outcome:
        try:
            source = self._open_source(self.camera, cancel=attempt.cancel)
        except SourceError as exc:
            self._set(last_error=str(exc))
            return _Outcome(0, False, attempt.stall_reason or str(exc))
        with self._lock:
            self._source = attempt.source = source
            interrupted = self._stop.is_set() or attempt.stall_reason is not None
        if interrupted:
            source.interrupt()
        self._codec = PayloadStreams(source.info.codec, source.info.audio_kept).declaration()
        self._note_audio(source)
        segmenter = Segmenter(source.stream, segment_seconds=self.segment_seconds,
                              open_sink=self._open_writer, close_sink=self._seal_writer,
                              abort_sink=self._abandon_writer, camera=self.camera.name,
                              timeline=timeline_for(self.camera), audio_template=source.audio_stream,
                              backlog_hold=self.camera.kind in NETWORK_KINDS)
        self._set(state="recording", connected=True)
        packets = 0
        error: str | None = None
        try:
            error, packets = self._pump(source, segmenter)
        finally:
            try:
                segmenter.finish()
            except SinkFailed as exc:
                error = f"segment write failed: {exc}"
                self._set(last_error=error)
            finally:
                self._add_counters(segmenter)
                source.close()
                with self._lock:
                    self._source = attempt.source = None
                    self._connected = False
        ended = error is None and attempt.stall_reason is None and source.ended
        reason = attempt.stall_reason or error or ("end of input" if ended else "interrupted")
        return _Outcome(packets, ended, reason)

    def _pump(self, source: Source, segmenter: Segmenter) -> tuple[str | None, int]:
        """The packet loop: (error message, or None at the end of input or on stop; packets read)."""
        # Runs once per packet: what it calls is looked up once, here, and it takes no lock but once a
        # second (``_last_packet_mono`` is one attribute store, the rate bucket is the loop's own).
        wall_ns, monotonic = self._clock.wall_ns, time.monotonic
        stopping, audio_index = self._stop.is_set, source.audio_index
        lock, rate, push = self._lock, self._rate, segmenter.push
        health = self._health
        codec_context = source.stream.codec_context
        count = 0
        try:
            for packet in source.packets():
                if stopping():
                    return None, count
                if packet.stream_index == audio_index:
                    segmenter.push_audio(packet)
                    continue
                count += 1
                arrival_ns = wall_ns()
                self._last_packet_mono = now = monotonic()
                if int(now) != rate.second:
                    with lock:
                        rate.start(int(now))
                bucket = rate.bucket
                bucket[0] += 1
                bucket[1] += packet.size
                self._last_packet_wall_ns = arrival_ns
                if count == 1:
                    self._error_ended(arrival_ns)  # the camera delivers again
                    if self._down is not None:
                        self._came_up(arrival_ns)
                if health is not None and packet.is_keyframe:
                    health.offer(packet, codec_context=codec_context)
                push(packet, arrival_ns)
        except SourceError as exc:
            self._set(last_error=str(exc))
            return str(exc), count
        except SinkFailed as exc:
            message = f"segment write failed: {exc}"
            self._set(state="error", last_error=message)
            return message, count
        return None, count

    def _note_audio(self, source: Source) -> None:
        """The audio policy at work, said once per connection (and shown in the status)."""
        codec, kept = source.info.audio, source.info.audio_kept is not None
        if codec is None:
            audio = None
        elif kept:
            log.info("audio track kept camera=%s codec=%s", self.camera.name, codec)
            audio = CameraAudio(codec, True)
        elif self.camera.audio == "keep":
            log.warning("audio track dropped camera=%s codec=%s reason=codec_not_kept", self.camera.name,
                        codec)
            audio = CameraAudio(codec, False)
        else:
            log.info("audio track dropped camera=%s codec=%s reason=policy_drop", self.camera.name, codec)
            audio = CameraAudio(codec, False)
        with self._lock:
            dropped = self._audio.dropped_packets if self._audio is not None else 0
            self._audio = None if audio is None else replace(audio, dropped_packets=dropped)

    # ----- down / up ---------------------------------------------------------------------------------------
    def _went_down(self, reason: str) -> None:
        """The camera stopped delivering: open the gap and, the first time, report the outage."""
        if self._gap_from_ns is None:
            self._gap_from_ns = self._last_end_ns or self._started_wall_ns
            self._gap_reason = reason
        if self._down is not None:
            return  # still down: a failed retry is not news
        since_ns = self._last_packet_wall_ns or self._started_wall_ns
        with self._lock:
            self._down = (since_ns, reason)
        self._report_connection(ConnectionChange(self.camera.name, False, self._clock.wall_ns(), since_ns,
                                                 reason))

    def _came_up(self, at_ns: int) -> None:
        down = self._down
        assert down is not None
        with self._lock:
            self._down = None
        log.info("camera back camera=%s down_s=%.1f", self.camera.name, max(0, at_ns - down[0]) / 1e9)
        self._report_connection(ConnectionChange(self.camera.name, True, at_ns, down[0], down[1]))

    def _report_connection(self, change: ConnectionChange) -> None:
        if self._on_connection is None:
            return
        try:
            self._on_connection(change)
        except Exception:
            log.exception("connection callback failed camera=%s", self.camera.name)

    # ----- segment files -----------------------------------------------------------------------------------
    def _open_writer(self, start_ns: int) -> SegmentWriter | None:
        """The segmenter's ``open_sink``: a new encrypted segment file, or None while the disk is full."""
        if not self._may_start_segment():
            self._wait_for_disk(start_ns, "disk full")
            return None
        if not self._recover_unsealed():
            self._wait_for_disk(start_ns, self._unsealed_wait_reason())
            return None
        path = self._free_path(start_ns)
        now_wall, now_mono = self._clock.wall_ns(), self._clock.monotonic_ns()
        meta = SegmentMeta(
            device_id=self.device_id,
            camera=self.camera.name,
            sequence=self.chain.next_sequence,
            start_ns=start_ns,
            clock_synced=self._clock.clock_synced(),
            boot_id=self._clock.boot_id(),
            # The monotonic time at start_ns (which lies in the past, or ahead during a fast file ingest).
            monotonic_ns=now_mono - (now_wall - start_ns),
            codec=self._codec,
            container=CONTAINER,
            prev_digest=self.chain.prev_digest,
        )
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            writer = SegmentWriter(path, meta, self.recipients, self.signing_key,
                                   flush_seconds=self.durability.flush_seconds,
                                   fsync_seconds=self.durability.fsync_seconds, suite=self.suite)
        except OSError as exc:
            raise SinkFailed(f"cannot create {path}: {exc.strerror or exc}") from exc
        self._writer = writer
        self._report_pending_gap(start_ns)
        if self._state != "recording":
            self._set(state="recording")
        return writer

    def _wait_for_disk(self, start_ns: int, reason: str) -> None:
        """No segment now (the disk is full, or the unsealed segment before it is not recovered yet):
        packets are dropped until a later keyframe may start one."""
        # The state and a failed recovery's error change together: whoever reads the stats in between
        # must not see the error with the camera still "recording".
        error, self._unsealed_error = self._unsealed_error, None
        if self._state == "waiting_disk":
            if error is not None:
                self._set(last_error=error)
            return
        log.warning("segment not started camera=%s reason=%s", self.camera.name, reason)
        self._set(state="waiting_disk", last_error=error)
        if self._gap_from_ns is None:
            self._gap_from_ns = self._last_end_ns or start_ns
            self._gap_reason = reason

    def _free_path(self, start_ns: int) -> Path:
        """The segment's path; a start time already taken (same millisecond) moves on by 1 ms."""
        for bump in range(NAME_COLLISION_TRIES):
            path = segment_path(self.data_dir, self.camera.name, start_ns + bump * NS_PER_MS)
            if not path.exists() and not partial_path(path).exists():
                return path
        raise EdgerecError(f"camera {self.camera.name}: no free segment name near {path}")

    def _seal_writer(self, writer: SegmentWriter, summary: SegmentSummary) -> None:
        """The segmenter's ``close_sink``: seal, advance the hash chain, hand the segment to the catalog.
        A segment that cannot be sealed (its last chunk or trailer finds the disk full) is kept for
        recovery, as in ``_abandon_writer``."""
        self._writer = None
        try:
            sealed = writer.close()
        except Exception as exc:
            self._keep_unsealed(writer, exc)
            raise SinkFailed(f"cannot seal {writer.path}: {exc}") from exc
        self._after_seal(sealed, summary.end_ns)

    def _abandon_writer(self, writer: SegmentWriter, error: BaseException) -> None:
        """The segmenter's ``abort_sink`` after a write failure: seal what is there if the disk lets us;
        otherwise the ``.partial`` is recovered before the next segment starts (see ``_recover_unsealed``)."""
        self._writer = None
        log.error("segment write failed camera=%s path=%s error=%s", self.camera.name, writer.path, error)
        try:
            sealed = writer.close()
        except Exception as exc:
            self._keep_unsealed(writer, exc)
            return
        self._after_seal(sealed, sealed.end_ns)

    def _keep_unsealed(self, writer: SegmentWriter, error: BaseException) -> None:
        """The chain cannot go on past a segment nobody sealed: it is recovered (complete chunks kept, a
        signed "recovered" trailer) before the next segment starts, by this recorder or the camera's next
        one (``handover``), or at the next start-up."""
        log.error("segment not sealed; recovering it before the next one camera=%s sequence=%d path=%s "
                  "error=%s", self.camera.name, writer.meta.sequence, writer.partial_path, error)
        # Not recovered at once: the catalog could not take it on a full disk either. The next segment's
        # start (once the disk-full gate opens) or the stop tries it first.
        self._unsealed = UnsealedSegment(writer.partial_path, writer.meta, writer.header_hash)
        self._unsealed_retry_mono = 0.0
        self._unsealed_failing_since = None

    def _recover_unsealed(self) -> bool:
        """Recover the segment that could not be sealed, if any, and go on with the chain from it. False
        while it still cannot be recovered for lack of space (or another I/O error): no new segment may
        start then, or the recovered one would later fork the chain."""
        unsealed = self._unsealed
        if unsealed is None:
            return True
        now = time.monotonic()
        if now < self._unsealed_retry_mono:
            return False
        try:
            sealed = segfile.recover_partial(unsealed.partial, self.signing_key, meta=unsealed.meta,
                                             header_hash=unsealed.header_hash)
        except SegmentError as exc:
            self._lose_unsealed(unsealed, exc.what)
            return True
        except OSError as exc:
            why = exc.strerror or str(exc)
            if self._give_up_unsealed(exc, now):
                self._lose_unsealed(unsealed, f"cannot recover it for {UNSEALED_GIVE_UP_S:g} s: {why}; the "
                                              "file is left in place for start-up reconciliation")
                return True
            self._unsealed_retry_mono = now + PENDING_RETRY_S
            # Shown by the caller, with the state it leaves the recorder in.
            self._unsealed_error = f"cannot recover unsealed segment {unsealed.partial}: {why}"
            log.warning("unsealed segment not recovered yet camera=%s path=%s error=%s", self.camera.name,
                        unsealed.partial, why)
            return False
        self._unsealed = None
        log.info("unsealed segment recovered camera=%s sequence=%d path=%s frames=%d state=%s",
                 self.camera.name, sealed.meta.sequence, sealed.path, sealed.frames, sealed.state)
        self._after_seal(sealed, sealed.end_ns)
        return True

    def _give_up_unsealed(self, exc: OSError, now: float) -> bool:
        """Does this recovery failure end the waiting? Only a lasting one that is not for want of space: a
        camera must not stop recording for good over one file it cannot read (a bad sector, a permission
        changed by hand)."""
        if exc.errno in _NO_SPACE:
            self._unsealed_failing_since = None
            return False
        if self._unsealed_failing_since is None:
            self._unsealed_failing_since = now
        return now - self._unsealed_failing_since >= UNSEALED_GIVE_UP_S

    def _unsealed_wait_reason(self) -> str:
        """Why no segment starts while the unsealed one waits: space, or an error its recovery meets."""
        return "disk full" if self._unsealed_failing_since is None else "unsealed segment not recovered yet"

    def _lose_unsealed(self, unsealed: UnsealedSegment, why: str) -> None:
        """The unsealed segment is damaged beyond recovery (its ``.partial``, or the file its seal renamed
        before failing), gone, or unreadable for UNSEALED_GIVE_UP_S. Start-up reconciliation quarantines a
        damaged file (or removes a ``.partial`` that holds no footage) exactly as this recovery failed, so
        the catalogued chain goes on from the last sealed segment: the next segment links to that one. Its
        sequence number is not reused, so the quarantined file and the hole in the sequence numbers point
        at each other, and the lost footage is reported as a gap. A file given up as unreadable that start-up
        can read again is recovered instead; chain walks explain the next segment's link past it
        (``segfile.LINK_PAST``)."""
        self._unsealed = None
        self.chain = ChainState(next_sequence=unsealed.meta.sequence + 1, prev_digest=self.chain.prev_digest)
        if self._gap_from_ns is None:
            self._gap_from_ns = self._last_end_ns or unsealed.meta.start_ns
        self._gap_reason = f"unsealed segment lost: {why}"
        self._set(last_error=f"unsealed segment {unsealed.partial} lost: {why}")
        log.error("unsealed segment lost; left for start-up reconciliation camera=%s sequence=%d path=%s "
                  "why=%s", self.camera.name, unsealed.meta.sequence, unsealed.partial, why)

    def _recover_unsealed_at_stop(self) -> None:
        """A last try at stop. What is still left goes to the camera's next recorder in this process
        (``handover``), or, if the daemon stops first, to start-up reconciliation; as no later segment was
        started, the next run's chain (from the catalog's last segment) goes on from it."""
        if self._unsealed is None:
            return
        self._unsealed_retry_mono = 0.0
        try:
            self._recover_unsealed()
        except Exception:
            log.exception("unsealed segment recovery failed camera=%s", self.camera.name)
        error, self._unsealed_error = self._unsealed_error, None
        if error is not None:
            self._set(last_error=error)

    def _after_seal(self, sealed: SealedSegment, end_ns: int) -> None:
        self.chain = ChainState(next_sequence=sealed.meta.sequence + 1, prev_digest=sealed.digest)
        self._last_end_ns = end_ns
        self._error_ended(self._clock.wall_ns())  # a sealed segment: writing works again
        with self._lock:
            self._segments += 1
            self._bytes += sealed.size_bytes
        try:
            self._on_sealed(sealed)
        except Exception:
            # The sealed file is the truth; start-up reconciliation adopts a file the catalog missed.
            log.exception("sealed-segment callback failed camera=%s path=%s", self.camera.name, sealed.path)

    def _report_pending_gap(self, to_ns: int) -> None:
        """Report the footage gap that began at the last disconnect (or start), now that it has ended."""
        from_ns, self._gap_from_ns = self._gap_from_ns, None
        if from_ns is None:
            return
        if self._last_end_ns is not None:
            from_ns = max(from_ns, self._last_end_ns)
        if to_ns <= from_ns:
            return
        log.info("footage gap camera=%s from=%s to=%s seconds=%.1f reason=%s", self.camera.name,
                 rfc3339(from_ns), rfc3339(to_ns), (to_ns - from_ns) / 1e9, self._gap_reason)
        with self._lock:
            self._last_gap = (from_ns, to_ns, self._gap_reason)
        try:
            self._on_gap(self.camera.name, from_ns, to_ns, self._gap_reason)
        except Exception:
            log.exception("gap callback failed camera=%s", self.camera.name)

    # ----- flush timer, health, bookkeeping ----------------------------------------------------------
    def _flush_loop(self) -> None:
        """Seal pending chunks on time even when no packet arrives (a quiet or stalled camera), and
        watch for a stalled camera."""
        # ``time.sleep``, not ``_done.wait``: it wakes five times a second per camera, and a sleep costs
        # about half the CPU of an ``Event.wait`` per wake-up; ending at most one interval after the
        # recording thread is all the latency that costs.
        while True:
            time.sleep(POLL_INTERVAL_S)
            if self._done.is_set():
                return
            self._check_stall(time.monotonic())
            writer = self._writer
            if writer is not None:
                try:
                    writer.poll()
                except Exception as exc:
                    self._set(last_error=f"flush failed: {exc}")
                    log.error("segment flush failed camera=%s error=%s", self.camera.name, exc)

    def _check_stall(self, now_s: float) -> None:
        """The stall watchdog: a live camera that sent nothing for ``stall_seconds`` (while connecting or
        recording) is disconnected. Interrupting ends camera programs at once, a pacing wait within 0.1 s,
        and a network read within its read timeout (never longer than ``stall_seconds``)."""
        if not is_live(self.camera.kind):
            return
        with self._lock:
            attempt = self._attempt
            if attempt is None or attempt.stall_reason is not None or self._stop.is_set():
                return
            age_s = stall_age_s(now_s, attempt.started_mono, self._last_packet_mono)
            if age_s < self.camera.stall_seconds:
                return
            if attempt.source is None and self.camera.kind in NETWORK_KINDS:
                return  # the open is bounded by timeout_seconds; its own error says more
            phase = "recording" if attempt.source is not None else "connecting"
            attempt.stall_reason = f"stalled: no packet for {age_s:.1f} s while {phase}"
            self._stalls += 1
            self._note_error(attempt.stall_reason)
            attempt.cancel.set()
            if attempt.source is not None:
                attempt.source.interrupt()
        log.warning("camera stalled camera=%s no_packet_s=%.1f phase=%s", self.camera.name, age_s, phase)

    def _start_health(self) -> None:
        if self._health_thresholds is None or not self.camera.health:
            return
        from .health import HealthWorker

        on_health = self._on_health
        name = self.camera.name

        def on_change(change: HealthChange) -> None:
            if on_health is not None:
                on_health(name, change)

        self._health = HealthWorker(name, self._health_thresholds, on_change)

    def _stop_health(self) -> None:
        health = self._health
        if health is not None:
            health.stop()

    def _add_counters(self, segmenter: Segmenter) -> None:
        c = segmenter.counters
        with self._lock:
            self._dropped += c.dropped_leading + c.dropped_no_sink + c.mux_errors
            self._discontinuities += c.discontinuities
            if self._audio is not None and c.audio_dropped:
                dropped = self._audio.dropped_packets + c.audio_dropped
                self._audio = replace(self._audio, dropped_packets=dropped)

    def _set(self, *, state: str | None = None, connected: bool | None = None,
             last_error: str | None = None) -> None:
        with self._lock:
            if state is not None:
                self._state = state
            if connected is not None:
                self._connected = connected
            if last_error is not None:
                self._note_error(last_error)

    def _note_error(self, message: str) -> None:
        """Make ``message`` the current error (call with the lock held). The same error again (a retry
        failing the same way) only moves its ``at_ns``; another one ends the current one."""
        now_ns = self._clock.wall_ns()
        current = self._error
        if current is not None and current.message == message:
            self._error = replace(current, at_ns=now_ns)
            return
        if current is not None:
            self._past_errors.append(replace(current, until_ns=now_ns))
        self._error = CameraError(message, now_ns, now_ns)

    def _error_ended(self, now_ns: int) -> None:
        """The camera works again (a packet after connecting, a sealed segment): its current error, if
        any, becomes a past one."""
        with self._lock:
            current = self._error
            if current is None:
                return
            self._past_errors.append(replace(current, until_ns=now_ns))
            self._error = None
