"""Shared test helpers; test modules import from here, never from one another.

- ``daemon``: the real ``edgerec`` command and daemon as subprocesses, configs, the officer key, ``wait_for``.
- ``broker``: a private mosquitto on a loopback port, a test CA, a recording MQTT client.
- ``mqtt_daemon``: the daemon talking to that broker (``Setup``, ``wait_online``, ``command``).
- ``media``: real H.264 clips made with PyAV, frame hashes, the RTSP server, plaintext scans.
- ``rtsp_server``: the GStreamer RTSP server script ``media`` runs with the system Python.
- ``segments``: keys, metadata and a one-call writer for real encrypted segments.
- ``catalog``: a time base, a ``Config`` and sealed-segment rows for catalog, retention and incident tests.
- ``recorder``: a ``Recorder`` with sinks that collect its segments and gaps (``make_rig``).
- ``scenes``: synthetic camera scenes (normal, black, frozen, moved, blurred) for health tests.
- ``site``: footage recorded once by the real daemon (the ``recording`` fixture) and copies of it.
- ``tmpfs``: small tmpfs file systems (root only) and ways to fill them.
- ``strace``: running a command under ``strace`` and parsing the trace into calls.
- ``crashloop``: kill -9 rounds and the checks after each (also run by ``bench/crashloop.py``).
- ``audit``: which incident lines of the audit log count.
"""
