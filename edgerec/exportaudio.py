"""The audio track of an export: a segment's kept audio, into the MP4 on the video's timeline.

AAC and Opus are copied as they are. G.711 (``pcm_alaw``, ``pcm_mulaw``), which MP4 players do not take,
is decoded and encoded to AAC here, at export, never on the device; segments carry it as a private data
stream that only the header's declaration names (``payloadstreams``). Each segment's audio is moved by
the same shift as its video, so the two stay in sync however the export places the segment.
"""

from __future__ import annotations

import io
import logging
from fractions import Fraction
from typing import Any

import av

from .payloadstreams import PRIVATE_AUDIO_CODECS, AudioSpec, PayloadStreams

log = logging.getLogger(__name__)

TS_TIME_BASE = Fraction(1, 90_000)
LAYOUTS = {1: "mono", 2: "stereo"}
AAC_FRAME_SAMPLES = 1024


def _fraction(value: Any) -> Fraction | None:
    if value is None or not value:
        return None
    return Fraction(int(value.numerator), int(value.denominator))


def ts_audio_stream(ts: Any, spec: AudioSpec) -> Any:
    """The payload's audio stream as declared: its first audio stream, or for G.711 its first data stream
    (MPEG-TS has no stream type for G.711, so FFmpeg reads it back as codec-less private data)."""
    streams = ts.streams.data if spec.codec in PRIVATE_AUDIO_CODECS else ts.streams.audio
    return streams[0] if streams else None


class AudioExport:
    """The MP4's audio stream: copied from the first segment's, or G.711 encoded to AAC."""

    def __init__(self, container: Any, spec: AudioSpec, template: Any):
        self.spec = spec
        self.packets = 0
        self.dropped = 0  # packets the MP4 muxer refused
        self._container = container
        self._last_dts: int | None = None  # in the output stream's packets' time base
        self._decoder: Any = None
        self._resampler: Any = None
        if spec.codec in PRIVATE_AUDIO_CODECS:
            layout = LAYOUTS.get(spec.channels, "mono")  # G.711 cameras send mono
            decoder = av.CodecContext.create(spec.codec, "r")
            assert isinstance(decoder, av.AudioCodecContext)
            decoder.sample_rate = spec.sample_rate
            decoder.layout = layout
            self._decoder = decoder
            self.stream = container.add_stream("aac", rate=spec.sample_rate)
            self.stream.codec_context.layout = layout
            self.stream.codec_context.time_base = Fraction(1, spec.sample_rate)
            self._resampler = av.AudioResampler(format="fltp", layout=layout,
                                                rate=spec.sample_rate, frame_size=AAC_FRAME_SAMPLES)
        else:
            self.stream = container.add_stream_from_template(template)

    @classmethod
    def for_payload(cls, container: Any, ts: Any, declared: PayloadStreams) -> AudioExport | None:
        """The audio stream of an MP4 whose first segment is ``ts`` (None when it has no kept audio)."""
        if declared.audio is None:
            return None
        template = ts_audio_stream(ts, declared.audio)
        if template is None:
            return None
        return cls(container, declared.audio, template)

    def mux_segment(self, payload: bytes, declared: PayloadStreams, shift: int, shift_tb: Fraction,
                    until: int | None) -> None:
        """Mux one segment's audio, moved by ``shift`` (in ``shift_tb``) as its video was. ``until``: the
        end of the video taken (TS ticks), when frames were left out; audio after it is left out too."""
        if declared.audio != self.spec:
            if declared.audio is not None:
                log.warning("segment audio left out of the export: %s differs from the export's %s",
                            declared.audio.entry(), self.spec.entry())
            return
        with av.open(io.BytesIO(payload), "r", format="mpegts") as ts:
            stream = ts_audio_stream(ts, self.spec)
            if stream is None:
                return
            for packet in ts.demux(stream):
                if not packet.size or packet.pts is None or packet.is_corrupt:
                    continue
                tb = _fraction(packet.time_base) or TS_TIME_BASE
                if until is not None and packet.pts * tb >= until * TS_TIME_BASE:
                    break
                moved = shift * shift_tb / tb
                if moved.denominator != 1:
                    moved = Fraction(round(moved))
                packet.pts += int(moved)
                packet.dts = packet.pts if packet.dts is None else packet.dts + int(moved)
                if self._decoder is not None:
                    self._transcode(packet, tb)
                else:
                    self._copy(packet, tb)

    def finish(self) -> None:
        """Flush the G.711 encoder (before the MP4 is closed)."""
        if self._decoder is None:
            return
        for frame in self._resampler.resample(None):
            self._encode(frame)
        self._encode(None)

    # -- internals --
    def _copy(self, packet: Any, tb: Fraction) -> None:
        if packet.dts < 0 or (self._last_dts is not None and packet.dts <= self._last_dts):
            return  # never a step back (segments may overlap by a packet at their boundary)
        packet.time_base = tb
        packet.stream = self.stream
        self._last_dts = packet.dts
        try:
            self._container.mux(packet)
        except av.FFmpegError as exc:  # a packet the muxer still sees out of order: audio is left out,
            self.dropped += 1           # never the segment's video
            log.debug("audio packet left out of the export error=%s", exc)
            return
        self.packets += 1

    def _transcode(self, packet: Any, tb: Fraction) -> None:
        rate_tb = Fraction(1, self.spec.sample_rate)
        pts = round(packet.pts * tb / rate_tb)
        if pts < 0 or (self._last_dts is not None and pts < self._last_dts):
            return
        for frame in self._decoder.decode(packet):
            frame.pts, frame.time_base = pts, rate_tb
            pts += frame.samples
            self._last_dts = pts
            for out in self._resampler.resample(frame):
                self._encode(out)

    def _encode(self, frame: Any) -> None:
        for packet in self.stream.encode(frame):
            self._container.mux(packet)
            self.packets += 1
