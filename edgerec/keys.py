"""Recipient and device keys: generate, write, load, print and fingerprint them.

Two kinds of key pair exist. A *recipient* (the privacy officer, an offline escrow) has an X25519 key
pair: the public key goes into the device config and every segment's file key is wrapped for it; the
private key never goes near the device. The *device* has an Ed25519 signing key, created on first
start, that signs every segment trailer.

Keys travel as one-line text strings: a prefix naming the kind of key, then lowercase base32 (RFC 4648,
no padding) of the 32 raw key bytes followed by a 4-byte checksum. The checksum is the first 4 bytes of
SHA-256(prefix || raw key), so a mistyped or truncated key, or a key pasted with another kind's prefix,
is rejected with a message that says what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from .errors import KeyFormatError, UsageError
from .fsutil import fsync_dir

log = logging.getLogger(__name__)

PUBLIC_PREFIX = "edgerec-pub1-"
SECRET_PREFIX = "edgerec-secret1-"
DEVICE_PUBLIC_PREFIX = "edgerec-devpub1-"
DEVICE_SECRET_PREFIX = "edgerec-devsecret1-"
_ALL_PREFIXES = (PUBLIC_PREFIX, SECRET_PREFIX, DEVICE_PUBLIC_PREFIX, DEVICE_SECRET_PREFIX)
_KIND_NAMES = {
    PUBLIC_PREFIX: "a recipient public key",
    SECRET_PREFIX: "a recipient private key",
    DEVICE_PUBLIC_PREFIX: "a device public key",
    DEVICE_SECRET_PREFIX: "a device signing key",
}

RAW_KEY_BYTES = 32
CHECKSUM_BYTES = 4
KEY_ID_BYTES = 8
# base32 of 36 bytes without padding.
ENCODED_KEY_CHARS = 58
# Key files are a few hundred bytes; refuse to slurp anything much larger.
KEY_FILE_MAX_BYTES = 64 * 1024

_RECIPIENT_ID_LABEL = b"edgerec recipient key id v1\x00"
_DEVICE_ID_LABEL = b"edgerec device key id v1\x00"

DEVICE_KEY_NAME = "device.key"
DEVICE_PUB_NAME = "device.pub"


# ---------------------------------------------------------------------------------------------- text codec


def _checksum(prefix: str, raw: bytes) -> bytes:
    return hashlib.sha256(prefix.encode("ascii") + raw).digest()[:CHECKSUM_BYTES]


def encode_key(prefix: str, raw: bytes) -> str:
    """Encode 32 raw key bytes as ``prefix`` + base32(raw || checksum), lowercase, unpadded."""
    if len(raw) != RAW_KEY_BYTES:
        raise ValueError(f"raw key must be {RAW_KEY_BYTES} bytes, got {len(raw)}")
    body = base64.b32encode(raw + _checksum(prefix, raw)).decode("ascii").rstrip("=").lower()
    return prefix + body


def decode_key(text: str, prefix: str, *, source: str = "key") -> bytes:
    """Decode a key string made by ``encode_key`` and return its 32 raw bytes.

    Raises KeyFormatError naming what is wrong. Never echoes key material, since the text may be a secret.
    """
    text = text.strip().lower()
    if not text.startswith(prefix):
        for other in _ALL_PREFIXES:
            if text.startswith(other):
                raise KeyFormatError(
                    f"{source}: this is {_KIND_NAMES[other]} ({other}...), expected {_KIND_NAMES[prefix]}"
                    f" ({prefix}...)"
                )
        raise KeyFormatError(f"{source}: wrong prefix: expected a key starting with {prefix!r}")
    body = text[len(prefix) :]
    if len(body) != ENCODED_KEY_CHARS:
        raise KeyFormatError(
            f"{source}: bad length: expected {ENCODED_KEY_CHARS} characters after {prefix!r}, got {len(body)}"
            " (the key was truncated or has extra characters)"
        )
    bad = sorted({c for c in body if c not in "abcdefghijklmnopqrstuvwxyz234567"})
    if bad:
        raise KeyFormatError(
            f"{source}: invalid character(s) {''.join(bad)!r}: keys use only a-z and 2-7"
            " (the key was mistyped)"
        )
    try:
        decoded = base64.b32decode(body.upper() + "=" * (-len(body) % 8))
    except binascii.Error as exc:  # pragma: no cover - excluded by the checks above
        raise KeyFormatError(f"{source}: not valid base32: {exc}") from None
    raw, check = decoded[:RAW_KEY_BYTES], decoded[RAW_KEY_BYTES:]
    # The last base32 character carries 2 unused bits: the canonical-encoding test rejects typos there too.
    if check != _checksum(prefix, raw) or encode_key(prefix, raw) != text:
        raise KeyFormatError(f"{source}: checksum mismatch: the key was mistyped or truncated")
    return raw


# ---------------------------------------------------------------------------------------- recipient keys


def _raw_public(pub: X25519PublicKey | Ed25519PublicKey) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def format_public_key(pub: X25519PublicKey) -> str:
    """The one-line public key string of a recipient (``edgerec-pub1-...``)."""
    return encode_key(PUBLIC_PREFIX, _raw_public(pub))


def parse_public_key(text: str, *, source: str = "public key") -> X25519PublicKey:
    """Parse a recipient public key string; KeyFormatError says what is wrong with a bad one."""
    return X25519PublicKey.from_public_bytes(decode_key(text, PUBLIC_PREFIX, source=source))


def format_private_key(key: X25519PrivateKey) -> str:
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return encode_key(SECRET_PREFIX, raw)


def parse_private_key(text: str, *, source: str = "private key") -> X25519PrivateKey:
    return X25519PrivateKey.from_private_bytes(decode_key(text, SECRET_PREFIX, source=source))


def key_id(pub: X25519PublicKey) -> bytes:
    """8-byte id of a recipient key, stored in segment headers to find the recipient's stanza."""
    return hashlib.sha256(_RECIPIENT_ID_LABEL + _raw_public(pub)).digest()[:KEY_ID_BYTES]


def format_key_id(kid: bytes) -> str:
    """Human form of a key id: 16 hex digits in groups of four, e.g. ``3f2a 09c1 77de 4b10``."""
    text = kid.hex()
    return " ".join(text[i : i + 4] for i in range(0, len(text), 4))


def fingerprint(pub: X25519PublicKey) -> str:
    """Short human fingerprint of a recipient key; the same bytes as its ``key_id`` in segment headers."""
    return format_key_id(key_id(pub))


@dataclass(frozen=True)
class GeneratedRecipient:
    private_path: Path
    public_path: Path
    public_key: str
    fingerprint: str

    def report(self) -> str:
        """What ``edgerec keygen`` prints."""
        return (
            f"private key: {self.private_path} (mode 0600; keep it offline, never on the device)\n"
            f"public key file: {self.public_path}\n"
            f"public key: {self.public_key}\n"
            f"fingerprint: {self.fingerprint}\n"
            "Add the public key to the device config under 'recipients'."
        )


def _write_new_file(path: Path, content: str, mode: int) -> None:
    """Create ``path`` (never overwriting), write ``content``, fsync; ``mode`` is set exactly."""
    # O_CLOEXEC and fchmod are missing on Windows (keygen runs on the officer's computer, any OS).
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(path, flags, mode)
    try:
        if hasattr(os, "fchmod"):
            os.fchmod(fd, mode)  # the umask may only have narrowed it, but say exactly what we mean
        data = content.encode("utf-8")
        while data:
            data = data[os.write(fd, data) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def generate_recipient_keys(out: Path) -> GeneratedRecipient:
    """Make an X25519 recipient key pair: private key in ``out`` (0600), public key in ``out.pub``.

    Refuses (UsageError) to overwrite either file.
    """
    out = Path(out)
    pub_path = out.with_name(out.name + ".pub")
    for path in (out, pub_path):
        if path.exists() or path.is_symlink():
            raise UsageError(f"{path} already exists; refusing to overwrite a key (move it away first)")
    if not out.parent.is_dir():
        raise UsageError(f"{out.parent} is not a directory")
    key = X25519PrivateKey.generate()
    public_text = format_public_key(key.public_key())
    fp = fingerprint(key.public_key())
    secret = (
        "# edgerec recipient private key: whoever holds this file can read the footage.\n"
        "# Keep it offline (never on the recording device); the device needs only the public key.\n"
        f"# public key: {public_text}\n"
        f"# fingerprint: {fp}\n"
        f"{format_private_key(key)}\n"
    )
    try:
        _write_new_file(out, secret, 0o600)
    except FileExistsError:
        raise UsageError(f"{out} already exists; refusing to overwrite a key (move it away first)") from None
    try:
        _write_new_file(pub_path, public_text + "\n", 0o644)
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    # strict: the operator is told the key exists and will hand out its public half
    fsync_dir(out.parent, strict=True)
    log.info("recipient key generated path=%s fingerprint=%s", out, fp.replace(" ", ""))
    return GeneratedRecipient(out, pub_path, public_text, fp)


def generate_recipient(out: Path) -> str:
    """Make a recipient key pair (see ``generate_recipient_keys``) and return the public key string."""
    return generate_recipient_keys(out).public_key


def keygen(out: Path) -> str:
    """All the work of ``edgerec keygen --out PATH``; returns the text the command prints."""
    return generate_recipient_keys(out).report()


def _read_key_file(path: Path) -> str:
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise UsageError(f"{path}: no such key file") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFormatError(f"{path}: not a regular file")
    if st.st_size > KEY_FILE_MAX_BYTES:
        raise KeyFormatError(f"{path}: {st.st_size} bytes is far too large for a key file")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise KeyFormatError(f"{path}: not a text key file") from None


def _key_lines(text: str) -> list[str]:
    """The non-blank, non-comment lines of a key file."""
    return [s for s in (line.strip() for line in text.splitlines()) if s and not s.startswith("#")]


def _warn_if_readable_by_others(path: Path) -> None:
    mode = stat.S_IMODE(Path(path).stat().st_mode)
    if mode & 0o077:
        log.warning("private key readable by others path=%s mode=%04o advice='chmod 600'", path, mode)


def load_private_key(path: Path) -> X25519PrivateKey:
    """Load a recipient private key file (``edgerec-secret1-...`` text, or PEM PKCS#8 X25519).

    A public key file, a device key or anything else gives a KeyFormatError saying what it is. A file
    readable by group/others only logs a warning: refusing would lock the officer out of the footage.
    """
    path = Path(path)
    text = _read_key_file(path)
    if "-----BEGIN" in text:
        try:
            key = serialization.load_pem_private_key(text.encode("utf-8"), password=None)
        except (ValueError, TypeError) as exc:
            raise KeyFormatError(f"{path}: unreadable PEM private key ({exc})") from None
        if not isinstance(key, X25519PrivateKey):
            raise KeyFormatError(f"{path}: PEM key is not an X25519 private key")
        _warn_if_readable_by_others(path)
        return key
    lines = _key_lines(text)
    if not lines:
        raise KeyFormatError(f"{path}: no key found in the file")
    first = lines[0].lower()
    if first.startswith(PUBLIC_PREFIX):
        raise KeyFormatError(
            f"{path}: this is a public key file; give the private key (the file without '.pub')"
        )
    key = parse_private_key(lines[0], source=str(path))
    _warn_if_readable_by_others(path)
    return key


def load_public_key(path: Path) -> X25519PublicKey:
    """Load a recipient public key file (``officer.key.pub``: one ``edgerec-pub1-...`` line)."""
    lines = _key_lines(_read_key_file(path))
    if not lines:
        raise KeyFormatError(f"{path}: no key found in the file")
    return parse_public_key(lines[0], source=str(path))


# ------------------------------------------------------------------------------------------- device keys


def format_device_public_key(pub: Ed25519PublicKey) -> str:
    return encode_key(DEVICE_PUBLIC_PREFIX, _raw_public(pub))


def parse_device_public_key(text: str, *, source: str = "device public key") -> Ed25519PublicKey:
    return Ed25519PublicKey.from_public_bytes(decode_key(text, DEVICE_PUBLIC_PREFIX, source=source))


def device_key_id(pub: Ed25519PublicKey) -> bytes:
    """8-byte id of a device signing key (its human form is ``format_key_id``)."""
    return hashlib.sha256(_DEVICE_ID_LABEL + _raw_public(pub)).digest()[:KEY_ID_BYTES]


def device_fingerprint(pub: Ed25519PublicKey) -> str:
    return format_key_id(device_key_id(pub))


def _format_device_secret(key: Ed25519PrivateKey) -> str:
    raw = key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return encode_key(DEVICE_SECRET_PREFIX, raw)


def load_device_key(path: Path) -> Ed25519PrivateKey:
    """Load a device signing key file (``edgerec-devsecret1-...``)."""
    path = Path(path)
    lines = _key_lines(_read_key_file(path))
    if not lines:
        raise KeyFormatError(f"{path}: no key found in the file (empty device key file)")
    raw = decode_key(lines[0], DEVICE_SECRET_PREFIX, source=str(path))
    _warn_if_readable_by_others(path)
    return Ed25519PrivateKey.from_private_bytes(raw)


def load_device_public_key(path: Path) -> Ed25519PublicKey:
    """Load a device public key from ``device.pub`` (or from the ``device.key`` itself)."""
    path = Path(path)
    lines = _key_lines(_read_key_file(path))
    if not lines:
        raise KeyFormatError(f"{path}: no key found in the file")
    if lines[0].lower().startswith(DEVICE_SECRET_PREFIX):
        return load_device_key(path).public_key()
    return parse_device_public_key(lines[0], source=str(path))


def load_or_create_device_key(data_dir: Path) -> Ed25519PrivateKey:
    """The device signing key from ``data_dir/device.key``, created (with ``device.pub``) on first use.

    ``data_dir`` is created with mode 0700 if missing. Creation is crash-safe: the key is written to a
    temporary file, fsynced and then hard-linked into place, so ``device.key`` is either absent or
    complete, and two processes racing to create it end up with the same key.
    """
    data_dir = Path(data_dir)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    key_path = data_dir / DEVICE_KEY_NAME
    pub_path = data_dir / DEVICE_PUB_NAME
    if not key_path.exists():
        _create_device_key(key_path)
    key = load_device_key(key_path)
    _ensure_device_pub(pub_path, key.public_key())
    return key


def _create_device_key(key_path: Path) -> None:
    key = Ed25519PrivateKey.generate()
    tmp = key_path.with_name(f".{key_path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    content = (
        "# edgerec device signing key: proves which device wrote a segment. It cannot decrypt footage.\n"
        f"# public key: {format_device_public_key(key.public_key())}\n"
        f"{_format_device_secret(key)}\n"
    )
    _write_new_file(tmp, content, 0o600)
    try:
        os.link(tmp, key_path)
    except FileExistsError:
        pass  # another process won the race; its key is as good as ours
    finally:
        tmp.unlink(missing_ok=True)
    # strict: the device key signs every segment from now on; a key lost to a power cut would orphan them
    fsync_dir(key_path.parent, strict=True)
    log.info("device key created path=%s", key_path)


def _ensure_device_pub(pub_path: Path, pub: Ed25519PublicKey) -> None:
    """(Re)write device.pub when it is missing or does not match device.key."""
    text = format_device_public_key(pub)
    try:
        if _key_lines(pub_path.read_text(encoding="utf-8"))[:1] == [text]:
            return
    except (FileNotFoundError, UnicodeDecodeError):
        pass
    tmp = pub_path.with_name(f".{pub_path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    _write_new_file(tmp, f"{text}\n", 0o644)
    os.replace(tmp, pub_path)
    fsync_dir(pub_path.parent, strict=True)  # strict, as for the key itself
    log.info("device public key written path=%s fingerprint=%s", pub_path, device_fingerprint(pub))
