"""Ingest benchmark: CPU and memory of ``edgerec run`` against ``ffmpeg -c copy -f segment``, same input.

Makes (or takes with ``--clip``) a 1080p25, 4 Mbit/s H.264 clip and a short cut of its beginning (same
content, stream copy). Then, in one run and interleaved so that background load hits all alike, it
records each clip ``--reps`` times with

- ``edgerec run --exit-at-eof`` (a child process: interpreter start-up, imports, catalog, one file
  camera with ``realtime: false`` and ``health: false``, demux, TS mux, AES-256-GCM chunks, fdatasync,
  signed trailers),
- ``ffmpeg -i CLIP -map 0:v -c copy -f segment -segment_time 60`` (no encryption, no fsync),
- the same ffmpeg followed by ``sync -d`` of its output in the same child (edgerec's durability), and
- ``ffmpeg -c copy -f hls -hls_time 60`` with AES-128 segment encryption (``-hls_key_info_file``; no fsync),
  FFmpeg's own way of writing encrypted segments, for a comparison of like with like, and
- the design's floor: the plain ffmpeg followed, in the same child, by ``bench/floor.py`` (one SHA-256
  pass and AES-256-GCM in 256 KiB chunks over the bytes ffmpeg wrote; what the format cannot do without),
- the PyAV floor, ``bench/floor_pyav.py``: the same work with the packet loop in Python on PyAV, as any
  recorder built like edgerec has it (demux and TS mux through PyAV into a Python object, the
  cryptography and a write per chunk, fdatasync per file; nothing of edgerec's own),

taking CPU time (user + system, the child and the children it waited for) and peak RSS of each child from
``wait4``; every other repetition runs the tools in reverse order, and the clip is read (unmeasured) just
before each run so that none pays for reading it back from the disk. Medians are reported. The steady-state
cost (start-up excluded, for all) is the difference between the long and the short clip; its spread is
the range of that difference and of the ratio to the floor over the repetitions (long and short run of one
repetition paired).

``--base-src DIR`` adds ``edgerec (base)``: the same command with the edgerec package taken from another
source tree (a ``git worktree`` of an older commit), interleaved with the current code in the same run,
for before/after comparisons. ``--soft-aes`` adds edgerec and the floor once more with OpenSSL's AES-NI and
carry-less multiply paths switched off (``OPENSSL_ia32cap``), the cost on a CPU without AES instructions
such as a Raspberry Pi 4's Cortex-A72, and both once more with the ChaCha20-Poly1305 suite
(``segment_cipher: chacha20-poly1305``; the floor with ChaCha20-Poly1305 in place of AES-GCM).
The edgerec children get a bytecode cache in the work directory (``PYTHONPYCACHEPREFIX``), filled by one
unmeasured run first, as an installed package has one: otherwise, from a source checkout with
``PYTHONDONTWRITEBYTECODE`` set, every start would also compile edgerec's modules (~0.05 s).

Then it runs ``edgerec run`` with the long clip as a real-time looping file camera for
``--live-seconds``, once with the defaults (health analysis on, as deployed) and once with
``health: false``, and ``ffmpeg -re`` the same way, sampling RSS and CPU from ``/proc`` after a warm-up.
Prints markdown tables on stdout (progress on stderr).

    .venv/bin/python bench/ingest.py [--minutes 3] [--short-seconds 30] [--reps 5] [--live-seconds 30]
                                     [--clip FILE] [--work DIR] [--base-src DIR] [--soft-aes]
"""

from __future__ import annotations

import argparse
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

TARGET_RATIO = 1.15  # edgerec / floor, steady state
TARGET_RSS_MB = 100.0
SEGMENT_SECONDS = 60
LIVE_WARMUP_S = 10.0  # RSS and CPU of the live run are taken after this, when they are steady
LIVE_SAMPLE_INTERVAL_S = 0.5
CLK_TCK = os.sysconf("SC_CLK_TCK")
TOOLS = ("edgerec", "floor", "floor+fsync", "floor-pyav", "ffmpeg", "ffmpeg+fsync", "ffmpeg+aes")
BASELINES = TOOLS[1:]
OPTIONAL_TOOLS = ("edgerec-base", "edgerec-soft", "floor-soft", "edgerec-soft-chacha", "floor-soft-chacha")
TOOL_TITLES = {"edgerec": "edgerec", "floor": "floor (ffmpeg + SHA-256 + AES-GCM)",
               "floor+fsync": "floor + fdatasync", "floor-pyav": "PyAV floor (Python packet loop)",
               "ffmpeg": "ffmpeg",
               "ffmpeg+fsync": "ffmpeg + fdatasync", "ffmpeg+aes": "ffmpeg HLS AES-128",
               "edgerec-base": "edgerec (base)", "edgerec-soft": "edgerec, software AES",
               "floor-soft": "floor, software AES",
               "edgerec-soft-chacha": "edgerec ChaCha20, software AES",
               "floor-soft-chacha": "floor ChaCha20, software AES"}
# OpenSSL's capability mask: clear bit 57 (AES-NI) and bit 33 (PCLMULQDQ) of the first word, which also
# turns off the AVX/VAES GCM paths that need them (OpenSSL's OPENSSL_ia32cap documentation).
SOFT_AES_ENV = {"OPENSSL_ia32cap": "~0x200000200000000"}
FLOOR_SCRIPT = Path(__file__).with_name("floor.py")
FLOOR_PYAV_SCRIPT = Path(__file__).with_name("floor_pyav.py")
SOURCE_ROOT = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Usage:
    cpu_s: float
    wall_s: float
    max_rss_mb: float


@dataclass(frozen=True)
class LiveUsage:
    cpu_pct: float  # of one core, over the steady window
    rss_median_mb: float  # over the steady window
    rss_peak_mb: float  # VmHWM at the end


# ----- children ----------------------------------------------------------------
def python_env(pycache: Path, source: Path = SOURCE_ROOT) -> dict[str, str]:
    """The environment of a Python child: edgerec imported from ``source``, bytecode cached in ``pycache``
    (as an installed package has it). Children run in the work directory, so the bench's own working
    directory never decides which edgerec is imported."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(pycache)
    env["PYTHONPATH"] = str(source)
    return env


def read_through(path: Path) -> None:
    """Read ``path`` once, unmeasured, so that the run after finds it in the page cache. Virtual machines
    may page cold file pages out behind the guest's back (proactive reclaim, e.g. DAMON's ``pageout``
    scheme); a run that had to read its input back from the disk would pay for that in kernel CPU time."""
    with path.open("rb", buffering=0) as f:
        while f.read(1 << 20):
            pass


def run_measured(argv: list[str], log_path: Path, env: dict[str, str] | None = None) -> Usage:
    """Run a child to completion; its CPU time and peak RSS come from ``wait4`` (the child and the
    children it waited for: ffmpeg and the floor's hashing under one ``sh``)."""
    started = time.monotonic()
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=log_path.parent)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{argv[0]} failed ({proc.returncode}); see {log_path}")
    return Usage(usage.ru_utime + usage.ru_stime, time.monotonic() - started, usage.ru_maxrss / 1024)


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def proc_status_kb(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def run_live(argv: list[str], seconds: float, log_path: Path, env: dict[str, str] | None = None) -> LiveUsage:
    """Run a child for ``seconds``, sampling RSS and CPU from /proc after the warm-up, then SIGTERM it."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=env, cwd=log_path.parent)
    try:
        started = time.monotonic()
        rss_kb: list[int] = []
        cpu0 = t0 = None
        while (now := time.monotonic()) - started < seconds:
            if proc.poll() is not None:
                raise SystemExit(f"{argv[0]} exited early ({proc.returncode}); see {log_path}")
            if now - started >= min(LIVE_WARMUP_S, seconds / 2):
                if cpu0 is None:
                    cpu0, t0 = proc_cpu_s(proc.pid), now
                rss_kb.append(proc_status_kb(proc.pid, "VmRSS"))
            time.sleep(LIVE_SAMPLE_INTERVAL_S)
        cpu1, t1 = proc_cpu_s(proc.pid), time.monotonic()
        peak_kb = proc_status_kb(proc.pid, "VmHWM")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    assert cpu0 is not None and t0 is not None and rss_kb
    return LiveUsage(100 * (cpu1 - cpu0) / (t1 - t0), statistics.median(rss_kb) / 1024, peak_kb / 1024)


# ----- inputs ----------------------------------------------------------------
def make_clip(path: Path, minutes: float) -> None:
    subprocess.run(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-f", "lavfi",
         "-i", "testsrc2=size=1920x1080:rate=25", "-t", str(minutes * 60), "-c:v", "libx264",
         "-preset", "ultrafast", "-b:v", "4M", "-maxrate", "4M", "-bufsize", "8M", "-g", "50",
         "-pix_fmt", "yuv420p", str(path)],
        check=True,
    )


def cut_clip(src: Path, dst: Path, seconds: float) -> None:
    """The first ``seconds`` of ``src`` by stream copy: the same bytes, so the same per-frame work."""
    subprocess.run(["ffmpeg", "-hide_banner", "-loglevel", "error", "-y", "-i", str(src), "-map", "0:v",
                    "-c", "copy", "-t", str(seconds), str(dst)], check=True)


def clip_seconds(path: Path) -> float:
    out = subprocess.run(["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
                          "format=duration", "-of", "default=nw=1:nk=1", str(path)],
                         check=True, capture_output=True, text=True).stdout
    return float(out.strip())


def write_config(path: Path, data_dir: Path, recipient: str, clip: Path, *, live: bool,
                 health: bool = True, cipher: str = "aes-256-gcm") -> Path:
    camera: dict[str, object] = {"name": "cam", "url": str(clip)}
    if not live:  # ingest as fast as possible, no picture analysis: the same job as ffmpeg's
        camera.update(realtime=False, loop=False, health=False)
    elif not health:
        camera.update(health=False)
    cfg = {"device_id": "bench", "data_dir": str(data_dir), "recipients": [recipient],
           "segment_seconds": SEGMENT_SECONDS, "segment_cipher": cipher, "cameras": [camera]}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def edgerec_argv(config: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "edgerec", "run", "-c", str(config), *extra]


def ffmpeg_argv(clip: Path, out_dir: Path, *, live: bool = False) -> list[str]:
    src = ["-re", "-stream_loop", "-1", "-i", str(clip)] if live else ["-i", str(clip)]
    return ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", *src, "-map", "0:v",
            "-c", "copy", "-f", "segment", "-segment_time", str(SEGMENT_SECONDS),
            str(out_dir / "seg%05d.ts")]


def ffmpeg_synced_argv(clip: Path, out_dir: Path) -> list[str]:
    """ffmpeg, then ``fdatasync`` of every file it wrote, in one child: the same durability as edgerec's
    (without it the kernel writes ffmpeg's data back later, on CPU time charged to no one measured)."""
    script = f"{shlex.join(ffmpeg_argv(clip, out_dir))} && sync -d {shlex.quote(str(out_dir))}/*.ts"
    return ["sh", "-c", script]


def floor_argv(clip: Path, out_dir: Path, *, synced: bool = False, chacha: bool = False) -> list[str]:
    """ffmpeg, then one SHA-256 pass and AES-256-GCM over every file it wrote (``bench/floor.py``), in
    one child: the least any recorder of this format must spend. ``synced``: with ``sync -d`` of ffmpeg's
    output before, edgerec's durability as well."""
    floor = shlex.join([sys.executable, str(FLOOR_SCRIPT), *(["--chacha"] if chacha else [])])
    files = f"{shlex.quote(str(out_dir))}/*.ts"
    sync = f"sync -d {files} && " if synced else ""
    script = f"{shlex.join(ffmpeg_argv(clip, out_dir))} && {sync}{floor} {files}"
    return ["sh", "-c", script]


def floor_pyav_argv(clip: Path, out_dir: Path) -> list[str]:
    """``bench/floor_pyav.py``: the least a recorder whose packet loop is Python on PyAV spends (PyAV demux
    and TS mux into Python, SHA-256 and AES-256-GCM in the writer's chunk size, fdatasync per file)."""
    return [sys.executable, str(FLOOR_PYAV_SCRIPT), str(clip), str(out_dir)]


def ffmpeg_encrypted_argv(clip: Path, out_dir: Path, key_info: Path) -> list[str]:
    """FFmpeg's encrypted segments: HLS with AES-128-CBC (a key file named by ``key_info``). The playlist
    is the only extra output; the segments are MPEG-TS as with ``-f segment``."""
    return ["ffmpeg", "-hide_banner", "-loglevel", "error", "-nostdin", "-y", "-i", str(clip), "-map", "0:v",
            "-c", "copy", "-f", "hls", "-hls_time", str(SEGMENT_SECONDS), "-hls_list_size", "0",
            "-hls_key_info_file", str(key_info), "-hls_segment_filename", str(out_dir / "seg%05d.ts"),
            str(out_dir / "index.m3u8")]


def make_hls_key(work: Path) -> Path:
    """An AES-128 key file and the key-info file FFmpeg reads (some builds cannot make a key itself)."""
    key = work / "hls.key"
    key.write_bytes(os.urandom(16))
    info = work / "hls.keyinfo"
    info.write_text(f"hls.key\n{key}\n")
    return info


# ----- the machine ----------------------------------------------------------------
def machine_description() -> str:
    model = "unknown CPU"
    flags: set[str] = set()
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model") and model == "unknown CPU":
            model = value.strip()
        elif key in ("flags", "Features") and not flags:
            flags = set(value.split())
    has_sha = bool(flags & {"sha_ni", "sha2"})
    has_aes = "aes" in flags
    import av
    import cryptography

    ffmpeg = subprocess.run(["ffmpeg", "-version"], capture_output=True, text=True).stdout.split("\n")[0]
    return (f"{os.cpu_count()} CPUs, {model} (SHA extensions: {'yes' if has_sha else 'no'}, AES: "
            f"{'yes' if has_aes else 'no'}); Python {platform.python_version()}, PyAV {av.__version__}, "
            f"cryptography {cryptography.__version__}; {ffmpeg}")


# ----- the run ----------------------------------------------------------------
def median_usage(samples: list[Usage]) -> Usage:
    return Usage(statistics.median(u.cpu_s for u in samples), statistics.median(u.wall_s for u in samples),
                 max(u.max_rss_mb for u in samples))


Samples = dict[tuple[str, str], list[Usage]]


def measure_ingest(work: Path, clips: dict[str, Path], recipient: str, reps: int, tools: tuple[str, ...],
                   base_src: Path | None, progress: Callable[[str], None]) -> Samples:
    """Usage per (tool, clip name), one per repetition, the runs interleaved: rep 1 of all, rep 2, ..."""
    samples: dict[tuple[str, str], list[Usage]] = {}
    envs = {"edgerec": python_env(work / "pycache"),
            "edgerec-soft": {**python_env(work / "pycache"), **SOFT_AES_ENV},
            "floor-soft": {**os.environ, **SOFT_AES_ENV},
            "edgerec-soft-chacha": {**python_env(work / "pycache"), **SOFT_AES_ENV},
            "floor-soft-chacha": {**os.environ, **SOFT_AES_ENV}}
    if base_src is not None:
        envs["edgerec-base"] = python_env(work / "pycache-base", base_src)
    key_info = make_hls_key(work)
    for tool in ("edgerec", "edgerec-base"):
        if tool in tools:  # fills the bytecode cache, unmeasured
            warmup_dir = work / "data-warmup"
            shutil.rmtree(warmup_dir, ignore_errors=True)
            config = write_config(work / "ingest-warmup.yaml", warmup_dir, recipient, clips["short"],
                                  live=False)
            run_measured(edgerec_argv(config, "--exit-at-eof"), work / f"{tool}-warmup.log", envs[tool])
    for rep in range(reps):
        # Every other repetition runs the tools in reverse order: a tool's cost can depend on what ran just
        # before it (the page cache and the disk's writeback of the previous tool's files).
        order = tools if rep % 2 == 0 else tools[::-1]
        for name, clip in clips.items():
            data_dir = work / f"data-{name}"
            seg_dir = work / f"ffmpeg-{name}"
            for tool in order:
                shutil.rmtree(data_dir, ignore_errors=True)
                shutil.rmtree(seg_dir, ignore_errors=True)
                seg_dir.mkdir(parents=True)
                if tool.startswith("edgerec"):
                    cipher = "chacha20-poly1305" if tool.endswith("-chacha") else "aes-256-gcm"
                    config = write_config(work / f"ingest-{name}.yaml", data_dir, recipient, clip, live=False,
                                          cipher=cipher)
                    argv = edgerec_argv(config, "--exit-at-eof")
                elif tool.startswith("floor"):
                    argv = floor_argv(clip, seg_dir, synced=tool == "floor+fsync",
                                      chacha=tool.endswith("-chacha"))
                elif tool == "floor-pyav":
                    argv = floor_pyav_argv(clip, seg_dir)
                elif tool == "ffmpeg":
                    argv = ffmpeg_argv(clip, seg_dir)
                elif tool == "ffmpeg+fsync":
                    argv = ffmpeg_synced_argv(clip, seg_dir)
                else:
                    argv = ffmpeg_encrypted_argv(clip, seg_dir, key_info)
                read_through(clip)
                usage = run_measured(argv, work / f"{tool}-{name}.log", envs.get(tool))
                samples.setdefault((tool, name), []).append(usage)
                progress(f"rep {rep + 1}/{reps} {tool:12} {name:5}: cpu {usage.cpu_s:.3f} s, "
                         f"max RSS {usage.max_rss_mb:.0f} MB")
    return samples


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=3.0, help="length of the clip made (default 3)")
    parser.add_argument("--short-seconds", type=float, default=30.0,
                        help="length of the short cut, for the start-up cost (default 30)")
    parser.add_argument("--reps", type=int, default=5, help="repetitions; medians are reported (default 5)")
    parser.add_argument("--live-seconds", type=float, default=30.0,
                        help="length of the real-time run for RSS and CPU %% (0: skip; default 30)")
    parser.add_argument("--clip", type=Path, help="use this H.264 file instead of making one")
    parser.add_argument("--work", type=Path, help="work in this directory and keep it (the clip is reused)")
    parser.add_argument("--base-src", type=Path,
                        help="also run edgerec from this source tree (an older commit), interleaved")
    parser.add_argument("--soft-aes", action="store_true",
                        help="also run edgerec and the floor with OpenSSL's AES-NI and PCLMULQDQ paths off, "
                             "with each cipher suite")
    args = parser.parse_args(argv)

    from edgerec import keys

    work = args.work or Path(tempfile.mkdtemp(prefix="edgerec-bench-"))
    work.mkdir(parents=True, exist_ok=True)

    def progress(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    try:
        long_clip = args.clip or work / "clip.mp4"
        if not long_clip.exists():
            progress(f"making a {args.minutes:g} min 1080p25 4 Mbit/s clip ...")
            make_clip(long_clip, args.minutes)
        short_clip = work / "short.mp4"
        cut_clip(long_clip, short_clip, args.short_seconds)
        clips = {"long": long_clip, "short": short_clip}
        seconds = {name: clip_seconds(clip) for name, clip in clips.items()}
        recipient_file = work / "officer.key"
        recipient_file.unlink(missing_ok=True)
        Path(f"{recipient_file}.pub").unlink(missing_ok=True)
        recipient = keys.generate_recipient(recipient_file)

        tools = TOOLS + (("edgerec-base",) if args.base_src else ()) + (
            OPTIONAL_TOOLS[1:] if args.soft_aes else ())
        samples = measure_ingest(work, clips, recipient, args.reps, tools, args.base_src, progress)
        live: dict[str, LiveUsage] = {}
        if args.live_seconds > 0:
            for name, health in (("edgerec", True), ("edgerec-no-health", False)):
                data_dir = work / f"data-{name}"
                shutil.rmtree(data_dir, ignore_errors=True)
                config = write_config(work / f"{name}.yaml", data_dir, recipient, long_clip, live=True,
                                      health=health)
                progress(f"live: {name}, real-time file camera, {args.live_seconds:g} s ...")
                live[name] = run_live(edgerec_argv(config), args.live_seconds, work / f"{name}-live.log",
                                      python_env(work / "pycache"))
            seg_dir = work / "ffmpeg-live"
            shutil.rmtree(seg_dir, ignore_errors=True)
            seg_dir.mkdir()
            progress(f"live: ffmpeg -re, {args.live_seconds:g} s ...")
            live["ffmpeg"] = run_live(ffmpeg_argv(long_clip, seg_dir, live=True), args.live_seconds,
                                      work / "ffmpeg-live.log")
        print(report(samples, tools, live, seconds, long_clip, args))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def rep_slopes_ms(samples: Samples, tool: str, span_s: float) -> list[float]:
    """Steady-state CPU per minute of video of each repetition (its long run minus its short run)."""
    return [60_000 * (long.cpu_s - short.cpu_s) / span_s
            for long, short in zip(samples[tool, "long"], samples[tool, "short"], strict=True)]


def paired_ratios(samples: Samples, a: str, b: str, span_s: float) -> list[float]:
    """Steady-state ratio a / b of each repetition (long minus short run of each, the same repetition)."""
    pairs = zip(rep_slopes_ms(samples, a, span_s), rep_slopes_ms(samples, b, span_s), strict=True)
    return [x / y for x, y in pairs if y > 0]


def spread_lines(samples: Samples, tools: tuple[str, ...], span_s: float) -> list[str]:
    """The spread over the repetitions: per-repetition slopes, and ratios of slopes of the same repetition."""
    slopes = {tool: rep_slopes_ms(samples, tool, span_s) for tool in tools}

    def span(values: list[float], fmt: str) -> str:
        low, mid, high = min(values), statistics.median(values), max(values)
        return f"{fmt.format(low)} – {fmt.format(mid)} – {fmt.format(high)}"

    lines = ["Spread over the repetitions (min – median – max; a repetition's long run minus its short):",
             "", "| steady-state CPU per minute of video | min – median – max |", "|---|---|"]
    lines += [f"| {TOOL_TITLES[t]} | {span(slopes[t], '{:.0f}')} ms |" for t in tools]
    pairs = [("edgerec", "floor"), ("edgerec", "floor+fsync"), ("edgerec", "floor-pyav"),
             ("floor-pyav", "floor"), ("edgerec", "ffmpeg"),
             ("edgerec-base", "floor"), ("edgerec-base", "edgerec"), ("edgerec-soft", "floor-soft"),
             ("edgerec-soft", "edgerec"), ("floor-soft", "floor"),
             ("edgerec-soft-chacha", "floor-soft-chacha"), ("edgerec-soft-chacha", "edgerec"),
             ("edgerec-soft-chacha", "edgerec-soft"),
             ("floor-soft-chacha", "floor")]
    for a, b in pairs:
        if a in tools and b in tools:
            ratios = paired_ratios(samples, a, b, span_s)
            if ratios:
                lines.append(f"| ratio {TOOL_TITLES[a]} / {TOOL_TITLES[b]} | {span(ratios, '{:.2f}')} |")
    return lines


def report(samples: Samples, tools: tuple[str, ...], live: dict[str, LiveUsage],
           seconds: dict[str, float], clip: Path, args: argparse.Namespace) -> str:
    def ratio(a: float, b: float) -> str:
        return f"{a / b:.2f}×" if a > 0 and b > 0 else "n/a"

    med = {key: median_usage(values) for key, values in samples.items()}

    span_s = seconds["long"] - seconds["short"]
    long_cpu = {tool: med[tool, "long"].cpu_s for tool in tools}
    short_cpu = {tool: med[tool, "short"].cpu_s for tool in tools}
    steady = {tool: long_cpu[tool] - short_cpu[tool] for tool in tools}
    # The fixed cost: the short run minus its share of the steady-state cost.
    fixed = {tool: short_cpu[tool] - steady[tool] * seconds["short"] / span_s for tool in tools}
    per_min_ms = {tool: 60_000 * steady[tool] / span_s for tool in tools}

    def row(what: str, values: dict[str, float], fmt: str, *, ratios: bool = True) -> str:
        cells = [fmt.format(values[tool]) for tool in tools]
        tail = [ratio(values["edgerec"], values[b]) if ratios else "" for b in BASELINES]
        return "| " + " | ".join([what, *cells, *tail]) + " |"

    size_mb = clip.stat().st_size / 1e6
    if steady["edgerec"] > 0 and steady["floor"] > 0:
        steady_ratio = steady["edgerec"] / steady["floor"]
        verdict = f"{steady_ratio:.2f}× (target ≤ {TARGET_RATIO}×: "
        verdict += "meets)" if steady_ratio <= TARGET_RATIO else "misses)"
    else:  # the long clip cost no more than the short one: noise, not a measurement
        verdict = "not measurable: the noise exceeds the difference; use a longer clip or more --reps"
    long_s, short_s = f"{seconds['long']:.0f} s", f"{seconds['short']:.0f} s"
    lines = [
        f"Clip: {long_s} of 1080p25 H.264, {size_mb:.1f} MB ({size_mb * 8 / seconds['long']:.1f} Mbit/s); "
        f"short cut: its first {short_s}. CPU = user + system of the child, medians of {args.reps} "
        "interleaved runs.",
        f"Machine: {machine_description()}.",
        "",
        "| measurement | " + " | ".join(TOOL_TITLES[t] for t in tools) + " | "
        + " | ".join(f"edgerec / ({TOOL_TITLES[b]})" if " " in TOOL_TITLES[b] else f"edgerec / {b}"
                     for b in BASELINES) + " |",
        "|---" * (1 + len(tools) + len(BASELINES)) + "|",
        row(f"CPU, {long_s} clip, whole process", long_cpu, "{:.2f} s"),
        row(f"CPU, {short_s} clip, whole process", short_cpu, "{:.2f} s"),
        row(f"CPU, steady state ({span_s:.0f} s of video, start-up excluded)", steady, "{:.3f} s"),
        row("CPU per minute of video, steady state", per_min_ms, "{:.0f} ms", ratios=False),
        row("CPU, fixed (start-up and exit)", fixed, "{:.2f} s", ratios=False),
        row(f"wall, {long_s} clip", {t: med[t, "long"].wall_s for t in tools}, "{:.2f} s", ratios=False),
        row(f"peak RSS, {long_s} clip", {t: med[t, "long"].max_rss_mb for t in tools}, "{:.0f} MB",
            ratios=False),
        "",
        *spread_lines(samples, tools, span_s),
    ]
    if live:
        e, n, f = live["edgerec"], live["edgerec-no-health"], live["ffmpeg"]
        warmup = min(LIVE_WARMUP_S, args.live_seconds / 2)
        lines += [
            "",
            f"Real time ({args.live_seconds:g} s each, the {long_s} clip as a looping file camera; "
            "`ffmpeg -re -stream_loop -1`):",
            "",
            "| measurement | edgerec (defaults: health analysis on) | edgerec, `health: false` | ffmpeg |",
            "|---|---|---|---|",
            f"| CPU, % of one core (after {warmup:g} s) | {e.cpu_pct:.1f} % | {n.cpu_pct:.1f} % "
            f"| {f.cpu_pct:.1f} % |",
            f"| RSS, steady (median after {warmup:g} s) | {e.rss_median_mb:.0f} MB "
            f"| {n.rss_median_mb:.0f} MB | {f.rss_median_mb:.0f} MB |",
            f"| RSS, peak (VmHWM) | {e.rss_peak_mb:.0f} MB | {n.rss_peak_mb:.0f} MB "
            f"| {f.rss_peak_mb:.0f} MB |",
        ]
    rss_verdict = ""
    if live:
        ok = live["edgerec"].rss_peak_mb < TARGET_RSS_MB
        rss_verdict = f"; RSS target < {TARGET_RSS_MB:.0f} MB: {'meets' if ok else 'misses'}"
    lines += ["", f"Steady-state CPU ratio edgerec / floor: {verdict}{rss_verdict}."]
    paired = paired_ratios(samples, "edgerec", "floor", span_s)
    if paired:  # robust against a run that paid for something else (a page-in, a neighbour's burst)
        lines += [f"Median of the per-repetition ratios edgerec / floor: {statistics.median(paired):.2f}× "
                  f"({len(paired)} repetitions)."]
    if steady["ffmpeg+aes"] > 0:
        lines += [f"Steady-state CPU ratio edgerec / ffmpeg with AES-128 HLS segments: "
                  f"{steady['edgerec'] / steady['ffmpeg+aes']:.2f}×."]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
