"""Recipient and device keys: generation, file modes, text format, checksums and clear errors."""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from edgerec import keys
from edgerec.errors import KeyFormatError, UsageError
from tests.helpers.events import from_records, named


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _raw(pub: object) -> bytes:
    return pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)  # type: ignore[attr-defined]


def test_generate_recipient_writes_private_0600_and_public_line(tmp_path: Path) -> None:
    out = tmp_path / "officer.key"
    public = keys.generate_recipient(out)
    assert _mode(out) == 0o600
    pub_file = tmp_path / "officer.key.pub"
    assert pub_file.read_text() == public + "\n"
    assert public.startswith("edgerec-pub1-")
    private = keys.load_private_key(out)
    assert _raw(private.public_key()) == _raw(keys.parse_public_key(public))
    assert _raw(keys.load_public_key(pub_file)) == _raw(private.public_key())


def test_keygen_report_shows_public_key_and_fingerprint(tmp_path: Path) -> None:
    text = keys.keygen(tmp_path / "officer.key")
    public = (tmp_path / "officer.key.pub").read_text().strip()
    fp = keys.fingerprint(keys.parse_public_key(public))
    assert public in text
    assert fp in text
    assert "secret1" not in text  # the private key is never printed


def test_generate_recipient_refuses_to_overwrite_private_key(tmp_path: Path) -> None:
    out = tmp_path / "officer.key"
    out.write_text("precious")
    with pytest.raises(UsageError, match="already exists"):
        keys.generate_recipient(out)
    assert out.read_text() == "precious"
    assert not (tmp_path / "officer.key.pub").exists()


def test_generate_recipient_refuses_when_only_public_file_exists(tmp_path: Path) -> None:
    (tmp_path / "officer.key.pub").write_text("old\n")
    with pytest.raises(UsageError, match="officer.key.pub already exists"):
        keys.generate_recipient(tmp_path / "officer.key")
    assert not (tmp_path / "officer.key").exists()


def test_public_key_round_trips_and_accepts_upper_case_and_spaces() -> None:
    pub = X25519PrivateKey.generate().public_key()
    text = keys.format_public_key(pub)
    assert len(text) == len(keys.PUBLIC_PREFIX) + keys.ENCODED_KEY_CHARS
    assert _raw(keys.parse_public_key(f"  {text.upper()}\n")) == _raw(pub)


def _mistype(text: str, position: int) -> str:
    old = text[position]
    new = "a" if old != "a" else "b"
    return text[:position] + new + text[position + 1 :]


@pytest.mark.parametrize("position", [len(keys.PUBLIC_PREFIX), len(keys.PUBLIC_PREFIX) + 20, -1])
def test_mistyped_public_key_is_rejected_by_checksum(position: int) -> None:
    text = keys.format_public_key(X25519PrivateKey.generate().public_key())
    with pytest.raises(KeyFormatError, match="checksum mismatch: the key was mistyped or truncated"):
        keys.parse_public_key(_mistype(text, position % len(text)))


def test_truncated_public_key_reports_bad_length() -> None:
    text = keys.format_public_key(X25519PrivateKey.generate().public_key())
    with pytest.raises(KeyFormatError, match="bad length: expected 58 characters"):
        keys.parse_public_key(text[:-3])


def test_public_key_with_wrong_prefix_is_rejected() -> None:
    text = keys.format_public_key(X25519PrivateKey.generate().public_key())
    with pytest.raises(KeyFormatError, match="wrong prefix"):
        keys.parse_public_key("age1" + text[len(keys.PUBLIC_PREFIX) :])


def test_public_key_with_invalid_characters_is_rejected() -> None:
    text = keys.format_public_key(X25519PrivateKey.generate().public_key())
    with pytest.raises(KeyFormatError, match="invalid character"):
        keys.parse_public_key(text[:-1] + "1")


def test_private_key_given_as_public_key_is_named_without_echoing_it() -> None:
    secret = keys.format_private_key(X25519PrivateKey.generate())
    with pytest.raises(KeyFormatError, match="this is a recipient private key") as caught:
        keys.parse_public_key(secret)
    assert secret[len(keys.SECRET_PREFIX) :] not in str(caught.value)


def test_public_key_checksum_is_bound_to_its_prefix() -> None:
    """A device public key relabelled as a recipient key fails its checksum."""
    pub_text = keys.format_public_key(X25519PrivateKey.generate().public_key())
    relabelled = keys.DEVICE_PUBLIC_PREFIX + pub_text[len(keys.PUBLIC_PREFIX) :]
    with pytest.raises(KeyFormatError, match="checksum mismatch"):
        keys.parse_device_public_key(relabelled)


def test_load_private_key_given_public_key_file_says_so(tmp_path: Path) -> None:
    keys.generate_recipient(tmp_path / "officer.key")
    with pytest.raises(KeyFormatError, match="this is a public key file"):
        keys.load_private_key(tmp_path / "officer.key.pub")


def test_load_private_key_missing_file_is_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no such key file"):
        keys.load_private_key(tmp_path / "nope.key")


def test_load_private_key_given_device_key_says_so(tmp_path: Path) -> None:
    keys.load_or_create_device_key(tmp_path / "data")
    with pytest.raises(KeyFormatError, match="this is a device signing key"):
        keys.load_private_key(tmp_path / "data" / "device.key")


def test_private_key_readable_by_others_loads_with_a_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    out = tmp_path / "officer.key"
    keys.generate_recipient(out)
    out.chmod(0o644)
    with caplog.at_level(logging.WARNING, logger="edgerec.keys"):
        key = keys.load_private_key(out)
    assert isinstance(key, X25519PrivateKey)
    assert named(from_records(caplog.records), "private key readable by others", path=out, mode="0644")


def test_private_key_0600_loads_without_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    keys.generate_recipient(tmp_path / "officer.key")
    with caplog.at_level(logging.WARNING, logger="edgerec.keys"):
        keys.load_private_key(tmp_path / "officer.key")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_pem_pkcs8_private_key_is_accepted(tmp_path: Path) -> None:
    key = X25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path = tmp_path / "officer.pem"
    path.write_bytes(pem)
    path.chmod(0o600)
    assert _raw(keys.load_private_key(path).public_key()) == _raw(key.public_key())


def test_fingerprint_is_the_key_id_in_groups_of_four() -> None:
    pub = X25519PrivateKey.generate().public_key()
    kid = keys.key_id(pub)
    assert len(kid) == 8
    fp = keys.fingerprint(pub)
    assert fp.replace(" ", "") == kid.hex()
    assert [len(g) for g in fp.split(" ")] == [4, 4, 4, 4]
    assert keys.key_id(keys.parse_public_key(keys.format_public_key(pub))) == kid


def test_device_key_created_once_with_private_modes(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    key = keys.load_or_create_device_key(data_dir)
    assert _mode(data_dir) == 0o700
    assert _mode(data_dir / "device.key") == 0o600
    pub = keys.load_device_public_key(data_dir / "device.pub")
    assert _raw(pub) == _raw(key.public_key())
    again = keys.load_or_create_device_key(data_dir)
    assert _raw(again.public_key()) == _raw(key.public_key())
    assert sorted(p.name for p in data_dir.iterdir()) == ["device.key", "device.pub"]


def test_device_pub_is_rewritten_when_missing(tmp_path: Path) -> None:
    key = keys.load_or_create_device_key(tmp_path)
    (tmp_path / "device.pub").unlink()
    keys.load_or_create_device_key(tmp_path)
    assert _raw(keys.load_device_public_key(tmp_path / "device.pub")) == _raw(key.public_key())
    assert keys.device_key_id(key.public_key()) != keys.device_key_id(
        keys.load_or_create_device_key(tmp_path / "other").public_key()
    )


def test_empty_device_key_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "device.key").write_text("")
    with pytest.raises(KeyFormatError, match="empty device key file"):
        keys.load_or_create_device_key(tmp_path)
