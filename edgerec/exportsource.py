"""Export from segments that are not files of a data directory: bytes from a bundle or a store, each with
what its catalog says of it (name, digest, camera, times).

``export_sources`` stages the segments given as bytes in a private temporary directory (0700; they are
still encrypted, so no plaintext touches the disk) and hands everything to ``export.export_segments``,
naming each segment in the manifest by its label and checking it against the digest its catalog gives.
``select_in_range`` picks segments by time with the same rule as a data directory export
(``inventory.segments_in_range``), so that an export from a bundle or a store has the same frames.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from .export import ExportAccess, ExportResult, export_segments
from .exporttimeline import KnownGap


@dataclass(frozen=True)
class SegmentSource:
    """One segment to export: its bytes (a file, or in memory) and its catalog metadata.

    ``label`` names it in the manifest (a bundle member, a store object key); ``digest`` is the SHA-256
    (hex) its catalog, bundle manifest or store metadata gives: a segment with another digest is left out.
    """

    label: str
    path: Path | None = None
    data: bytes | None = None
    digest: str | None = None
    camera: str | None = None
    sequence: int | None = None
    start_ns: int | None = None
    end_ns: int | None = None

    def __post_init__(self) -> None:
        if (self.path is None) == (self.data is None):
            raise ValueError("a SegmentSource has either a path or data")


def select_in_range(spans: Sequence[tuple[int, int]], from_ns: int, to_ns: int) -> list[int]:
    """Indices of the segments overlapping [from_ns, to_ns), given (start_ns, end_ns) of one camera's
    segments in time order. As ``inventory.segments_in_range``: a segment's end is the next one's start
    (the last one's own end), so both routes select the same segments."""
    chosen = []
    for i, (start, own_end) in enumerate(spans):
        end = spans[i + 1][0] if i + 1 < len(spans) else own_end
        if start < to_ns and end > from_ns:
            chosen.append(i)
    return chosen


@contextmanager
def staged(sources: Sequence[SegmentSource]) -> Iterator[list[Path]]:
    """Paths for ``sources``: their own path, or a file in a private temporary directory holding their
    bytes (removed on exit). Staged files are named by position, never by a label from the input."""
    with tempfile.TemporaryDirectory(prefix="edgerec-export-") as tmp:
        os.chmod(tmp, 0o700)
        paths = []
        for i, source in enumerate(sources):
            if source.path is not None:
                paths.append(Path(source.path))
                continue
            assert source.data is not None
            path = Path(tmp) / f"{i:06d}.seg"
            with open(path, "wb") as f:
                f.write(source.data)
            paths.append(path)
        yield paths


def export_sources(
    sources: Sequence[SegmentSource],
    private_key: X25519PrivateKey,
    out: Path,
    *,
    access: ExportAccess,
    origin: Mapping[str, Any],
    progress: Callable[[int, int], None] | None = None,
    from_ns: int | None = None,
    to_ns: int | None = None,
    known_gaps: Sequence[KnownGap] = (),
) -> ExportResult:
    """Export ``sources`` (one camera, time order) into ``out`` and its manifest, as ``export_segments``
    does for a data directory, trimmed to [from_ns, to_ns); ``origin`` (e.g. ``{"kind": "bundle", ...}``)
    goes into the manifest, ``known_gaps`` (the camera's gaps from its catalog) give the gaps' reasons."""
    with staged(sources) as paths:
        return export_segments(paths, private_key, out, access=access, origin=origin,
                               labels=[s.label for s in sources],
                               expected_digests=[s.digest for s in sources], progress=progress,
                               from_ns=from_ns, to_ns=to_ns, known_gaps=known_gaps)
