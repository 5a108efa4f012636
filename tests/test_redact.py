"""redact.py: credentials out of any text (pure, with hypothesis), and config errors that never quote them."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgerec.config import parse_config
from edgerec.errors import ConfigError
from edgerec.redact import REDACTED, redact, redact_obj, url_secrets


@pytest.mark.parametrize(("text", "expected"), [
    ("rtsp://admin:s3cret@10.0.0.2:554/s", "rtsp://admin:***@10.0.0.2:554/s"),
    ("cannot open http://cam/x?user=admin&password=hunter22&ch=1: 401 Unauthorized",
     "cannot open http://cam/x?user=admin&password=***&ch=1: 401 Unauthorized"),
    ("rtsp://cam/s?token=abc&auth=def&pwd=g&pass=h&key=k&secret=s",
     "rtsp://cam/s?token=***&auth=***&pwd=***&pass=***&key=***&secret=***"),
    ("exec:ffmpeg -i rtsp://a:b@c/ -f h264 -", "exec:ffmpeg -i rtsp://a:***@c/ -f h264 -"),
    ("https://ghp_token@github.com/x", "https://***@github.com/x"),
    ("rpicam-vid --password hunter2 --token=abc -o -", "rpicam-vid --password *** --token=*** -o -"),
    ("login failed password=hunter2 user=admin", "login failed password=*** user=admin"),
    ("segment sealed camera=gate key=value path=/x", "segment sealed camera=gate key=value path=/x"),
    ("rtsp://10.0.0.2:554/stream1", "rtsp://10.0.0.2:554/stream1"),
])
def test_credentials_are_redacted_wherever_they_appear(text: str, expected: str) -> None:
    assert redact(text, ()) == expected


def test_a_known_secret_is_scrubbed_outside_any_url_raw_and_percent_encoded() -> None:
    secret = "p@ss/w#rd"
    text = f"program said: bad password {secret} (sent {quote(secret, safe='')})"
    assert redact(text, [secret]) == f"program said: bad password {REDACTED} (sent {REDACTED})"


def test_short_known_secrets_are_only_removed_by_the_patterns() -> None:
    assert redact("camera 1 of 2: rtsp://u:1@h/", ["1"]) == "camera 1 of 2: rtsp://u:***@h/"


def test_redact_obj_redacts_every_string_of_nested_data() -> None:
    status = {"cameras": {"gate": {"last_error": "cannot open rtsp://u:pw@h/: 401", "fps": 25.0}},
              "last_errors": [{"message": "token=abcdef failed"}]}
    assert redact_obj(status, ()) == {"cameras": {"gate": {"last_error": "cannot open rtsp://u:***@h/: 401",
                                                           "fps": 25.0}},
                                      "last_errors": [{"message": "token=*** failed"}]}


def test_url_secrets_finds_userinfo_passwords_and_secret_query_values() -> None:
    assert url_secrets("exec:x --url rtsp://u:pw1@h/s?password=pw2&ch=1") == ["pw1", "pw2"]


# ----- properties -------------------------------------------------------------------------------------------
passwords = st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), min_size=1, max_size=40)
plain = st.text(st.characters(whitelist_categories=("Lu", "Ll", "Nd"), whitelist_characters=" .,:-_"),
                max_size=30)


@given(password=passwords, before=plain, after=plain)
def test_a_percent_encoded_url_password_never_survives_in_any_surrounding_text(password: str, before: str,
                                                                               after: str) -> None:
    encoded = quote(password, safe="")
    text = f"{before} rtsp://admin:{encoded}@10.0.0.2:554/s {after}"
    out = redact(text, ())
    assert f" rtsp://admin:{REDACTED}@10.0.0.2:554/s " in out
    assert out == f"{before} rtsp://admin:{REDACTED}@10.0.0.2:554/s {after}"


@given(password=passwords, after=plain,
       name=st.sampled_from(["password", "token", "auth", "pass", "pwd", "key", "secret"]))
def test_a_secret_query_value_never_survives(password: str, name: str, after: str) -> None:
    out = redact(f"http://cam/video?user=admin&{name}={quote(password, safe='')}&ch=1 {after}", ())
    assert out == f"http://cam/video?user=admin&{name}={REDACTED}&ch=1 {after}"


@given(secret=st.text(min_size=4, max_size=20), text=st.text(max_size=80), cut=st.integers(0, 80))
def test_a_registered_secret_never_survives_and_redacting_twice_changes_nothing(secret: str, text: str,
                                                                                 cut: int) -> None:
    planted = text[:cut] + secret + text[cut:]
    out = redact(planted, [secret])
    if secret.strip("*"):
        assert secret not in out
    assert redact(out, [secret]) == out


# ----- config errors about credentials ----------------------------------------------------------------------
def camera_problems(camera: dict[str, object], tmp_path: Path) -> list[str]:
    """The problems reported about the camera (other keys of this config may have their own)."""
    data = {"device_id": "dev", "data_dir": "/var/lib/edgerec",
            "recipients": ["age1" + "q" * 58], "cameras": [camera]}
    with pytest.raises(ConfigError) as caught:
        parse_config(data, base_dir=tmp_path)
    return [p for p in caught.value.problems if p.startswith("cameras[0]")]


@pytest.mark.parametrize("password", ["p@ssWORD9", "pa:ssWORD9", "pa/ssWORD9", "pa#ssWORD9", "12/34ZZ"])
def test_an_unencoded_special_character_in_a_url_password_is_refused_without_quoting_it(
        password: str, tmp_path: Path) -> None:
    problems = camera_problems({"name": "gate", "url": f"rtsp://admin:{password}@10.0.0.2/s"}, tmp_path)
    assert len(problems) == 1, problems
    assert problems[0].startswith("cameras[0].url: the user name or password in the url contains '@', ':', "
                                  "'/' or '#' that is not percent-encoded")
    assert "percent-encoded (@ as %40" in problems[0] and "password_file" in problems[0]
    for piece in (password, "WORD9", "34ZZ"):
        assert piece not in problems[0]


def test_password_file_needs_a_network_url_without_a_password_and_a_user(tmp_path: Path) -> None:
    assert camera_problems({"name": "gate", "url": "rtsp://admin:pw@10.0.0.2/s", "password_file": "p"},
                           tmp_path) == ["cameras[0].password_file: the url has a password too: remove it "
                                         "from the url"]
    assert camera_problems({"name": "gate", "url": "rtsp://10.0.0.2/s", "password_file": "p"}, tmp_path) == [
        "cameras[0].username: missing (required when password_file is set, unless the url names the user)"]
    assert camera_problems({"name": "gate", "url": "testsrc", "password_file": "p"}, tmp_path)[0].startswith(
        "cameras[0].password_file: only for rtsp:// and http(s):// cameras")
