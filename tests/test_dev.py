"""`isolate dev` end to end: a real process on loopback ports rebuilding a C project in tmp on each save."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from live import ROOT, free_port

from isolate.dev import _is_source

HANDLER = """#include <string.h>
#include "isolate.h"

isolate_response *isolate_on_request(const isolate_request *req) {
    (void)req;
    const char *text = "%s";
    isolate_response *res = isolate_response_new(200);
    isolate_response_body(res, text, strlen(text));
    return res;
}
"""
WAIT = 60.0
"""Seconds any one wait may take (a cold zig on a busy machine); a test never asserts a timing."""


def until(check: Callable[[], Any], what: str, log: Path) -> Any:
    """Poll `check` until it returns something truthy, for at most WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        try:
            result = check()
        except httpx.TransportError:
            result = None
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"{what} not seen within {WAIT} s; the dev server said:\n{log.read_text()}")


class Dev:
    """`isolate dev PROJECT` on free ports, with its own data directory."""

    def __init__(self, tmp: Path, project: Path) -> None:
        self.project = project
        self.port, self.admin_port = free_port(), free_port()
        self.data_dir = tmp / "dev-data"
        self.log = tmp / "dev.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.edge = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)

    def __enter__(self) -> Dev:
        command = [sys.executable, "-m", "isolate.cli", "dev", str(self.project), "--data-dir", str(self.data_dir),
                   "--port", str(self.port), "--admin-port", str(self.admin_port)]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log, cwd=ROOT)
        until(lambda: self._alive() and httpx.get(f"http://127.0.0.1:{self.admin_port}/readyz", timeout=2)
              .status_code == 200, "readiness", self.log)
        until(lambda: "watching" in self.log.read_text(), "the watcher", self.log)
        return self

    def _alive(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise AssertionError(f"isolate dev exited with {self.process.returncode}:\n{self.log.read_text()}")
        return True

    def __exit__(self, *exc: object) -> None:
        self.edge.close()
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=20)

    def version(self) -> int:
        token = (self.data_dir / "admin-token").read_text().strip()
        answer = httpx.get(f"http://127.0.0.1:{self.admin_port}/v1/modules/{self.project.name}",
                           headers={"authorization": f"Bearer {token}"}, timeout=10)
        return int(answer.json()["active_version"])

    def answers(self, text: str) -> Callable[[], bool]:
        return lambda: self._alive() and self.edge.get("/any/path").text == text


def write(project: Path, text: str) -> None:
    (project / "main.c").write_text(HANDLER % text)


@pytest.fixture
def dev(tmp_path: Path) -> Iterator[Dev]:
    project = tmp_path / "devapp"
    project.mkdir()
    write(project, "one")
    with Dev(tmp_path, project) as running:
        assert running.edge.get("/").text == "one"  # a project takes every path
        yield running


def test_a_save_is_rebuilt_and_served(dev: Dev) -> None:
    write(dev.project, "two")
    until(dev.answers("two"), "the new answer", dev.log)
    assert dev.version() == 2


def test_a_build_error_answers_503_with_the_compilers_message_until_fixed(dev: Dev) -> None:
    (dev.project / "main.c").write_text(HANDLER.replace("return res;", "return res") % "one")
    answer = until(lambda: (r := dev.edge.get("/x")).status_code == 503 and r, "the 503", dev.log)
    body = answer.json()
    assert body["error"] == "build_broken" and body["module"] == "devapp"
    assert "main.c" in body["detail"] and "error: expected ';'" in body["detail"], body["detail"]
    assert answer.headers["retry-after"] == "1"
    assert "error: expected ';'" in dev.log.read_text()  # printed in the terminal too
    write(dev.project, "fixed")
    until(dev.answers("fixed"), "the fixed answer", dev.log)
    assert dev.edge.get("/x").status_code == 200


def test_an_unchanged_save_redeploys_nothing(dev: Dev) -> None:
    before = dev.version()
    write(dev.project, "one")  # the same bytes, a new mtime: rebuilt, same digest
    until(lambda: "nothing redeployed" in dev.log.read_text(), "the rebuild", dev.log)
    assert dev.version() == before
    assert dev.edge.get("/").text == "one"
    (dev.project / "build" / "notes.txt").write_text("outputs are not sources")
    write(dev.project, "three")  # a later change still goes through
    until(dev.answers("three"), "the new answer", dev.log)
    assert dev.version() == before + 1


@pytest.mark.parametrize(("path", "source"), [
    ("main.c", True), ("src/lib.rs", True), ("build/x.wasm", False), ("target/debug/x", False),
    (".main.c.swp", False), ("main.c~", False), ("4913", False), (".git/index", False),
])
def test_what_counts_as_a_source(path: str, source: bool) -> None:
    assert _is_source(Path(path)) is source
