"""A local `nats-server -js` process on loopback, for `make regions` (isolate.simulate) and the tests."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from types import TracebackType

from ..errors import InvalidConfig

SEARCH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/local/sbin", "/sbin"])


def find_nats_server() -> str | None:
    """The nats-server command (Debian installs it in /usr/sbin, often outside a user's PATH), or None."""
    return shutil.which("nats-server", path=SEARCH)


class NatsServer:
    """`nats-server -js` listening on 127.0.0.1:`port` with its JetStream store in `store`.

    `stop()` then `start()` again brings back the same server with the same data (a restart)."""

    def __init__(self, store: Path, port: int, host: str = "127.0.0.1", log: Path | None = None) -> None:
        command = find_nats_server()
        if command is None:
            raise InvalidConfig("nats-server is not installed (Debian: apt-get install nats-server; "
                                "`make toolchains` does it)")
        self.command = command
        self.store = Path(store)
        self.host = host
        self.port = port
        self.log = log or self.store.parent / f"nats-{port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self.store.mkdir(parents=True, exist_ok=True)
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                [self.command, "-js", "-a", self.host, "-p", str(self.port), "-sd", str(self.store)],
                stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise InvalidConfig(f"nats-server exited with status {self.process.returncode}; see {self.log}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise InvalidConfig(f"nats-server did not listen on {self.host}:{self.port} within {timeout:g} s")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL if it lingers."""
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()

    def kill(self) -> None:
        """SIGKILL: the server dies as in a crash."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()

    def __enter__(self) -> NatsServer:
        self.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
