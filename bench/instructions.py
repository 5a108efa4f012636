"""Where edgerec's ingest cost above the PyAV floor goes: work, or how the CPU runs it.

Timed runs (``bench/ingest.py``) put ``edgerec run --exit-at-eof`` at 1.2-1.3x the CPU time of
``bench/floor_pyav.py`` on the same clip. This script counts instead of timing: it runs both, whole
processes with all their threads, under valgrind's cachegrind (simulated caches and branch predictor) on
a short and a long clip and reports per minute of video (long minus short, so start-up cancels):

- instructions executed (the work itself),
- first-level instruction cache misses (how much distinct code the loop runs through),
- mispredicted branches (the interpreter's dispatch among other things).

Counts are deterministic for one build and one input (no noise from other load), and valgrind runs the
threads one at a time. The simulated CPU is not the real one: a miss or a mispredict costs some 10-20
cycles on it, which turns the counts into a rough time. Needs valgrind (``apt install valgrind``); a run
takes a few minutes.

    .venv/bin/python bench/instructions.py [--clip FILE] [--short-seconds 30] [--work DIR]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import ingest  # noqa: E402  (the clip, config and command helpers of the timed benchmark)

# cachegrind's summary lines: "I refs: 1,234", "I1 misses: ...", "Mispredicts: ..." (prefixed "==pid==").
_SUMMARY = {"instructions": r"I\s+refs:\s+([\d,]+)", "i1_misses": r"I1\s+misses:\s+([\d,]+)",
            "mispredicts": r"Mispredicts:\s+([\d,]+)"}


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


def parse_summary(text: str) -> Counts:
    found = {}
    for name, pattern in _SUMMARY.items():
        match = re.search(pattern, text)
        if match is None:
            raise RuntimeError(f"no {name} in cachegrind's output:\n{text[-2000:]}")
        found[name] = int(match.group(1).replace(",", ""))
    return Counts(**found)


def counted(argv: list[str], cwd: Path) -> Counts:
    proc = subprocess.run(["valgrind", "--tool=cachegrind", "--cache-sim=yes", "--branch-sim=yes",
                           "--cachegrind-out-file=/dev/null", *argv],
                          cwd=cwd, capture_output=True, text=True, env=ingest.python_env(cwd / "pycache"))
    if proc.returncode != 0:
        raise RuntimeError(f"{argv[:3]} failed under valgrind:\n{proc.stderr[-2000:]}")
    return parse_summary(proc.stderr)


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
                print(f"{tool}, {name} clip, under cachegrind ...", file=sys.stderr, flush=True)
                runs[name] = counted(command(tool, clip, work / f"out-{tool}-{name}", recipient), work)
            results[tool] = runs["long"].minus(runs["short"]).per_minute(span_s)
        print(report(results))
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def report(results: dict[str, Counts]) -> str:
    edgerec, floor = results["edgerec"], results["floor-pyav"]
    rows = [("instructions", "instructions"), ("first-level instruction cache misses", "i1_misses"),
            ("mispredicted branches", "mispredicts")]
    lines = ["| per minute of video | edgerec | PyAV floor | edgerec / floor |", "|---|---|---|---|"]
    for label, field in rows:
        e, f = getattr(edgerec, field), getattr(floor, field)
        lines.append(f"| {label} | {e / 1e6:.1f} M | {f / 1e6:.1f} M | {e / f:.2f}x |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
