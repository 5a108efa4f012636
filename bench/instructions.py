"""Where edgerec's ingest cost above the PyAV floor goes: work, or how the CPU runs it.

Timed runs (``bench/ingest.py``) put ``edgerec run --exit-at-eof`` at 1.2-1.3x the CPU time of
``bench/floor_pyav.py`` on the same clip. This script counts instead of timing: it runs both under
valgrind's callgrind (simulated caches and branch predictor, counted per thread) on a short and a long
clip and reports per minute of video (long minus short, so start-up cancels), for edgerec's whole process
and for its recording thread alone:

- instructions executed (the work itself),
- first-level instruction cache misses (how much distinct code the loop runs through),
- mispredicted branches (the interpreter's dispatch among other things).

Counts are deterministic for one build and one input (no noise from other load). Valgrind runs the
threads one at a time and some 50 times slower, so threads that work per wall-clock second (the daemon's
main loop, its flush timer) are over-counted in the whole process: the recording thread is the fair
comparison with the floor, which does all its work in one thread. The simulated CPU is not the real one:
a miss or a mispredict costs some 10-20 cycles on a current core, which turns the counts into a rough
time. Needs valgrind (``apt install valgrind``); a run takes a few minutes.

    .venv/bin/python bench/instructions.py [--clip FILE] [--short-seconds 30] [--work DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest  # noqa: E402  (the clip, config and command helpers of the timed benchmark)

# callgrind's per-thread files: "events: Ir Dr Dw I1mr ... Bc Bcm Bi Bim" and "summary: <counts>".
_EVENTS = ("Ir", "I1mr", "Bcm", "Bim")


@dataclass(frozen=True)
class Counts:
    instructions: int
    i1_misses: int
    mispredicts: int

    def minus(self, other: Counts) -> Counts:
        return Counts(self.instructions - other.instructions, self.i1_misses - other.i1_misses,
                      self.mispredicts - other.mispredicts)

    def per_minute(self, seconds: float) -> Counts:
        f = 60 / seconds
        return Counts(round(self.instructions * f), round(self.i1_misses * f), round(self.mispredicts * f))


def parse_counts(text: str) -> Counts:
    """One callgrind output file (one thread) as Counts (mispredicts: conditional and indirect)."""
    events = summary = None
    for line in text.splitlines():
        if line.startswith("events:"):
            events = line.split()[1:]
        elif line.startswith("summary:"):
            summary = [int(v) for v in line.split()[1:]]
    if events is None or summary is None or any(e not in events for e in _EVENTS):
        raise RuntimeError("not a callgrind file with cache and branch simulation")
    value = dict(zip(events, summary, strict=False))
    return Counts(value["Ir"], value["I1mr"], value["Bcm"] + value["Bim"])


def counted(argv: list[str], cwd: Path, out_file: Path) -> list[Counts]:
    """Run ``argv`` under callgrind; the counts of each of its threads, in the order they started."""
    for old in out_file.parent.glob(f"{out_file.name}*"):
        old.unlink()
    proc = subprocess.run(["valgrind", "--tool=callgrind", "--separate-threads=yes", "--cache-sim=yes",
                           "--branch-sim=yes", f"--callgrind-out-file={out_file}", *argv],
                          cwd=cwd, capture_output=True, text=True, env=ingest.python_env(cwd / "pycache"))
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:3]} failed under valgrind:\n{proc.stderr[-2000:]}")
    files = sorted(out_file.parent.glob(f"{out_file.name}-*"), key=lambda f: int(f.name.rsplit("-", 1)[1]))
    return [parse_counts(f.read_text()) for f in files]


def total(threads: list[Counts]) -> Counts:
    return Counts(sum(t.instructions for t in threads), sum(t.i1_misses for t in threads),
                  sum(t.mispredicts for t in threads))


def busiest_slope(long: list[Counts], short: list[Counts]) -> Counts:
    """The thread whose instructions grow most from the short run to the long one (edgerec's recording
    thread), threads paired by start order."""
    return max((a.minus(b) for a, b in zip(long, short, strict=False)), key=lambda c: c.instructions)


def command(tool: str, clip: Path, out: Path, recipient: str) -> list[str]:
    """The command of ``tool`` on ``clip``, writing into a new, empty ``out``."""
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    if tool == "edgerec":
        config = ingest.write_config(out / "edgerec.yaml", out / "data", recipient, clip, live=False)
        return ingest.edgerec_argv(config, "--exit-at-eof")
    return ingest.floor_pyav_argv(clip, out)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", type=Path, help="a 1080p25 H.264 clip (default: make a 1-minute one)")
    parser.add_argument("--short-seconds", type=float, default=30.0, help="the short cut (default 30)")
    parser.add_argument("--work", type=Path, help="work in this directory and keep it")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        print("valgrind is needed: apt install valgrind", file=sys.stderr)
        return 2
    from edgerec import keys

    work = args.work or Path(tempfile.mkdtemp(prefix="edgerec-instr-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        long_clip = args.clip or work / "clip.mp4"
        if not long_clip.exists():
            ingest.make_clip(long_clip, 1)
        short_clip = work / "short.mp4"
        ingest.cut_clip(long_clip, short_clip, args.short_seconds)
        span_s = ingest.clip_seconds(long_clip) - ingest.clip_seconds(short_clip)
        (work / "officer.key").unlink(missing_ok=True)
        Path(f"{work / 'officer.key'}.pub").unlink(missing_ok=True)
        recipient = keys.generate_recipient(work / "officer.key")
        results: dict[str, Counts] = {}
        for tool in ("edgerec", "floor-pyav"):
            # Once without valgrind first: an installed package has its bytecode compiled; compiling it in
            # the first measured run would count as that run's work.
            subprocess.run(command(tool, short_clip, work / "warm-up", recipient), cwd=work, check=True,
                           capture_output=True, env=ingest.python_env(work / "pycache"))
            runs = {}
            for name, clip in (("long", long_clip), ("short", short_clip)):
                print(f"{tool}, {name} clip, under callgrind ...", file=sys.stderr, flush=True)
                runs[name] = counted(command(tool, clip, work / f"out-{tool}-{name}", recipient), work,
                                     work / f"callgrind-{tool}-{name}")
            results[tool] = total(runs["long"]).minus(total(runs["short"])).per_minute(span_s)
            if tool == "edgerec":
                results["edgerec-recording"] = busiest_slope(runs["long"], runs["short"]).per_minute(span_s)
        print(report(results))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def report(results: dict[str, Counts]) -> str:
    floor = results["floor-pyav"]
    columns = (("edgerec", "edgerec, whole process"), ("edgerec-recording", "edgerec, recording thread"))
    rows = [("instructions", "instructions"), ("first-level instruction cache misses", "i1_misses"),
            ("mispredicted branches", "mispredicts")]
    head = " | ".join(f"{label} | / floor" for _, label in columns)
    lines = [f"| per minute of video | PyAV floor | {head} |", "|---|---|" + "---|---|" * len(columns)]
    for label, field in rows:
        f = getattr(floor, field)
        cells = " | ".join(f"{getattr(results[k], field) / 1e6:.1f} M | {getattr(results[k], field) / f:.2f}×"
                           for k, _ in columns)
        lines.append(f"| {label} | {f / 1e6:.1f} M | {cells} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
