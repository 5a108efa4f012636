"""The officer's side of the store: list what a bucket holds, export from it, and record each access.

``edgerec ls --store s3://BUCKET/PREFIX`` and ``edgerec export --store ...`` use this. An export fetches
only the segments its time range needs into a private temporary directory, checks each against the
device key the store holds, decrypts them with ``export.export_segments`` exactly as from a data
directory, and writes an access record ``<prefix>/access/...json`` (who, when, why, which segments by
digest) before it reports success. Credentials: the standard AWS environment variables or profile.
"""

from __future__ import annotations

import dataclasses
import json
import os
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import keys, segfile, store
from .errors import EdgerecError, SegmentError
from .layout import start_ns_from_name
from .timefmt import rfc3339

ACCESS_RECORD_VERSION = 1


def open_store(url: store.StoreUrl, endpoint: str | None, addressing_style: str = "auto") -> store.Store:
    return store.Store(store.StoreSettings(bucket=url.bucket, endpoint=endpoint,
                                           region=os.environ.get("AWS_REGION") or os.environ.get(
                                               "AWS_DEFAULT_REGION"), addressing_style=addressing_style))


@dataclass(frozen=True)
class StoredSegment:
    key: str
    device: str
    camera: str
    name: str  # NAME.seg or NAME.seg.partial
    start_ns: int
    size: int

    @property
    def provisional(self) -> bool:
        return self.name.endswith(store.PROVISIONAL_SUFFIX)


def parse_segment_key(prefix: str, key: str, size: int) -> StoredSegment | None:
    rel = key[len(prefix) + 1:] if prefix else key
    parts = rel.split("/")
    if len(parts) != 4 or parts[1].startswith("_"):
        return None
    device, camera, _day, name = parts
    sealed_name = name[: -len(store.PROVISIONAL_SUFFIX)] if name.endswith(store.PROVISIONAL_SUFFIX) else name
    start = start_ns_from_name(Path(sealed_name))
    if start is None:
        return None
    return StoredSegment(key, device, camera, name, start, size)


def stored_segments(st: store.Store, prefix: str, device: str | None = None,
                    camera: str | None = None) -> list[StoredSegment]:
    under = store.join(prefix, device or "", camera or "")
    found = [s for key, size in st.list(under) if (s := parse_segment_key(prefix, key, size)) is not None]
    if device is None:
        found = [s for s in found if s.device != store.ACCESS_DIR]
    return sorted(found, key=lambda s: (s.device, s.camera, s.start_ns, s.provisional))


def usable_segments(segments: list[StoredSegment]) -> list[StoredSegment]:
    """One object per segment: the sealed one, or its provisional prefix when nothing else arrived."""
    sealed = {(s.device, s.camera, s.start_ns) for s in segments if not s.provisional}
    return [s for s in segments if not s.provisional or (s.device, s.camera, s.start_ns) not in sealed]


def select_range(segments: list[StoredSegment], from_ns: int, to_ns: int) -> list[StoredSegment]:
    """Segments overlapping [from_ns, to_ns): a segment ends where the next one starts; the last one is
    taken when it starts before ``to_ns`` (its end is in the object, read after fetching it)."""
    chosen = []
    for i, seg in enumerate(segments):
        end = segments[i + 1].start_ns if i + 1 < len(segments) else None
        if seg.start_ns < to_ns and (end is None or end > from_ns):
            chosen.append(seg)
    return chosen


# ----- listing ---------------------------------------------------------------------------------------------
def listing(st: store.Store, prefix: str, device: str | None = None) -> dict[str, Any]:
    devices: dict[str, Any] = {}
    for seg in stored_segments(st, prefix, device):
        cams = devices.setdefault(seg.device, {"cameras": {}, "incidents": []})["cameras"]
        cams.setdefault(seg.camera, []).append({
            "name": seg.name, "start": rfc3339(seg.start_ns), "size": seg.size,
            "state": "provisional" if seg.provisional else "sealed"})
    names = [device] if device else [d for d in _devices(st, prefix) if d != store.ACCESS_DIR]
    for dev in names:
        entry = devices.setdefault(dev, {"cameras": {}, "incidents": []})
        entry["device_key"] = st.exists(store.device_pub_key(prefix, dev))
        for key, _size in st.list(store.join(prefix, dev, store.INCIDENTS_DIR)):
            try:
                record = json.loads(st.get_bytes(key))
                inc = record.get("incident", {})
                segs = record.get("segments", [])
                entry["incidents"].append({
                    "id": inc.get("id"), "state": record.get("state"), "camera": inc.get("camera"),
                    "from": record.get("hold", {}).get("from"), "to": record.get("hold", {}).get("to"),
                    "reason": inc.get("reason"), "segments": len(segs),
                    "offloaded": sum(1 for s in segs if s.get("offloaded")),
                    "provisional": len(record.get("provisional", [])), "key": key})
            except (ValueError, AttributeError):
                entry["incidents"].append({"key": key, "problem": "not a readable incident record"})
    return {"devices": devices}


def _devices(st: store.Store, prefix: str) -> list[str]:
    base = prefix.rstrip("/") + "/" if prefix else ""
    return sorted({key[len(base):].split("/")[0] for key, _ in st.list(prefix, recursive=False)
                   if key.endswith("/")})


def format_listing(data: dict[str, Any]) -> str:
    lines = []
    for dev, entry in sorted(data["devices"].items()):
        lines.append(f"device {dev}" + ("" if entry.get("device_key", True) else " (no device.pub in store)"))
        for cam, segs in sorted(entry["cameras"].items()):
            total = sum(s["size"] for s in segs)
            lines.append(f"  camera {cam}: {len(segs)} segments, {total} bytes, "
                         f"{segs[0]['start']} .. {segs[-1]['start']}")
            for s in segs:
                lines.append(f"    {s['start']}  {s['size']:>10}  {s['state']:<11}  {s['name']}")
        for inc in entry["incidents"]:
            if "problem" in inc:
                lines.append(f"  incident record {inc['key']}: {inc['problem']}")
                continue
            lines.append(f"  incident {inc['id']}: {inc['state']}, camera {inc['camera']}, "
                         f"{inc['from']} .. {inc['to'] or 'open'}, {inc['offloaded']}/{inc['segments']} "
                         f"segments offloaded, {inc['provisional']} provisional")
    return "\n".join(lines) if lines else "the store holds no footage under this prefix"


def access_records(st: store.Store, prefix: str) -> list[dict[str, Any]]:
    records = []
    for key, _size in st.list(store.join(prefix, store.ACCESS_DIR)):
        try:
            record = json.loads(st.get_bytes(key))
        except ValueError:
            record = {"problem": "not a readable access record"}
        records.append({"key": key, **record})
    return records


def format_access(records: list[dict[str, Any]]) -> str:
    if not records:
        return "no access records"
    return "\n".join(
        f"{r.get('when')}  by {r.get('by')!r}  device {r.get('device_id')} camera {r.get('camera')} "
        f"{r.get('from')} .. {r.get('to')}  {len(r.get('segments', []))} segments  reason {r.get('reason')!r}"
        if "problem" not in r else f"{r['key']}: {r['problem']}" for r in records)


# ----- export ----------------------------------------------------------------------------------------------
def export_from_store(st: store.Store, url: store.StoreUrl, *, device: str, camera: str, from_ns: int,
                      to_ns: int, private_key: Any, out: Path, reason: str, by: str | None = None,
                      progress: Callable[[int, int], None] | None = None) -> tuple[Any, str]:
    """Export footage from the store; returns (ExportResult, access record key)."""
    from .export import ExportAccess, export_segments, manifest_path_for, os_user

    stored = usable_segments(stored_segments(st, url.prefix, device, camera))
    candidates = select_range(stored, from_ns, to_ns)
    if not candidates:
        raise EdgerecError(f"no footage of device {device!r} camera {camera!r} in s3://{url.bucket}/"
                           f"{url.prefix} between {rfc3339(from_ns)} and {rfc3339(to_ns)}")
    device_key = _device_key(st, url.prefix, device)
    access = ExportAccess(by=by or os_user(), reason=reason)
    who, reason = access.by, access.reason
    work = Path(tempfile.mkdtemp(prefix="edgerec-store-"))  # 0700
    try:
        local: list[Path] = []
        key_of: dict[str, str] = {}
        problems: list[str] = []
        for seg in candidates:
            dest = work / seg.name
            st.download(seg.key, dest)
            key_of[str(dest)] = f"s3://{url.bucket}/{seg.key}"
            if not seg.provisional:
                try:
                    info = segfile.read_info(dest, device_key)
                except SegmentError as exc:
                    problems.append(f"s3://{url.bucket}/{seg.key}: {exc.what}")
                    local.append(dest)  # export reports it too and leaves it out
                    continue
                except OSError as exc:  # its download cannot be read: the export names it as unread
                    problems.append(f"s3://{url.bucket}/{seg.key}: cannot read its download: "
                                    f"{exc.strerror or exc}")
                    local.append(dest)
                    continue
                if info.end_ns <= from_ns:
                    continue
            local.append(dest)
        # The store keeps no catalog: a gap's reason is known only where a segment was left out.
        origin = {"kind": "store", "store": f"s3://{url.bucket}/{url.prefix}", "device_id": device,
                  "camera": camera, "from": rfc3339(from_ns), "to": rfc3339(to_ns)}
        result = export_segments(local, private_key, out, access=access, origin=origin, progress=progress,
                                 labels=[key_of[str(p)] for p in local], from_ns=from_ns, to_ns=to_ns)
        manifest = manifest_path_for(out)
        document = json.loads(manifest.read_text(encoding="utf-8"))
        for seg in document["segments"]:
            seg["path"] = key_of.get(seg["path"], seg["path"])
        document["problems"] = [_rename(p, key_of) for p in document["problems"]] + [
            p for p in problems if p not in " ".join(document["problems"])]
        document["source"] = {"store": f"s3://{url.bucket}/{url.prefix}", "device_id": device,
                              "device_key": keys.device_fingerprint(device_key) if device_key else None}
        record = {
            "record_version": ACCESS_RECORD_VERSION, "when": rfc3339(time.time_ns()), "by": who,
            "reason": reason, "device_id": device, "camera": camera, "from": rfc3339(from_ns),
            "to": rfc3339(to_ns), "output_sha256": document["output"]["sha256"],
            "segments": [{"key": s["path"], "sha256": s["digest"], "included": s["included"],
                          "verification": s["verification"]} for s in document["segments"]],
        }
        when = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        access_key = store.access_key(url.prefix, when, device, camera, secrets.token_hex(4))
        st.put_bytes(access_key, json.dumps(record, indent=2).encode() + b"\n")
        document["access_record"] = f"s3://{url.bucket}/{access_key}"
        _write_private(manifest, json.dumps(document, indent=2) + "\n")
        os.chmod(out, 0o600)
        result_problems = tuple(document["problems"])
        return dataclasses.replace(result, problems=result_problems), access_key
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _rename(text: str, key_of: dict[str, str]) -> str:
    for local, key in key_of.items():
        text = text.replace(local, key)
    return text


def _device_key(st: store.Store, prefix: str, device: str) -> Any:
    try:
        text = st.get_bytes(store.device_pub_key(prefix, device)).decode("utf-8", "replace")
    except store.StoreNotFound:
        return None
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    if not lines:
        return None
    return keys.parse_device_public_key(lines[0], source=f"{device}/device.pub in the store")


def _write_private(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
