"""Camera sources: open a camera with PyAV and yield the compressed packets of its video stream, and of its
audio stream when the camera's ``audio`` policy keeps it.

H.264/H.265 sources (RTSP, HTTP, TCP, files, ``exec:`` children such as ``rpicam-vid``, webcams that
send H.264) are passed through without decoding. Raw sources (webcams giving YUYV/MJPEG, ``lavfi:``
graphs and the built-in ``testsrc`` camera) are decoded and encoded to H.264 by one shared encoder path.

Audio (RTSP, HTTP, TCP and file sources that are passed through, files only when not looped): the
camera's best audio stream is noted in ``SourceInfo.audio``; with ``audio: keep`` and a codec of
``payloadstreams.KEPT_AUDIO_CODECS`` its packets are yielded too (their ``stream_index`` is
``Source.audio_index``), otherwise they are dropped while demuxing.

A ``Source`` is read by one thread (``packets()`` then ``close()``); ``interrupt()`` may be called from
any thread to make a blocked or pacing reader return soon.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import os
import shlex
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from typing import Any
from urllib.parse import quote, unquote, urlsplit, urlunsplit

import av
from av.video.frame import PictureType

from .config import CameraConfig, EncoderConfig, source_kind
from .errors import SourceError
from .payloadstreams import KEPT_AUDIO_CODECS, AudioSpec
from .redact import redact, register_secret

log = logging.getLogger(__name__)

PASSTHROUGH_CODECS = frozenset({"h264", "hevc"})
NETWORK_KINDS = frozenset({"rtsp", "http", "tcp"})
AUDIO_KINDS = NETWORK_KINDS | {"file"}  # sources whose audio track is looked at
# Inputs that end by themselves (a file without loop, a finite lavfi graph) and cannot hang; every other
# kind is a camera, whose end of input is a disconnect.
NOT_LIVE_KINDS = frozenset({"file", "lavfi", "testsrc"})
TESTSRC_DEFAULTS = {"size": "1280x720", "rate": "25"}
# A paced reader that falls this far behind its schedule (or whose timestamps jump this far ahead of it)
# starts a new schedule instead of bursting (or waiting).
PACING_MAX_LAG_S = 1.0
PACING_SLICE_S = 0.1  # a pacing wait sleeps at most this long between looks at ``interrupt``
CHILD_EXIT_TIMEOUT_S = 3.0
# Raw H.264 from a child has no timestamps, so FFmpeg's default probe (5 s of frames) would only delay
# the start; the parameter sets come first anyway.
EXEC_INPUT_OPTIONS = {"probesize": "32768", "analyzeduration": "500000"}
CHILD_STDERR_LINES = 20
ENCODER_PROBE_SIZE = (320, 240)

_encoder_probe_cache: dict[str, bool] = {}
_encoder_probe_lock = threading.Lock()


# ----- small pure helpers ---------------------------------------------------------------------------
def as_fraction(value: Any) -> Fraction | None:
    """A PyAV rational (Fraction in PyAV 18, AVRational in 19, falsy when unset) as a Fraction or None."""
    if value is None or not value:
        return None
    return Fraction(int(value.numerator), int(value.denominator))


def read_camera_password(camera: CameraConfig) -> str:
    """The password in the camera's ``password_file`` (its first line); SourceError naming the file only."""
    assert camera.password_file is not None
    try:
        with open(camera.password_file, encoding="utf-8") as fh:
            password = fh.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        why = getattr(exc, "strerror", None) or type(exc).__name__
        raise SourceError(f"camera {camera.name}: cannot read password_file {camera.password_file}: "
                          f"{why}") from None
    if not password:
        raise SourceError(f"camera {camera.name}: password_file {camera.password_file} is empty")
    register_secret(password)  # from now on scrubbed from every log line, status and audit line
    return password


def url_with_credentials(url: str, username: str, password: str) -> str:
    """``url`` with ``username:password@`` put in, both percent-encoded (so any character is allowed)."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{quote(username, safe='')}:{quote(password, safe='')}@{host}"))


def open_url(camera: CameraConfig) -> str:
    """The url FFmpeg opens: the configured one, with the password from ``password_file`` put in now (it is
    never stored in the config, the status or anything else that is kept)."""
    if camera.password_file is None:
        return camera.url
    username = camera.username
    if username is None:
        username = unquote(urlsplit(camera.url).username or "")
    return url_with_credentials(camera.url, username, read_camera_password(camera))


def testsrc_graph(url: str) -> str:
    """The lavfi graph of the built-in test camera: ``testsrc`` or ``testsrc:size=640x360:rate=25``."""
    params = dict(TESTSRC_DEFAULTS)
    _, _, rest = url.partition(":")
    for item in filter(None, rest.split(":")):
        key, sep, value = item.partition("=")
        if not sep:
            raise SourceError(f"testsrc option {item!r} is not key=value, as in testsrc:size=640x360:rate=25")
        params[key.strip()] = value.strip()
    return "testsrc2=" + ":".join(f"{k}={v}" for k, v in params.items())


def is_live(kind: str) -> bool:
    """A live source's end of input is a disconnect (reconnect); a file's or a lavfi graph's is its end."""
    return kind not in NOT_LIVE_KINDS


def read_timeout_s(camera: CameraConfig) -> float:
    """How long one read of a network camera may block: the read timeout, and never longer than the
    stall watchdog allows (the watchdog cannot break into a read that FFmpeg is blocked in)."""
    return min(camera.timeout_seconds, camera.stall_seconds)


def input_options(camera: CameraConfig) -> dict[str, str]:
    """FFmpeg input options for a camera: timeouts and transport by kind, then the user's own options."""
    kind = camera.kind
    timeout_us = str(int(camera.timeout_seconds * 1_000_000))
    options: dict[str, str] = {}
    if kind == "rtsp":
        options = {"rtsp_transport": camera.rtsp_transport, "timeout": timeout_us}
    elif kind in ("http", "tcp"):
        options = {"rw_timeout": timeout_us}
    options.update({str(k): str(v) for k, v in camera.input_options.items()})
    return options


@dataclass(frozen=True)
class SourceInfo:
    """What was opened, for logs and status."""

    kind: str
    codec: str  # codec of the packets handed on (after encoding, for raw sources)
    width: int
    height: int
    encoded_by: str | None  # the H.264 encoder used for a raw source, None for passthrough
    audio: str | None = None  # codec of the camera's audio track, None when it has none
    audio_kept: AudioSpec | None = None  # the audio track handed on (``audio: keep``, a kept codec)


# ----- the source ----------------------------------------------------------------------------------
class Source:
    """An opened camera. ``stream`` is the template for the segment muxer (``add_stream_from_template``)."""

    def __init__(
        self,
        camera: CameraConfig,
        container: Any,
        in_stream: Any,
        *,
        encoder: _Encoder | None = None,
        child: _Child | None = None,
        audio_stream: Any = None,
        monotonic: Callable[[], float] = time.monotonic,
    ):
        self.camera = camera
        self.kind = camera.kind
        self._container = container
        self._in_stream = in_stream
        self._encoder = encoder
        self._child = child
        self._monotonic = monotonic
        self._stop = threading.Event()
        self.stream = encoder.stream if encoder is not None else in_stream
        audio = audio_track(camera, audio_stream)
        # The template of the segment muxer's audio stream, when the audio is kept.
        self.audio_stream = audio_stream if audio is not None else None
        # The stream index of the kept audio track's packets (None: only video packets are yielded).
        self.audio_index: int | None = audio_stream.index if self.audio_stream is not None else None
        ctx = self.stream.codec_context
        self.info = SourceInfo(
            kind=self.kind,
            codec="h264" if encoder is not None else ctx.name,
            width=int(ctx.width or 0),
            height=int(ctx.height or 0),
            encoded_by=encoder.codec_name if encoder is not None else None,
            audio=audio_stream.codec_context.name if audio_stream is not None else None,
            audio_kept=audio,
        )
        self.time_base = as_fraction(self.stream.time_base)
        rate = as_fraction(in_stream.average_rate) or as_fraction(in_stream.guessed_rate)
        self.frame_rate = rate
        self.ended = False  # set when the input reached its end (not by interrupt or error)

    @property
    def live(self) -> bool:
        """A live source's end of input is a disconnect; a file's (without loop) is its end."""
        return is_live(self.kind)

    @property
    def child_exit_code(self) -> int | None:
        """An ``exec:`` source's program: its exit status once it has ended (negative: the signal that
        ended it); None while it runs, and for every other kind of source."""
        return self._child.proc.poll() if self._child is not None else None

    def packets(self) -> Iterator[Any]:
        """Yield compressed video packets (and those of the kept audio track) until the end of input; raise
        SourceError on read errors."""
        packets = self._raw_packets()
        if self._encoder is not None:
            packets = self._encoder.encode_all(self._frames(packets))
        try:
            for packet in packets:
                if self._stop.is_set():
                    return
                yield packet
        except av.FFmpegError as exc:
            if self._stop.is_set():
                return
            raise SourceError(f"camera {self.camera.name}: read failed: {_one_line(exc)}") from exc
        if not self._stop.is_set():
            self.ended = True
            if self._child is not None:
                self._child.note_exit(self.camera.name)

    def interrupt(self) -> None:
        """Ask a reader in another thread to stop soon (pacing waits end; an exec child is killed)."""
        self._stop.set()
        if self._child is not None:
            self._child.terminate()

    def close(self) -> None:
        """Release the input, the encoder and any child process (call from the reading thread)."""
        self._stop.set()
        with contextlib.suppress(Exception):
            self._container.close()
        if self._encoder is not None:
            self._encoder.close()
        if self._child is not None:
            self._child.kill()

    # -- internals --
    def _raw_packets(self) -> Iterator[Any]:
        paced = self.camera.realtime and self.kind in ("file", "lavfi", "testsrc")
        if self.kind == "file" and self.camera.loop:
            packets = self._looped_file_packets()
        else:
            packets = demux_video(self._container, self._in_stream, self._stop, self.audio_stream)
        if self.kind == "exec":
            packets = self._wallclock_stamped(packets)
        if paced:
            packets = self._paced(packets)
        return packets

    def _frames(self, packets: Iterator[Any]) -> Iterator[Any]:
        decoder = self._in_stream.codec_context
        for packet in packets:
            try:
                yield from decoder.decode(packet)
            except av.InvalidDataError as exc:
                # One damaged webcam frame (a torn MJPEG, say) is skipped, not a reason to reconnect.
                log.debug("undecodable frame skipped camera=%s error=%s", self.camera.name, _one_line(exc))
        yield from decoder.decode(None)

    def _looped_file_packets(self) -> Iterator[Any]:
        """Play the file again and again, shifting timestamps so they keep increasing across passes."""
        offset = 0
        while not self._stop.is_set():
            first_ts: int | None = None
            end_ts: int | None = None
            count = 0
            for packet in demux_video(self._container, self._in_stream, self._stop):
                ts = packet.dts if packet.dts is not None else packet.pts
                if ts is not None:
                    if first_ts is None:
                        first_ts = ts
                    end_ts = max(end_ts if end_ts is not None else ts, ts + max(packet.duration or 0, 0))
                    packet.dts = None if packet.dts is None else packet.dts + offset
                    packet.pts = None if packet.pts is None else packet.pts + offset
                count += 1
                yield packet
            if count == 0 or first_ts is None or end_ts is None:
                return
            offset += end_ts - first_ts + (0 if end_ts > first_ts else _frame_ticks(self._in_stream))
            try:
                self._container.seek(0, backward=True, any_frame=False, stream=self._in_stream)
            except av.FFmpegError as exc:
                message = f"camera {self.camera.name}: cannot loop the file: {_one_line(exc)}"
                raise SourceError(message) from exc

    def _wallclock_stamped(self, packets: Iterator[Any]) -> Iterator[Any]:
        """Give raw H.264 from a child (which carries no timestamps) its arrival time on the monotonic clock.

        Timestamps are strictly increasing; a frame with a timestamp of its own keeps it.
        """
        tb = as_fraction(self._in_stream.time_base) or Fraction(1, 90_000)
        # Frames read in one burst still get distinct times at the 90 kHz resolution of MPEG-TS.
        min_step = max(1, math.ceil(Fraction(1, 90_000) / tb))
        start = self._monotonic()
        last = -min_step
        for packet in packets:
            if packet.dts is None and packet.pts is None:
                ts = max(round((self._monotonic() - start) / tb), last + min_step)
                packet.pts = packet.dts = ts
                last = ts
            yield packet

    def _paced(self, packets: Iterator[Any]) -> Iterator[Any]:
        """Release packets at the pace of their timestamps against the monotonic clock."""
        # This runs once per packet on every real-time file camera: float seconds (Fraction arithmetic
        # would cost more than the rest of the pacing; tick counts are relative to the anchor) and
        # ``time.sleep``, the cheapest timed wait (about half the CPU of ``Event.wait`` per wake-up),
        # in slices so that ``interrupt`` still ends a wait within ``PACING_SLICE_S``.
        seconds_per_tick = float(as_fraction(self._in_stream.time_base) or Fraction(1, 90_000))
        audio_index, monotonic, stopping = self.audio_index, self._monotonic, self._stop.is_set
        anchor_s, anchor_ts = 0.0, None
        for packet in packets:
            if packet.stream_index == audio_index:  # paced by the video it goes with
                yield packet
                continue
            ts = packet.dts if packet.dts is not None else packet.pts
            if ts is not None:
                now = monotonic()
                if anchor_ts is None:
                    anchor_s, anchor_ts = now, ts
                due = anchor_s + (ts - anchor_ts) * seconds_per_tick
                if abs(due - now) > PACING_MAX_LAG_S:
                    # Far behind, or a timestamp jump either way: a camera would go on sending in real
                    # time, so start a new schedule here instead of bursting or waiting out the jump.
                    anchor_s, anchor_ts, due = now, ts, now
                while due > now:
                    time.sleep(min(due - now, PACING_SLICE_S))
                    if stopping():
                        return
                    now = monotonic()
            yield packet


def _frame_ticks(stream: Any) -> int:
    """One frame's duration in the stream's time base (the gap kept between two passes of a loop)."""
    tb = as_fraction(stream.time_base) or Fraction(1, 90_000)
    rate = as_fraction(stream.average_rate) or as_fraction(stream.guessed_rate) or Fraction(25)
    return max(1, round(1 / (rate * tb)))


def demux_video(container: Any, stream: Any, stop: threading.Event | None = None,
                audio: Any = None) -> Iterator[Any]:
    """The packets of one stream (and of ``audio``, when given), without the empty packet PyAV yields at
    the end of input.

    Every stream is demuxed and the others dropped here, not inside PyAV: a camera whose video died
    while its audio goes on must still hand control back, so that ``stop`` (set by the stall watchdog)
    ends the read.
    """
    index = stream.index
    audio_index = audio.index if audio is not None else None
    for packet in container.demux():
        if packet.stream_index == index or packet.stream_index == audio_index:
            if packet.size:
                yield packet
        elif stop is not None and stop.is_set():
            return


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


# ----- opening ---------------------------------------------------------------------------------------
def open_source(camera: CameraConfig, *, monotonic: Callable[[], float] = time.monotonic,
                cancel: threading.Event | None = None) -> Source:
    """Open a camera; raise SourceError with a one-line message when that is not possible.

    Setting ``cancel`` from another thread aborts an open that waits on an ``exec:`` child (network
    opens are bounded by the camera's timeout).
    """
    kind = source_kind(camera.url)
    child = None
    opened = threading.Event()
    if kind == "exec":
        child = _Child.start(camera)
        if cancel is not None:
            _terminate_on_cancel(child, cancel, opened)
        options = {**EXEC_INPUT_OPTIONS, **{str(k): str(v) for k, v in camera.input_options.items()}}
        target, fmt = f"pipe:{child.stdout_fd}", "h264"
    elif kind == "testsrc":
        target, fmt, options = testsrc_graph(camera.url), "lavfi", {}
    elif kind == "lavfi":
        target, fmt, options = camera.url[len("lavfi:"):], "lavfi", dict(camera.input_options)
    elif kind == "v4l2":
        target, fmt, options = camera.url, "v4l2", dict(camera.input_options)
    else:
        target, fmt, options = open_url(camera), None, input_options(camera)
    timeouts = (camera.timeout_seconds, read_timeout_s(camera)) if kind in NETWORK_KINDS else None
    try:
        container = open_input(target, fmt, options, timeouts)
    except SourceError as exc:
        detail = child.last_words() if child is not None else ""
        if child is not None:
            child.kill()
        raise SourceError(f"camera {camera.name}: {exc}{detail}") from None
    finally:
        opened.set()
    try:
        stream = container.streams.best("video")
        if stream is None:
            raise SourceError(f"camera {camera.name}: no video stream in {redact(camera.url)}")
        if child is not None and not stream.codec_context.width:
            raise SourceError(f"camera {camera.name}: the camera program sent no H.264 video"
                              f"{child.last_words()}")
        encoder = None
        if kind in ("lavfi", "testsrc") or stream.codec_context.name not in PASSTHROUGH_CODECS:
            encoder = _Encoder.for_stream(camera, stream)
        audio = None
        if encoder is None and kind in AUDIO_KINDS and not (kind == "file" and camera.loop):
            audio = container.streams.best("audio")
        source = Source(camera, container, stream, encoder=encoder, child=child, audio_stream=audio,
                        monotonic=monotonic)
    except BaseException:
        container.close()
        if child is not None:
            child.kill()
        raise
    log.info("source opened camera=%s kind=%s codec=%s size=%dx%d encoder=%s audio=%s", camera.name, kind,
             source.info.codec, source.info.width, source.info.height, source.info.encoded_by or "none",
             source.info.audio or "none")
    return source


def audio_track(camera: CameraConfig, stream: Any) -> AudioSpec | None:
    """The audio track to keep: the camera's, when its policy is ``keep``, its codec one that segments
    carry and its parameters known; else None (the track is dropped)."""
    if stream is None or camera.audio != "keep":
        return None
    ctx = stream.codec_context
    rate = int(ctx.sample_rate or 0)
    channels = int(ctx.layout.nb_channels) if ctx.layout is not None else 0
    if ctx.name not in KEPT_AUDIO_CODECS or rate <= 0 or channels <= 0:
        return None
    return AudioSpec(ctx.name, rate, channels)


def _terminate_on_cancel(child: _Child, cancel: threading.Event, opened: threading.Event) -> None:
    """While the demuxer probes a child's output (a blocking read), end the child if ``cancel`` is set."""

    def watch() -> None:
        while not opened.is_set():
            if cancel.wait(0.1):
                if not opened.is_set():
                    child.terminate()
                return

    threading.Thread(target=watch, name=f"exec-{child.camera}-open", daemon=True).start()


def open_input(target: str, fmt: str | None, options: dict[str, str],
               timeouts_s: tuple[float, float] | None) -> Any:
    """av.open for reading with (open, read) timeouts, FFmpeg's errors turned into a one-line SourceError.

    PyAV's read timeout bounds each ``av_read_frame``, whatever the protocol's own timeout does.
    """
    kwargs: dict[str, Any] = {"format": fmt, "options": options}
    if timeouts_s is not None:
        kwargs["timeout"] = timeouts_s
    try:
        return av.open(target, "r", **kwargs)
    except (av.FFmpegError, OSError, ValueError) as exc:
        reason = getattr(exc, "strerror", None) or _one_line(exc)
        raise SourceError(redact(f"cannot open {target}: {reason}")) from exc


# ----- the encoder path for raw sources -----------------------------------------------------------------
def choose_encoder(requested: str) -> str:
    """The H.264 encoder to use: the configured one, else the hardware one when it works, else libx264."""
    if requested != "auto":
        return requested
    if "h264_v4l2m2m" in av.codecs_available and encoder_works("h264_v4l2m2m"):
        return "h264_v4l2m2m"
    return "libx264"


def encoder_works(codec: str) -> bool:
    """Open the encoder once on a tiny frame (a listed hardware encoder may have no device behind it)."""
    with _encoder_probe_lock:
        if codec not in _encoder_probe_cache:
            _encoder_probe_cache[codec] = _probe_encoder(codec)
        return _encoder_probe_cache[codec]


def _probe_encoder(codec: str) -> bool:
    width, height = ENCODER_PROBE_SIZE
    try:
        ctx = av.CodecContext.create(codec, "w")
        if not isinstance(ctx, av.VideoCodecContext):
            return False
        ctx.width, ctx.height, ctx.pix_fmt = width, height, "yuv420p"
        ctx.time_base = Fraction(1, 25)
        ctx.open()
        frame = av.VideoFrame(width, height, "yuv420p")
        frame.pts = 0
        ctx.encode(frame)
        ctx.encode(None)
        return True
    except (av.FFmpegError, OSError, ValueError) as exc:
        log.info("encoder unusable codec=%s error=%s", codec, _one_line(exc))
        return False


class _Encoder:
    """Decoded frames in, H.264 packets out. The encoder's stream lives in a private, never-written muxer
    so that it can serve as the template of the segment muxer like any demuxed stream."""

    def __init__(self, config: EncoderConfig, width: int, height: int, rate: Fraction, time_base: Fraction):
        self.codec_name = choose_encoder(config.codec)
        self._holder = av.open(io.BytesIO(), "w", format="mpegts")
        stream = self._holder.add_stream(self.codec_name, rate=rate)
        if not isinstance(stream, av.VideoStream):  # choose_encoder names H.264 encoders only
            self._holder.close()
            raise SourceError(f"{self.codec_name} is not a video encoder")
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        ctx = stream.codec_context
        ctx.time_base = time_base
        ctx.bit_rate = config.bitrate_bps
        ctx.gop_size = max(1, round(config.gop_seconds * rate))
        if self.codec_name == "libx264":
            ctx.options = {"preset": config.preset}
        try:
            self._holder.start_encoding()
        except (av.FFmpegError, ValueError) as exc:
            self._holder.close()
            raise SourceError(f"cannot start the {self.codec_name} encoder: {_one_line(exc)}") from exc
        self.stream = stream

    @classmethod
    def for_stream(cls, camera: CameraConfig, in_stream: Any) -> _Encoder:
        ctx = in_stream.codec_context
        if not ctx.width or not ctx.height:
            raise SourceError(f"camera {camera.name}: the raw video stream has no frame size")
        rate = as_fraction(in_stream.average_rate) or as_fraction(in_stream.guessed_rate) or Fraction(25)
        time_base = as_fraction(in_stream.time_base) or 1 / rate
        return cls(camera.encoder, ctx.width, ctx.height, rate, time_base)

    def encode_all(self, frames: Iterator[Any]) -> Iterator[Any]:
        stream = self.stream
        for frame in frames:
            if frame.format.name != "yuv420p" or frame.width != stream.width or frame.height != stream.height:
                frame = frame.reformat(width=stream.width, height=stream.height, format="yuv420p")
            # A frame from a decoder or lavfi keeps its picture type; x264 would make each one a keyframe.
            frame.pict_type = PictureType.NONE
            yield from stream.encode(frame)
        yield from stream.encode(None)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._holder.close()


# ----- exec: a child process writing H.264 to stdout ----------------------------------------------------
class _Child:
    """A camera program (``rpicam-vid ... -o -``) whose stdout is raw H.264 Annex B."""

    def __init__(self, proc: subprocess.Popen[bytes], camera: str):
        self.proc = proc
        self.camera = camera
        self._stderr: deque[str] = deque(maxlen=CHILD_STDERR_LINES)
        self._kill_timer: threading.Timer | None = None
        self._kill_lock = threading.Lock()
        self._reader = threading.Thread(target=self._read_stderr, name=f"exec-{camera}-stderr", daemon=True)
        self._reader.start()

    @classmethod
    def start(cls, camera: CameraConfig) -> _Child:
        command = camera.url[len("exec:"):].strip()
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise SourceError(f"camera {camera.name}: cannot parse the exec command: {exc}") from None
        if not argv:
            raise SourceError(f"camera {camera.name}: the exec: url names no command")
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            raise SourceError(f"camera {camera.name}: cannot start {argv[0]}: {exc.strerror}") from None
        log.info("camera process started camera=%s pid=%d program=%s", camera.name, proc.pid, argv[0])
        return cls(proc, camera.name)

    @property
    def stdout_fd(self) -> int:
        assert self.proc.stdout is not None
        return self.proc.stdout.fileno()

    def _read_stderr(self) -> None:
        stderr = self.proc.stderr
        assert stderr is not None
        with stderr:
            for raw in stderr:
                line = redact(raw.decode("utf-8", "replace").rstrip())
                if line:
                    self._stderr.append(line)
                    log.debug("camera process output camera=%s line=%s", self.camera, line)

    def last_words(self) -> str:
        """The child's last stderr line, as a suffix for an error message. Called once its output has
        ended or was useless, when the program is usually exiting: it gets a moment to finish (its last
        line may still be on the way), as does the thread reading its stderr."""
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=0.5)
        self._reader.join(timeout=0.5 if self.proc.poll() is not None else 0)
        return f" (program said: {self._stderr[-1]})" if self._stderr else ""

    def note_exit(self, camera: str) -> None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=0.5)
        code = self.proc.poll()
        log.warning("camera process ended camera=%s code=%s%s", camera, code, self.last_words())

    def terminate(self) -> None:
        """Signal the child's process group to end (safe from any thread: our end of its stdout stays open
        for the reader, which then sees the end of input). The whole group, because a shell wrapper's
        children hold the pipe open too. A program that ignores SIGTERM (or hangs in its shutdown) would
        keep the reader blocked on the pipe, so the group gets SIGKILL after ``CHILD_EXIT_TIMEOUT_S``."""
        self._signal(signal.SIGTERM)
        with self._kill_lock:
            if self._kill_timer is not None or self.proc.poll() is not None:
                return
            timer = threading.Timer(CHILD_EXIT_TIMEOUT_S, self._kill_if_alive)
            timer.daemon = True
            timer.name = f"exec-{self.camera}-kill"
            self._kill_timer = timer
        timer.start()

    def _kill_if_alive(self) -> None:
        if self.proc.poll() is None:
            log.warning("camera process ignored SIGTERM; killing it camera=%s pid=%d", self.camera,
                        self.proc.pid)
            self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(OSError):
                os.killpg(self.proc.pid, signum)  # the child leads its own session and group

    def kill(self) -> None:
        """Stop the child (SIGTERM, then SIGKILL), reap it and close our end of its stdout.

        Only the reading thread calls this, after the demuxer is closed, so no read is in flight.
        """
        proc = self.proc
        if proc.poll() is None:
            self._signal(signal.SIGTERM)
            try:
                proc.wait(timeout=CHILD_EXIT_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self._signal(signal.SIGKILL)
                proc.wait(timeout=CHILD_EXIT_TIMEOUT_S)
        with self._kill_lock:
            if self._kill_timer is not None:
                self._kill_timer.cancel()
        if proc.stdout is not None:
            with contextlib.suppress(OSError):
                proc.stdout.close()
