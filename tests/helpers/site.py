"""A recorded site for end-to-end tests of retention, incidents and the audit log: footage of two cameras
recorded once per test module by the real daemon (the ``recording`` fixture), and ``make_site``, a copy of
it with its own config, driven through the real ``edgerec`` command."""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edgerec.timefmt import parse_rfc3339, rfc3339
from tests.helpers.daemon import OfficerKey, run_cli, write_config
from tests.helpers.media import make_h264_clip

S = 1_000_000_000
DAY = 86_400 * S
CAMERAS = ("gate", "yard")
CLIP_SECONDS = 8  # 1-second segments: 8 per camera
GRACE_DAYS = 30  # longer than the 29 days the sweeps jump ahead, so a closed hold is seen to linger


def camera_entries(clip: Path, **overrides: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"name": c, "url": str(clip), "realtime": False, "loop": False, "health": False,
             **overrides.get(c, {})} for c in CAMERAS]


@pytest.fixture(scope="module")
def recording(tmp_path_factory: pytest.TempPathFactory, officer: OfficerKey) -> Path:
    """Footage of two cameras recorded once by the real daemon (fast file ingest); tests copy it."""
    base = tmp_path_factory.mktemp("recording")
    clip = base / "clip.mp4"
    make_h264_clip(clip, CLIP_SECONDS, fps=10, gop=10, size=(160, 120))
    cfg = write_config(base / "edgerec.yaml", officer=officer, data_dir=base / "data", segment_seconds=1,
                       cameras=camera_entries(clip))
    run_cli("run", "-c", str(cfg), "--exit-at-eof", check=True)
    return base / "data"


@dataclass
class Site:
    config: Path
    data_dir: Path
    # How far this site's time has moved on (the clocks of every command run for it run this much ahead).
    clock_shift_ns: int = 0

    def cli(self, *args: str, expect: int = 0) -> Any:
        """Run ``edgerec ARGS -c CONFIG [--json]``; check the exit code; parse JSON output."""
        proc = run_cli(*args, "-c", str(self.config), clock_shift_ns=self.clock_shift_ns)
        assert proc.returncode == expect, \
            f"edgerec {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr[-3000:]}"
        return json.loads(proc.stdout) if "--json" in args else proc.stdout

    def pass_time_until(self, when_ns: int) -> None:
        """Let time pass (wall and monotonic clocks together) until at least ``when_ns`` (plus a second)."""
        self.clock_shift_ns = max(self.clock_shift_ns, when_ns + S - time.time_ns())

    def sweep_at(self, now: str | int, *more: str, expect: int = 0) -> Any:
        """A real sweep at ``now``: time passes until then, then ``retention --now NOW --json``."""
        now_ns = parse_rfc3339(now) if isinstance(now, str) else now
        self.pass_time_until(now_ns)
        return self.cli("retention", "--now", rfc3339(now_ns), *more, "--json", expect=expect)

    def segments(self) -> dict[str, list[dict[str, Any]]]:
        listing = self.cli("ls", "--json")["cameras"]
        return {cam: listing.get(cam, {}).get("segments", []) for cam in CAMERAS}

    def files(self) -> set[str]:
        return {p.relative_to(self.data_dir).as_posix() for p in self.data_dir.glob("*/*/*.seg")}

    def audit(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in (self.data_dir / "audit.log").read_text().splitlines()]

    def audited_deletions(self) -> dict[str, str]:
        """{path: reason} of every segments_deleted line."""
        out: dict[str, str] = {}
        for obj in self.audit():
            if obj["event"] == "segments_deleted":
                assert obj["count"] == len(obj["paths"])
                out.update(dict.fromkeys(obj["paths"], obj["reason"]))
        return out


def make_site(recording: Path, officer: OfficerKey, tmp_path: Path, *, data_dir: Path | None = None,
              cameras: dict[str, dict[str, Any]] | None = None, **extra: Any) -> Site:
    """A copy of the recorded footage with its own config (the clip stays where it was recorded)."""
    data = data_dir or tmp_path / "data"
    shutil.copytree(recording, data, ignore=shutil.ignore_patterns(".space-reserve", "status.json"))
    settings: dict[str, Any] = {
        "segment_seconds": 1,
        "incidents": {"pre_roll_s": 0, "post_roll_s": 0, "release_grace_days": GRACE_DAYS},
        # No free-space mark: these sweeps must not depend on the free space of the test machine.
        "retention": {"days": 28, "min_free": 0},
    }
    settings.update(extra)
    cfg = write_config(tmp_path / "edgerec.yaml", officer=officer, data_dir=data,
                       cameras=camera_entries(recording.parent / "clip.mp4", **(cameras or {})),
                       **settings)
    return Site(cfg, data)


def newest_end_ns(segments: dict[str, list[dict[str, Any]]]) -> int:
    return max(parse_rfc3339(s["end"]) for segs in segments.values() for s in segs)
