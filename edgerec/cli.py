"""The ``edgerec`` command: run the daemon and the operator's tools (keys, listing, verify, export, incidents,
bundles, retention, audit, status).

The officer's side (keygen, ls, verify, export, of a data directory copy or a bundle) runs on any OS:
nothing Linux-only is imported on its paths (the daemon's modules are imported inside its commands).

Every expected failure is an EdgerecError: it is printed as one line on stderr and sets the exit code
(2 for bad configuration or usage, 1 otherwise). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import __version__
from .config import Config, load_config
from .errors import EdgerecError, UsageError
from .layout import DataDir

log = logging.getLogger("edgerec.cli")

LOG_LEVELS = ["debug", "info", "warning", "error"]
EXIT_PIPE_CLOSED = 141  # 128 + SIGPIPE: what a shell reports for a command whose reader went away


def _add_config(p: argparse.ArgumentParser, *, data_dir: bool = False, bundle: bool = False,
                store: bool = False) -> None:
    if data_dir:
        g = p.add_mutually_exclusive_group(required=True)
        g.add_argument("-c", "--config", type=Path, help="the daemon's config file")
        g.add_argument("--data-dir", type=Path, help="a data directory (e.g. copied off the device)")
        if bundle:
            g.add_argument("--bundle", type=Path, help="an incident bundle (made by edgerec bundle)")
        if store:
            g.add_argument("--store", metavar="s3://BUCKET/PREFIX", help="an S3-compatible store the "
                           "devices offload to (credentials: AWS environment variables or profile)")
            p.add_argument("--endpoint", metavar="URL", help="the store's URL (default: AWS S3)")
    else:
        p.add_argument("-c", "--config", type=Path, required=True, help="the daemon's config file")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edgerec", description="Edge video recorder.")
    p.add_argument("--version", action="version", version=f"edgerec {__version__}")
    p.add_argument("--log-level", default="info", choices=LOG_LEVELS)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="record the configured cameras until stopped")
    _add_config(run)
    run.add_argument("--exit-at-eof", action="store_true",
                     help="exit once every file source has ended and is sealed")
    # Also accepted after `run` (as in `edgerec run -c FILE --log-level debug`); it overrides the global one.
    run.add_argument("--log-level", default=argparse.SUPPRESS, choices=LOG_LEVELS)

    kg = sub.add_parser("keygen", help="make the privacy officer's key pair (do this off the device)")
    kg.add_argument("--out", type=Path, required=True, help="private key file to write (and OUT.pub)")

    ls = sub.add_parser("ls", help="list recorded segments and gaps")
    _add_config(ls, data_dir=True, bundle=True, store=True)
    ls.add_argument("--camera")
    ls.add_argument("--device", help="with --store: only this device")
    ls.add_argument("--access", action="store_true", help="with --store: list the access records")
    ls.add_argument("--json", action="store_true")

    vf = sub.add_parser("verify", help="check every segment's framing, signature and hash chain")
    _add_config(vf, data_dir=True, bundle=True)
    vf.add_argument("--key", type=Path, help="private key: also decrypt and authenticate every chunk")
    vf.add_argument("--device-pub", type=Path, metavar="FILE",
                    help="with --bundle: the device's device.pub kept from its installation; the bundle "
                         "must be signed by that key")
    vf.add_argument("--camera")
    vf.add_argument("--head", action="append", default=[], metavar="CAMERA=SEQ:SHA256|FILE",
                    help="a chain head the daemon published earlier (status chain_heads), or a file of them "
                         "(CAMERA=SEQ:SHA256 lines, or a saved status document); repeatable: the segment "
                         "must still be there, or its removal in the audit log")
    vf.add_argument("--json", action="store_true")

    ex = sub.add_parser("export", help="decrypt a time range of one camera into an MP4")
    _add_config(ex, data_dir=True, bundle=True, store=True)
    ex.add_argument("--device", help="with --store: the device whose footage to export")
    ex.add_argument("--key", type=Path, required=True, help="the privacy officer's private key file")
    ex.add_argument("--camera", help="required for a data directory; for a bundle when it has several")
    ex.add_argument("--from", dest="from_", metavar="TIME",
                    help="required for a data directory; for a bundle the default is all it holds")
    ex.add_argument("--to", metavar="TIME")
    ex.add_argument("-o", "--out", type=Path, required=True)
    ex.add_argument("--reason", required=True,
                    help="why this footage is looked at (recorded in the manifest and the audit log)")
    ex.add_argument("--by", help="who exports (default: the user running the command)")

    bd = sub.add_parser("bundle", help="write one file with an incident's footage for the officer")
    _add_config(bd)
    bd.add_argument("--incident", required=True, metavar="ID")
    bd.add_argument("-o", "--out", type=Path, required=True, help="the bundle file to write")
    bd.add_argument("--camera", help="only this camera (default: every camera the incident covers)")
    bd.add_argument("--from", dest="from_", metavar="TIME", help="narrow the incident's held window")
    bd.add_argument("--to", metavar="TIME")
    bd.add_argument("--json", action="store_true")

    inc = sub.add_parser("incident", help="open, close or list incidents (holds on footage)")
    isub = inc.add_subparsers(dest="incident_command", required=True, metavar="ACTION")
    io = isub.add_parser("open", help="hold footage of a time window")
    _add_config(io)
    io.add_argument("--id", required=True)
    io.add_argument("--camera", default="*", help="camera name or * for all (default)")
    io.add_argument("--from", dest="from_", required=True, metavar="TIME")
    io.add_argument("--to", metavar="TIME", help="end of the window; omit for open-ended")
    io.add_argument("--reason", default="")
    io.add_argument("--by", default="")
    io.add_argument("--json", action="store_true")
    ic = isub.add_parser("close", help="close an incident (its footage is released after the grace period)")
    _add_config(ic)
    ic.add_argument("--id", required=True)
    ic.add_argument("--by", default="")
    ic.add_argument("--json", action="store_true")
    ir = isub.add_parser("repair", help="rewrite the catalog's incidents that disagree with the audit log "
                                        "from the log (after a catalog_mismatch alarm)")
    _add_config(ir)
    ir.add_argument("--dry-run", action="store_true", help="only show what would be rewritten")
    il = isub.add_parser("ls", help="list incidents")
    _add_config(il)
    il.add_argument("--all", action="store_true", help="include closed incidents")
    il.add_argument("--json", action="store_true")

    rt = sub.add_parser("retention", help="run one retention sweep, or show what it would delete")
    _add_config(rt)
    rt.add_argument("--dry-run", action="store_true")
    rt.add_argument("--now", metavar="TIME", help="pretend it is this time (checks and tests)")
    rt.add_argument("--json", action="store_true")

    au = sub.add_parser("audit", help="audit log tools")
    asub = au.add_subparsers(dest="audit_command", required=True, metavar="ACTION")
    av = asub.add_parser("verify", help="check the audit log's hash chain")
    _add_config(av, data_dir=True)
    av.add_argument("--head", metavar="LINES:SHA256",
                    help="a head the daemon published earlier (status audit_head): check that the log "
                         "still has that line at that place")

    of = sub.add_parser("offload", help="copy held (or all) footage to the S3-compatible store")
    _add_config(of)
    of.add_argument("--once", action="store_true",
                    help="one pass in the foreground; exit 0 once nothing waits")

    st = sub.add_parser("status", help="what the running daemon reports")
    _add_config(st)
    st.add_argument("--json", action="store_true")
    return p


# ----- helpers --------------------------------------------------------------------------------------------
def _data_dir(args: argparse.Namespace) -> tuple[Path, Config | None]:
    if getattr(args, "config", None) is not None:
        cfg = load_config(args.config)
        if not cfg.data_dir.is_dir():
            raise UsageError(f"data_dir {cfg.data_dir} (from {args.config}): not a directory; nothing has "
                             "been recorded there yet (the daemon creates it when it starts)")
        return cfg.data_dir, cfg
    if not args.data_dir.is_dir():
        raise UsageError(f"--data-dir {args.data_dir}: not a directory")
    return args.data_dir, None


def _recorded_data_dir(cfg: Config, config_path: Path) -> None:
    """For the commands that only read (``incident ls``, ``retention --dry-run``): the data directory must
    exist already; they never create it, nor a catalog in it."""
    if not cfg.data_dir.is_dir():
        raise UsageError(f"data_dir {cfg.data_dir} (from {config_path}): does not exist; nothing has been "
                         "recorded there yet (the daemon creates it when it starts)")


def format_incident(row: dict[str, Any]) -> str:
    """One incident for people: local times, plain words (``--json`` keeps the machine fields)."""
    from .humanize import local_time_text

    camera = "every camera" if row.get("camera") == "*" else f"camera {row.get('camera')}"
    until = local_time_text(row.get("to"), "until closed")
    line = (f"{row.get('id')} ({row.get('state')}): {camera}, {local_time_text(row.get('from'))} .. {until}; "
            f"opened {local_time_text(row.get('opened'))}" + (f" by {row['by']}" if row.get("by") else ""))
    if row.get("closed"):
        line += f"; closed {local_time_text(row['closed'])}" + (
            f" by {row['closed_by']}" if row.get("closed_by") else "")
    if row.get("reason"):
        line += f"; reason: {row['reason']}"
    if "held_segments" in row:
        from .humanize import plural

        line += f"; holds {plural(row['held_segments'], 'segment')} ({row.get('held_bytes', 0) / 1e6:.1f} MB)"
    return line


def refuse_root_on_foreign_data_dir(data_dir: Path, command: str, euid: int | None = None) -> None:
    """Refuse to write the catalog as root in a data dir the service user owns: SQLite would leave root-owned
    files there (the -wal and -shm files) that lock the daemon out of its own catalog."""
    euid = os.geteuid() if euid is None else euid
    try:
        owner_uid = data_dir.stat().st_uid
    except FileNotFoundError:
        return
    if euid != 0 or owner_uid == 0:
        return
    import pwd

    try:
        owner = pwd.getpwuid(owner_uid).pw_name
    except KeyError:
        owner = f"#{owner_uid}"
    raise UsageError(f"refusing to run as root on {data_dir} (owned by {owner}): files created there would "
                     f"lock the daemon out; run it as {owner}: sudo -u {owner} edgerec {command} ...")


def _print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=False, default=str)
    sys.stdout.write("\n")


def _parse_time(text: str, what: str) -> int:
    from .timefmt import parse_time

    try:
        return parse_time(text)
    except EdgerecError as exc:
        raise UsageError(f"{what} {text!r}: {exc}") from None


# ----- commands -------------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    from .daemon import Daemon

    cfg = load_config(args.config)
    return Daemon(cfg, exit_at_eof=args.exit_at_eof).run()


def cmd_keygen(args: argparse.Namespace) -> int:
    from . import keys

    public = keys.generate_recipient(args.out)
    print(f"private key: {args.out} (keep it off the device)")
    print(f"public key:  {public}")
    print(f"fingerprint: {keys.fingerprint(keys.parse_public_key(public))}")
    print(f"Add the public key (also in {args.out}.pub) to 'recipients:' in the device's config.")
    return 0


def cmd_ls(args: argparse.Namespace) -> int:
    from . import inventory

    if getattr(args, "store", None):
        return cmd_store_ls(args)
    if getattr(args, "bundle", None) is not None:
        from .bundlereader import bundle_listing

        listing = bundle_listing(args.bundle)
        if args.camera is not None:
            listing["cameras"] = {k: v for k, v in listing["cameras"].items() if k == args.camera}
        if args.json:
            _print_json(listing)
        else:
            incident = listing.get("incident") or {}
            print(f"incident {incident.get('id')} ({incident.get('state')}): {incident.get('reason')!r}, "
                  f"window {incident.get('from')} .. {incident.get('to')}")
            print(inventory.format_listing(listing))
            for item in listing["absent"]:
                print(f"  ABSENT  {item.get('path')}: {item.get('reason')}")
        return 0
    data_dir, _ = _data_dir(args)
    listing = inventory.listing(data_dir, camera=args.camera)
    if args.json:
        _print_json(listing)
    else:
        print(inventory.format_listing(listing))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from . import inventory, keys

    private = keys.load_private_key(args.key) if args.key else None
    if getattr(args, "bundle", None) is not None:
        from .bundlereader import verify_bundle

        if args.head:
            raise UsageError("--head goes with a data directory (--data-dir or -c)")
        device = keys.load_device_public_key(args.device_pub) if args.device_pub else None
        report: Any = verify_bundle(args.bundle, private_key=private, device_key=device)
    else:
        if args.device_pub is not None:
            raise UsageError("--device-pub goes with --bundle")
        data_dir, _ = _data_dir(args)
        heads = _chain_heads(args.head)
        report = inventory.verify_tree(data_dir, private_key=private, camera=args.camera, heads=heads)
    if args.json:
        _print_json(report.to_json_dict())
    else:
        for line in report.lines():
            print(line)
    return 0 if report.ok else 1


def _chain_heads(values: Sequence[str]) -> list[Any]:
    """``--head`` values: ``CAMERA=SEQ:SHA256``, or a file of heads."""
    from .chainheads import parse_chain_head, parse_heads_file

    heads = []
    for value in values:
        if "=" in value and not Path(value).exists():
            try:
                heads.append(parse_chain_head(value))
            except ValueError as exc:
                raise UsageError(f"--head {value}: {exc}") from None
            continue
        try:
            text = Path(value).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UsageError(f"--head {value}: not CAMERA=SEQ:SHA256 and not a readable file "
                             f"({exc})") from None
        try:
            heads += parse_heads_file(text)
        except ValueError as exc:
            raise UsageError(f"--head {value}: {exc}") from None
    return heads


def _export_progress() -> Any:
    from .progress import Progress

    return Progress("export", "segments")


def cmd_export(args: argparse.Namespace) -> int:
    from . import inventory, keys
    from .export import ExportAccess, export_segments, os_user

    access = ExportAccess(by=args.by if args.by is not None else os_user(), reason=args.reason)
    if getattr(args, "bundle", None) is not None:
        return _export_bundle(args, access)
    if getattr(args, "store", None):
        return cmd_store_export(args)
    for value, flag in ((args.camera, "--camera"), (args.from_, "--from"), (args.to, "--to")):
        if value is None:
            raise UsageError(f"{flag} is required when exporting from a data directory or a store")
    data_dir, cfg = _data_dir(args)
    from_ns = _parse_time(args.from_, "--from")
    to_ns = _parse_time(args.to, "--to")
    if to_ns <= from_ns:
        raise UsageError("--to must be after --from")
    private = keys.load_private_key(args.key)
    paths = inventory.segments_in_range(data_dir, args.camera, from_ns, to_ns)
    if not paths:
        raise EdgerecError(f"no footage of camera {args.camera!r} between {args.from_} and {args.to}")

    origin = {"kind": "data_dir", "path": str(data_dir), "camera": args.camera,
              "from": _rfc3339_arg(args.from_, "--from"), "to": _rfc3339_arg(args.to, "--to")}
    progress = _export_progress()
    try:
        result = export_segments(paths, private, args.out, access=access, origin=origin, progress=progress,
                                 from_ns=from_ns, to_ns=to_ns,
                                 known_gaps=inventory.recorded_gaps(data_dir, args.camera, from_ns, to_ns))
    finally:
        progress.finish()
    if cfg is not None:
        from .audit import AuditLog

        AuditLog(DataDir(data_dir).audit_path).append(
            "export", camera=args.camera, **{"from": args.from_, "to": args.to}, out=str(args.out),
            segments=len(paths), by=access.by, reason=access.reason)
    return _export_done(args, result)


def _export_bundle(args: argparse.Namespace, access: Any) -> int:
    from . import keys
    from .bundlereader import export_bundle

    from_ns = _parse_time(args.from_, "--from") if args.from_ is not None else None
    to_ns = _parse_time(args.to, "--to") if args.to is not None else None
    private = keys.load_private_key(args.key)
    progress = _export_progress()
    try:
        result = export_bundle(args.bundle, private, args.out, access=access, camera=args.camera,
                               from_ns=from_ns, to_ns=to_ns, progress=progress)
    finally:
        progress.finish()
    return _export_done(args, result)


def _export_summary(out: Path, result: Any) -> list[str]:
    """What an export shows, in a few lines: its footage, every gap in it, its manifest."""
    from .timefmt import rfc3339

    gaps = result.gaps
    lines = [f"wrote {out}: {result.segments_ok} segments, {result.frames - result.preroll_frames} frames, "
             f"{result.duration_s:.1f} s, {len(gaps)} {'gap' if len(gaps) == 1 else 'gaps'}",
             f"  footage {rfc3339(result.first_frame_ns)} .. {rfc3339(result.last_frame_ns)} (first and last "
             "frame shown)"]
    lines += [f"  {gap.line()}" for gap in gaps]
    lines.append(f"  manifest {out}.manifest.json")
    return lines


def _export_done(args: argparse.Namespace, result: Any) -> int:
    for line in _export_summary(args.out, result):
        print(line)
    if result.problems:
        for problem in result.problems:
            print(f"problem: {problem}", file=sys.stderr)
        return 1
    return 0


def cmd_bundle(args: argparse.Namespace) -> int:
    from .bundle import make_bundle

    cfg = load_config(args.config)
    from_ns = _parse_time(args.from_, "--from") if args.from_ is not None else None
    to_ns = _parse_time(args.to, "--to") if args.to is not None else None
    if not cfg.data_dir.is_dir():
        raise UsageError(f"data_dir {cfg.data_dir} (from {args.config}): not a directory")
    refuse_root_on_foreign_data_dir(cfg.data_dir, "bundle")
    catalog, audit, _reserve = _open_catalog(cfg)
    try:
        result = make_bundle(cfg.data_dir, catalog, audit, incident_id=args.incident, out=args.out,
                             device_id=cfg.device_id,
                             grace_ns=int(cfg.incidents.release_grace_days * 86400e9),
                             camera=args.camera, from_ns=from_ns, to_ns=to_ns,
                             config_cameras=[c.name for c in cfg.cameras])
    finally:
        catalog.close()
    if args.json:
        _print_json(result.to_json_dict())
    else:
        sel = result.selection
        print(f"wrote {result.path}: incident {sel.incident_id}, {result.segments} segments, "
              f"{result.size_bytes / 1e6:.1f} MB, footage {result.selection.to_json_dict()['from']} .. "
              f"{result.selection.to_json_dict()['to']}")
        print(f"sha256 {result.sha256}")
        print(f"device key fingerprint {result.device_fingerprint}")
        for item in result.absent:
            print(f"warning: {item['path']} not bundled: {item['reason']}", file=sys.stderr)
    return 0


def cmd_store_ls(args: argparse.Namespace) -> int:
    from . import store, storeread

    url = store.parse_store_url(args.store)
    st = storeread.open_store(url, args.endpoint)
    if args.access:
        records = storeread.access_records(st, url.prefix)
        if args.json:
            _print_json(records)
        else:
            print(storeread.format_access(records))
        return 0
    listing = storeread.listing(st, url.prefix, args.device)
    if args.json:
        _print_json(listing)
    else:
        print(storeread.format_listing(listing))
    return 0


def cmd_store_export(args: argparse.Namespace) -> int:
    from . import keys, store, storeread

    if not args.device:
        raise UsageError("--device is required with --store (edgerec ls --store ... lists the devices)")
    url = store.parse_store_url(args.store)
    from_ns = _parse_time(args.from_, "--from")
    to_ns = _parse_time(args.to, "--to")
    if to_ns <= from_ns:
        raise UsageError("--to must be after --from")
    private = keys.load_private_key(args.key)
    st = storeread.open_store(url, args.endpoint)
    progress = _export_progress()
    try:
        result, access = storeread.export_from_store(
            st, url, device=args.device, camera=args.camera, from_ns=from_ns, to_ns=to_ns,
            private_key=private, out=args.out, reason=args.reason, by=args.by or None, progress=progress)
    finally:
        progress.finish()
    for line in _export_summary(args.out, result):
        print(line)
    print(f"  access record s3://{url.bucket}/{access}")
    for problem in result.problems:
        print(f"problem: {problem}", file=sys.stderr)
    return 1 if result.problems else 0


def cmd_offload(args: argparse.Namespace) -> int:
    from . import offload

    cfg = load_config(args.config)
    return offload.main(cfg, once=args.once)


def _open_catalog(cfg: Config) -> tuple[Any, Any, Any]:
    """(catalog, audit log, space reserve) of the data directory, for the commands that change the catalog
    or sweep. A catalog that lost its incidents (a damaged one moved away, a new one made by this very
    open) gets them back from the audit log first, as at daemon start: whichever process opens it first."""
    from .audit import AuditLog
    from .catalog import Catalog
    from .errors import CatalogError
    from .reconcile import restore_incidents
    from .spacereserve import SpaceReserve, is_disk_full_error

    # The daemon's reserve file: on a completely full disk the command may give it up (the daemon makes
    # it again). Opening the catalog may need it too: with the daemon stopped, SQLite makes its WAL index.
    reserve = SpaceReserve.in_dir(cfg.data_dir)
    try:
        catalog = reserve.with_room(lambda: Catalog.open(cfg.data_dir))
    except CatalogError as exc:
        if not is_disk_full_error(exc):
            raise
        # Not "the catalog is unusable": nothing is wrong with it, and moving it away would be wrong.
        raise CatalogError(f"{cfg.data_dir}: the disk is full, the catalog cannot be opened; "
                           "nothing was recorded (free some space and try again)") from None
    audit = AuditLog(DataDir(cfg.data_dir).audit_path)
    try:
        restore_incidents(catalog, audit, reserve=reserve)
    except BaseException:
        catalog.close()
        raise
    return catalog, audit, reserve


def _incident_service(cfg: Config) -> tuple[Any, Any]:
    from .fsutil import prepare_data_dir
    from .incidents import IncidentService

    tightened = prepare_data_dir(cfg.data_dir, str(cfg.source_path) if cfg.source_path else None)
    if tightened:
        logging.getLogger("edgerec.cli").warning("%s", tightened)
    from .retention import Sweeper

    catalog, audit, reserve = _open_catalog(cfg)
    service = IncidentService(catalog, audit, cfg, reserve)
    # Closes are dated no earlier than the retention clock (computed here, not recorded: docs/design/time.md).
    service.rclock_now = Sweeper(catalog, audit, cfg, cfg.data_dir, reserve=reserve).peek_now_ns
    return service, catalog


def cmd_incident(args: argparse.Namespace) -> int:
    cfg = load_config(args.config)
    if args.incident_command == "ls":
        return _incident_ls(args, cfg)
    refuse_root_on_foreign_data_dir(cfg.data_dir, "incident")
    service, catalog = _incident_service(cfg)
    try:
        if args.incident_command == "repair":
            return _repair_incidents(catalog, service.audit, args.dry_run)
        obj: dict[str, Any] = {"action": args.incident_command, "id": args.id, "by": args.by}
        if args.incident_command == "open":
            obj.update({"camera": args.camera, "reason": args.reason,
                        "from": _rfc3339_arg(args.from_, "--from"),
                        "to": _rfc3339_arg(args.to, "--to") if args.to else None})
        result = service.handle(obj, time.time_ns())
        if result.ok and not result.duplicate:
            _confirm_holds(catalog, service.audit)
        if args.json:
            _print_json(result.to_json_dict())
        else:
            print(" ".join(f"{k}={v}" for k, v in result.to_json_dict().items() if v is not None))
            if not result.ok:
                print(f"edgerec: {result.error}", file=sys.stderr)
        return 0 if result.ok else 1
    finally:
        catalog.close()


def _confirm_holds(catalog: Any, audit: Any) -> None:
    """After a command: check the catalog against the audit log now, so that an ``incidents_confirmed``
    line vouches for the new line (start-up never takes a confirmed line for one lost to a power cut)."""
    from .holdcheck import HoldChecker

    try:
        checked = HoldChecker(catalog, audit, audit.path).check()
    except (OSError, EdgerecError) as exc:
        logging.getLogger("edgerec.cli").warning("holds not checked against the audit log: %s", exc)
        return
    if not checked.agrees:
        print(f"edgerec: {checked.message}", file=sys.stderr)


def _repair_incidents(catalog: Any, audit: Any, dry_run: bool) -> int:
    from .holdcheck import HoldChecker, repair_catalog
    from .timefmt import rfc3339

    rows = repair_catalog(catalog, audit, audit.path, dry_run=dry_run)
    verb = "would rewrite" if dry_run else "rewrote"
    for row in rows:
        state = "open" if row.closed_ns is None else f"closed {rfc3339(row.closed_ns)}"
        print(f"{verb} incident {row.id}: camera {row.camera}, {rfc3339(row.from_ns)} .. "
              f"{rfc3339(row.to_ns) or 'open-ended'}, {state}")
    if not dry_run:
        HoldChecker(catalog, audit, audit.path).check()  # confirms the agreement in the log
    print(f"{verb} {len(rows)} incident(s) from the audit log" if rows
          else "the catalog keeps every hold the audit log records; nothing to repair")
    return 0


def _incident_ls(args: argparse.Namespace, cfg: Config) -> int:
    """``incident ls``: read-only; nothing is created (no data directory, no catalog)."""
    from .catalog import Catalog
    from .layout import DataDir as _DataDir

    _recorded_data_dir(cfg, args.config)
    # Read-only, but SQLite may still make the -shm file of a catalog the daemon is not using now.
    refuse_root_on_foreign_data_dir(cfg.data_dir, "incident")
    if not _DataDir(cfg.data_dir).catalog_path.is_file():
        rows: list[dict[str, Any]] = []
    else:
        catalog = Catalog.open_readonly(cfg.data_dir)
        try:
            rows = [i.to_json_dict() for i in catalog.incidents(open_only=not args.all)]
        finally:
            catalog.close()
    if args.json:
        _print_json(rows)
        return 0
    for row in rows:
        print(format_incident(row))
    if not rows:
        print("no incidents" if args.all else "no open incidents")
    return 0


def _rfc3339_arg(text: str, what: str) -> str:
    """CLI times may be local 'YYYY-MM-DD HH:MM'; commands carry RFC 3339 UTC, so convert once here."""
    from .timefmt import rfc3339

    return rfc3339(_parse_time(text, what)) or ""


def cmd_retention(args: argparse.Namespace) -> int:
    from .retention import Sweeper

    cfg = load_config(args.config)
    now_ns = _parse_time(args.now, "--now") if args.now else None
    if args.dry_run:
        _recorded_data_dir(cfg, args.config)
    refuse_root_on_foreign_data_dir(cfg.data_dir, "retention")
    if args.dry_run and not DataDir(cfg.data_dir).catalog_path.is_file():
        print(f"nothing recorded yet in {cfg.data_dir} (no catalog): nothing to delete")
        return 0
    # Even a dry run restores lost incidents: without them it would list held footage as due.
    catalog, audit, reserve = _open_catalog(cfg)
    try:
        sweeper = Sweeper(catalog, audit, cfg, cfg.data_dir, reserve=reserve)
        report = sweeper.sweep(now_ns=now_ns, dry_run=args.dry_run)
        held = _held_by_incidents(catalog, audit, cfg) if not args.json else []
    finally:
        catalog.close()
    checked = sweeper.last_hold_check
    disagrees = checked is not None and not checked.agrees
    if args.json:
        _print_json({**report.to_json_dict(),
                     "catalog_disagrees": checked.fields() if checked is not None and disagrees else None})
    else:
        for line in report.lines():
            print(line)
        # What retention leaves alone, and why: each open incident and the footage it holds.
        print("kept by open incidents:" if held else "no open incidents hold footage")
        for row in held:
            print(f"  {format_incident(row)}")
    if checked is not None and disagrees:
        print(f"edgerec: {checked.message}", file=sys.stderr)
        return 1
    return 0


def _held_by_incidents(catalog: Any, audit: Any, cfg: Config) -> list[dict[str, Any]]:
    from .incidents import IncidentService

    return IncidentService(catalog, audit, cfg).incidents_payload()


def cmd_audit(args: argparse.Namespace) -> int:
    from .audit import parse_head, verify_audit

    expected = None
    if args.head is not None:
        try:
            expected = parse_head(args.head)
        except ValueError as exc:
            raise UsageError(f"--head {args.head}: {exc}") from None
    data_dir, _ = _data_dir(args)
    result = verify_audit(DataDir(data_dir).audit_path, expected)
    for repair in result.repairs:
        print(repair)
    print(result.message)
    return 0 if result.ok else 1


def cmd_status(args: argparse.Namespace) -> int:
    from . import offloadstatus, statusfile
    from .errors import ConfigError

    try:
        cfg = load_config(args.config)
        where = statusfile.StatusLocation(cfg.status_file, cfg.data_dir, cfg.device_id)
    except ConfigError as exc:
        # Right after a broken edit is when the status matters: the daemon still runs the previous config.
        located = statusfile.location_from_raw_config(args.config)
        if located is None:
            raise
        where = located
        print(f"edgerec: warning: {args.config} has {len(exc.problems)} problem(s); a running daemon keeps "
              "its previous configuration (see last errors below)", file=sys.stderr)
    candidates = statusfile.status_path_candidates(where.status_file, where.data_dir, os.environ)
    status = statusfile.read_daemon_status(candidates, device_id=where.device_id)
    # The offload service's own file, read now: fresher than the copy in the daemon's status.
    fresh = offloadstatus.read(offloadstatus.candidates(where.data_dir, os.environ), where.device_id)
    if fresh is not None:
        status = {**status, "offload": offloadstatus.section(fresh, enabled=True)}
    offload = status.get("offload")
    if args.json:
        _print_json(status)
    else:
        print(statusfile.format_status(status, time.time()))
        if isinstance(offload, dict) and offload.get("enabled"):
            print(offloadstatus.format_line(offload))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "keygen": cmd_keygen,
    "ls": cmd_ls,
    "verify": cmd_verify,
    "export": cmd_export,
    "bundle": cmd_bundle,
    "incident": cmd_incident,
    "retention": cmd_retention,
    "audit": cmd_audit,
    "status": cmd_status,
    "offload": cmd_offload,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    from .logsetup import setup_logging

    setup_logging(args.log_level)
    try:
        code = COMMANDS[args.command](args)
        sys.stdout.flush()  # here, not at exit: a reader that went away (| head) is handled below
        return code
    except BrokenPipeError:
        return _stdout_gone()
    except EdgerecError as exc:
        from .redact import redact

        for line in redact(str(exc)).splitlines() or [type(exc).__name__]:
            print(f"edgerec: {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


def _stdout_gone() -> int:
    """The reader of our output went away (``edgerec ls | head``): stop quietly, as a tool killed by
    SIGPIPE would, with no traceback. Output still buffered goes nowhere: point stdout at devnull so that
    the flush at exit does not fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass
    return EXIT_PIPE_CLOSED


if __name__ == "__main__":
    sys.exit(main())
