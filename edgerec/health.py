"""Camera health and tamper detection on decoded keyframes: frozen picture, dark or covered lens,
defocused or sprayed lens, camera moved.

Three layers:

- ``analyze`` and ``HealthMonitor`` are the pure core: a small gray image in, ``FrameFeatures`` out;
  features plus a stream time in, ``HealthChange`` events out. No I/O, no clock of their own.
- ``KeyframeDecoder`` is the PyAV edge: it decodes keyframe packets only into a small gray numpy
  image held in memory. Decoded pictures are never written anywhere (the footage on disk is only
  ever the encrypted segments).
- ``HealthWorker`` runs both behind a bounded queue so that analysing a keyframe can never stall the
  recorder's packet loop: ``offer`` never blocks and drops keyframes while the worker is busy. One
  thread with one decoder analyses the keyframes of every camera in turn (``_SharedAnalyser``).
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol

import av
import numpy as np

# Defined with the configuration so that reading a config never imports numpy or PyAV; re-exported
# here, where the detectors use it.
from .config import HealthThresholds

log = logging.getLogger(__name__)

# Size of the analysed picture. POINT scaling to this size costs ~0.2 ms for a 1080p frame; 16:9
# matches most cameras, and other aspect ratios are simply stretched (the detectors do not care).
ANALYSIS_WIDTH_PX = 320
ANALYSIS_HEIGHT_PX = 180
# The signature is the picture reduced to this grid of block means (10x10 pixel blocks at 320x180):
# averaging a block removes most sensor noise while keeping the layout of the scene.
SIGNATURE_ROWS = 18
SIGNATURE_COLS = 32



class Condition(StrEnum):
    """The picture conditions a camera can raise: the one list the MQTT ``tamper`` event, the audit log,
    the status and the docs use (a test checks docs/mqtt.md and docs/configuration.md against it)."""

    DARK = "dark"  # black or covered lens
    FROZEN = "frozen"  # the same picture for too long
    BLURRED = "blurred"  # defocused, sprayed or smeared lens
    MOVED = "moved"  # the camera looks at another scene


CONDITIONS: tuple[str, ...] = tuple(c.value for c in Condition)  # also the order of precedence for ``state``
# Sharpness is measured on the analysed picture reduced 2x2 (160x90 block means: sensor noise halved)
# as the energy of 1-pixel differences against that of SHARPNESS_SPAN_PX-pixel differences, times the
# span: a step edge gives 1, an edge blurred over many pixels 1/SHARPNESS_SPAN_PX, whatever the
# number of edges or the contrast (see docs/health.md).
SHARPNESS_SPAN_PX = 4
# A moved alarm clears only once the view is clearly back near the reference (hysteresis factor).
MOVED_CLEAR_FACTOR = 0.7
# A run of "identical" keyframes may drift this many times the per-keyframe tolerance from its first
# picture (an encoder converging on a still picture) before it stops counting as frozen.
FROZEN_DRIFT_FACTOR = 4.0
# At most this many keyframes of one camera wait for the worker; more are dropped (and counted).
WORKER_QUEUE_SIZE = 2
WORKER_STOP_TIMEOUT_S = 5.0


@dataclass(frozen=True, eq=False)
class FrameFeatures:
    """What the detectors need from one analysed picture."""

    mean_level: float
    std_level: float
    gradient_level: float  # mean absolute difference between neighbouring pixels
    sharpness: float  # edge_sharpness of the picture (1 crisp edges .. 1/SHARPNESS_SPAN_PX blurred)
    layout_std_levels: float  # standard deviation of the signature: how much the scene has a layout
    signature: np.ndarray  # SIGNATURE_ROWS x SIGNATURE_COLS block means, float32


@dataclass(frozen=True)
class HealthChange:
    """A condition became active (``active=True``) or cleared (``active=False``)."""

    camera: str
    condition: str  # one of CONDITIONS
    active: bool
    detail: str  # key=value figures that explain the decision
    t_s: float  # stream time of the keyframe that decided it

    def to_event(self) -> dict[str, Any]:
        """The payload of the MQTT ``tamper`` event and of the audit record."""
        return {
            "event": "tamper",
            "camera": self.camera,
            "condition": self.condition,
            "active": self.active,
            "detail": self.detail,
        }


def analyze(gray: np.ndarray) -> FrameFeatures:
    """Measure brightness, spread, sharpness and the block signature of a 2-D uint8 gray picture."""
    if gray.ndim != 2 or gray.shape[0] < SIGNATURE_ROWS or gray.shape[1] < SIGNATURE_COLS:
        raise ValueError(f"need a 2-D picture of at least {SIGNATURE_COLS}x{SIGNATURE_ROWS}, "
                         f"got {gray.shape}")
    img = gray.astype(np.float32)
    mean = float(img.mean())
    std = float(img.std())
    grad_x = np.abs(np.diff(img, axis=1)).mean()
    grad_y = np.abs(np.diff(img, axis=0)).mean()
    gradient = float(grad_x + grad_y) / 2.0
    signature = block_means(img, SIGNATURE_ROWS, SIGNATURE_COLS)
    return FrameFeatures(
        mean_level=mean,
        std_level=std,
        gradient_level=gradient,
        sharpness=edge_sharpness(block_means(img, img.shape[0] // 2, img.shape[1] // 2)),
        layout_std_levels=float(signature.std()),
        signature=signature,
    )


def edge_sharpness(img: np.ndarray, span_px: int = SHARPNESS_SPAN_PX) -> float:
    """How crisp the picture's edges are, independent of how many there are and of their contrast.

    ``span_px`` times the mean squared 1-pixel difference over the mean squared ``span_px``-pixel
    difference (rows and columns). A step edge of height h gives h^2 once against span_px * h^2: 1.
    An edge spread over w >= span_px pixels gives w * (h/w)^2 against w * (span_px * h/w)^2: 1/span_px.
    Sensor noise counts as crisp (it gives span_px), so a noisy picture never looks blurred. A picture
    without any variation gives 0 (it is dark or featureless, and judged as such).
    """
    fine = float(np.square(np.diff(img, axis=1)).sum() + np.square(np.diff(img, axis=0)).sum())
    coarse = float(np.square(img[:, span_px:] - img[:, :-span_px]).sum()
                   + np.square(img[span_px:] - img[:-span_px]).sum())
    return span_px * fine / coarse if coarse > 0.0 else 0.0


def block_means(img: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Average ``img`` over a rows x cols grid (edge pixels that do not fill a block are ignored)."""
    block_h, block_w = img.shape[0] // rows, img.shape[1] // cols
    cropped = img[: rows * block_h, : cols * block_w]
    return cropped.reshape(rows, block_h, cols, block_w).mean(axis=(1, 3), dtype=np.float32)


def signature_diff_levels(a: np.ndarray, b: np.ndarray) -> float:
    """How much two signatures differ: the 95th percentile of absolute block differences.

    A percentile rather than the maximum, so that an on-screen clock burned into the picture by the
    camera does not hide a frozen sensor.
    """
    return float(np.percentile(np.abs(a - b), 95))


def normalise_signature(signature: np.ndarray) -> np.ndarray:
    """Zero mean, unit spread: removes global brightness and contrast before comparing layouts."""
    flat = signature.astype(np.float32).ravel()
    return (flat - flat.mean()) / max(float(flat.std()), 1.0)


def dissimilarity(a: np.ndarray, b: np.ndarray) -> float:
    """How differently two normalised signatures are laid out: the median absolute block difference.

    0 for the same layout; about 1 for unrelated scenes (two independent unit-spread signatures differ
    by |N(0, 2)|, median 0.95); more for an inverted one. A median, so that people or a vehicle
    covering less than half of the view, however contrasted, cannot make the view look moved.
    """
    return float(np.median(np.abs(a - b)))


@dataclass
class _Condition:
    """Debounces one condition: it changes only after the raw decision has disagreed for long enough."""

    active: bool = False
    disagree_since_s: float | None = None

    def update(self, raw: bool, now_s: float, enter_after_s: float, clear_after_s: float,
               raw_since_s: float | None = None) -> bool:
        """Feed the raw decision at ``now_s``; return True when the debounced state flips."""
        if raw == self.active:
            self.disagree_since_s = None
            return False
        if self.disagree_since_s is None:
            self.disagree_since_s = now_s if raw_since_s is None else min(raw_since_s, now_s)
        needed_s = enter_after_s if raw else clear_after_s
        if now_s - self.disagree_since_s < needed_s:
            return False
        self.active = raw
        self.disagree_since_s = None
        return True


@dataclass
class _Frozen:
    """The run of identical pictures: its first and latest signatures and when it started."""

    anchor: np.ndarray | None = None
    previous: np.ndarray | None = None
    since_s: float = 0.0


class HealthMonitor:
    """Turns a sequence of (features, stream time) of one camera into condition changes."""

    def __init__(self, thresholds: HealthThresholds, camera: str = ""):
        self.thresholds = thresholds
        self.camera = camera
        self._conditions = {name: _Condition() for name in CONDITIONS}
        self._frozen = _Frozen()
        self._reference: np.ndarray | None = None
        self._last_t_s: float | None = None
        self._clock_s = 0.0  # our own time line: stream time with gaps and jumps clamped
        self._keyframes = 0
        self._last: FrameFeatures | None = None
        self._last_moved = 0.0
        self._last_frozen_diff = math.inf
        self._reference_t_s = 0.0
        # The undebounced decisions on the latest keyframe (what calibration counts as false alarms).
        self.last_raw: dict[str, bool] = dict.fromkeys(CONDITIONS, False)

    def observe(self, features: FrameFeatures, t_s: float) -> list[HealthChange]:
        """Take one analysed keyframe at stream time ``t_s`` (seconds); return the conditions that changed."""
        now = self._advance_clock(t_s)
        th = self.thresholds
        self._keyframes += 1
        self._last = features
        featureless = features.layout_std_levels <= th.dark_layout_std_max_levels
        dark = featureless and features.mean_level <= th.dark_mean_max_levels
        # A featureless picture (no layout) compares as "identical" and has no edges: it is reported as
        # dark when dim, and never as frozen, blurred or moved.
        frozen, frozen_since = self._frozen_raw(features, now, featureless)
        blurred = not featureless and features.sharpness < th.blurred_sharpness_min
        moved = self._moved_raw(features, now, learn=not (featureless or frozen or blurred),
                                judge=not (featureless or blurred))

        raw = {"dark": dark, "frozen": frozen, "blurred": blurred, "moved": moved}
        self.last_raw = raw
        enter = {"dark": th.dark_after_s, "frozen": th.frozen_after_s,
                 "blurred": th.blurred_after_s, "moved": th.moved_after_s}
        changes = []
        for name in CONDITIONS:
            since = frozen_since if name == "frozen" else None
            if self._conditions[name].update(raw[name], now, enter[name], th.clear_after_s, since):
                changes.append(HealthChange(self.camera, name, self._conditions[name].active,
                                            self._detail(name, features), t_s))
        return changes

    @property
    def pending(self) -> bool:
        """True while some condition is about to change: then every keyframe should be analysed."""
        return any(c.disagree_since_s is not None for c in self._conditions.values())

    def _advance_clock(self, t_s: float) -> float:
        if self._last_t_s is not None:
            step_s = t_s - self._last_t_s
            # Time going backwards (a reconnect, a wrapped timestamp) counts as no time at all.
            self._clock_s += min(max(step_s, 0.0), self.thresholds.max_gap_s)
        self._last_t_s = t_s
        return self._clock_s

    def _frozen_raw(self, features: FrameFeatures, now_s: float, featureless: bool) -> tuple[bool, float]:
        """Is this picture the same as the previous one? Returns (same, start of the run of same pictures).

        A frozen camera's encoder keeps re-encoding one picture, and with bitrate control the
        keyframes converge in small steps; so each keyframe is compared with the previous one, and
        the run also ends when it drifts too far from its first picture (a slow fade is not frozen).
        """
        run = self._frozen
        previous, run.previous = run.previous, features.signature
        if featureless or previous is None or run.anchor is None:
            self._last_frozen_diff = math.inf
            run.anchor, run.since_s = (None, now_s) if featureless else (features.signature, now_s)
            return False, now_s
        limit = self.thresholds.frozen_block_diff_max_levels
        self._last_frozen_diff = signature_diff_levels(features.signature, previous)
        if (self._last_frozen_diff <= limit
                and signature_diff_levels(features.signature, run.anchor) <= FROZEN_DRIFT_FACTOR * limit):
            return True, run.since_s
        run.anchor, run.since_s = features.signature, now_s
        return False, now_s

    def _moved_raw(self, features: FrameFeatures, now_s: float, learn: bool, judge: bool) -> bool:
        """Does the scene differ strongly from the slowly adapting reference? Updates the reference."""
        current = normalise_signature(features.signature)
        if self._reference is None:
            self._reference = current
            self._reference_t_s = now_s
            self._last_moved = 0.0
            return False
        self._last_moved = dissimilarity(current, self._reference)
        if learn:
            # Exponential moving average with a half-life in seconds, whatever the keyframe interval.
            dt_s = now_s - self._reference_t_s
            alpha = 1.0 - 0.5 ** (dt_s / max(self.thresholds.reference_halflife_s, 1e-9))
            self._reference = self._reference + np.float32(alpha) * (current - self._reference)
        self._reference_t_s = now_s
        if not judge:
            return False  # a dark or blurred picture is reported as such, not also as moved
        limit = self.thresholds.moved_dissimilarity_min
        if self._conditions["moved"].active:
            limit *= MOVED_CLEAR_FACTOR
        return self._last_moved >= limit

    def _detail(self, condition: str, f: FrameFeatures) -> str:
        if condition == "dark":
            return f"mean={f.mean_level:.1f} layout_std={f.layout_std_levels:.2f}"
        if condition == "frozen":
            diff = self._last_frozen_diff
            return f"block_diff={diff:.2f}" if math.isfinite(diff) else "block_diff=none"
        if condition == "blurred":
            return f"sharpness={f.sharpness:.3f} gradient={f.gradient_level:.2f}"
        return f"dissimilarity={self._last_moved:.2f}"

    @property
    def state(self) -> str:
        """``ok`` or the most important active condition."""
        return next((name for name in CONDITIONS if self._conditions[name].active), "ok")

    def snapshot(self) -> dict[str, Any]:
        """Health as shown in the camera's status."""
        active = [name for name in CONDITIONS if self._conditions[name].active]
        last = self._last
        return {
            "state": self.state,
            "active": active,
            "keyframes": self._keyframes,
            "mean": round(last.mean_level, 1) if last else None,
            "std": round(last.std_level, 1) if last else None,
            "sharpness": round(last.sharpness, 3) if last else None,
            "moved_dissimilarity": round(self._last_moved, 3),
        }


class _CodecSource(Protocol):
    @property
    def codec(self) -> Any: ...

    @property
    def extradata(self) -> bytes | None: ...


@dataclass(frozen=True)
class DecoderParams:
    """What it takes to build a decoder for a stream; changes when the camera reconnects differently."""

    codec_name: str  # decoder name, e.g. "h264" (also for packets from an encoder such as libx264)
    extradata: bytes | None = None

    @classmethod
    def from_codec_context(cls, codec_context: _CodecSource) -> DecoderParams:
        return cls(codec_context.codec.canonical_name, codec_context.extradata)


class KeyframeDecoder:
    """Decodes keyframe packets, one at a time, into a small gray picture in memory.

    Only keyframes are sent to the decoder (cheaper than sending every packet with
    ``skip_frame='NONKEY'``). A decoder with B-frame reordering holds each picture back until more
    frames arrive, so after every keyframe it is drained (a flush packet) and re-armed with
    ``flush_buffers``. A damaged packet is counted in ``errors`` and gives None; it never raises.
    """

    def __init__(self, codec_context: _CodecSource | DecoderParams):
        self.params = (codec_context if isinstance(codec_context, DecoderParams)
                       else DecoderParams.from_codec_context(codec_context))
        self.decoded = 0
        self.errors = 0
        self.reopened = 0
        self._ctx = self._open_context()

    def _open_context(self) -> av.VideoCodecContext:
        ctx = av.CodecContext.create(self.params.codec_name, "r")
        if not isinstance(ctx, av.VideoCodecContext):  # keyframes come from a video stream's parameters
            raise ValueError(f"{self.params.codec_name} is not a video codec")
        if self.params.extradata:
            ctx.extradata = self.params.extradata
        # One thread: a lone keyframe gains little from slice threads, and frame threads would add
        # their own delay on top of reordering.
        ctx.thread_count = 1
        # Deblocking makes no difference at the analysed size and is ~10 % of decoding an I-frame.
        ctx.options = {"skip_loop_filter": "all"}
        return ctx

    def feed(self, packet: av.Packet) -> np.ndarray | None:
        """Decode ``packet`` if it is a keyframe; return its gray picture, or None."""
        if not packet.is_keyframe or packet.size == 0:
            return None
        return self.decode_keyframe(packet)

    def decode_keyframe(self, packet: av.Packet) -> np.ndarray | None:
        """Decode one keyframe packet into an ANALYSIS_HEIGHT_PX x ANALYSIS_WIDTH_PX uint8 array."""
        try:
            frames = self._decode_and_drain(packet)
        except av.error.FFmpegError as exc:
            self.errors += 1
            log.debug("keyframe not decodable codec=%s error=%s", self.params.codec_name, exc)
            self._reset()
            return None
        if not frames:
            self.errors += 1
            return None
        self.decoded += 1
        small = frames[-1].reformat(width=ANALYSIS_WIDTH_PX, height=ANALYSIS_HEIGHT_PX,
                                    format="gray", interpolation="POINT")
        return small.to_ndarray()

    def _decode_and_drain(self, packet: av.Packet) -> list[av.VideoFrame]:
        try:
            frames = self._ctx.decode(packet)
        except av.error.EOFError:
            # A decoder left in the drained state refuses input; start a fresh one and retry once.
            self._reopen()
            frames = self._ctx.decode(packet)
        if not frames:
            frames = self._ctx.decode(None)
            self._reset()
        return frames

    def _reset(self) -> None:
        try:
            self._ctx.flush_buffers()
        except av.error.FFmpegError:
            self._reopen()

    def _reopen(self) -> None:
        self.reopened += 1
        self._ctx = self._open_context()


def analysis_due(t_s: float, last_t_s: float | None, interval_s: float, pending: bool) -> bool:
    """Should the keyframe at ``t_s`` be analysed, the last one analysed being at ``last_t_s``?"""
    if pending or last_t_s is None or t_s < last_t_s:  # going back in time: a new stream
        return True
    return t_s - last_t_s >= interval_s


def packet_time_s(packet: av.Packet) -> float | None:
    """Presentation (else decoding) time of a packet in seconds, or None when it has neither."""
    ts = packet.pts if packet.pts is not None else packet.dts
    if ts is None or packet.time_base is None:
        return None
    return float(ts * packet.time_base)


@dataclass
class _WorkerStats:
    offered: int = 0  # keyframes queued or dropped
    skipped: int = 0  # keyframes not due for analysis (analysis_interval_s)
    dropped: int = 0  # keyframes due but dropped because the worker was busy
    failures: int = 0
    busy_s: float = 0.0
    last_error: str | None = None


_STOP = object()


class _SharedAnalyser:
    """The one thread and the one keyframe decoder that analyse the keyframes of every camera.

    A decoder per camera kept a 1080p decoder's frame pool (and, with a thread per camera, a malloc
    arena per thread) resident for each camera although each decodes one keyframe per
    ``analysis_interval_s``: about 14 MB per camera. One worker decodes the keyframes of all cameras in
    turn; the decoder is rebuilt only when the next keyframe needs other parameters (another codec or
    extradata), which costs far less than decoding the keyframe. Each camera keeps its own bounded share
    of the queue (``HealthWorker``), so a camera in alarm that queues every keyframe cannot crowd out
    the others by more than its share.
    """

    def __init__(self) -> None:
        self.users = 0
        self._queue: queue.Queue[Any] = queue.Queue()
        self._decoder: KeyframeDecoder | None = None
        self.thread = threading.Thread(target=self._run, name="health", daemon=True)
        self.thread.start()

    def put(self, worker: HealthWorker, item: tuple[bytes, float, DecoderParams]) -> None:
        self._queue.put((worker, item))

    def stop(self, timeout_s: float) -> None:
        self._queue.put(_STOP)
        self.thread.join(timeout_s)

    def decode(self, data: bytes, params: DecoderParams) -> tuple[np.ndarray | None, int]:
        """The gray picture of one keyframe (or None) and the decode errors it caused."""
        if self._decoder is None or self._decoder.params != params:
            self._decoder = KeyframeDecoder(params)
        decoder = self._decoder
        errors = decoder.errors
        gray = decoder.decode_keyframe(av.Packet(data))
        return gray, decoder.errors - errors

    def _run(self) -> None:
        while True:
            entry = self._queue.get()
            if entry is _STOP:
                return
            worker, item = entry
            worker._process(self, item)


_shared_lock = threading.Lock()
_shared: _SharedAnalyser | None = None


def _acquire_analyser() -> _SharedAnalyser:
    global _shared
    with _shared_lock:
        if _shared is None or not _shared.thread.is_alive():
            _shared = _SharedAnalyser()
        _shared.users += 1
        return _shared


def _release_analyser(analyser: _SharedAnalyser, timeout_s: float) -> None:
    """The last camera to stop stops the thread (and frees the decoder)."""
    global _shared
    with _shared_lock:
        analyser.users -= 1
        if analyser.users > 0:
            return
        if _shared is analyser:
            _shared = None
    analyser.stop(timeout_s)


class HealthWorker:
    """The health analysis of one camera, run by the thread shared by all cameras (``_SharedAnalyser``).

    ``offer`` is called from the recording thread with every packet; it ignores non-keyframes and
    keyframes not due for analysis (see ``analysis_interval_s``), copies the others into the shared
    queue and returns at once. At most ``queue_size`` keyframes of one camera wait there; while the
    worker is still busy with earlier ones, new ones are dropped and counted, so the recorder never
    waits. ``on_change`` is called from the worker thread for every change (log, audit, MQTT event); it
    must not block for long, since the other cameras' keyframes wait behind it.
    """

    def __init__(self, camera: str, thresholds: HealthThresholds,
                 on_change: Callable[[HealthChange], None] | None = None,
                 queue_size: int = WORKER_QUEUE_SIZE):
        self.camera = camera
        self.monitor = HealthMonitor(thresholds, camera)
        self._on_change = on_change
        self._queue_size = queue_size
        self._lock = threading.Lock()  # counters, read by snapshot from other threads
        self._idle = threading.Condition(self._lock)
        self._monitor_lock = threading.Lock()
        self._stats = _WorkerStats()
        self._queued = 0  # keyframes of this camera waiting in the shared queue
        self._unfinished = 0  # queued or being analysed
        self._errors = 0  # decode errors of this camera's keyframes
        self._stopping = False
        self._released = False
        self._last_queued_t_s: float | None = None
        self._analyser = _acquire_analyser()

    def offer(self, packet: av.Packet, t_s: float | None = None,
              codec_context: _CodecSource | None = None) -> bool:
        """Queue a keyframe for analysis; True if queued. Never blocks, never raises.

        ``t_s`` defaults to the packet's own timestamp (keyframes without one are skipped);
        ``codec_context`` to that of the packet's stream (pass the encoder's context for packets the
        recorder encoded itself).
        """
        if self._stopping or not packet.is_keyframe or packet.size == 0:
            return False
        if t_s is None:
            t_s = packet_time_s(packet)
        if t_s is None or not analysis_due(t_s, self._last_queued_t_s,
                                           self.monitor.thresholds.analysis_interval_s, self.monitor.pending):
            with self._lock:
                self._stats.skipped += 1
            return False
        try:
            params = DecoderParams.from_codec_context(codec_context or packet.stream.codec_context)
            # A copy: the recorder goes on to mux (and free) its packet while this one waits here.
            item = (bytes(packet), t_s, params)
        except Exception as exc:  # a packet we cannot use must not break the recorder's loop
            with self._lock:
                self._stats.failures += 1
                self._stats.last_error = repr(exc)
            return False
        with self._lock:
            self._stats.offered += 1
            if self._queued >= self._queue_size:
                self._stats.dropped += 1
                return False
            self._queued += 1
            self._unfinished += 1
        self._analyser.put(self, item)
        self._last_queued_t_s = t_s
        return True

    def stop(self, timeout_s: float = WORKER_STOP_TIMEOUT_S) -> None:
        """Stop analysing this camera, dropping its keyframes still queued (the shared thread skips
        them); the last camera to stop ends the shared thread."""
        self._stopping = True
        with self._lock:
            if self._released:
                return
            self._released = True
        _release_analyser(self._analyser, timeout_s)

    @property
    def alive(self) -> bool:
        return not self._released and self._analyser.thread.is_alive()

    def wait_idle(self, timeout_s: float) -> bool:
        """Wait until every queued keyframe has been analysed; True if so within ``timeout_s``."""
        with self._idle:
            return self._idle.wait_for(lambda: self._unfinished == 0, timeout_s)

    def snapshot(self) -> dict[str, Any]:
        """Health of the camera plus the worker's own counters, for the status."""
        with self._monitor_lock:
            snap = self.monitor.snapshot()
        with self._lock:
            snap.update(
                offered=self._stats.offered,
                skipped=self._stats.skipped,
                dropped=self._stats.dropped,
                decode_errors=self._errors,
                analysed_ms_total=round(self._stats.busy_s * 1000.0, 1),
                failures=self._stats.failures,
                last_error=self._stats.last_error,
            )
        return snap

    def _process(self, analyser: _SharedAnalyser, item: tuple[bytes, float, DecoderParams]) -> None:
        """Run by the shared thread: analyse one of this camera's keyframes (unless it stopped)."""
        with self._lock:
            self._queued -= 1
        try:
            if not self._stopping:
                self._analyse(analyser, *item)
        except Exception as exc:  # the worker must outlive any bad keyframe
            with self._lock:
                self._stats.failures += 1
                self._stats.last_error = repr(exc)
            log.exception("health analysis failed camera=%s", self.camera)
        finally:
            with self._idle:
                self._unfinished -= 1
                self._idle.notify_all()

    def _analyse(self, analyser: _SharedAnalyser, data: bytes, t_s: float, params: DecoderParams) -> None:
        started = time.perf_counter()
        gray, errors = analyser.decode(data, params)
        changes = []
        if gray is not None:
            features = analyze(gray)
            with self._monitor_lock:
                changes = self.monitor.observe(features, t_s)
        with self._lock:
            self._stats.busy_s += time.perf_counter() - started
            self._errors += errors
        for change in changes:
            self._report(change)

    def _report(self, change: HealthChange) -> None:
        if change.active:
            log.warning("camera health alarm camera=%s condition=%s %s", change.camera, change.condition,
                        change.detail)
        else:
            log.info("camera health cleared camera=%s condition=%s %s", change.camera, change.condition,
                     change.detail)
        if self._on_change is None:
            return
        try:
            self._on_change(change)
        except Exception:
            log.exception("health change handler failed camera=%s condition=%s", change.camera,
                          change.condition)

