"""Test helper: a real S3 API server (moto's server mode) on a free loopback port, started per test.

Like the mosquitto helper, the test starts it, uses it and stops it; nothing depends on a server already
running. ``S3Server.stop()``/``start()`` on the same port simulate an outage (the in-memory buckets go
with the process, so outage tests re-create the bucket and compare against the offload table).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.media import free_port, stop_process, wait_for_port

START_TIMEOUT_S = 20.0
ACCESS_KEY = "testing-key"
SECRET_KEY = "testing-secret"

needs_moto = pytest.mark.skipif(
    shutil.which("moto_server", path=str(Path(sys.executable).parent)) is None
    and shutil.which("moto_server") is None,
    reason="moto[server] is not installed (pip install -e '.[test]')")


def moto_server_command() -> str:
    local = Path(sys.executable).parent / "moto_server"
    return str(local) if local.exists() else "moto_server"


class S3Server:
    def __init__(self, log_path: Path, port: int | None = None, *, check_credentials: bool = False):
        self.check_credentials = check_credentials  # moto then refuses every key it was not given
        self.port = port or free_port()
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> S3Server:
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        env = {**os.environ, "MOTO_ALLOW_NONEXISTENT_REGION": "true"}
        if self.check_credentials:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
        self.proc = subprocess.Popen([moto_server_command(), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=log, stderr=subprocess.STDOUT, env=env)
        log.close()
        wait_for_port(self.port, START_TIMEOUT_S, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    def client(self):  # noqa: ANN201 - a minio.Minio
        import minio

        return minio.Minio(f"127.0.0.1:{self.port}", access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                           secure=False, region="us-east-1")

    def make_bucket(self, name: str) -> None:
        client = self.client()
        if not client.bucket_exists(name):
            client.make_bucket(name)


@pytest.fixture
def s3(tmp_path: Path) -> Iterator[S3Server]:
    server = S3Server(tmp_path / "moto.log").start()
    try:
        yield server
    finally:
        server.stop()


class Outage:
    """A loopback TCP relay in front of the store that the test can cut (``down``) and restore (``up``):
    the store keeps its objects, the client sees connections refused and reset mid-upload."""

    def __init__(self, target_port: int):
        import socket
        import threading

        self._socket_mod = socket
        self._threading = threading
        self.target_port = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def up(self) -> Outage:
        socket = self._socket_mod
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(16)
        self._listener = listener
        self._threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    def down(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            conns, self._conns = self._conns, []
        if listener is not None:
            listener.close()
        for c in conns:
            try:
                c.shutdown(self._socket_mod.SHUT_RDWR)
            except OSError:
                pass
            c.close()

    def _accept(self, listener) -> None:  # noqa: ANN001
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            upstream = self._socket_mod.create_connection(("127.0.0.1", self.target_port))
            with self._lock:
                self._conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                self._threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src, dst) -> None:  # noqa: ANN001
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass
