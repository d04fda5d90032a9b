"""Dev mode: a guest failure's diagnostic carries the guest's own message and a symbolised backtrace.

Each sample's crash path is built from a copy of the sample with `build(debug=True)` (names kept) and
served in-process by an edge app with `ServerConfig(dev=True)`; the same failure outside dev mode
answers exactly as before, and the server log has the frames in both modes.
"""

from __future__ import annotations

import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import AsgiClient
from live import ROOT, LiveServer

from isolate import Config
from isolate.abi import LogRecord
from isolate.build import build
from isolate.config import ServerConfig
from isolate.http import Apps
from isolate.http import build as build_apps
from isolate.http._errors import guest_message

TOKEN = "test-token"

# A C guest that says why it fails the way C programs do: a failed assert() writes to stderr, then aborts.
ASSERTS_C = """\
#include <assert.h>
#include "isolate.h"

__attribute__((noinline)) static int checked_half(int n) {
    assert(n % 2 == 0 && "n must be even");
    return n / 2;
}

isolate_response *isolate_on_request(const isolate_request *req) {
    isolate_log(ISOLATE_INFO, "about to check");
    isolate_response *res = isolate_response_new(200);
    isolate_response_body_str(res, checked_half((int)req->path.len) ? "even\\n" : "zero\\n");
    return res;
}
"""


def _debug_build(tmp_path: Path, sample: str | None = None, source: str | None = None) -> bytes:
    """The wasm of a debug build of a copy of `samples/<sample>` (or of a one-file C project)."""
    project = tmp_path / (sample or "asserts")
    if sample is not None:
        original = ROOT / "samples" / sample
        shutil.copytree(original, project, ignore=shutil.ignore_patterns("build", "node_modules"))
        if (original / "package.json").is_file():
            # The sample's own install (its package.json names the SDK by a path relative to it, which a
            # copy elsewhere cannot resolve): made by building it, then shared by a link.
            if not (original / "node_modules").is_dir():
                build(original, force=True)  # an up-to-date build would not install
            (project / "node_modules").symlink_to(original / "node_modules", target_is_directory=True)
    else:
        project.mkdir(parents=True)
        (project / "asserts.c").write_text(source or "")
    result = build(project, debug=True)
    assert result.output == project / "build" / "debug" / f"{project.name}.wasm"
    return result.output.read_bytes()


def _apps(tmp_path: Path, dev: bool) -> Apps:
    # The test session's compile cache (conftest.py), which every server a test starts uses too: the
    # components' debug builds take ~10 s of a core each to compile, and are the same bytes run after run.
    apps = build_apps(Config(data_dir=tmp_path / "data", pool_instances=16,
                             compile_cache=os.environ.get("ISOLATE_COMPILE_CACHE") or None),
                      ServerConfig(admin_token=TOKEN, threads=2, dev=dev))
    apps.state.ready = True
    return apps


def _serve(tmp_path: Path, dev: bool, name: str, wasm: bytes, path: str) -> Iterator[tuple[AsgiClient, Apps]]:
    apps = _apps(tmp_path, dev)
    try:
        apps.host.deploy(name, wasm)
        with AsgiClient(apps.admin, "http://admin.test", {"authorization": f"Bearer {TOKEN}"}) as admin:
            routed = admin.put("/v1/routes", json={"routes": [{"path": path, "module": name}]})
            assert routed.status_code == 200, routed.text
        with AsgiClient(apps.edge, "http://edge.test") as edge:
            yield edge, apps
    finally:
        apps.close()


def _fail(tmp_path: Path, name: str, wasm: bytes, route: str, url: str, dev: bool) -> dict[str, Any]:
    for edge, _ in _serve(tmp_path, dev, name, wasm, route):
        response = edge.get(url, headers={"x-request-id": f"{name}-{dev}"})
        assert response.status_code == 500, response.text
        body: dict[str, Any] = response.json()
        return body
    raise AssertionError("not served")


def _names(backtrace: list[str]) -> list[str]:
    """The function names of wasmtime's frames (`0: 0x138 - crash.wasm!abort` → `abort`)."""
    return [frame.split(" ")[-1].split("!", 1)[-1] for frame in backtrace if "elided" not in frame]


@pytest.fixture(scope="module")
def crash_c(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return _debug_build(tmp_path_factory.mktemp("crash"), "crash")


def test_c_abort_in_dev_mode(tmp_path: Path, crash_c: bytes) -> None:
    body = _fail(tmp_path, "crash", crash_c, "/crash/...", "/crash/abort", dev=True)
    assert (body["error"], body["trap_code"]) == ("trap", "unreachable")
    # abort() says nothing itself: the guest's last words are its last log line.
    assert body["guest_message"] == "crash sample: about to fail on purpose"
    assert _names(body["backtrace"])[:3] == ["abort", "isolate_on_request", "isolate_handle"]


def test_the_same_failure_outside_dev_mode_is_as_before(tmp_path: Path, crash_c: bytes,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, "isolate.server"):
        body = _fail(tmp_path, "crash", crash_c, "/crash/...", "/crash/abort", dev=False)
    assert "guest_message" not in body
    # A trap's frames were always in its diagnostic (here named, since this module kept its names).
    assert set(body) == {"error", "detail", "request_id", "trap_code", "backtrace", "phase", "memory_bytes",
                         "module"}
    logged = [r.getMessage() for r in caplog.records if "guest failed" in r.getMessage()]
    assert len(logged) == 1 and "request_id=crash-False" in logged[0] and "isolate_on_request" in logged[0]


def test_stack_overflow_gets_a_backtrace_in_dev_mode_only(tmp_path: Path, crash_c: bytes) -> None:
    dev = _fail(tmp_path / "a", "crash", crash_c, "/crash/...", "/crash/stack", dev=True)
    assert dev["error"] == "stack_overflow"
    # wasmtime reports the innermost 20 frames of a trap: here, all in the recursion.
    assert set(_names(dev["backtrace"])) == {"recurse"}
    prod = _fail(tmp_path / "b", "crash", crash_c, "/crash/...", "/crash/stack", dev=False)
    assert "backtrace" not in prod and "guest_message" not in prod


def test_serve_dev_flag(tmp_path: Path, crash_c: bytes) -> None:
    """`isolate serve --dev` (a real server): the flag reaches the edge; the log has the frames too."""
    with LiveServer(tmp_path / "data", "--dev") as server, server.admin() as admin, server.edge() as edge:
        assert admin.put("/v1/modules/crash", content=crash_c).status_code == 201
        assert admin.put("/v1/routes", json={"routes": [{"path": "/crash/...", "module": "crash"}]}).status_code == 200
        body = edge.get("/crash/abort", headers={"x-request-id": "live-dev"}).json()
        assert body["guest_message"] == "crash sample: about to fail on purpose"
        assert "crash.wasm!isolate_on_request" in " ".join(body["backtrace"])
        log = server.wait_for_log("request_id=live-dev module=crash guest failed")
        assert "isolate_on_request" in log


def test_c_assert_message_from_stderr(tmp_path: Path) -> None:
    wasm = _debug_build(tmp_path / "src", source=ASSERTS_C)
    body = _fail(tmp_path, "asserts", wasm, "/odd1", "/odd1", dev=True)  # 5 characters
    assert body["error"] == "trap"
    assert "Assertion failed" in body["guest_message"] and "n must be even" in body["guest_message"]
    assert "checked_half" in _names(body["backtrace"])


def test_rust_panic_in_dev_mode(tmp_path: Path) -> None:
    wasm = _debug_build(tmp_path / "src", "echo")
    body = _fail(tmp_path, "echo", wasm, "/echo/...", "/echo/panic", dev=True)
    assert body["error"] == "trap"
    assert body["guest_message"].startswith("panic: panicked at")
    assert "asked to panic on /echo/panic" in body["guest_message"]
    names = _names(body["backtrace"])
    # the sample's handler and the panic machinery, demangled, without Rust's symbol hashes
    assert "echo::echo" in names and "core::panicking::panic_fmt" in names, names
    assert all(not name.startswith("<wasm function") for name in names), names


def test_assemblyscript_throw_in_dev_mode(tmp_path: Path) -> None:
    wasm = _debug_build(tmp_path / "src", "router")
    body = _fail(tmp_path, "router", wasm, "/users/:id", "/users/boom", dev=True)
    assert body["error"] == "trap"
    assert body["guest_message"].startswith("asked to fail at")
    names = _names(body["backtrace"])
    assert any("abort" in name for name in names) and all(not n.startswith("<wasm function") for n in names), names


@pytest.mark.parametrize(("sample", "said"), [
    ("hello-py", "RuntimeError: boom from python"), ("hello-js", "Error while running request handler: boom from "
                                                                 "javascript")])
def test_component_failure_in_dev_mode(tmp_path: Path, sample: str, said: str) -> None:
    """Components: their toolchains offer no switch for names (componentize-py's runtime keeps them anyway);
    the guest's message is what its language runtime wrote to stderr."""
    wasm = build(ROOT / "samples" / sample, debug=True).output.read_bytes()
    answers: list[dict[str, Any]] = []
    for dev_edge, dev_apps in _serve(tmp_path, True, sample, wasm, f"/{sample}/..."):
        answers.append(dev_edge.get(f"/{sample}/throw").json())
        # An edge without dev mode on the same host: the component compiles once (that takes seconds).
        prod = build_apps(Config(data_dir=tmp_path / "data"), ServerConfig(admin_token=TOKEN, threads=2),
                          host=dev_apps.host)
        prod.state.ready = True
        try:
            with AsgiClient(prod.edge, "http://edge.test") as prod_edge:
                answers.append(prod_edge.get(f"/{sample}/throw").json())
        finally:
            prod.dispatcher.close()
    body, plain = answers
    assert body["error"] == plain["error"] == "trap" and said in body["guest_message"]
    if sample == "hello-py":  # a Python exception panics the runtime, which aborts
        assert "core::panicking::panic_fmt" in _names(body["backtrace"])
    assert "guest_message" not in plain


def test_debug_and_release_outputs_do_not_collide(tmp_path: Path) -> None:
    project = tmp_path / "tiny"
    project.mkdir()
    (project / "tiny.c").write_text(ASSERTS_C)
    release = build(project)
    debug = build(project, debug=True)
    assert release.output != debug.output and not debug.cached
    # Each is up to date by its own recipe: switching back and forth rebuilds neither.
    assert build(project).cached and build(project, debug=True).cached
    assert b"checked_half" in debug.output.read_bytes() and b"checked_half" not in release.output.read_bytes()


def test_guest_message_picks_the_guests_last_words() -> None:
    def log(message: str, level: str = "info", stream: str = "log") -> LogRecord:
        return LogRecord(stream=stream, level=level, message=message)

    assert guest_message([]) is None
    assert guest_message([log("a"), log("b", "warn")]) == "b"
    assert guest_message([log("panic: x", "error"), log("after", "debug")]) == "panic: x"
    stderr = [log("ok"), log("line 1\n", "error", "stderr"), log("line 2\n", "error", "stderr"), log("tail"),
              log("truncated", "warn", "host")]
    assert guest_message(stderr) == "line 1\nline 2"
