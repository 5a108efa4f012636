"""Configuration: YAML in, typed and validated dataclasses out.

Validation is pure (``parse_config`` takes a mapping and returns a ``Config`` or raises ``ConfigError``
listing every problem, each naming its key path such as ``cameras[1].url``); ``load_config`` only adds
reading the file. The daemon, the CLI and config reload all go through ``load_config``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .health import HealthThresholds

# Sources that the recorder decodes and encodes itself (everything else is copied as it comes).
RAW_SOURCE_KINDS = frozenset({"v4l2", "testsrc", "lavfi"})


def source_kind(url: str) -> str:
    """Classify a camera url: rtsp, http, tcp, v4l2, testsrc, lavfi, exec or file."""
    lowered = url.lower()
    if lowered.startswith(("rtsp://", "rtsps://")):
        return "rtsp"
    if lowered.startswith(("http://", "https://")):
        return "http"
    if lowered.startswith("tcp://"):
        return "tcp"
    if lowered == "testsrc" or lowered.startswith("testsrc:"):
        return "testsrc"
    if lowered.startswith("lavfi:"):
        return "lavfi"
    if lowered.startswith("exec:"):
        return "exec"
    if lowered.startswith("/dev/video"):
        return "v4l2"
    return "file"


@dataclass(frozen=True)
class DurabilityConfig:
    flush_seconds: float = 1.0  # longest time footage stays in RAM before its chunk is sealed and written
    fsync_seconds: float = 2.0  # longest time written chunks stay unsynced


@dataclass(frozen=True)
class EncoderConfig:
    """How raw sources (webcams, lavfi, testsrc) are encoded to H.264."""

    codec: str = "auto"  # auto | h264_v4l2m2m | libx264
    bitrate_bps: int = 2_000_000
    gop_seconds: float = 2.0
    preset: str = "veryfast"  # libx264 only


@dataclass(frozen=True)
class CameraConfig:
    name: str
    url: str
    realtime: bool = True  # local files: pace packets at their timestamps
    loop: bool = True  # local files: start again at the end
    enabled: bool = True
    rtsp_transport: str = "tcp"  # tcp | udp
    timeout_seconds: float = 5.0  # read timeout for network sources
    stall_seconds: float = 10.0  # no packet for this long: close and reopen
    retention_days: float | None = None  # per-camera override of retention.days
    health: bool = True  # keyframe health / tamper analysis
    input_options: dict[str, str] = field(default_factory=dict)  # extra FFmpeg input options
    encoder: EncoderConfig = field(default_factory=EncoderConfig)

    @property
    def kind(self) -> str:
        return source_kind(self.url)


@dataclass(frozen=True)
class RetentionConfig:
    days: float = 28.0
    sweep_interval_s: float = 600.0
    # Free-space floor: exactly one of the two is set (``min_free: 5%`` or ``min_free: 2G``).
    min_free_bytes: int | None = None
    min_free_pct: float | None = 5.0


@dataclass(frozen=True)
class IncidentsConfig:
    pre_roll_s: float = 60.0
    post_roll_s: float = 60.0
    release_grace_days: float = 7.0


@dataclass(frozen=True)
class TlsConfig:
    ca_file: Path
    cert_file: Path | None = None
    key_file: Path | None = None


@dataclass(frozen=True)
class MqttConfig:
    enabled: bool = False
    host: str = "localhost"
    port: int = 1883
    client_id: str = ""  # filled from device_id by parse_config when empty
    topic_prefix: str = "edgerec"
    username: str | None = None
    password_file: Path | None = None
    tls: TlsConfig | None = None
    keepalive_s: int = 30
    status_interval_s: float = 30.0
    discovery: bool = True
    discovery_prefix: str = "homeassistant"
    site_topic: str | None = "edgerec/all"  # None: no site-wide commands
    session_expiry_s: int = 7 * 86400  # broker keeps queued commands this long while we are down


@dataclass(frozen=True)
class Config:
    device_id: str
    data_dir: Path
    recipients: tuple[str, ...]  # public key strings made by `edgerec keygen`
    cameras: tuple[CameraConfig, ...]
    segment_seconds: float = 60.0
    durability: DurabilityConfig = field(default_factory=DurabilityConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    incidents: IncidentsConfig = field(default_factory=IncidentsConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    health: HealthThresholds = field(default_factory=HealthThresholds)
    status_file: Path | None = None  # None: <data_dir>/status.json
    source_path: Path | None = None  # the file this config was loaded from

    def camera(self, name: str) -> CameraConfig | None:
        return next((c for c in self.cameras if c.name == name), None)

    @property
    def status_path(self) -> Path:
        return self.status_file or self.data_dir / "status.json"
