"""Which elementary streams a segment's MPEG-TS payload carries, as declared by the header's ``codec`` field.

The field lists the payload's streams in order, video first, separated by commas (docs/segment-format.md
§4.1): ``h264`` (video only, as every segment before audio could be kept), ``h264,aac/16000/1``,
``hevc,pcm_alaw/8000/1``. An audio entry is ``codec/sample_rate/channels``. AAC and Opus are standard
MPEG-TS streams; G.711 (``pcm_alaw``, ``pcm_mulaw``) has no MPEG-TS stream type, so it is carried as the
payload's private data stream, its bytes as the camera sent them, and this declaration is the only place
that says what they are. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

# Audio codecs kept in segments (``audio: keep``), by FFmpeg codec name.
KEPT_AUDIO_CODECS = ("aac", "opus", "pcm_alaw", "pcm_mulaw")
# Carried as a private data stream: a reader knows them only from the declaration.
PRIVATE_AUDIO_CODECS = frozenset({"pcm_alaw", "pcm_mulaw"})


@dataclass(frozen=True)
class AudioSpec:
    codec: str  # FFmpeg codec name, one of KEPT_AUDIO_CODECS
    sample_rate: int
    channels: int

    def entry(self) -> str:
        return f"{self.codec}/{self.sample_rate}/{self.channels}"


@dataclass(frozen=True)
class PayloadStreams:
    video: str  # FFmpeg codec name: "h264", "hevc"
    audio: AudioSpec | None = None

    def declaration(self) -> str:
        """The header's ``codec`` field."""
        return self.video if self.audio is None else f"{self.video},{self.audio.entry()}"


def parse_declaration(text: str) -> PayloadStreams:
    """The header's ``codec`` field as streams; ValueError (one line) when it is not of the form above."""
    entries = text.split(",")
    if not entries[0] or "/" in entries[0] or len(entries) > 2:
        raise ValueError(f"codec field {text!r} is not VIDEO or VIDEO,AUDIO/RATE/CHANNELS")
    if len(entries) == 1:
        return PayloadStreams(entries[0])
    parts = entries[1].split("/")
    if (len(parts) != 3 or parts[0] not in KEPT_AUDIO_CODECS
            or not all(p.isascii() and p.isdigit() and p[0] != "0" for p in parts[1:])):
        raise ValueError(f"codec field {text!r}: audio entry {entries[1]!r} is not one of "
                         f"{', '.join(KEPT_AUDIO_CODECS)} as CODEC/RATE/CHANNELS")
    return PayloadStreams(entries[0], AudioSpec(parts[0], int(parts[1]), int(parts[2])))
