"""Configuration: YAML in, typed and validated dataclasses out.

Validation is pure (``parse_config`` takes a mapping and returns a ``Config`` or raises ``ConfigError``
listing every problem, each naming its key path such as ``cameras[1].url``); ``load_config`` only adds
reading the file. The daemon, the CLI and config reload all go through ``load_config``.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import shlex
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from .errors import ConfigError, KeyFormatError
from .inputcheck import text_problem

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
class HealthThresholds:
    """Detector thresholds. Levels are 8-bit gray levels (0 black .. 255 white) of the analysed picture."""

    # Analysing a 1080p keyframe (~15 ms of CPU on x86, mostly decoding) costs as much as about 1.2 s
    # of live recording of that stream with the real recorder (~12 ms of CPU per second: demux, mux,
    # encryption, signing, fsync; bench/health.py --realtime). Analysing every keyframe of a 2 s GOP
    # would add ~60 %; one per 30 s adds ~4 %, inside the 10 % budget with room for slower
    # decoding on other CPUs (a Pi 4, without AES instructions, pays relatively more for recording).
    # Once a condition is pending every keyframe is analysed until it is settled, so a problem is
    # noticed within this interval plus its *_after_s. 0 analyses every keyframe.
    analysis_interval_s: float = 30.0

    # The levels below are calibrated on the scenes of tests/health_scenes.py; docs/health.md gives
    # each one's margin and false-alarm count.
    # Frozen: keyframes stay the same picture for this long. Two pictures are "the same" when 95 % of
    # their signature blocks differ by at most ``frozen_block_diff_max_levels``. A frozen encoder
    # repeats its picture to within 0.05; a still view with 1 level of sensor noise differs by 0.39.
    frozen_after_s: float = 60.0
    frozen_block_diff_max_levels: float = 0.2
    # Dark (black or covered lens): a low mean and no layout (the 10x10-pixel block means of the
    # picture spread by at most this much: sensor noise averages out, a dim room keeps its layout).
    dark_mean_max_levels: float = 24.0
    dark_layout_std_max_levels: float = 2.0
    dark_after_s: float = 10.0
    # Blurred (defocused or sprayed): edge sharpness (1 crisp edges, 0.25 edges spread over 4 pixels
    # or more of the picture reduced to 160x90; health.edge_sharpness) below this, for this long.
    blurred_sharpness_min: float = 0.55
    blurred_after_s: float = 30.0
    # Moved: median block difference between the brightness-normalised signature and a slowly
    # adapting reference (0 same layout, about 1 unrelated) at or above this, for this long.
    moved_dissimilarity_min: float = 0.6
    moved_after_s: float = 60.0
    reference_halflife_s: float = 600.0
    # Any active condition clears after its cause has been gone for this long (stops flapping).
    clear_after_s: float = 10.0
    # A jump in stream time larger than this (reconnect, timestamp wrap) counts only as this much.
    max_gap_s: float = 10.0


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
    # The camera's sound: dropped unless kept on purpose (recording sound needs its own legal ground).
    audio: str = "drop"  # drop | keep
    input_options: dict[str, str] = field(default_factory=dict)  # extra FFmpeg input options
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    # Network cameras: credentials kept out of the url (and so out of config dumps and status). The
    # password is read from the file and put into the url only when the camera is opened (source.py).
    username: str | None = None
    password_file: Path | None = None

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
    # A new boot's downtime that nothing proves is credited to the retention clock up to this much
    # (docs/design/time.md): more would let a spoofed wall clock age footage early.
    downtime_credit_days: float = 1.0
    # An HTTPS server whose Date header (over a verified TLS connection) confirms a longer downtime.
    trusted_time: str | None = None
    trusted_time_ca_file: Path | None = None


@dataclass(frozen=True)
class IncidentsConfig:
    pre_roll_s: float = 60.0
    post_roll_s: float = 60.0
    release_grace_days: float = 7.0
    # Limits on what one command can hold (a forged or mistyped command must not pin the whole disk):
    # a closed window spans at most max_window_days, and 'from' lies at most max_window_days before the
    # time of the command. Open-ended incidents stay open-ended (held until handled).
    max_window_days: float = 31.0
    max_open: int = 20  # open incidents per device; one more is refused


@dataclass(frozen=True)
class TlsConfig:
    ca_file: Path | None = None  # None: the system's CA store (OpenSSL's default verify paths)
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
class OffloadConfig:
    """Copying footage to an S3-compatible bucket (``edgerec offload``, a service of its own)."""

    enabled: bool = False
    endpoint: str | None = None  # http(s)://host[:port]; None: the provider's default (AWS S3)
    bucket: str = ""
    prefix: str = "edgerec"
    region: str | None = None
    access_key_id: str | None = None  # None: the standard AWS environment variables / credential chain
    secret_access_key_file: Path | None = None
    what: str = "held"  # held | all
    bandwidth_limit_bytes_per_s: int | None = None  # None: unlimited
    addressing_style: str = "auto"  # auto | path | virtual


@dataclass(frozen=True)
class Config:
    device_id: str
    data_dir: Path
    recipients: tuple[str, ...]  # public key strings made by `edgerec keygen`
    cameras: tuple[CameraConfig, ...]
    segment_seconds: float = 60.0
    segment_cipher: str = "aes-256-gcm"  # SEGMENT_CIPHERS; "auto" is resolved by edgerec.ciphersuite
    durability: DurabilityConfig = field(default_factory=DurabilityConfig)
    retention: RetentionConfig = field(default_factory=RetentionConfig)
    incidents: IncidentsConfig = field(default_factory=IncidentsConfig)
    mqtt: MqttConfig = field(default_factory=MqttConfig)
    health: HealthThresholds = field(default_factory=HealthThresholds)
    offload: OffloadConfig = field(default_factory=OffloadConfig)
    status_file: Path | None = None  # None: $RUNTIME_DIRECTORY (systemd) or <data_dir>, see statusfile.py
    source_path: Path | None = None  # the file this config was loaded from

    def camera(self, name: str) -> CameraConfig | None:
        return next((c for c in self.cameras if c.name == name), None)


# ----- parsing ---------------------------------------------------------------------------------------------
# Everything below turns untrusted YAML data into the dataclasses above. Each check appends one line per
# problem ("<key path>: <what is wrong>") and parsing goes on, so the operator sees every mistake at once.

MAX_CONFIG_BYTES = 1 << 20  # a config file is a few KiB; anything this big is the wrong file
SEGMENT_SECONDS_MIN = 1.0
SEGMENT_SECONDS_MAX = 3600.0
# The chunk cipher of new segments (docs/segment-format.md, the suite field); every reader reads both.
SEGMENT_CIPHERS = ("aes-256-gcm", "chacha20-poly1305", "auto")
BITRATE_BPS_MIN = 10_000
BITRATE_BPS_MAX = 200_000_000
ENCODER_CODECS = ("auto", "h264_v4l2m2m", "libx264")
X264_PRESETS = ("ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow", "slower",
                "veryslow", "placebo")
RTSP_TRANSPORTS = ("tcp", "udp")
AUDIO_POLICIES = ("drop", "keep")
MQTT_TLS_PORT = 8883  # the default port when mqtt.tls is set

# Camera names and the device id become file names, directory names and MQTT topic levels. ASCII only
# (written out rather than IGNORECASE, which lets [a-z] match the Kelvin sign and similar letters).
SAFE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
_URL_SCHEME_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://")
_IDENTIFIER_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SIZE_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([kmgt]i?b?|b)?", re.IGNORECASE)
_BITRATE_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)\s*([kmg])?(?:bps|b/s|bit/s)?", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "b": 1}
for _i, _letter in enumerate("kmgt", start=1):
    # A bare letter and the IEC "KiB" forms count in 1024s (as df -h and systemd do); "KB"/"GB" in 1000s.
    _SIZE_UNITS[_letter] = _SIZE_UNITS[_letter + "ib"] = 1024**_i
    _SIZE_UNITS[_letter + "b"] = 1000**_i
_BITRATE_UNITS = {"": 1, "k": 1000, "m": 1000**2, "g": 1000**3}

# The keys each mapping accepts. Health thresholds are read from HealthThresholds itself.
_KEYS: dict[str, tuple[str, ...]] = {
    "": ("device_id", "data_dir", "recipients", "segment_seconds", "segment_cipher", "durability", "cameras",
         "retention", "incidents", "mqtt", "health", "offload", "status_file"),
    "durability": ("flush_seconds", "fsync_seconds"),
    "cameras[]": ("name", "url", "realtime", "loop", "enabled", "rtsp_transport", "timeout_seconds",
                  "stall_seconds", "retention", "health", "audio", "input_options", "encoder",
                  "username", "password_file"),
    "cameras[].retention": ("days",),
    "cameras[].encoder": ("codec", "bitrate", "gop_seconds", "preset"),
    "retention": ("days", "sweep_interval_s", "min_free", "downtime_credit_days", "trusted_time",
                  "trusted_time_ca_file"),
    "incidents": ("pre_roll_s", "post_roll_s", "release_grace_days", "max_window_days", "max_open"),
    "mqtt": ("enabled", "host", "port", "client_id", "topic_prefix", "username", "password_file", "tls",
             "keepalive_s", "status_interval_s", "discovery", "discovery_prefix", "site_topic",
             "session_expiry_s"),
    "mqtt.tls": ("ca_file", "cert_file", "key_file"),
    "offload": ("enabled", "endpoint", "bucket", "prefix", "region", "access_key_id",
                "secret_access_key_file", "what", "bandwidth_limit", "addressing_style"),
}
_SECTION_NAMES = {"": "at the top level", "cameras[]": "in each camera entry under 'cameras'",
                  "cameras[].encoder": "under a camera's 'encoder'",
                  "cameras[].retention": "under a camera's 'retention'"}


class _Invalid:
    """Marks a value that failed its check (the problem is already recorded)."""

    def __repr__(self) -> str:
        return "INVALID"


_INVALID: Any = _Invalid()
_MISSING: Any = object()
Check = Callable[[object, str, list[str]], Any]  # (value, key path, problems) -> parsed value or _INVALID


def _describe(value: object) -> str:
    """A short rendering of a YAML value for error messages, in YAML's words."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        try:
            text = repr(value)
        except ValueError:  # an int with more digits than Python will print
            return "a very large number"
        return text if len(text) <= 40 else text[:37] + "..."
    if isinstance(value, str):
        text = repr(value)
        return text if len(text) <= 60 else text[:56] + "...'"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a value of type {type(value).__name__}"


def _join(path: str, key: object) -> str:
    if isinstance(key, str) and _IDENTIFIER_RE.fullmatch(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{_describe(key)}]"


def _fmt(number: float) -> str:
    return str(int(number)) if float(number).is_integer() and abs(number) < 1e15 else repr(number)


def accepted_keys() -> dict[str, tuple[str, ...]]:
    """The keys each mapping of the file accepts, by section ("": the top level, "cameras[]": a camera)."""
    return {**_KEYS, "health": tuple(f.name for f in dataclasses.fields(HealthThresholds))}


class _Section:
    """One YAML mapping being read: hands out checked values and reports the keys nobody asked for."""

    def __init__(self, data: Mapping[Any, Any], path: str, kind: str, problems: list[str],
                 keys: tuple[str, ...] | None = None):
        self.data = data
        self.path = path
        self.kind = kind
        self.problems = problems
        self.keys = keys if keys is not None else _KEYS[kind]
        self.bad: set[str] = set()  # keys present but invalid (cross-checks skip them)

    def key_path(self, key: str) -> str:
        return _join(self.path, key)

    def given(self, key: str) -> bool:
        assert key in self.keys, key
        return key in self.data

    def get(self, key: str, check: Check, default: Any = _MISSING, *, required_hint: str = "") -> Any:
        """The checked value of ``key``; ``default`` when absent; _INVALID (recorded) when wrong/missing."""
        assert key in self.keys, key
        if key not in self.data:
            if default is _MISSING:
                self.problems.append(f"{self.key_path(key)}: missing (required{required_hint})")
                return _INVALID
            return default
        value = check(self.data[key], self.key_path(key), self.problems)
        if value is _INVALID:
            self.bad.add(key)
        return value

    def put(self, kw: dict[str, Any], key: str, check: Check, name: str | None = None) -> None:
        """Store the checked value of an optional ``key`` in ``kw`` (under ``name``) when given and valid."""
        value = self.get(key, check, None) if self.given(key) else _INVALID
        if value is not _INVALID:
            kw[name or key] = value

    def finish(self) -> None:
        """Report every key this section does not know, with the likely intended one."""
        for key in self.data:
            if key in self.keys:
                continue
            self.problems.append(f"{_join(self.path, key)}: unknown key{self._hint(key)}")

    def _hint(self, key: object) -> str:
        if not isinstance(key, str):
            return ""
        lowered = key.lower()
        if lowered in self.keys:
            return f" (did you mean '{lowered}'? keys are lower case)"
        close = difflib.get_close_matches(lowered, self.keys, n=1, cutoff=0.7)
        if close:
            return f" (did you mean '{close[0]}'?)"
        sections = accepted_keys()
        # Prefer a top-level section ('retention') to a per-camera one ('cameras[].retention').
        homes = sorted((kind for kind, keys in sections.items() if key in keys and kind != self.kind),
                       key=lambda kind: "[]" in kind)
        if homes:
            where = _SECTION_NAMES.get(homes[0], f"under '{homes[0]}'")
            return f" here (it belongs {where})"
        return ""


def _section(value: object, path: str, kind: str, problems: list[str],
             keys: tuple[str, ...] | None = None) -> _Section | None:
    """A _Section for a mapping value; null counts as empty (every key at its default)."""
    if value is None:
        value = {}
    if not isinstance(value, Mapping):
        problems.append(f"{path}: expected a mapping of keys, got {_describe(value)}")
        return None
    return _Section(value, path, kind, problems, keys)


# ----- checks for single values ----------------------------------------------------------------------------
def _check_bool(value: object, path: str, problems: list[str]) -> Any:
    if isinstance(value, bool):
        return value
    problems.append(f"{path}: expected true or false, got {_describe(value)}")
    return _INVALID


def _number(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
            integer: bool = False) -> Check:
    """A check for a finite number (an int if ``integer``) in [lo, hi], or (lo, hi] when ``lo_open``."""
    noun = "an integer" if integer else "a number"
    if lo is not None and hi is not None and not lo_open:
        wanted = f"{noun} from {_fmt(lo)} to {_fmt(hi)}"
    else:
        bounds = [f"{'>' if lo_open else '>='} {_fmt(lo)}"] if lo is not None else []
        bounds += [f"<= {_fmt(hi)}"] if hi is not None else []
        wanted = " and ".join([f"{noun} {bounds[0]}", *bounds[1:]]) if bounds else noun

    def check(value: object, path: str, problems: list[str]) -> Any:
        if (isinstance(value, int | float) and not isinstance(value, bool)
                and (isinstance(value, int) or not integer)):
            try:
                number = value if integer else float(value)
            except OverflowError:  # an int too large for a float
                number = math.inf
            if ((integer or math.isfinite(number))
                    and (lo is None or (number > lo if lo_open else number >= lo))
                    and (hi is None or number <= hi)):
                return number
        problems.append(f"{path}: expected {wanted}, got {_describe(value)}")
        return _INVALID

    return check


def _check_str(value: object, path: str, problems: list[str]) -> Any:
    if isinstance(value, str) and value.strip() and value.isprintable():
        return value
    if isinstance(value, str):
        problems.append(f"{path}: expected a non-empty string without control characters, "
                        f"got {_describe(value)}")
    elif isinstance(value, int | float) and not isinstance(value, bool):
        problems.append(f"{path}: expected a string, got {_describe(value)} (put it in quotes)")
    else:
        problems.append(f"{path}: expected a string, got {_describe(value)}")
    return _INVALID


def _one_of(choices: tuple[str, ...]) -> Check:
    def check(value: object, path: str, problems: list[str]) -> Any:
        if isinstance(value, str) and value in choices:
            return value
        problems.append(f"{path}: expected one of {', '.join(choices)}; got {_describe(value)}")
        return _INVALID

    return check


def _check_safe_name(value: object, path: str, problems: list[str]) -> Any:
    if isinstance(value, str) and SAFE_NAME_RE.fullmatch(value):
        return value
    if isinstance(value, str):
        problems.append(f"{path}: {_describe(value)} is not a safe name: use 1 to 64 letters, digits, '_' "
                        "or '-', starting with a letter or digit (it is used in file names and MQTT topics)")
        return _INVALID
    return _check_str(value, path, problems)


def _check_topic(value: object, path: str, problems: list[str]) -> Any:
    """An MQTT topic (or prefix) we publish to or subscribe under: no wildcards, no empty levels."""
    if _check_str(value, path, problems) is _INVALID:
        return _INVALID
    assert isinstance(value, str)
    if "+" in value or "#" in value:
        why = "must not contain the MQTT wildcards '+' or '#'"
    elif value.startswith("$"):
        why = "must not start with '$' (reserved for the broker)"
    elif value.startswith("/") or value.endswith("/") or "//" in value:
        why = "must not start or end with '/' or contain empty levels ('//')"
    elif len(value.encode()) > 1024:
        why = "is too long (at most 1024 bytes)"
    else:
        return value
    problems.append(f"{path}: {_describe(value)} {why}")
    return _INVALID


def _path_check(base_dir: Path) -> Check:
    """A check for a file or directory path; relative paths are taken from the config file's directory."""

    def check(value: object, path: str, problems: list[str]) -> Any:
        if _check_str(value, path, problems) is _INVALID:
            return _INVALID
        assert isinstance(value, str)
        if "\x00" in value:
            problems.append(f"{path}: a path cannot contain a NUL character")
            return _INVALID
        p = Path(value)
        return p if p.is_absolute() else base_dir / p

    return check


def _optional(check: Check) -> Check:
    def optional(value: object, path: str, problems: list[str]) -> Any:
        return None if value is None else check(value, path, problems)

    return optional


def parse_size_bytes(text: str) -> int | None:
    """Bytes from ``"2G"``, ``"500MiB"``, ``"1.5 GB"``, ``"1024"``; None when ``text`` is not a size.

    A bare unit letter and the ``KiB`` forms are powers of 1024 (``2G`` = 2 GiB, as ``df -h`` shows it);
    ``KB``, ``MB``, ``GB``, ``TB`` are powers of 1000.
    """
    match = _SIZE_RE.fullmatch(text.strip())
    if not match:
        return None
    size = float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "").lower()]
    return round(size) if math.isfinite(size) else None


def parse_bitrate_bps(value: object) -> int | None:
    """Bits per second from ``2000000``, ``"2M"``, ``"2500k"``, ``"2.5Mbps"`` (decimal units); else None."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if value >= 0 else None
    if isinstance(value, float):
        return round(value) if math.isfinite(value) and value >= 0 else None
    if not isinstance(value, str):
        return None
    match = _BITRATE_RE.fullmatch(value.strip())
    if not match:
        return None
    bps = float(match.group(1)) * _BITRATE_UNITS[(match.group(2) or "").lower()]
    return round(bps) if math.isfinite(bps) else None


def _check_bitrate(value: object, path: str, problems: list[str]) -> Any:
    bps = parse_bitrate_bps(value)
    if bps is not None and BITRATE_BPS_MIN <= bps <= BITRATE_BPS_MAX:
        return bps
    problems.append(f"{path}: expected bits per second from {BITRATE_BPS_MIN} to {BITRATE_BPS_MAX} "
                    f"(2000000, \"2M\", \"2500k\"), got {_describe(value)}")
    return _INVALID


def _check_min_free(value: object, path: str, problems: list[str]) -> Any:
    """``(min_free_bytes, min_free_pct)`` with exactly one of the two set."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value, None
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("%"):
            try:
                pct = float(text[:-1])
            except ValueError:
                pct = math.nan
            if 0 <= pct < 100:
                return None, pct
            problems.append(f"{path}: a percentage must be from 0% to below 100%, got {_describe(value)}")
            return _INVALID
        size = parse_size_bytes(text)
        if size is not None:
            return size, None
    problems.append(f"{path}: expected bytes (2000000000, \"2G\", \"500MiB\") or a percentage of the disk "
                    f"(\"5%\"), got {_describe(value)}")
    return _INVALID


def _fits_text(number: float) -> bool:
    """Whether str() can render this number (Python refuses ints of more than a few thousand digits)."""
    try:
        str(number)
    except ValueError:
        return False
    return True


def _check_input_options(value: object, path: str, problems: list[str]) -> Any:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        problems.append(f"{path}: expected a mapping of FFmpeg option names to values, "
                        f"got {_describe(value)}")
        return _INVALID
    options: dict[str, str] = {}
    ok = True
    for key, option in value.items():
        key_path = _join(path, key)
        if not isinstance(key, str) or not key.strip() or not key.isprintable():
            problems.append(f"{key_path}: an option name must be a non-empty string")
            ok = False
        elif isinstance(option, str):
            options[key] = option
        elif isinstance(option, int | float) and not isinstance(option, bool) and _fits_text(option):
            options[key] = str(option)
        else:
            problems.append(f"{key_path}: expected a string or a number, got {_describe(option)}"
                            + (" (put it in quotes)" if isinstance(option, bool) else ""))
            ok = False
    return options if ok else _INVALID


def _exec_problem(command: str) -> str:
    """What is wrong with the command of an ``exec:`` url (split like a shell would), or ''."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        return f"cannot split the exec: command into arguments: {exc}"
    if not argv:
        return "exec: needs a command after it, like 'exec:rpicam-vid -t 0 --inline -o -'"
    return ""


def _testsrc_problem(rest: str) -> str:
    """What is wrong with the options of a ``testsrc:size=640x360:rate=25`` url, or ''."""
    for item in filter(None, rest.lstrip(":").split(":")):
        if "=" not in item:
            return f"testsrc option {item!r} is not key=value (example: testsrc:size=640x360:rate=25)"
    return ""


CREDENTIALS_FIX = ("write it percent-encoded (@ as %40, : as %3A, / as %2F, # as %23), or give the password "
                   "in a file: password_file (and username) in the camera entry")


def _userinfo_problem(url: str) -> str:
    """What is wrong with the user name and password in a network url, or ''. Never quotes any part of them.

    A password with an unencoded '@', ':', '/' or '#' is split by every url parser at the wrong place (part
    of the password becomes the host, the port or the path), so it is refused as a whole.
    """
    try:
        parts = urlsplit(url)
    except ValueError:
        return ""  # reported by the caller without the url's text
    after_netloc = url.split("://", 1)[-1][len(parts.netloc):]
    userinfo = parts.netloc.rpartition("@")[0]
    if ("@" not in parts.netloc and "@" in after_netloc) or "@" in userinfo or userinfo.count(":") > 1:
        return ("the user name or password in the url contains '@', ':', '/' or '#' that is not "
                f"percent-encoded (an '@' in the path must be %40 too): {CREDENTIALS_FIX}")
    return ""


def _url_check(base_dir: Path) -> Check:
    """A camera url: the scheme decides what must be in it. Files are not checked for existence."""

    def check(value: object, path: str, problems: list[str]) -> Any:
        if _check_str(value, path, problems) is _INVALID:
            return _INVALID
        assert isinstance(value, str)
        if value != value.strip():
            problems.append(f"{path}: remove the spaces around the url")
            return _INVALID
        kind = source_kind(value)
        why = ""
        if kind in ("rtsp", "http", "tcp"):
            why = _userinfo_problem(value)
            try:
                parts = urlsplit(value)
                host, _port = parts.hostname, parts.port  # .port raises ValueError when not a port number
            except ValueError as exc:
                # The exception quotes the url's text, which may hold a password: say only what is wrong.
                reason = "the port is not a number" if "could not be cast" in str(exc) else str(exc)
                host, why = None, why or f"not a valid {kind} url ({reason})"
            if not host and not why:
                example = {"rtsp": "rtsp://192.168.1.20:554/stream", "http": "http://192.168.1.20/video.ts",
                           "tcp": "tcp://192.168.1.20:9000"}[kind]
                why = f"the url has no host (expected something like {example})"
        elif kind == "exec":
            why = _exec_problem(value[len("exec:"):])
        elif kind == "testsrc":
            why = _testsrc_problem(value[len("testsrc"):])
        elif kind == "lavfi" and not value[len("lavfi:"):].strip():
            why = "lavfi: needs a filter graph after it, like 'lavfi:testsrc2=size=640x360:rate=25'"
        elif kind == "file" and _URL_SCHEME_RE.match(value):
            scheme = value.split(":", 1)[0]
            why = (f"unsupported url scheme '{scheme}': use rtsp://, rtsps://, http://, https://, tcp://, "
                   "exec:, lavfi:, testsrc, /dev/videoN or a file path")
        if why:
            problems.append(f"{path}: {why}")
            return _INVALID
        if kind == "file" and not Path(value).is_absolute():
            return str(base_dir / value)
        return value

    return check


def _check_recipients(value: object, path: str, problems: list[str]) -> Any:
    if not isinstance(value, list | tuple):
        problems.append(f"{path}: expected a list of public keys (made by 'edgerec keygen'), "
                        f"got {_describe(value)}")
        return _INVALID
    if not value:
        problems.append(f"{path}: at least one recipient public key is needed, or nobody can ever decrypt "
                        "the footage")
        return _INVALID
    # Imported here, as before: loading the config alone does not pull in the cryptography package.
    from . import keys as keys_module

    keys: list[str] = []
    first_index: dict[str, int] = {}
    for i, item in enumerate(value):
        item_path = f"{path}[{i}]"
        if not isinstance(item, str):
            problems.append(f"{item_path}: expected a public key string, got {_describe(item)}")
            continue
        try:
            # Stored in its canonical spelling, so the same key typed in upper case is a duplicate.
            text = keys_module.format_public_key(keys_module.parse_public_key(item.strip(), source=item_path))
        except KeyFormatError as exc:
            message = str(exc)
            problems.append(message if message.startswith(item_path) else f"{item_path}: {message}")
            continue
        if text in first_index:
            problems.append(f"{item_path}: the same key as {path}[{first_index[text]}]")
            continue
        first_index[text] = i
        keys.append(text)
    return tuple(keys) if len(keys) == len(value) else _INVALID


# ----- sections --------------------------------------------------------------------------------------------
def _durability(value: object, problems: list[str]) -> Any:
    s = _section(value, "durability", "durability", problems)
    if s is None:
        return _INVALID
    kw: dict[str, Any] = {}
    s.put(kw, "flush_seconds", _number(0, 60, lo_open=True))
    s.put(kw, "fsync_seconds", _number(0, 600, lo_open=True))
    s.finish()
    result = DurabilityConfig(**kw)
    if not s.bad and result.fsync_seconds < result.flush_seconds:
        problems.append(f"durability.fsync_seconds: must be at least flush_seconds "
                        f"({_fmt(result.flush_seconds)}), got {_fmt(result.fsync_seconds)}: "
                        "chunks are synced after they are written")
        return _INVALID
    return result if not s.bad else _INVALID


def _encoder(value: object, path: str, problems: list[str]) -> Any:
    s = _section(value, path, "cameras[].encoder", problems)
    if s is None:
        return _INVALID
    kw: dict[str, Any] = {}
    s.put(kw, "codec", _one_of(ENCODER_CODECS))
    s.put(kw, "bitrate", _check_bitrate, "bitrate_bps")
    s.put(kw, "gop_seconds", _number(0, 60, lo_open=True))
    s.put(kw, "preset", _one_of(X264_PRESETS))
    s.finish()
    return EncoderConfig(**kw) if not s.bad else _INVALID


def _camera_retention_days(value: object, path: str, problems: list[str]) -> Any:
    s = _section(value, path, "cameras[].retention", problems)
    if s is None:
        return _INVALID
    days = s.get("days", _optional(_number(0, 36500, lo_open=True)), None)
    s.finish()
    return days


def _camera(value: object, path: str, base_dir: Path, segment_seconds: float | None,
            problems: list[str]) -> CameraConfig | None:
    s = _section(value, path, "cameras[]", problems)
    if s is None or value is None:
        if value is None:
            problems.append(f"{path}: expected a camera (a mapping with name and url), got null")
        return None
    name = s.get("name", _check_safe_name)
    url = s.get("url", _url_check(base_dir))
    kw: dict[str, Any] = {}
    for key in ("realtime", "loop", "enabled", "health"):
        s.put(kw, key, _check_bool)
    s.put(kw, "rtsp_transport", _one_of(RTSP_TRANSPORTS))
    s.put(kw, "audio", _one_of(AUDIO_POLICIES))
    s.put(kw, "timeout_seconds", _number(0, 3600, lo_open=True))
    s.put(kw, "stall_seconds", _number(0, 3600, lo_open=True))
    s.put(kw, "retention", _camera_retention_days, "retention_days")
    s.put(kw, "input_options", _check_input_options)
    encoder = s.get("encoder", lambda v, p, pr: _encoder(v, p, pr), EncoderConfig())
    s.put(kw, "username", _optional(_check_str))
    s.put(kw, "password_file", _optional(_path_check(base_dir)))
    s.finish()
    if url is not _INVALID and not {"username", "password_file"} & s.bad:
        credentials_problem = _camera_credentials_problem(url, kw.get("username"), kw.get("password_file"))
        if credentials_problem:
            problems.append(f"{path}.{credentials_problem}")
            return None
    encoder_section = value.get("encoder") if isinstance(value, Mapping) else None
    gop_given = isinstance(encoder_section, Mapping) and "gop_seconds" in encoder_section
    if encoder is not _INVALID and segment_seconds is not None and encoder.gop_seconds > segment_seconds \
            and not gop_given:
        # Short segments (tests, demos) need keyframes at least as often: follow them unless told otherwise.
        encoder = dataclasses.replace(encoder, gop_seconds=segment_seconds)
    if encoder is not _INVALID and url is not _INVALID and segment_seconds is not None \
            and source_kind(url) in RAW_SOURCE_KINDS and encoder.gop_seconds > segment_seconds:
        problems.append(f"{path}.encoder.gop_seconds: must not exceed segment_seconds "
                        f"({_fmt(segment_seconds)}), got {_fmt(encoder.gop_seconds)}: "
                        "segments start on keyframes")
        return None
    if name is _INVALID or url is _INVALID or encoder is _INVALID or s.bad:
        return None
    return CameraConfig(name=name, url=url, encoder=encoder, **kw)


def _camera_credentials_problem(url: str, username: str | None, password_file: Path | None) -> str:
    """What is wrong with a camera's username/password_file given its url, or '' (key name first)."""
    if username is None and password_file is None:
        return ""
    if source_kind(url) not in ("rtsp", "http"):
        key = "password_file" if password_file is not None else "username"
        return (f"{key}: only for rtsp:// and http(s):// cameras (an exec: program reads its credentials "
                "from its own files)")
    parts = urlsplit(url)
    if parts.password is not None:
        return "password_file: the url has a password too: remove it from the url"
    if password_file is None:
        return "password_file: missing (required when username is set)"
    if username is not None and parts.username is not None:
        return "username: the url has a user name too: remove it from the url or from username"
    if username is None and parts.username is None:
        return "username: missing (required when password_file is set, unless the url names the user)"
    return ""


def _cameras(value: object, base_dir: Path, segment_seconds: float | None, problems: list[str]) -> Any:
    if not isinstance(value, list | tuple):
        problems.append(f"cameras: expected a list of cameras, got {_describe(value)}")
        return _INVALID
    if not value:
        problems.append("cameras: at least one camera is needed")
        return _INVALID
    cameras: list[CameraConfig] = []
    seen: dict[str, int] = {}
    ok = True
    for i, item in enumerate(value):
        path = f"cameras[{i}]"
        camera = _camera(item, path, base_dir, segment_seconds, problems)
        name = item.get("name") if isinstance(item, Mapping) else None
        if isinstance(name, str) and SAFE_NAME_RE.fullmatch(name):
            # Case-insensitive: the footage may sit on a FAT/exFAT disk where Gate and gate are one folder.
            folded = name.lower()
            if folded in seen:
                problems.append(f"{path}.name: {name!r} is already the name of cameras[{seen[folded]}]")
                ok = False
            else:
                seen[folded] = i
        if camera is None:
            ok = False
        else:
            cameras.append(camera)
    return tuple(cameras) if ok else _INVALID


def _check_https_url(value: object, path: str, problems: list[str]) -> Any:
    if _check_str(value, path, problems) is _INVALID:
        return _INVALID
    assert isinstance(value, str)
    parts = urlsplit(value)
    if parts.scheme != "https" or not parts.hostname or parts.username or parts.password:
        problems.append(f"{path}: expected an https:// URL (its certificate authenticates the time), "
                        f"got {_describe(value)}")
        return _INVALID
    return value


def _retention(value: object, base_dir: Path, problems: list[str]) -> Any:
    s = _section(value, "retention", "retention", problems)
    if s is None:
        return _INVALID
    kw: dict[str, Any] = {}
    s.put(kw, "days", _number(0, 36500, lo_open=True))
    s.put(kw, "sweep_interval_s", _number(1, 86400))
    s.put(kw, "downtime_credit_days", _number(0, 28))
    s.put(kw, "trusted_time", _optional(_check_https_url))
    s.put(kw, "trusted_time_ca_file", _optional(_path_check(base_dir)))
    min_free = s.get("min_free", _check_min_free, None)
    if min_free not in (None, _INVALID):
        kw["min_free_bytes"], kw["min_free_pct"] = min_free
    s.finish()
    return RetentionConfig(**kw) if not s.bad else _INVALID


def _incidents(value: object, problems: list[str]) -> Any:
    s = _section(value, "incidents", "incidents", problems)
    if s is None:
        return _INVALID
    kw: dict[str, Any] = {}
    s.put(kw, "pre_roll_s", _number(0, 86400))
    s.put(kw, "post_roll_s", _number(0, 86400))
    s.put(kw, "release_grace_days", _number(0, 36500))
    s.put(kw, "max_window_days", _number(0, 36500, lo_open=True))
    s.put(kw, "max_open", _number(1, 100000, integer=True))
    s.finish()
    return IncidentsConfig(**kw) if not s.bad else _INVALID


def _tls(value: object, base_dir: Path, problems: list[str]) -> Any:
    """``mqtt.tls``: a mapping of files (all optional), ``true`` (TLS checked against the system's CA
    store, the same as ``{}``) or ``false`` (no TLS). Anything else (a quoted "true", a number) is
    refused: a typo must not silently decide whether the password crosses the network in the clear. So is
    a ``tls:`` with nothing under it (null), which is what uncommenting only the section's first line of
    the example gives: it reads as "TLS on" but YAML makes it null."""
    if value is False:
        return None
    if value is None:
        problems.append("mqtt.tls: empty; write 'tls: true' (TLS checked against the system's CA store), "
                        "a mapping with ca_file, cert_file, key_file, or 'tls: false' (no TLS)")
        return _INVALID
    if value is True:
        return TlsConfig()
    if not isinstance(value, Mapping):
        problems.append(f"mqtt.tls: expected true, false or a mapping with ca_file, cert_file, key_file; "
                        f"got {_describe(value)}")
        return _INVALID
    s = _Section(value, "mqtt.tls", "mqtt.tls", problems)
    check = _optional(_path_check(base_dir))
    kw: dict[str, Any] = {}
    s.put(kw, "ca_file", check)
    s.put(kw, "cert_file", check)
    s.put(kw, "key_file", check)
    s.finish()
    kw = {k: v for k, v in kw.items() if v is not None}  # null is the same as leaving the key out
    if ("cert_file" in kw) != ("key_file" in kw) and not s.bad:
        have, lacking = ("cert_file", "key_file") if "cert_file" in kw else ("key_file", "cert_file")
        problems.append(f"mqtt.tls.{lacking}: missing (required when {have} is set: a client certificate "
                        "needs its private key)")
        return _INVALID
    if s.bad:
        return _INVALID
    return TlsConfig(**kw)


def _check_client_id(value: object, path: str, problems: list[str]) -> Any:
    if value == "":
        return ""
    if _check_str(value, path, problems) is _INVALID:
        return _INVALID
    assert isinstance(value, str)
    if len(value.encode()) > 256 or value != value.strip():
        problems.append(f"{path}: expected at most 256 bytes without surrounding spaces, "
                        f"got {_describe(value)}")
        return _INVALID
    return value


def _check_host(value: object, path: str, problems: list[str]) -> Any:
    if _check_str(value, path, problems) is _INVALID:
        return _INVALID
    assert isinstance(value, str)
    if "://" in value or any(c.isspace() for c in value) or "/" in value:
        problems.append(f"{path}: expected a host name or address only (set port and tls separately), "
                        f"got {_describe(value)}")
        return _INVALID
    return value


def _check_site_topic(value: object, path: str, problems: list[str]) -> Any:
    if value is None or value is False:
        return None
    if value is True:
        problems.append(f"{path}: expected a topic such as 'edgerec/all', or false to turn it off; got true")
        return _INVALID
    return _check_topic(value, path, problems)


def _mqtt(value: object, device_id: str | None, base_dir: Path, problems: list[str]) -> Any:
    s = _section(value, "mqtt", "mqtt", problems)
    if s is None:
        return _INVALID
    kw: dict[str, Any] = {}
    s.put(kw, "enabled", _check_bool)
    s.put(kw, "host", _check_host)
    s.put(kw, "port", _number(1, 65535, integer=True))
    s.put(kw, "client_id", _check_client_id)
    s.put(kw, "topic_prefix", _check_topic)
    s.put(kw, "username", _optional(_check_str))
    s.put(kw, "password_file", _optional(_path_check(base_dir)))
    tls = s.get("tls", lambda v, p, pr: _tls(v, base_dir, pr), None)
    s.put(kw, "keepalive_s", _number(1, 65535, integer=True))
    s.put(kw, "status_interval_s", _number(1, 86400))
    s.put(kw, "discovery", _check_bool)
    s.put(kw, "discovery_prefix", _check_topic)
    s.put(kw, "site_topic", _check_site_topic)
    s.put(kw, "session_expiry_s", _number(0, 0xFFFFFFFF, integer=True))  # MQTT v5: 32 bits; max = never
    s.finish()
    if not {"username", "password_file"} & s.bad:
        if kw.get("username") is not None and kw.get("password_file") is None:
            problems.append("mqtt.password_file: missing (required when mqtt.username is set)")
            s.bad.add("password_file")
        elif kw.get("password_file") is not None and kw.get("username") is None:
            problems.append("mqtt.username: missing (required when mqtt.password_file is set)")
            s.bad.add("username")
    if s.bad or tls is _INVALID:
        return _INVALID
    if not kw.get("client_id"):
        kw["client_id"] = f"edgerec-{device_id}"
    if tls is not None and "port" not in kw:
        kw["port"] = MQTT_TLS_PORT
    return MqttConfig(tls=tls, **kw)


# S3 bucket names: 3 to 63 lower-case letters, digits, '.' and '-', starting and ending with a letter
# or digit.
_BUCKET_RE = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_S3_PREFIX_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*")
OFFLOAD_WHAT = ("held", "all")
OFFLOAD_ADDRESSING = ("auto", "path", "virtual")
BANDWIDTH_MIN_BYTES_PER_S = 1024


def _check_endpoint(value: object, path: str, problems: list[str]) -> Any:
    if _check_str(value, path, problems) is _INVALID:
        return _INVALID
    assert isinstance(value, str)
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path not in ("", "/") \
            or parts.query or parts.fragment or parts.username or parts.password:
        problems.append(f"{path}: expected an http:// or https:// URL of the store with host and port only "
                        f"(https://minio.school.lan:9000), got {_describe(value)}")
        return _INVALID
    try:
        parts.port  # noqa: B018 (raises on a bad port)
    except ValueError:
        problems.append(f"{path}: the port is not a number from 1 to 65535, got {_describe(value)}")
        return _INVALID
    return value.rstrip("/")


def _check_bucket(value: object, path: str, problems: list[str]) -> Any:
    if isinstance(value, str) and _BUCKET_RE.fullmatch(value) and ".." not in value:
        return value
    if isinstance(value, str):
        problems.append(f"{path}: {_describe(value)} is not a bucket name: 3 to 63 lower-case letters, "
                        "digits, '.' or '-', starting and ending with a letter or digit")
        return _INVALID
    return _check_str(value, path, problems)


def _check_s3_prefix(value: object, path: str, problems: list[str]) -> Any:
    if isinstance(value, str) and _S3_PREFIX_RE.fullmatch(value) and len(value) <= 200:
        return value
    if isinstance(value, str):
        problems.append(f"{path}: {_describe(value)} is not a key prefix: '/'-separated names of letters, "
                        "digits, '.', '_' or '-', without a leading or trailing '/'")
        return _INVALID
    return _check_str(value, path, problems)


def _check_bandwidth(value: object, path: str, problems: list[str]) -> Any:
    """Bytes per second: a number, or a size per second ("2 MB/s", "500KiB/s", "2M")."""
    if value is None:
        return None
    size: int | None = None
    if isinstance(value, int) and not isinstance(value, bool):
        size = value
    elif isinstance(value, str):
        text = value.strip()
        for suffix in ("/s",):
            if text.lower().endswith(suffix):
                text = text[: -len(suffix)]
                break
        size = parse_size_bytes(text)
    if size is not None and size >= BANDWIDTH_MIN_BYTES_PER_S:
        return size
    problems.append(f"{path}: expected bytes per second of at least {BANDWIDTH_MIN_BYTES_PER_S} "
                    f"(2000000, \"2 MB/s\", \"500KiB/s\") or null for no limit, got {_describe(value)}")
    return _INVALID


def _offload(value: object, base_dir: Path, problems: list[str]) -> Any:
    s = _section(value, "offload", "offload", problems)
    if s is None:
        return _INVALID
    kw: dict[str, Any] = {}
    s.put(kw, "enabled", _check_bool)
    s.put(kw, "endpoint", _optional(_check_endpoint))
    s.put(kw, "bucket", _check_bucket)
    s.put(kw, "prefix", _check_s3_prefix)
    s.put(kw, "region", _optional(_check_str))
    s.put(kw, "access_key_id", _optional(_check_str))
    s.put(kw, "secret_access_key_file", _optional(_path_check(base_dir)))
    s.put(kw, "what", _one_of(OFFLOAD_WHAT))
    s.put(kw, "bandwidth_limit", _check_bandwidth, "bandwidth_limit_bytes_per_s")
    s.put(kw, "addressing_style", _one_of(OFFLOAD_ADDRESSING))
    s.finish()
    if kw.get("enabled") and "bucket" not in kw and "bucket" not in s.bad:
        problems.append("offload.bucket: missing (required when offload.enabled is true)")
        s.bad.add("bucket")
    if not {"access_key_id", "secret_access_key_file"} & s.bad:
        if kw.get("access_key_id") is not None and kw.get("secret_access_key_file") is None:
            problems.append("offload.secret_access_key_file: missing (required when offload.access_key_id "
                            "is set)")
            s.bad.add("secret_access_key_file")
        elif kw.get("secret_access_key_file") is not None and kw.get("access_key_id") is None:
            problems.append("offload.access_key_id: missing (required when offload.secret_access_key_file "
                            "is set)")
            s.bad.add("access_key_id")
    return OffloadConfig(**kw) if not s.bad else _INVALID


def _health_check_for(annotation: object) -> Check:
    """A check derived from a HealthThresholds field type: numbers >= 0, bools, optional ones may be null."""
    if isinstance(annotation, str):  # type hints could not be resolved: map the plain names
        annotation = {"float": float, "int": int, "bool": bool, "str": str}.get(annotation, annotation)
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = [a for a in typing.get_args(annotation) if a is not type(None)]
        inner = _health_check_for(members[0]) if len(members) == 1 else (lambda v, p, pr: v)
        return _optional(inner) if len(members) < len(typing.get_args(annotation)) else inner
    if annotation is bool:
        return _check_bool
    if annotation is int:
        return _number(0, integer=True)
    if annotation is float:
        return _number(0)
    if annotation is str:
        return _check_str
    return lambda value, path, problems: value  # a type this loader cannot judge: passed on as written


def _health(value: object, problems: list[str]) -> Any:
    fields = [f for f in dataclasses.fields(HealthThresholds) if f.init]
    try:
        hints = typing.get_type_hints(HealthThresholds)
    except Exception:  # a forward reference that cannot be resolved: fall back to the annotation text
        hints = {}
    s = _section(value, "health", "health", problems, keys=tuple(f.name for f in fields))
    if s is None:
        return _INVALID
    kw: dict[str, Any] = {}
    for f in fields:
        check = _health_check_for(hints.get(f.name, f.type))
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        if has_default:
            s.put(kw, f.name, check)
        else:
            value_ = s.get(f.name, check)
            if value_ is not _INVALID:
                kw[f.name] = value_
    s.finish()
    if s.bad or any(f.name not in kw and f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING for f in fields):
        return _INVALID
    return HealthThresholds(**kw)


def _control_characters(value: object, path: str, problems: list[str],
                        seen: set[int] | None = None) -> None:
    """The text rule of ``inputcheck`` over every key and string of the config (names, urls, exec
    arguments, topics, free text): a control or bidi character anywhere is a problem naming its key.
    ``seen``: containers already walked (YAML aliases can make a structure refer to itself)."""
    seen = set() if seen is None else seen
    if isinstance(value, Mapping | list | tuple):
        if id(value) in seen:
            return
        seen.add(id(value))
    if isinstance(value, str):
        problem = text_problem(value)
        if problem is not None:
            problems.append(f"{path or 'top level'}: {problem}")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            if isinstance(key, str) and text_problem(key) is not None:
                problems.append(f"{_join(path, key)}: the key {text_problem(key)}")
                continue
            _control_characters(item, _join(path, key), problems, seen)
    elif isinstance(value, list | tuple):
        for index, item in enumerate(value):
            _control_characters(item, f"{path}[{index}]", problems, seen)


def parse_config(data: object, *, base_dir: Path, source: str | None = None) -> Config:
    """Validate YAML data (as ``yaml.safe_load`` returns it) into a Config.

    Raises ConfigError listing every problem found, one line each, naming the key path. Relative paths are
    taken from ``base_dir`` (the config file's directory). Nothing is read from disk: files named by the
    config may appear later (a camera clip on a disk mounted after boot).
    """
    problems: list[str] = []
    if data is None:
        raise ConfigError(["the file is empty: expected a mapping with device_id, data_dir, recipients and "
                           "cameras"], source)
    _control_characters(data, "", problems)
    if problems:  # before any other check: every message below quotes values, which must be clean
        raise ConfigError(problems, source)
    s = _section(data, "top level", "", problems)
    if s is None:
        raise ConfigError(problems, source)
    s.path = ""
    device_id = s.get("device_id", _check_safe_name)
    data_dir = s.get("data_dir", _path_check(base_dir))
    recipients = s.get("recipients", _check_recipients)
    segment_seconds = s.get("segment_seconds", _number(SEGMENT_SECONDS_MIN, SEGMENT_SECONDS_MAX), 60.0)
    segment_cipher = s.get("segment_cipher", _one_of(SEGMENT_CIPHERS), "aes-256-gcm")
    durability = s.get("durability", lambda v, p, pr: _durability(v, pr), DurabilityConfig())
    cameras = s.get("cameras", lambda v, p, pr: _cameras(
        v, base_dir, None if segment_seconds is _INVALID else segment_seconds, pr))
    retention = s.get("retention", lambda v, p, pr: _retention(v, base_dir, pr), RetentionConfig())
    incidents = s.get("incidents", lambda v, p, pr: _incidents(v, pr), IncidentsConfig())
    known_device_id = None if device_id is _INVALID else device_id
    mqtt = s.get("mqtt", lambda v, p, pr: _mqtt(v, known_device_id, base_dir, pr), None)
    if mqtt is None:
        mqtt = MqttConfig(client_id=f"edgerec-{device_id}")
    health = s.get("health", lambda v, p, pr: _health(v, pr), None)
    if health is None:
        health = _health({}, problems)
    offload = s.get("offload", lambda v, p, pr: _offload(v, base_dir, pr), OffloadConfig())
    status_file = s.get("status_file", _optional(_path_check(base_dir)), None)
    s.finish()
    if problems:
        raise ConfigError(problems, source)
    return Config(
        device_id=device_id,
        data_dir=data_dir,
        recipients=recipients,
        cameras=cameras,
        segment_seconds=segment_seconds,
        segment_cipher=segment_cipher,
        durability=durability,
        retention=retention,
        incidents=incidents,
        mqtt=mqtt,
        health=health,
        offload=offload,
        status_file=status_file,
    )


# ----- reading the file ------------------------------------------------------------------------------------
class _StrictLoader(yaml.SafeLoader):
    """yaml.SafeLoader that rejects a key given twice in one mapping (PyYAML silently keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if not isinstance(node, yaml.MappingNode):  # '!!map 0': the base class reports it
            return super().construct_mapping(node, deep=deep)
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":  # '<<: *defaults' overrides on purpose
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.setdefault(key, key_node.start_mark)
            except TypeError:  # unhashable: the base class reports it
                continue
            if first is not key_node.start_mark:
                raise yaml.constructor.ConstructorError(
                    None, None, f"the key {_describe(key)} is given twice (first on line {first.line + 1})",
                    key_node.start_mark)
        return super().construct_mapping(node, deep=deep)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        # PyYAML lets Python's own errors escape for values it recognises but cannot build (a date such as
        # 2024-13-01, an int of more digits than Python converts, an empty !!timestamp): report them like
        # any YAML error.
        try:
            return super().construct_object(node, deep=deep)
        except (yaml.YAMLError, RecursionError):
            raise
        except Exception as exc:
            value = _describe(node.value) if isinstance(node.value, str) else "this value"
            raise yaml.constructor.ConstructorError(
                None, None, f"cannot read {value}: {exc} (put it in quotes if it is text)", node.start_mark,
            ) from None


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    problem = getattr(exc, "problem", None)
    context = getattr(exc, "context", None)
    what = f"{context}: {problem}" if context and problem else problem or str(exc)
    what = " ".join(what.split())  # one problem, one line
    where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
    return f"{where}invalid YAML: {what}"


def parse_yaml(text: str, source: str | None = None) -> object:
    """The data of a YAML config text; ConfigError naming line and column when it is not valid YAML."""
    try:
        return yaml.load(text, Loader=_StrictLoader)  # a SafeLoader: builds plain data only
    except yaml.YAMLError as exc:
        raise ConfigError([_yaml_problem(exc)], source) from None
    except RecursionError:
        raise ConfigError(["invalid YAML: nested too deeply"], source) from None


def read_config_text(path: Path) -> str:
    """The text of a config file; ConfigError when it cannot be read."""
    source = str(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(["file not found"], source) from None
    except IsADirectoryError:
        raise ConfigError(["is a directory, not a config file"], source) from None
    except PermissionError:
        raise ConfigError(["permission denied (the service user must be able to read it)"], source) from None
    except OSError as exc:
        raise ConfigError([f"cannot read: {exc.strerror or exc}"], source) from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError([f"larger than {MAX_CONFIG_BYTES} bytes: not a config file"], source)
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError([f"not UTF-8 text (byte {exc.start})"], source) from None


def trusted_files(config: Config) -> list[Path]:
    """The files of a config that decide what the daemon runs or hold its secrets (see filetrust.py)."""
    files = [config.source_path] if config.source_path is not None else []
    files += [c.password_file for c in config.cameras if c.password_file is not None]
    files += [p for p in (config.mqtt.password_file,) if p is not None]
    if config.mqtt.tls is not None:
        tls = config.mqtt.tls
        files += [p for p in (tls.ca_file, tls.cert_file, tls.key_file) if p is not None]
    if config.retention.trusted_time_ca_file is not None:
        files.append(config.retention.trusted_time_ca_file)
    return files


def load_config(path: Path) -> Config:
    """Read, parse and validate a config file; relative paths in it are taken from its directory.

    Refused (UntrustedFileError) when someone other than root or this process's user can change the file,
    a directory above it, or a password or key file it names. The credentials in its camera urls are
    registered with redact.py, so that no log line, status or audit line carries them from now on.
    """
    from . import filetrust, redact

    path = Path(path).absolute()
    source = str(path)
    filetrust.check_trusted([path])  # before reading: an untrusted file's content is not even parsed
    data = parse_yaml(read_config_text(path), source)
    config = dataclasses.replace(parse_config(data, base_dir=path.parent, source=source), source_path=path)
    filetrust.check_trusted(trusted_files(config))
    for camera in config.cameras:
        redact.register_text_secrets(camera.url)
    return config
