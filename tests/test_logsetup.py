"""Log lines: one per event, key=value, journald priorities, tracebacks only for unexpected errors."""

from __future__ import annotations

import io
import logging
import os
import re

import pytest

from edgerec import logsetup
from edgerec.errors import SourceError, UsageError

TIMESTAMP = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z"


@pytest.fixture(autouse=True)
def restore_root_logger():
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def lines_of(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_terminal_line_has_timestamp_level_logger_and_fields():
    out = io.StringIO()
    logsetup.setup_logging("info", stream=out, journal=False)
    logging.getLogger("edgerec.recorder").info("segment sealed camera=%s bytes=%d", "gate", 1234)
    [line] = lines_of(out)
    assert re.fullmatch(TIMESTAMP + r" info edgerec\.recorder: segment sealed camera=gate bytes=1234", line)


def test_journal_lines_carry_syslog_priority_and_no_timestamp():
    out = io.StringIO()
    logsetup.setup_logging("debug", stream=out, journal=True)
    log = logging.getLogger("edgerec.supervisor")
    log.debug("tick")
    log.info("running")
    log.warning("camera stalled camera=gate")
    log.error("disk full")
    log.critical("giving up")
    assert lines_of(out) == [
        "<7>debug edgerec.supervisor: tick",
        "<6>info edgerec.supervisor: running",
        "<4>warning edgerec.supervisor: camera stalled camera=gate",
        "<3>error edgerec.supervisor: disk full",
        "<2>critical edgerec.supervisor: giving up",
    ]


def test_journal_is_detected_from_journal_stream_matching_stderr(tmp_path, monkeypatch):
    with open(tmp_path / "stderr", "w+") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert logsetup.is_journal_stream(stream)
        logsetup.setup_logging("info", stream=stream)
        logging.getLogger("edgerec").warning("hello")
        stream.flush()
        stream.seek(0)
        assert stream.read() == "<4>warning edgerec: hello\n"


def test_inherited_journal_stream_for_another_file_is_not_trusted(tmp_path, monkeypatch):
    # A child started from a service inherits $JOURNAL_STREAM while writing elsewhere (a terminal, a pipe).
    monkeypatch.setenv("JOURNAL_STREAM", "1:1")
    with open(tmp_path / "stderr", "w") as stream:
        assert not logsetup.is_journal_stream(stream)
    assert not logsetup.is_journal_stream(io.StringIO())


def test_level_filters_lower_records():
    out = io.StringIO()
    logsetup.setup_logging("warning", stream=out, journal=True)
    log = logging.getLogger("edgerec.x")
    log.info("hidden")
    log.warning("shown")
    assert lines_of(out) == ["<4>warning edgerec.x: shown"]


def test_debug_keeps_the_file_watcher_library_quiet_so_its_events_cannot_feed_on_the_log(tmp_path):
    # The `watchdog` package logs each inotify event at debug; with the log file in the watched config
    # directory every such line would cause another event, without end.
    out = io.StringIO()
    logsetup.setup_logging("debug", stream=out, journal=True)
    logging.getLogger("watchdog.observers.inotify_buffer").debug("in-event IN_MODIFY daemon.log")
    logging.getLogger("watchdog.observers").warning("inotify watch limit reached")
    logging.getLogger("libav.h264").debug("decoder detail")
    assert lines_of(out) == ["<4>warning watchdog.observers: inotify watch limit reached",
                             "<7>debug libav.h264: decoder detail"]
    logsetup.setup_logging("info", stream=io.StringIO(), journal=True)
    assert not logging.getLogger("libav").isEnabledFor(logging.INFO)  # chatty at info: warnings only


def test_unknown_level_is_a_usage_error():
    with pytest.raises(UsageError, match="unknown log level 'loud'"):
        logsetup.setup_logging("loud", stream=io.StringIO())


def test_calling_setup_twice_replaces_the_handler_instead_of_doubling_lines():
    first, second = io.StringIO(), io.StringIO()
    logsetup.setup_logging("info", stream=first, journal=True)
    logsetup.setup_logging("debug", stream=second, journal=True)
    logging.getLogger("edgerec").debug("once")
    assert first.getvalue() == ""
    assert lines_of(second) == ["<7>debug edgerec: once"]


def test_operator_error_is_logged_on_one_line_without_traceback():
    out = io.StringIO()
    logsetup.setup_logging("info", stream=out, journal=True)
    try:
        raise SourceError("rtsp://cam/1: connection refused")
    except SourceError:
        logging.getLogger("edgerec.source").warning("camera unavailable camera=gate", exc_info=True)
    assert lines_of(out) == [
        '<4>warning edgerec.source: camera unavailable camera=gate error="rtsp://cam/1: connection refused"'
    ]


def test_unexpected_exception_keeps_traceback_with_priority_on_every_journal_line():
    out = io.StringIO()
    logsetup.setup_logging("info", stream=out, journal=True)
    try:
        {}["missing"]
    except KeyError:
        logging.getLogger("edgerec.recorder").exception("recorder crashed camera=gate")
    lines = lines_of(out)
    assert lines[0] == "<3>error edgerec.recorder: recorder crashed camera=gate"
    assert any("Traceback (most recent call last)" in ln for ln in lines)
    assert lines[-1] == "<3>KeyError: 'missing'"
    assert all(ln.startswith("<3>") for ln in lines)


def test_newlines_in_a_message_stay_on_one_line():
    out = io.StringIO()
    logsetup.setup_logging("info", stream=out, journal=True)
    logging.getLogger("edgerec").error("config reload rejected: %s", "a: bad\nb: worse")
    assert lines_of(out) == [r"<3>error edgerec: config reload rejected: a: bad\nb: worse"]


def test_kv_quotes_only_values_that_need_it():
    assert logsetup.kv(camera="gate", n=3) == "camera=gate n=3"
    assert logsetup.kv(msg='said "hi" twice', path="") == r'msg="said \"hi\" twice" path=""'
    assert logsetup.kv(err="line1\nline2") == r'err="line1\nline2"'
