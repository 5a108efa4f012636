"""Fuzzing the parsers that read hostile input: segment files and MQTT incident commands.

- **Segment reader**: a real segment (MPEG-TS of real H.264, small chunks) is mutated (bytes flipped,
  cut, inserted, deleted, a range duplicated or moved, a chunk spliced in from another segment of the
  same camera). Whatever the mutation, the strict reader returns the original plaintext or raises
  ``SegmentError``; the recovering reader yields only a prefix of the original plaintext (nothing
  that did not authenticate); ``read_info`` and ``verify`` report every real change; none of them
  raises anything else.
- **MQTT command path**: arbitrary payload bytes through ``edgerec.mqtt.decode_command`` (never raises)
  and then ``edgerec.incidents.parse_command`` (a valid command or ``CommandError``, nothing else), and
  command-shaped JSON objects built from the real keys with values of every JSON type.
- **Config loader**: already fuzzed by ``tests/test_config.py`` (random YAML documents, valid configs
  with one part replaced, YAML token soup); not repeated here.

Each property runs ``EDGEREC_FUZZ_EXAMPLES`` examples (default 150: a few seconds in CI); set it higher for
a long run. With ``atheris`` installed, ``test_atheris_*`` also runs libFuzzer's coverage-guided search
for a few seconds each; a long run: ``python tests/test_fuzz.py segment -max_total_time=600`` (or
``command``). Figures of long runs are in docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

# Run as a script (the atheris fuzzer), edgerec is instrumented for coverage feedback as it is imported.
_instrumented = (__import__("atheris").instrument_imports(include=["edgerec"]) if __name__ == "__main__"
                 else contextlib.nullcontext())
with _instrumented:
    from edgerec import segfile
    from edgerec.errors import CommandError, SegmentError
    from edgerec.incidents import ID_PATTERN, parse_command
    from edgerec.mqtt import decode_command, expand_open_now
    from tests.helpers.segments import make_keys, make_meta, split_records, write_segment

EXAMPLES = int(os.environ.get("EDGEREC_FUZZ_EXAMPLES", "150"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, derandomize=False, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
CHUNK_BYTES = 700
CAMERAS = ("front", "back")
NOW_NS = 1_795_000_000_000_000_000


def _ts_payload() -> bytes:
    """Real MPEG-TS bytes: a short H.264 clip muxed to TS (cached next to the fuzz corpus)."""
    cache = Path(tempfile.gettempdir()) / "edgerec-fuzz-payload.ts"
    if not cache.exists():
        from tests.helpers.media import make_h264_clip

        tmp = cache.with_suffix(f".{os.getpid()}.ts")
        make_h264_clip(tmp, seconds=0.4, fps=25, size=(64, 48), gop=5)
        os.replace(tmp, cache)
    return cache.read_bytes()[:12_000]


class SegmentCorpus:
    """Two real segments of one camera written with the same keys (the second chains to the first)."""

    def __init__(self, directory: Path):
        self.keys = make_keys()
        self.payload = _ts_payload()
        self.a = write_segment(directory / "a.seg", self.payload, self.keys, chunk_bytes=CHUNK_BYTES)
        other = bytes(reversed(self.payload))
        self.b = write_segment(directory / "b.seg", other, self.keys, chunk_bytes=CHUNK_BYTES,
                               meta=make_meta(sequence=8, prev_digest=self.a.digest), seed=1)
        self.blob_a = (directory / "a.seg").read_bytes()
        self.blob_b = (directory / "b.seg").read_bytes()


_CORPUS: SegmentCorpus | None = None


def corpus() -> SegmentCorpus:
    global _CORPUS
    if _CORPUS is None:
        _CORPUS = SegmentCorpus(Path(tempfile.mkdtemp(prefix="edgerec-fuzz-")))
    return _CORPUS


@st.composite
def mutations(draw: st.DrawFn) -> bytes:
    """A mutated copy of segment a."""
    c = corpus()
    blob = bytearray(c.blob_a)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["flip", "cut", "insert", "delete", "duplicate", "move", "splice",
                                     "set"]))
        n = len(blob)
        at = draw(st.integers(0, max(0, n - 1)))
        if kind == "flip" and n:
            blob[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set" and n:
            blob[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del blob[at:]
        elif kind == "insert":
            blob[at:at] = draw(st.binary(min_size=1, max_size=64))
        elif kind == "delete":
            del blob[at : at + draw(st.integers(1, 800))]
        elif kind == "duplicate":
            size = draw(st.integers(1, 1500))
            blob[at:at] = blob[at : at + size]
        elif kind == "move":
            size = draw(st.integers(1, 1500))
            piece = blob[at : at + size]
            del blob[at : at + size]
            to = draw(st.integers(0, len(blob)))
            blob[to:to] = piece
        elif kind == "splice":
            _, records = split_records(c.blob_b)
            rec = draw(st.sampled_from(records))
            _, mine = split_records(c.blob_a)
            target = draw(st.sampled_from(mine))
            blob[target.offset : target.offset + len(target.raw)] = rec.raw
    return bytes(blob)


def _strict(path: Path, c: SegmentCorpus) -> bytes | None:
    try:
        return b"".join(segfile.decrypt(path, c.keys.recipient))
    except SegmentError:
        return None


@FUZZ
@given(mutations())
def test_mutated_segment_yields_only_authenticated_plaintext_or_a_clean_error(mutated: bytes) -> None:
    c = corpus()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "m.seg"
        path.write_bytes(mutated)
        changed = mutated != c.blob_a

        strict = _strict(path, c)
        assert strict is None or strict == c.payload
        if changed:
            # Whole-file authentication: any change at all is refused by the strict reader.
            assert strict is None

        errors: list[SegmentError] = []
        recovered = b"".join(segfile.decrypt(path, c.keys.recipient, recover=True, errors=errors))
        assert c.payload.startswith(recovered), "recovery yielded bytes that are not the original's"

        problems = segfile.verify(path, private_key=c.keys.recipient, device_key=c.keys.device.public_key())
        assert all(isinstance(p, SegmentError) for p in problems)
        assert bool(problems) == changed
        try:
            segfile.read_info(path, c.keys.device.public_key())
            assert not changed, "read_info accepted a changed segment"
        except SegmentError:
            assert changed


@FUZZ
@given(mutations())
def test_recovering_a_mutated_partial_never_re_signs_foreign_or_altered_bytes(mutated: bytes) -> None:
    """A damaged ``.partial`` (what a crash plus bit rot can leave) is recovered to chunks that all
    decrypt, or refused with SegmentError."""
    c = corpus()
    with tempfile.TemporaryDirectory() as tmp:
        partial = Path(tmp) / "m.seg.partial"
        partial.write_bytes(mutated)
        try:
            sealed = segfile.recover_partial(partial, c.keys.device)
        except SegmentError:
            return
        errors: list[SegmentError] = []
        plain = b"".join(segfile.decrypt(sealed.path, c.keys.recipient, recover=True, errors=errors))
        # Recovery is keyless (the device has no private key), so it may re-sign a partial whose header
        # or chunks were altered; the keyed reader then refuses them (header MAC, GCM tags): only the
        # original's bytes, a prefix of them, ever come out.
        assert c.payload.startswith(plain)
        assert all(isinstance(e, SegmentError) for e in errors)


# ----- MQTT command path --------------------------------------------------------------------------------
def _apply_command_path(payload: bytes) -> None:
    envelope = decode_command(payload)
    if envelope.command is None:
        assert envelope.error
        return
    command: dict[str, Any] = envelope.command
    if command.get("action") == "open_now":
        command = expand_open_now(command, NOW_NS)
    try:
        cmd = parse_command(command, cameras=CAMERAS, now_ns=NOW_NS)
    except CommandError as exc:
        assert str(exc) and "\n" not in str(exc)
        return
    assert cmd.action in ("open", "close")
    assert ID_PATTERN.match(cmd.id)
    if cmd.action == "open":
        assert cmd.camera == "*" or cmd.camera in CAMERAS
        assert isinstance(cmd.from_ns, int)
        assert cmd.to_ns is None or cmd.to_ns >= cmd.from_ns


@FUZZ
@given(st.binary(max_size=2048))
def test_any_payload_bytes_give_a_command_or_a_clean_refusal(payload: bytes) -> None:
    _apply_command_path(payload)


JSON_SCALARS = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40)
                | st.sampled_from(["2026-11-20T09:55:00Z", "2026-11-20T09:55:00.123456789+01:00",
                                   "2026-13-40T99:99:99Z", "9999-12-31T23:59:60Z", "0001-01-01T00:00:00Z",
                                   "front", "back", "*", "open", "close", "open_now", "INC-1"]))
JSON_VALUES = st.recursive(JSON_SCALARS, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)
KEYS = st.sampled_from(["action", "id", "camera", "from", "to", "reason", "by", "transaction", "x"])


@FUZZ
@given(st.dictionaries(KEYS, JSON_VALUES, max_size=8))
def test_command_shaped_objects_give_a_command_or_a_clean_refusal(obj: dict[str, Any]) -> None:
    with contextlib.suppress(ValueError):  # NaN-free floats can still overflow JSON: skip those
        _apply_command_path(json.dumps(obj).encode())


def test_deeply_nested_payload_is_refused_not_crashing() -> None:
    envelope = decode_command(b"[" * 10_000 + b"]" * 10_000)
    assert envelope.command is None


# ----- atheris (coverage-guided), when installed ---------------------------------------------------------
HAS_ATHERIS = importlib.util.find_spec("atheris") is not None
ATHERIS_SECONDS = int(os.environ.get("EDGEREC_ATHERIS_SECONDS", "3"))


@pytest.mark.skipif(not HAS_ATHERIS, reason="atheris is not installed")
@pytest.mark.parametrize("target", ["segment", "command"])
def test_atheris_finds_no_crash(target: str, tmp_path: Path) -> None:
    repo = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, __file__, target, f"-max_total_time={ATHERIS_SECONDS}",
                           "-rss_limit_mb=2048", f"-artifact_prefix={tmp_path}/"],
                          capture_output=True, text=True, timeout=ATHERIS_SECONDS + 120, cwd=repo,
                          env={**os.environ, "PYTHONPATH": str(repo)})
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "Done" in proc.stderr


def _atheris_main(argv: list[str]) -> None:
    import logging

    import atheris

    logging.disable(logging.CRITICAL)  # the readers log every refusal; millions of lines say nothing here
    target = argv[1]
    c = corpus()
    work = Path(tempfile.mkdtemp(prefix="edgerec-atheris-"))
    path = work / "m.seg"

    def segment_one(data: bytes) -> None:
        # The input edits segment a: pairs of (offset, byte) plus an optional cut.
        blob = bytearray(c.blob_a)
        fdp = atheris.FuzzedDataProvider(data)
        for _ in range(fdp.ConsumeIntInRange(0, 8)):
            blob[fdp.ConsumeIntInRange(0, len(blob) - 1)] = fdp.ConsumeInt(1) & 0xFF
        if fdp.ConsumeBool():
            del blob[fdp.ConsumeIntInRange(0, len(blob)) :]
        blob += fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
        path.write_bytes(bytes(blob))
        strict = _strict(path, c)
        if strict is not None and bytes(blob) != c.blob_a:
            raise AssertionError("strict reader accepted a changed segment")
        plain = b"".join(segfile.decrypt(path, c.keys.recipient, recover=True))
        if not c.payload.startswith(plain):
            raise AssertionError("recovery yielded bytes that are not the original's")
        segfile.verify(path, private_key=c.keys.recipient)

    def command_one(data: bytes) -> None:
        _apply_command_path(data)

    args = argv[:1] + argv[2:]
    if target == "command" and not any(not a.startswith("-") for a in args[1:]):
        args += _command_seeds(work)
    atheris.Setup(args, segment_one if target == "segment" else command_one)
    atheris.Fuzz()


COMMAND_SEEDS = (
    {"action": "open", "id": "INC-1", "camera": "front", "from": "2026-11-20T09:55:00Z",
     "to": "2026-11-20T10:05:00.5+01:00", "reason": "fight", "by": "j", "transaction": 1},
    {"action": "open", "id": "a:b.c_d-e", "camera": "*", "from": "2026-11-20T09:55:00Z", "to": None},
    {"action": "close", "id": "INC-1", "by": "j", "reason": "handled"},
    {"action": "open_now", "by": "button"},
)


def _command_seeds(work: Path) -> list[str]:
    """A seed corpus of valid commands and a dictionary of their tokens, so libFuzzer starts from JSON."""
    seeds = work / "seeds"
    seeds.mkdir(exist_ok=True)
    for i, cmd in enumerate(COMMAND_SEEDS):
        (seeds / f"seed{i}").write_text(json.dumps(cmd))
    tokens = {'"action"', '"id"', '"camera"', '"from"', '"to"', '"reason"', '"by"', '"transaction"', '"open"',
              '"close"', '"open_now"', '"*"', "null", "true", "2026-11-20T09:55:00Z", "+01:00", ".123456789"}
    dictionary = work / "command.dict"
    dictionary.write_text("".join(json.dumps(t) + "\n" for t in sorted(tokens)))
    return [f"-dict={dictionary}", str(seeds)]


if __name__ == "__main__":
    _atheris_main(sys.argv)
