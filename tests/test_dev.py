"""`isolate dev` end to end: a real process on loopback ports rebuilding a C project in tmp on each save."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from guests import module, response_bytes
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

    def __init__(self, tmp: Path, project: Path, target: Path | None = None) -> None:
        self.project = project
        self.target = target or project
        """What `isolate dev` is given: the project, or a manifest naming it."""
        self.port, self.admin_port = free_port(), free_port()
        self.data_dir = tmp / "dev-data"
        self.log = tmp / "dev.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.edge = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=10)

    def __enter__(self) -> Dev:
        command = [sys.executable, "-m", "isolate.cli", "dev", str(self.target), "--data-dir", str(self.data_dir),
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
            raise AssertionError(f"isolate dev did not exit on SIGTERM:\n{self.log.read_text()}") from None
        if exc[0] is None:  # a clean stop: the watcher stopped before the host closed, nothing raised
            assert self.process.returncode == 0, self.log.read_text()
            assert "Traceback" not in self.log.read_text()

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


def test_a_stop_during_a_rebuild_lets_it_finish_then_exits_cleanly(tmp_path: Path) -> None:
    project = tmp_path / "devapp"
    project.mkdir()
    write(project, "one")
    with Dev(tmp_path, project) as dev:
        write(project, "two")
        until(lambda: "watchfiles.main" in dev.log.read_text(), "the change seen", dev.log)  # the round began
    # __exit__ sent SIGTERM and checked a clean exit; the round ran against an open host
    assert "rebuild failed unexpectedly" not in dev.log.read_text()


def test_a_project_directory_deleted_then_recreated_is_watched_and_rebuilt_again(dev: Dev) -> None:
    shutil.rmtree(dev.project)  # watchfiles refuses a missing path: the watcher must not die of it
    until(lambda: f"{dev.project} not found: watched again once it exists" in dev.log.read_text(),
          "the missing directory reported", dev.log)
    dev.project.mkdir()
    write(dev.project, "back")
    until(dev.answers("back"), "the recreated project's answer", dev.log)
    version = dev.version()
    write(dev.project, "edited")  # and it is watched again
    until(dev.answers("edited"), "the edit's answer", dev.log)
    assert dev.version() == version + 1
    assert "Traceback" not in dev.log.read_text()


def test_a_module_file_deleted_then_recreated_is_watched_and_deployed_again(tmp_path: Path) -> None:
    project, static, manifest = tmp_path / "devapp", tmp_path / "static.wat", tmp_path / "isolate.toml"
    project.mkdir()
    write(project, "one")
    static.write_text(module(response=response_bytes(body=b"first")))
    manifest.write_text(f'[modules.devapp]\npath = "{project}"\n\n[modules.static]\npath = "{static}"\n\n'
                        '[[routes]]\npath = "/static"\nmodule = "static"\n\n'
                        '[[routes]]\npath = "/app/..."\nmodule = "devapp"\n')
    with Dev(tmp_path, project, manifest) as dev:
        def static_answers(text: str) -> Callable[[], bool]:
            return lambda: dev._alive() and dev.edge.get("/static").text == text

        until(static_answers("first"), "the module file's answer", dev.log)
        static.unlink()
        until(lambda: f"{static} not found: watched again once it exists" in dev.log.read_text(),
              "the missing file reported", dev.log)
        static.write_text(module(response=response_bytes(body=b"second")))
        until(static_answers("second"), "the recreated file's answer", dev.log)
        write(project, "two")  # the rest is watched still
        until(lambda: dev._alive() and dev.edge.get("/app/x").text == "two", "the project's new answer", dev.log)
        assert "Traceback" not in dev.log.read_text()


@pytest.mark.parametrize(("path", "source"), [
    ("main.c", True), ("src/lib.rs", True), ("build/x.wasm", False), ("target/debug/x", False),
    (".main.c.swp", False), ("main.c~", False), ("4913", False), (".git/index", False),
])
def test_what_counts_as_a_source(path: str, source: bool) -> None:
    assert _is_source(Path(path)) is source
