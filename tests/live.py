"""A real `isolate serve` process on free loopback ports, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """Starts on enter (waiting for /readyz), stops with SIGTERM on exit; `restart()` keeps the data."""

    def __init__(self, data_dir: Path, *args: str, env: dict[str, str] | None = None,
                 ready_within: float = 60) -> None:
        """`ready_within`: seconds a start may take (compiling what the manifest deploys included)."""
        self.data_dir = data_dir
        self.ready_within = ready_within
        self.args = list(args)
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.port = free_port()
        self.admin_port = free_port()
        self.log_path = data_dir.parent / f"server-{self.port}.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def edge_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def token(self) -> str:
        return (self.data_dir / "admin-token").read_text().strip()

    def cli_args(self) -> list[str]:
        return ["--data-dir", str(self.data_dir), "--admin-url", self.admin_url]

    def start(self) -> None:
        command = [sys.executable, "-m", "isolate.cli", "serve", "--data-dir", str(self.data_dir),
                   "--port", str(self.port), "--admin-port", str(self.admin_port), *self.args]
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(command, stdout=log, stderr=log, env=self.env, cwd=ROOT)
        deadline = time.monotonic() + self.ready_within
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}:\n{self.log()}")
            try:
                if httpx.get(f"{self.admin_url}/readyz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"server not ready after {self.ready_within:g} s:\n{self.log()}")

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise

    def restart(self) -> None:
        self.stop()
        self.start()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_for_log(self, *texts: str, timeout: float = 10.0) -> str:
        """The log once it holds every one of `texts` (logs are written by a thread, off the loop)."""
        deadline = time.monotonic() + timeout
        while True:
            log = self.log()
            if all(text in log for text in texts) or time.monotonic() > deadline:
                return log
            time.sleep(0.02)

    def admin(self) -> httpx.Client:
        return httpx.Client(base_url=self.admin_url, headers={"authorization": f"Bearer {self.token}"}, timeout=60)

    def edge(self) -> httpx.Client:
        return httpx.Client(base_url=self.edge_url, timeout=60)

    def __enter__(self) -> LiveServer:
        self.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.process is not None and self.process.poll() is None:
            self.stop()


COMPONENT_SAMPLES = ("hello-py", "hello-js")
"""Samples that are wasi:http components: compiling one takes ~10 s of CPU (an interpreter inside), so
only the tests about them deploy them."""


def core_manifest(dest: Path, *, components: bool = False) -> Path:
    """The repository's isolate.toml with paths made absolute, without the component samples (and their
    routes) unless `components`. Pass the result with --manifest."""
    text = (ROOT / "isolate.toml").read_text()
    if not components:
        blocks = text.split("\n\n")
        text = "\n\n".join(b for b in blocks if not any(f'{name}"' in b or f"modules.{name}]" in b
                                                       for name in COMPONENT_SAMPLES))
    dest.write_text(text.replace('path = "samples/', f'path = "{ROOT}/samples/'))
    return dest


def repository_manifest(server: LiveServer, dest: Path, *, components: bool = False) -> Path:
    """The repository's isolate.toml for `server` (see `core_manifest`): its port where the manifest
    names 8787 (the proxy sample calls this server)."""
    core_manifest(dest, components=components)
    dest.write_text(dest.read_text().replace("127.0.0.1:8787", f"127.0.0.1:{server.port}"))
    return dest


def responses(raw: bytes) -> list[tuple[int, dict[str, str], bytes]]:
    """Concatenated HTTP/1.1 responses (each with content-length) as (status, headers, body)."""
    out = []
    for _ in range(100):
        if not raw:
            break
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        size = int(headers.get("content-length", "0"))
        out.append((int(lines[0].split()[1]), headers, rest[:size]))
        raw = rest[size:]
    return out
