"""An S3-compatible bucket as the place footage is offloaded to: object names, the client, its errors.

Object names are decided here (pure functions); the S3 protocol is the ``minio`` package's (the
``offload`` extra: ``pip install 'edgerec[offload]'``), imported only when a store is used, so the
recorder never loads it. Every failure becomes a StoreError with one line saying what, which bucket
and which endpoint: ``StoreAuthError`` (credentials refused), ``StoreBucketError`` (no such bucket) and
``StoreUnavailable`` (anything a retry may cure: network, timeouts, a full or busy store).

Layout under ``<prefix>/`` (see docs/offload.md)::

    <device>/device.pub                                   the device's public signing key
    <device>/<camera>/<YYYY-MM-DD>/<segment file name>    sealed segments, byte for byte
    <device>/<camera>/<YYYY-MM-DD>/<name>.seg.partial     the complete chunks of a segment being written
    <device>/_incidents/<incident id>.json                one record per incident
    access/<time>-<device>-<camera>-<random>.json         one record per export made from the store
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from .errors import EdgerecError, UsageError

log = logging.getLogger(__name__)

INCIDENTS_DIR = "_incidents"  # a camera name cannot start with '_'
ACCESS_DIR = "access"
DEVICE_PUB_OBJECT = "device.pub"
PROVISIONAL_SUFFIX = ".partial"
DIGEST_META = "sha256"  # user metadata: hex SHA-256 of the object's bytes
PART_BYTES = 5 * 1024 * 1024  # multipart part size: S3's minimum, so the least memory per upload
CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 30.0
_MD5_ETAG = re.compile(r'^"?([0-9a-f]{32})(?:-(\d+))?"?$')
_AUTH_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                         "ExpiredToken", "InvalidSecurity", "AllAccessDisabled", "AccountProblem"})


class StoreError(EdgerecError):
    """A store operation failed; the message names the bucket and endpoint."""


class StoreUnavailable(StoreError):
    """The store did not answer, or answered 'not now' (5xx, slow down, full): retry later."""


class StoreAuthError(StoreError):
    """The store refused the credentials."""


class StoreBucketError(StoreError):
    """The bucket does not exist."""


class StoreNotFound(StoreError):
    """No such object."""


class MissingClientError(EdgerecError):
    exit_code = 2


# ----- names (pure) ----------------------------------------------------------------------------------------
def join(*parts: str) -> str:
    return "/".join(p.strip("/") for p in parts if p and p.strip("/"))


def segment_key_for(prefix: str, device_id: str, rel_path: str) -> str:
    """The key of a segment from its path relative to the data directory (``camera/day/name``)."""
    return join(prefix, device_id, rel_path)


def provisional_key(sealed_key: str) -> str:
    return sealed_key + PROVISIONAL_SUFFIX


def device_pub_key(prefix: str, device_id: str) -> str:
    return join(prefix, device_id, DEVICE_PUB_OBJECT)


def incident_key(prefix: str, device_id: str, incident_id: str) -> str:
    return join(prefix, device_id, INCIDENTS_DIR, _safe_component(incident_id) + ".json")


def access_key(prefix: str, when: str, device_id: str, camera: str, token: str) -> str:
    return join(prefix, ACCESS_DIR, f"{when}-{device_id}-{camera}-{token}.json")


def _safe_component(text: str) -> str:
    """An incident id as one key component: anything but letters, digits, '.', '_', '-' is %-escaped."""
    return "".join(c if c.isascii() and (c.isalnum() or c in "._-") else f"%{ord(c):02X}"
                   for b in [text] for c in b) or "%00"


@dataclass(frozen=True)
class StoreUrl:
    bucket: str
    prefix: str


def parse_store_url(text: str) -> StoreUrl:
    """``s3://BUCKET/PREFIX`` (the prefix may be empty or several levels)."""
    parts = urlsplit(text)
    if parts.scheme != "s3" or not parts.netloc or parts.query or parts.fragment:
        raise UsageError(f"--store {text!r}: expected s3://BUCKET/PREFIX")
    return StoreUrl(parts.netloc, parts.path.strip("/"))


def expected_etag(md5_parts: list[bytes]) -> str:
    """The ETag S3 gives an object uploaded in these parts (MD5 of the bytes; of the part MD5s plus
    '-N' for a multipart upload)."""
    if len(md5_parts) == 1:
        return md5_parts[0].hex()
    return hashlib.md5(b"".join(md5_parts), usedforsecurity=False).hexdigest() + f"-{len(md5_parts)}"


def file_fingerprint(path: Path, size: int | None = None) -> tuple[int, str, str]:
    """(size, hex SHA-256, expected ETag) of the first ``size`` bytes of a file (all when None)."""
    sha = hashlib.sha256()
    parts: list[bytes] = []
    total = 0
    with open(path, "rb") as f:
        while size is None or total < size:
            want = PART_BYTES if size is None else min(PART_BYTES, size - total)
            block = f.read(want)
            if not block:
                break
            sha.update(block)
            parts.append(hashlib.md5(block, usedforsecurity=False).digest())
            total += len(block)
    if size is not None and total < size:
        raise EdgerecError(f"{path}: shorter than expected ({total} of {size} bytes)")
    if not parts:
        parts = [hashlib.md5(b"", usedforsecurity=False).digest()]
    return total, sha.hexdigest(), expected_etag(parts)


# ----- pacing ----------------------------------------------------------------------------------------------
class Throttle:
    """Keeps the average upload rate at or under ``bytes_per_s`` (shared by every upload of a process)."""

    def __init__(self, bytes_per_s: int | None, clock: Any = time.monotonic, sleep: Any = time.sleep):
        self.bytes_per_s = bytes_per_s
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._free_at = 0.0  # when the bytes granted so far will have gone out at the limit

    def delay_for(self, n: int) -> float:
        """Reserve ``n`` bytes; how long to wait before sending them."""
        if not self.bytes_per_s:
            return 0.0
        with self._lock:
            now = self._clock()
            start = max(now, self._free_at)
            self._free_at = start + n / self.bytes_per_s
            return max(0.0, self._free_at - now - n / self.bytes_per_s)

    def take(self, n: int) -> None:
        delay = self.delay_for(n)
        if delay > 0:
            self._sleep(delay)


class _PacedReader(io.RawIOBase):
    """A file prefix read through a Throttle; the client reads it part by part."""

    def __init__(self, f: BinaryIO, length: int, throttle: Throttle, block_bytes: int = 64 * 1024):
        self._f = f
        self._left = length
        self._throttle = throttle
        self._block = block_bytes

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        n = self._left if n is None or n < 0 else min(n, self._left)
        out = bytearray()
        while len(out) < n:
            block = self._f.read(min(self._block, n - len(out)))
            if not block:
                break
            self._throttle.take(len(block))
            out += block
        self._left -= len(out)
        return bytes(out)


# ----- the client ------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ObjectInfo:
    key: str
    size: int
    etag: str
    metadata: dict[str, str]


@dataclass(frozen=True)
class StoreSettings:
    bucket: str
    endpoint: str | None = None  # None: AWS S3
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None
    addressing_style: str = "auto"  # auto | path | virtual

    @property
    def where(self) -> str:
        return f"bucket {self.bucket} at {self.endpoint or 'https://s3.amazonaws.com'}"


def _import_minio() -> Any:
    try:
        import minio
    except ImportError:
        raise MissingClientError("the S3 client is not installed: pip install 'edgerec[offload]' "
                                 "(it is the minio package)") from None
    return minio


def read_secret_file(path: Path, what: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise EdgerecError(f"{what} {path}: cannot read: {exc.strerror or exc}") from None
    if not text or "\n" in text:
        raise EdgerecError(f"{what} {path}: expected the secret on one line")
    return text


class Store:
    """One bucket through the minio client. Methods raise StoreError subclasses, never client exceptions."""

    def __init__(self, settings: StoreSettings, throttle: Throttle | None = None):
        minio = _import_minio()
        import urllib3
        from minio import credentials as creds

        self.settings = settings
        self.throttle = throttle or Throttle(None)
        endpoint = settings.endpoint or "https://s3.amazonaws.com"
        parts = urlsplit(endpoint)
        if settings.access_key_id:
            provider: Any = creds.StaticProvider(settings.access_key_id, settings.secret_access_key or "")
        else:
            # The standard chain: AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, then ~/.aws/credentials
            # (AWS_PROFILE), then MinIO's variables, then an EC2/ECS role.
            provider = creds.ChainedProvider([creds.EnvAWSProvider(), creds.AWSConfigProvider(),
                                              creds.EnvMinioProvider(), creds.IamAwsProvider()])
        # No retries in the client: the offloader retries whole objects with its own backoff.
        http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=CONNECT_TIMEOUT_S, read=READ_TIMEOUT_S),
                                   retries=False, maxsize=2)
        self._client = minio.Minio(parts.netloc, credentials=provider, secure=parts.scheme == "https",
                                   region=settings.region, http_client=http)
        if settings.addressing_style == "virtual":
            self._client.enable_virtual_style_endpoint()
        elif settings.addressing_style == "path":
            self._client.disable_virtual_style_endpoint()
        self._bucket = settings.bucket

    # ----- errors --------------------------------------------------------------------------------------
    def _error(self, exc: BaseException, doing: str) -> StoreError:
        from minio.error import S3Error

        where = self.settings.where
        if isinstance(exc, StoreError):
            return exc
        if isinstance(exc, S3Error):
            code = exc.code or ""
            if code in _AUTH_CODES:
                return StoreAuthError(f"store refused the credentials ({code}) {doing}, {where}: check "
                                      "access_key_id and the secret (or AWS_ACCESS_KEY_ID/AWS_PROFILE)")
            if code == "NoSuchBucket":
                return StoreBucketError(f"no such bucket {doing}: {where} (create it first; "
                                        "see docs/operations.md)")
            if code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
                return StoreNotFound(f"no such object {doing}, {where}")
            return StoreUnavailable(f"store error {code or type(exc).__name__} {doing}, {where}: "
                                    f"{exc.message or ''}".rstrip(": "))
        if isinstance(exc, ValueError) and "credentials" in str(exc).lower():
            return StoreAuthError(f"no credentials {doing}, {where}: set offload.access_key_id and "
                                  "secret_access_key_file, or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY")
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        if len(text) > 200:
            text = text[:200] + "..."
        return StoreUnavailable(f"store unreachable {doing}, {where}: {type(exc).__name__}: {text}")

    def _call(self, doing: str, fn: Any, *args: Any, **kw: Any) -> Any:
        try:
            return fn(*args, **kw)
        except Exception as exc:  # the client raises urllib3, minio and value errors alike
            raise self._error(exc, doing) from None

    # ----- operations ----------------------------------------------------------------------------------
    def put_file(self, key: str, path: Path, size: int, sha256_hex: str, etag: str,
                 metadata: dict[str, str] | None = None) -> None:
        """Upload the first ``size`` bytes of ``path`` as ``key`` and check it: a HEAD must show the same
        size, digest metadata and (when the store gives an MD5 ETag) the ETag of these very bytes."""
        meta = {DIGEST_META: sha256_hex, **(metadata or {})}
        with open(path, "rb") as f:
            reader = _PacedReader(f, size, self.throttle)
            self._call(f"uploading {key}", self._client.put_object, self._bucket, key, reader, size,
                       metadata=meta, part_size=PART_BYTES, num_parallel_uploads=1)
        self.check_object(key, size, sha256_hex, etag)

    def put_bytes(self, key: str, data: bytes, content_type: str = "application/json") -> None:
        sha = hashlib.sha256(data).hexdigest()
        self.throttle.take(len(data))
        self._call(f"uploading {key}", self._client.put_object, self._bucket, key, io.BytesIO(data),
                   len(data), content_type=content_type, metadata={DIGEST_META: sha})
        md5 = hashlib.md5(data, usedforsecurity=False).digest()
        self.check_object(key, len(data), sha, expected_etag([md5]))

    def check_object(self, key: str, size: int, sha256_hex: str, etag: str) -> None:
        info = self.head(key)
        problems = []
        if info.size != size:
            problems.append(f"size {info.size}, expected {size}")
        if info.metadata.get(DIGEST_META) != sha256_hex:
            problems.append("digest metadata differs")
        match = _MD5_ETAG.match(info.etag or "")
        if match and info.etag.strip('"') != etag:
            problems.append(f"ETag {info.etag.strip(chr(34))}, expected {etag} (the stored bytes differ)")
        if problems:
            raise StoreUnavailable(f"uploaded {key} does not check out ({'; '.join(problems)}), "
                                   f"{self.settings.where}")

    def head(self, key: str) -> ObjectInfo:
        st = self._call(f"reading {key}", self._client.stat_object, self._bucket, key)
        meta = {}
        for name, value in (st.metadata or {}).items():
            lowered = name.lower()
            if lowered.startswith("x-amz-meta-"):
                meta[lowered[len("x-amz-meta-"):]] = value
        return ObjectInfo(key, int(st.size or 0), st.etag or "", meta)

    def exists(self, key: str) -> bool:
        try:
            self.head(key)
        except StoreNotFound:
            return False
        return True

    def delete(self, key: str) -> None:
        self._call(f"deleting {key}", self._client.remove_object, self._bucket, key)

    def get_bytes(self, key: str, limit_bytes: int = 1 << 20) -> bytes:
        """A small object (a record, a key) read whole."""
        response = self._call(f"reading {key}", self._client.get_object, self._bucket, key)
        try:
            data = self._call(f"reading {key}", response.read, limit_bytes + 1)
        finally:
            response.close()
            response.release_conn()
        if len(data) > limit_bytes:
            raise StoreError(f"{key}: larger than {limit_bytes} bytes, not a record")
        return data

    def download(self, key: str, dest: Path) -> None:
        """Fetch an object into ``dest`` (written 0600, through a temporary name)."""
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        response = self._call(f"reading {key}", self._client.get_object, self._bucket, key)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as f:
                for block in self._call(f"reading {key}", lambda: list(response.stream(1 << 20))):
                    f.write(block)
            os.replace(tmp, dest)
        finally:
            response.close()
            response.release_conn()
            tmp.unlink(missing_ok=True)

    def list(self, prefix: str, *, recursive: bool = True) -> Iterator[tuple[str, int]]:
        """(key, size) of every object under ``prefix``; with ``recursive=False`` the next level's
        "directories" come as (key ending in '/', 0)."""
        prefix = prefix.rstrip("/") + "/" if prefix else ""
        objects = self._call(f"listing {prefix or '/'}", self._client.list_objects, self._bucket,
                             prefix=prefix, recursive=recursive)
        iterator = iter(objects)
        while True:
            obj = self._call(f"listing {prefix or '/'}", next, iterator, None)
            if obj is None:
                return
            yield obj.object_name, int(obj.size or 0)

