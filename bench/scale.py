"""Scale benchmark: N live cameras in one ``edgerec run`` against N parallel ``ffmpeg -re ... -c copy``.

For each N (default 1, 2, 4, 8, 16) it runs one ``edgerec run`` with N file cameras playing a 1080p25
4 Mbit/s clip in real time (``realtime: true, loop: true``, health analysis at its default), then N
``ffmpeg -re -stream_loop -1 -i CLIP -c copy -f segment`` processes, each for ``--seconds``, and samples
``/proc`` after a warm-up: CPU (user + system of the process, or of all N ffmpegs) as % of one core, RSS
(median and peak; summed over the ffmpegs) and threads. edgerec runs with its systemd unit's
``Environment=`` settings, as deployed. edgerec and ffmpeg runs alternate, so background
load hits both alike. "Kept up" means edgerec's log has no ``camera stalled``, ``camera down`` or
``camera disconnected`` event and every camera's status shows no stall, gap or timestamp discontinuity.

``--base-src DIR`` runs edgerec from another source tree (an older commit) as well, right before the
current code for each N, for before/after comparisons in one run.

    .venv/bin/python bench/scale.py [--cameras 1,2,4,8,16] [--seconds 40] [--clip FILE] [--work DIR]
                                    [--base-src DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from ingest import SOURCE_ROOT, ffmpeg_argv, make_clip, python_env  # noqa: E402

CLK_TCK = os.sysconf("SC_CLK_TCK")
WARMUP_S = 10.0
SAMPLE_INTERVAL_S = 1.0
STALL_EVENTS = ("camera stalled", "camera down", "camera disconnected")
TARGET_CPU_RATIO = 1.5  # edgerec's CPU per camera / ffmpeg's, at N = 8 and 16
TARGET_RSS_MB = {8: 150.0, 16: 200.0}


@dataclass(frozen=True)
class Sample:
    cpu_pct: float  # of one core, over the window after the warm-up
    rss_median_mb: float
    rss_peak_mb: float
    threads: int


@dataclass(frozen=True)
class Result:
    n: int
    edgerec: Sample
    ffmpeg: Sample
    base: Sample | None
    kept_up: bool
    problems: str


def proc_cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def proc_status(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def sample(procs: list[subprocess.Popen], seconds: float) -> Sample:
    """CPU, RSS (summed over ``procs``) and threads, sampled after the warm-up, until ``seconds`` passed."""
    started = time.monotonic()
    rss: list[int] = []
    threads = 0
    cpu0 = t0 = None
    while (now := time.monotonic()) - started < seconds:
        for p in procs:
            if p.poll() is not None:
                raise SystemExit(f"{p.args[0]} exited early ({p.returncode})")
        if now - started >= min(WARMUP_S, seconds / 2):
            if cpu0 is None:
                cpu0, t0 = sum(proc_cpu_s(p.pid) for p in procs), now
            rss.append(sum(proc_status(p.pid, "VmRSS") for p in procs))
            threads = max(threads, sum(proc_status(p.pid, "Threads") for p in procs))
        time.sleep(SAMPLE_INTERVAL_S)
    cpu1, t1 = sum(proc_cpu_s(p.pid) for p in procs), time.monotonic()
    peak = sum(proc_status(p.pid, "VmHWM") for p in procs)
    assert cpu0 is not None and t0 is not None and rss
    return Sample(100 * (cpu1 - cpu0) / (t1 - t0), statistics.median(rss) / 1024, peak / 1024, threads)


def stop(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        try:
            p.wait(30)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def write_config(path: Path, data_dir: Path, recipient: str, clip: Path, n: int) -> Path:
    cameras = [{"name": f"cam{i:02d}", "url": str(clip), "realtime": True, "loop": True} for i in range(n)]
    cfg = {"device_id": "bench", "data_dir": str(data_dir), "recipients": [recipient],
           "segment_seconds": 60, "cameras": cameras}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def camera_problems(config: Path, log_text: str, env: dict[str, str], cwd: Path) -> str:
    """Stall or down events in the log, dropped packets or discontinuities in the status; '' if none."""
    problems = [event for event in STALL_EVENTS if event in log_text]
    out = subprocess.run([sys.executable, "-m", "edgerec", "status", "-c", str(config), "--json"],
                         capture_output=True, text=True, env=env, cwd=cwd)
    if out.returncode == 0:
        try:
            status = json.loads(out.stdout)
        except ValueError:
            status = None
        cameras = status.get("cameras", {}) if isinstance(status, dict) else {}
        for name, cam in cameras.items():
            for key in ("stalls", "gaps", "timestamp_discontinuities"):
                if cam.get(key):
                    problems.append(f"{name} {key}={cam[key]}")
    else:
        problems.append("no status")
    return "; ".join(problems)


def unit_environment(source: Path) -> dict[str, str]:
    """The ``Environment=`` settings of ``source``'s systemd unit: edgerec is measured as it is deployed
    (``MALLOC_ARENA_MAX`` alone moves its RSS by about 10 %)."""
    unit = source / "systemd" / "edgerec.service"
    env: dict[str, str] = {}
    if not unit.exists():
        return env
    for line in unit.read_text().splitlines():
        if line.startswith("Environment="):
            key, _, value = line.removeprefix("Environment=").partition("=")
            env[key.strip()] = value.strip()
    return env


def run_edgerec(work: Path, clip: Path, recipient: str, n: int, seconds: float,
                source: Path = SOURCE_ROOT, tag: str = "") -> tuple[Sample, str]:
    data_dir = work / f"data{tag}-{n}"
    shutil.rmtree(data_dir, ignore_errors=True)
    config = write_config(work / f"scale{tag}-{n}.yaml", data_dir, recipient, clip, n)
    env = python_env(work / f"pycache{tag}", source) | unit_environment(source)
    log_path = work / f"edgerec{tag}-{n}.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "edgerec", "run", "-c", str(config)], stdout=log,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=work)
    try:
        result = sample([proc], seconds)
        problems = camera_problems(config, log_path.read_text(errors="replace"), env, work)
    finally:
        stop([proc])
    return result, problems


def run_ffmpeg(work: Path, clip: Path, n: int, seconds: float) -> Sample:
    procs = []
    try:
        for i in range(n):
            out = work / f"ffmpeg-{n}-{i}"
            shutil.rmtree(out, ignore_errors=True)
            out.mkdir(parents=True)
            procs.append(subprocess.Popen(ffmpeg_argv(clip, out, live=True), stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL))
        return sample(procs, seconds)
    finally:
        stop(procs)


def report(results: list[Result], seconds: float) -> str:
    lines = [
        f"{seconds:g} s per run, sampled after {WARMUP_S:g} s; CPU as % of one core (user + system).",
        "",
        "| cameras | edgerec CPU | ffmpeg CPU (N processes) | edgerec / ffmpeg | edgerec RSS median / peak "
        "| ffmpeg RSS (sum) | edgerec threads | kept up |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        ratio = r.edgerec.cpu_pct / r.ffmpeg.cpu_pct if r.ffmpeg.cpu_pct > 0 else float("nan")
        kept = "yes" if r.kept_up else f"no ({r.problems})"
        if r.base is not None:
            lines.append(f"| {r.n} (base) | {r.base.cpu_pct:.1f} % | | | {r.base.rss_median_mb:.0f} / "
                         f"{r.base.rss_peak_mb:.0f} MB | | {r.base.threads} | |")
        lines.append(f"| {r.n} | {r.edgerec.cpu_pct:.1f} % | {r.ffmpeg.cpu_pct:.1f} % | {ratio:.2f}× "
                     f"| {r.edgerec.rss_median_mb:.0f} / {r.edgerec.rss_peak_mb:.0f} MB "
                     f"| {r.ffmpeg.rss_median_mb:.0f} MB | {r.edgerec.threads} | {kept} |")
    if len(results) >= 2:
        a, b = results[0], results[-1]
        per_cam = (b.edgerec.rss_median_mb - a.edgerec.rss_median_mb) / (b.n - a.n)
        lines += ["", f"RSS per added camera (N = {a.n} → {b.n}): {per_cam:.1f} MB."]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cameras", default="1,2,4,8,16", help="comma-separated N (default 1,2,4,8,16)")
    parser.add_argument("--seconds", type=float, default=40.0, help="length of each run (default 40)")
    parser.add_argument("--clip", type=Path, help="an H.264 1080p25 clip (default: make a 1-minute one)")
    parser.add_argument("--work", type=Path, help="work in this directory and keep it")
    parser.add_argument("--base-src", type=Path, help="also run edgerec from this source tree")
    args = parser.parse_args(argv)
    counts = [int(n) for n in args.cameras.split(",")]
    if args.clip is not None:
        args.clip = args.clip.resolve()  # the children run in the work directory

    from edgerec import keys

    work = args.work or Path(tempfile.mkdtemp(prefix="edgerec-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        clip = args.clip or work / "clip.mp4"
        if not clip.exists():
            print("making a 1 min 1080p25 4 Mbit/s clip ...", file=sys.stderr, flush=True)
            make_clip(clip, 1.0)
        key_file = work / "officer.key"
        key_file.unlink(missing_ok=True)
        Path(f"{key_file}.pub").unlink(missing_ok=True)
        recipient = keys.generate_recipient(key_file)
        results = []
        for n in counts:
            base = None
            if args.base_src is not None:
                print(f"N={n}: edgerec (base) ...", file=sys.stderr, flush=True)
                base, _ = run_edgerec(work, clip, recipient, n, args.seconds, args.base_src, "-base")
                print(f"N={n}: base {base}", file=sys.stderr, flush=True)
            print(f"N={n}: edgerec ...", file=sys.stderr, flush=True)
            ours, problems = run_edgerec(work, clip, recipient, n, args.seconds)
            print(f"N={n}: ffmpeg ...", file=sys.stderr, flush=True)
            theirs = run_ffmpeg(work, clip, n, args.seconds)
            results.append(Result(n, ours, theirs, base, not problems, problems))
            print(f"N={n}: {ours} {theirs} {problems or 'kept up'}", file=sys.stderr, flush=True)
        print(report(results, args.seconds))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
