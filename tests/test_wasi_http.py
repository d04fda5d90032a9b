"""The wasi:http 0.2 host semantics (_wasi_http, _wasip2) called as the bridge calls them, and once end to end."""

from __future__ import annotations

import ctypes
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest

from isolate.engine import _output, _shutdown
from isolate.engine._wasi_http import (
    ALL_SPECS,
    FORBIDDEN_HEADERS,
    INCOMING_REQUEST,
    INTERFACES,
    RESPONSE_OUTPARAM,
    Exchange,
)
from isolate.engine._wasip2 import (
    ENTRY_OVERHEAD,
    MAX_ENTRIES,
    MAX_HANDED,
    MAX_HELD,
    MAX_RANDOM,
    MAX_RESOURCES,
    GuestExit,
)
from isolate.errors import AbiViolation, MemoryLimit, ResponseTooLarge, Timeout

ROOT = Path(__file__).resolve().parent.parent
# jco's WIT packages: from the JavaScript guest toolchain (what `make test` installs), else the benchmark's peers
WIT = next((path for path in (ROOT / f"{where}/node_modules/@bytecodealliance/jco/lib/wit/builtin/0.2.12"
                              for where in ("guest-sdk/javascript", "bench/peers")) if path.is_dir()),
           ROOT / "guest-sdk/javascript/node_modules/@bytecodealliance/jco/lib/wit/builtin/0.2.12")

FUNCS: dict[str, dict[str, Any]] = {name: dict(spec[1]) for name, spec in ALL_SPECS.items()}


def drop(state: Exchange, rep: int) -> None:
    """What the bridge does when the guest drops a handle: every resource's destructor is the same."""
    ALL_SPECS["wasi:http/types"][0][0][2](state, rep)


def call(interface: str, name: str, state: Exchange, *args: Any) -> Any:
    return FUNCS[interface][name](state, *args)


def types(name: str, state: Exchange, *args: Any) -> Any:
    return call("wasi:http/types", name, state, *args)


def streams(name: str, state: Exchange, *args: Any) -> Any:
    return call("wasi:io/streams", name, state, *args)


def exchange(body: bytes = b"", *, timeout: float = 5.0, response_limit: int = 1 << 20, io: Any = None,
             capture: _output.Capture | None = None) -> Exchange:
    capture = capture or _output.Capture(65536)
    started = time.perf_counter()
    capture.wait_bounds(started, started + timeout)
    return Exchange(method="POST", scheme="http", authority="example.com", path_with_query="/a?b=1",
                    headers=[("Content-Type", b"text/plain"), ("x-two", b"1"), ("X-Two", b"2")], body=body,
                    environment=[("MODE", "test")], capture=capture, deadline=started + timeout, io=io,
                    response_limit=response_limit)


@pytest.fixture
def ex() -> Exchange:
    return exchange(b"hello body")


@pytest.mark.skipif(not WIT.is_dir(), reason="jco's WIT packages are not installed (make toolchains)")
def test_every_wit_function_and_resource_of_0_2_has_a_definition() -> None:
    """The names match the WIT jco ships (0.2.12, a superset of 0.2.0's), except unstable items."""
    unstable = {"wasi:cli/exit": {"exit-with-code"},
                "wasi:http/types": {"[method]response-outparam.send-informational"}}
    for package, interfaces in (("io", ("error", "poll", "streams")),
                                ("cli", ("environment", "exit", "stdin", "stdout", "stderr", "terminal-input",
                                         "terminal-output", "terminal-stdin", "terminal-stdout", "terminal-stderr")),
                                ("clocks", ("monotonic-clock", "wall-clock")),
                                ("random", ("random", "insecure", "insecure-seed")),
                                ("http", ("types", "outgoing-handler"))):
        text = (WIT / f"wasi-{package}" / "package.wit").read_text()
        for interface in interfaces:
            body = re.search(rf"^interface {interface} \{{(.*?)^\}}", text, re.S | re.M)
            assert body is not None, interface
            expected: set[str] = set()
            resource = None
            for line in body.group(1).splitlines():
                line = line.split("//")[0].strip()
                if m := re.match(r"resource ([\w-]+)", line):
                    resource = m.group(1)
                    expected.add(f"resource {resource}")
                    if line.endswith(";"):
                        resource = None
                elif line == "}" and resource:
                    resource = None
                elif m := re.match(r"%?([\w-]+): (static )?func", line):
                    name = m.group(1)
                    if resource is None:
                        expected.add(name)
                    else:
                        expected.add(f"[{'static' if m.group(2) else 'method'}]{resource}.{name}")
                elif line.startswith("constructor(") and resource:
                    expected.add(f"[constructor]{resource}")
            resources, functions = ALL_SPECS[f"wasi:{package}/{interface}"]
            defined = {f"resource {name}" for name, _, _ in resources} | {name for name, _ in functions}
            assert expected, interface
            assert expected - unstable.get(f"wasi:{package}/{interface}", set()) <= defined, interface
            assert defined <= expected, interface


def test_interfaces_cover_every_spec() -> None:
    assert set(INTERFACES) == set(ALL_SPECS)
    ids = [type_id for resources, _ in ALL_SPECS.values() for _, type_id, _ in resources]
    assert len(ids) == len(set(ids))


def test_incoming_request_accessors(ex: Exchange) -> None:
    (request_type, request), (outparam_type, _) = ex.handler_args()
    assert (request_type, outparam_type) == (INCOMING_REQUEST, RESPONSE_OUTPARAM)
    assert types("[method]incoming-request.method", ex, request) == ("post", None)
    assert types("[method]incoming-request.scheme", ex, request) == ("HTTP", None)
    assert types("[method]incoming-request.authority", ex, request) == "example.com"
    assert types("[method]incoming-request.path-with-query", ex, request) == "/a?b=1"
    headers = types("[method]incoming-request.headers", ex, request)
    assert types("[method]fields.get", ex, headers, "X-TWO") == [b"1", b"2"]
    assert types("[method]fields.has", ex, headers, "content-type")
    assert types("[method]fields.entries", ex, headers)[0] == ("content-type", b"text/plain")
    assert types("[method]fields.append", ex, headers, "x-new", b"v") == ("err", ("immutable", None))
    assert types("[method]fields.delete", ex, headers, "x-two") == ("err", ("immutable", None))
    copy = types("[method]fields.clone", ex, headers)
    assert types("[method]fields.append", ex, copy, "x-new", b"v") == ("ok", None)
    assert not types("[method]fields.has", ex, headers, "x-new")


def test_methods_and_schemes_become_variants() -> None:
    for method, variant in (("GET", ("get", None)), ("delete", ("delete", None)), ("PURGE", ("other", "PURGE"))):
        state = exchange()
        state.request.method = Exchange(method=method, scheme="https", authority="", path_with_query="/", headers=[],
                                        body=b"", environment=[], capture=None, deadline=0.0,
                                        response_limit=0).request.method
        request = state.handler_args()[0][1]
        assert types("[method]incoming-request.method", state, request) == variant
    https = Exchange(method="GET", scheme="https", authority="", path_with_query="/", headers=[], body=b"",
                     environment=[], capture=None, deadline=0.0, response_limit=0)
    assert types("[method]incoming-request.scheme", https, https.handler_args()[0][1]) == ("HTTPS", None)


def test_fields_validation_and_mutation(ex: Exchange) -> None:
    assert types("[static]fields.from-list", ex, [("bad name", b"v")]) == ("err", ("invalid-syntax", None))
    assert types("[static]fields.from-list", ex, [("ok", b"bad\nvalue")]) == ("err", ("invalid-syntax", None))
    for name in FORBIDDEN_HEADERS:
        assert types("[static]fields.from-list", ex, [(name.title(), b"v")]) == ("err", ("forbidden", None))
    result = types("[static]fields.from-list", ex, [("A", b"1"), ("b", b"2"), ("a", b"3"), ("c", b"\t\xff ok")])
    assert result[0] == "ok"
    fields = result[1]
    assert types("[method]fields.get", ex, fields, "a") == [b"1", b"3"]
    assert types("[method]fields.get", ex, fields, "bad name") == []
    assert types("[method]fields.set", ex, fields, "a", [b"x", b"y"]) == ("ok", None)
    assert types("[method]fields.entries", ex, fields) == [("a", b"x"), ("a", b"y"), ("b", b"2"), ("c", b"\t\xff ok")]
    assert types("[method]fields.set", ex, fields, "a", [b"\r"]) == ("err", ("invalid-syntax", None))
    assert types("[method]fields.append", ex, fields, "connection", b"close") == ("err", ("forbidden", None))
    assert types("[method]fields.delete", ex, fields, "a") == ("ok", None)
    assert types("[method]fields.delete", ex, fields, "") == ("err", ("invalid-syntax", None))
    assert types("[method]fields.entries", ex, fields) == [("b", b"2"), ("c", b"\t\xff ok")]
    assert not types("[method]fields.has", ex, fields, "a")
    empty = types("[constructor]fields", ex)
    assert types("[method]fields.entries", ex, empty) == []
    drop(ex, empty)  # a dropped handle is gone: using it fails the guest
    with pytest.raises(AbiViolation):
        types("[method]fields.entries", ex, empty)


def test_the_host_holds_only_so_much_for_a_guest(ex: Exchange) -> None:
    fields = types("[constructor]fields", ex)
    assert types("[method]fields.append", ex, fields, "x", b"v" * (1 << 20)) == ("ok", None)
    with pytest.raises(MemoryLimit):
        for _ in range(MAX_HELD >> 20):
            types("[method]fields.clone", ex, fields)
    ex.next_rep = MAX_RESOURCES
    types("[constructor]fields", ex)
    with pytest.raises(MemoryLimit):
        types("[constructor]fields", ex)


def read_all(ex: Exchange, stream: int, chunk: int) -> list[bytes]:
    chunks: list[bytes] = []
    for _ in range(100):
        result = streams("[method]input-stream.blocking-read", ex, stream, chunk)
        if result == ("err", ("closed", None)):
            return chunks
        assert result[0] == "ok"
        chunks.append(bytes(result[1]))
    raise AssertionError("the stream never closed")


def test_request_body_reads_in_chunks_then_closes(ex: Exchange) -> None:
    request = ex.handler_args()[0][1]
    ok, body = types("[method]incoming-request.consume", ex, request)
    assert ok == "ok"
    assert types("[method]incoming-request.consume", ex, request) == ("err", None)  # once
    ok, stream = types("[method]incoming-body.stream", ex, body)
    assert types("[method]incoming-body.stream", ex, body) == ("err", None)
    assert read_all(ex, stream, 4) == [b"hell", b"o bo", b"dy"]
    assert streams("[method]input-stream.read", ex, stream, 4) == ("err", ("closed", None))
    trailers = types("[static]incoming-body.finish", ex, body)
    assert types("[method]future-trailers.get", ex, trailers) == ("ok", ("ok", None))
    assert types("[method]future-trailers.get", ex, trailers) == ("err", None)
    pollable = types("[method]future-trailers.subscribe", ex, trailers)
    assert call("wasi:io/poll", "[method]pollable.ready", ex, pollable)


def respond(ex: Exchange, chunks: list[bytes], *, finish: bool = True, status: int = 201) -> None:
    outparam = ex.handler_args()[1][1]
    headers = types("[static]fields.from-list", ex, [("Content-Type", b"text/plain")])[1]
    response = types("[constructor]outgoing-response", ex, headers)
    with pytest.raises(AbiViolation):  # the constructor took the fields
        types("[method]fields.entries", ex, headers)
    assert types("[method]outgoing-response.set-status-code", ex, response, 99) == ("err", None)
    assert types("[method]outgoing-response.set-status-code", ex, response, status) == ("ok", None)
    view = types("[method]outgoing-response.headers", ex, response)
    assert types("[method]fields.set", ex, view, "x", [b"1"]) == ("err", ("immutable", None))
    ok, body = types("[method]outgoing-response.body", ex, response)
    assert types("[method]outgoing-response.body", ex, response) == ("err", None)
    types("[static]response-outparam.set", ex, outparam, ("ok", response))
    ok, stream = types("[method]outgoing-body.write", ex, body)
    for chunk in chunks:
        assert streams("[method]output-stream.check-write", ex, stream)[1] > 0
        assert streams("[method]output-stream.write", ex, stream, chunk) == ("ok", None)
    assert streams("[method]output-stream.blocking-flush", ex, stream) == ("ok", None)
    if finish:
        drop(ex, stream)
        assert types("[static]outgoing-body.finish", ex, body, None) == ("ok", None)


def test_a_response_is_buffered_until_the_body_is_finished(ex: Exchange) -> None:
    assert ex.response is None
    respond(ex, [b"one ", b"two"])
    assert ex.response == (201, [("content-type", b"text/plain")], b"one two")
    assert ex.error is None and ex.response_error is None


def test_an_unfinished_body_is_sent_as_it_stands(ex: Exchange) -> None:
    respond(ex, [b"partial"], finish=False)
    assert ex.response == (201, [("content-type", b"text/plain")], b"partial")


def test_an_error_code_instead_of_a_response(ex: Exchange) -> None:
    outparam = ex.handler_args()[1][1]
    types("[static]response-outparam.set", ex, outparam, ("err", ("internal-error", "boom")))
    assert ex.response is None and ex.response_error == ("internal-error", "boom")


def test_a_body_over_the_response_limit_fails_the_request() -> None:
    state = exchange(response_limit=10)
    with pytest.raises(ResponseTooLarge):
        respond(state, [b"0123456789", b"x"])


def test_stdout_and_stderr_lines_go_to_the_capture(ex: Exchange) -> None:
    out = call("wasi:cli/stdout", "get-stdout", ex)
    err = call("wasi:cli/stderr", "get-stderr", ex)
    assert streams("[method]output-stream.blocking-write-and-flush", ex, out, b"to stdout\n") == ("ok", None)
    for piece in (b"RuntimeError", b": ", b"boom\nsecond ", b"line\n", b"unfinished"):
        assert streams("[method]output-stream.write", ex, err, piece) == ("ok", None)
    assert streams("[method]output-stream.write", ex, out, b"no newline") == ("ok", None)
    assert streams("[method]output-stream.write-zeroes", ex, out, 0) == ("ok", None)
    ex.flush_output()
    ex.flush_output()
    records = ex.capture.finish()  # type: ignore[union-attr]
    assert [(r.stream, r.level, r.message) for r in records] == [
        ("stdout", "info", "to stdout\n"), ("stderr", "error", "RuntimeError: boom\n"),
        ("stderr", "error", "second line\n"), ("stdout", "info", "no newline"), ("stderr", "error", "unfinished")]
    stdin = call("wasi:cli/stdin", "get-stdin", ex)
    assert streams("[method]input-stream.read", ex, stdin, 10) == ("err", ("closed", None))


def test_a_long_unfinished_line_is_recorded_in_pieces(ex: Exchange) -> None:
    out = call("wasi:cli/stdout", "get-stdout", ex)
    for _ in range(3):
        streams("[method]output-stream.write", ex, out, b"x" * 3000)
    ex.flush_output()
    assert [len(r.message) for r in ex.capture.finish()] == [6000, 3000]  # type: ignore[union-attr]


def test_splice_copies_from_an_input_stream(ex: Exchange) -> None:
    out = call("wasi:cli/stdout", "get-stdout", ex)
    body = types("[method]incoming-request.consume", ex, ex.handler_args()[0][1])[1]
    stream = types("[method]incoming-body.stream", ex, body)[1]
    assert streams("[method]output-stream.splice", ex, out, stream, 5) == ("ok", 5)
    assert streams("[method]output-stream.blocking-splice", ex, out, stream, 100) == ("ok", 5)
    assert streams("[method]output-stream.splice", ex, out, stream, 100) == ("err", ("closed", None))


def test_environment_exit_clocks_random(ex: Exchange) -> None:
    assert call("wasi:cli/environment", "get-environment", ex) == [("MODE", "test")]
    assert call("wasi:cli/environment", "get-arguments", ex) == []
    assert call("wasi:cli/environment", "initial-cwd", ex) is None
    with pytest.raises(GuestExit) as exited:
        call("wasi:cli/exit", "exit", ex, ("err", None))
    assert exited.value.exit_code == 1
    assert call("wasi:cli/terminal-stdout", "get-terminal-stdout", ex) is None
    before = call("wasi:clocks/monotonic-clock", "now", ex)
    assert call("wasi:clocks/monotonic-clock", "now", ex) >= before
    earliest = int(time.time())
    seconds, nanoseconds = call("wasi:clocks/wall-clock", "now", ex)
    assert earliest <= seconds <= time.time() and 0 <= nanoseconds < 10**9
    assert len(call("wasi:random/random", "get-random-bytes", ex, 16)) == 16
    assert 0 <= call("wasi:random/insecure", "get-insecure-random-u64", ex) < 2**64
    seed = call("wasi:random/insecure-seed", "insecure-seed", ex)
    assert len(seed) == 2
    with pytest.raises(AbiViolation):
        call("wasi:random/random", "get-random-bytes", ex, 2**40)


def test_poll_waits_for_the_earliest_clock(ex: Exchange) -> None:
    clock = "wasi:clocks/monotonic-clock"
    later = call(clock, "subscribe-duration", ex, 5 * 10**9)
    soon = call(clock, "subscribe-duration", ex, 20 * 10**6)
    at = call(clock, "subscribe-instant", ex, call(clock, "now", ex) + 30 * 10**6)
    assert not ex.waited
    assert not call("wasi:io/poll", "[method]pollable.ready", ex, soon)
    assert call("wasi:io/poll", "poll", ex, [later, soon]) == [1]
    assert ex.waited  # it slept until the earlier clock was due, and no longer: the later one is not
    assert call("wasi:io/poll", "[method]pollable.ready", ex, soon)
    assert not call("wasi:io/poll", "[method]pollable.ready", ex, later)
    call("wasi:io/poll", "[method]pollable.block", ex, at)
    assert call("wasi:io/poll", "[method]pollable.ready", ex, at)
    ready = call("wasi:io/streams", "[method]output-stream.subscribe", ex, call("wasi:cli/stdout", "get-stdout", ex))
    assert call("wasi:io/poll", "poll", ex, [later, ready]) == [1]


def test_a_wait_past_the_deadline_fails_the_request_as_a_timeout() -> None:
    state = exchange(timeout=0.05)
    far = call("wasi:clocks/monotonic-clock", "subscribe-duration", state, 10 * 10**9)
    with pytest.raises(Timeout):
        call("wasi:io/poll", "poll", state, [far])
    assert not call("wasi:io/poll", "[method]pollable.ready", state, far)  # cut short, not slept out
    assert state.capture.interrupted == "timeout"  # type: ignore[union-attr]


def test_shutdown_wakes_a_wait() -> None:
    state = exchange(timeout=5)
    far = call("wasi:clocks/monotonic-clock", "subscribe-duration", state, 10 * 10**9)
    _shutdown.shutdown()
    try:
        with pytest.raises(InterruptedError):
            call("wasi:io/poll", "[method]pollable.block", state, far)
    finally:
        _shutdown.resume()
    assert state.capture.interrupted == "shutdown"  # type: ignore[union-attr]


def outgoing_request(ex: Exchange, *, body: bytes | None = None) -> tuple[int, int | None]:
    headers = types("[static]fields.from-list", ex, [("X-Api", b"k")])[1]
    request = types("[constructor]outgoing-request", ex, headers)
    assert types("[method]outgoing-request.set-method", ex, request, ("other", "bad method")) == ("err", None)
    assert types("[method]outgoing-request.set-method", ex, request, ("post", None)) == ("ok", None)
    assert types("[method]outgoing-request.set-scheme", ex, request, ("HTTP", None)) == ("ok", None)
    assert types("[method]outgoing-request.set-authority", ex, request, "origin.test:8080") == ("ok", None)
    assert types("[method]outgoing-request.set-path-with-query", ex, request, "/p?q") == ("ok", None)
    assert types("[method]outgoing-request.authority", ex, request) == "origin.test:8080"
    body_rep = None
    if body is not None:
        body_rep = types("[method]outgoing-request.body", ex, request)[1]
    return request, body_rep


def test_outbound_calls_are_denied_without_io(ex: Exchange) -> None:
    request, _ = outgoing_request(ex)
    result = call("wasi:http/outgoing-handler", "handle", ex, request, None)
    assert result == ("err", ("HTTP-request-denied", None))


class FakeIO:
    def __init__(self, code: int = 0) -> None:
        self.sent: list[dict[str, Any]] = []
        self.code = code
        self.answer = msgpack.packb({"status": 202, "headers": [["x-origin", "yes"]], "body": b"answer body",
                                     "url": "http://origin.test:8080/p?q"}, use_bin_type=True)

    def http_send(self, envelope: bytes) -> int:
        self.sent.append(msgpack.unpackb(envelope, raw=False))
        return self.code or len(self.answer)

    def http_take(self, cap: int) -> bytes | int:
        return self.answer if cap >= len(self.answer) else len(self.answer)


def test_an_outbound_call_is_sent_once_its_body_is_finished() -> None:
    io = FakeIO()
    ex = exchange(io=io)
    request, body = outgoing_request(ex, body=b"")
    options = types("[constructor]request-options", ex)
    assert types("[method]request-options.set-first-byte-timeout", ex, options, 250 * 10**6) == ("ok", None)
    assert types("[method]request-options.first-byte-timeout", ex, options) == 250 * 10**6
    ok, future = call("wasi:http/outgoing-handler", "handle", ex, request, options)
    assert ok == "ok"
    pollable = types("[method]future-incoming-response.subscribe", ex, future)
    assert not call("wasi:io/poll", "[method]pollable.ready", ex, pollable)
    assert types("[method]future-incoming-response.get", ex, future) is None  # the body is not written yet
    stream = types("[method]outgoing-body.write", ex, body)[1]
    streams("[method]output-stream.blocking-write-and-flush", ex, stream, b"payload")
    drop(ex, stream)
    assert types("[static]outgoing-body.finish", ex, body, None) == ("ok", None)
    assert call("wasi:io/poll", "poll", ex, [pollable]) == [0]
    ok, (ok2, response) = types("[method]future-incoming-response.get", ex, future)
    assert (ok, ok2) == ("ok", "ok")
    assert types("[method]future-incoming-response.get", ex, future) == ("err", None)
    assert io.sent == [{"url": "http://origin.test:8080/p?q", "method": "POST", "headers": [["x-api", b"k"]],
                        "body": b"payload", "timeout_ms": 250}]
    assert types("[method]incoming-response.status", ex, response) == 202
    headers = types("[method]incoming-response.headers", ex, response)
    assert types("[method]fields.get", ex, headers, "x-origin") == [b"yes"]
    answer = types("[method]incoming-response.consume", ex, response)[1]
    stream = types("[method]incoming-body.stream", ex, answer)[1]
    assert read_all(ex, stream, 1 << 16) == [b"answer body"]


def test_a_future_waiting_on_an_unwritten_body_is_sent_rather_than_deadlocking() -> None:
    io = FakeIO()
    ex = exchange(io=io)
    request, body = outgoing_request(ex, body=b"")
    future = call("wasi:http/outgoing-handler", "handle", ex, request, None)[1]
    pollable = types("[method]future-incoming-response.subscribe", ex, future)
    call("wasi:io/poll", "[method]pollable.block", ex, pollable)
    assert types("[method]future-incoming-response.get", ex, future)[1][0] == "ok"
    assert "body" not in io.sent[0]


@pytest.mark.parametrize(("code", "error"), [(-2, "HTTP-request-denied"), (-3, "destination-IP-prohibited"),
                                             (-6, "HTTP-response-timeout"), (-7, "HTTP-response-body-size")])
def test_refused_outbound_calls_become_error_codes(code: int, error: str) -> None:
    ex = exchange(io=FakeIO(code))
    request, _ = outgoing_request(ex)
    future = call("wasi:http/outgoing-handler", "handle", ex, request, None)[1]
    assert types("[method]future-incoming-response.get", ex, future) == ("ok", ("err", (error, None)))


def test_an_outbound_call_past_the_deadline_is_a_timeout() -> None:
    class Slow(FakeIO):
        def http_send(self, envelope: bytes) -> int:
            raise TimeoutError

    ex = exchange(io=Slow())
    request, _ = outgoing_request(ex)
    future = call("wasi:http/outgoing-handler", "handle", ex, request, None)[1]
    with pytest.raises(Timeout):
        types("[method]future-incoming-response.get", ex, future)
    assert ex.capture.interrupted == "timeout"  # type: ignore[union-attr]


# -- end to end, through the C bridge -----------------------------------------------------------

@pytest.fixture(scope="module")
def bridge() -> Iterator[Any]:
    from isolate.engine._component_bridge import BRIDGE, UNAVAILABLE

    if BRIDGE is None:
        pytest.skip(f"no component bridge: {UNAVAILABLE}")
    yield BRIDGE


def _address(obj: Any) -> int:
    return ctypes.cast(obj.ptr(), ctypes.c_void_p).value or 0


class Served:
    """A component linked as the engine links one: each interface it imports defined by INTERFACES."""

    def __init__(self, bridge: Any, wasm: bytes) -> None:
        import wasmtime
        import wasmtime.component as wc

        config = wasmtime.Config()
        config.epoch_interruption = True
        self.bridge = bridge
        self.engine = wasmtime.Engine(config)
        self.component = wc.Component(self.engine, wasm)
        self.linker = wc.Linker(self.engine)
        with self.linker.root() as root:
            for name in self.component.type.imports(self.engine):
                with root.add_instance(name) as instance:
                    INTERFACES[name.partition("@")[0]](_address(instance))
        self.linker.define_unknown_imports_as_traps(self.component)
        handler = next(name for name in self.component.type.exports(self.engine)
                       if name.startswith("wasi:http/incoming-handler@"))
        self.index = bridge.export_index(_address(self.component), handler, "handle")
        assert self.index

    def run(self, state: Exchange) -> tuple[int, str | None]:
        status, message, _, _ = self.bridge.run(_address(self.engine), _address(self.linker),
                                                _address(self.component), self.index, state, 64 << 20, 1 << 30,
                                                state.handler_args())
        state.flush_output()
        return status, message

    def close(self) -> None:
        self.bridge.free_export_index(self.index)


def test_a_wasi_http_component_answers_through_the_bridge(bridge: Any, tmp_path: Path) -> None:
    """The benchmark's hello guest (bench/guests/hello-http.wat), made a component by jco."""
    served = Served(bridge, build_probe(tmp_path, (ROOT / "bench/guests/hello-http.wat").read_text()))
    try:
        for _ in range(3):  # a fresh store per request: nothing carries over
            state = exchange()
            assert served.run(state) + (state.error,) == (0, None, None)
            assert state.response == (200, [("content-type", b"text/plain; charset=utf-8")],
                                      b"Hello, world! (from C, region local, client in local)\n")
            assert state.table == {}  # the guest dropped everything it was given or made
    finally:
        served.close()


PROBE = r"""(module
  (import "wasi:cli/stdout@0.2.12" "get-stdout" (func $get_stdout (result i32)))
  (import "wasi:io/streams@0.2.12" "[method]output-stream.blocking-write-and-flush"
    (func $write_and_flush (param i32 i32 i32 i32)))
  (import "wasi:io/streams@0.2.12" "[method]input-stream.blocking-read" (func $read (param i32 i64 i32)))
  (import "wasi:io/streams@0.2.12" "[resource-drop]output-stream" (func $ostream_drop (param i32)))
  (import "wasi:io/streams@0.2.12" "[resource-drop]input-stream" (func $istream_drop (param i32)))
  (import "wasi:clocks/monotonic-clock@0.2.12" "subscribe-duration" (func $after (param i64) (result i32)))
  (import "wasi:clocks/wall-clock@0.2.12" "now" (func $wall_now (param i32)))
  (import "wasi:io/poll@0.2.12" "poll" (func $poll (param i32 i32 i32)))
  (import "wasi:io/poll@0.2.12" "[method]pollable.block" (func $block (param i32)))
  (import "wasi:io/poll@0.2.12" "[method]pollable.ready" (func $ready (param i32) (result i32)))
  (import "wasi:io/poll@0.2.12" "[resource-drop]pollable" (func $pollable_drop (param i32)))
  (import "wasi:random/random@0.2.12" "get-random-u64" (func $random_u64 (result i64)))
  (import "wasi:http/types@0.2.12" "[method]incoming-request.headers" (func $req_headers (param i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]incoming-request.consume" (func $req_consume (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]incoming-body.stream" (func $body_stream (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[resource-drop]incoming-body" (func $in_body_drop (param i32)))
  (import "wasi:http/types@0.2.12" "[method]fields.entries" (func $fields_entries (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[resource-drop]fields" (func $fields_drop (param i32)))
  (import "wasi:http/types@0.2.12" "[constructor]fields" (func $fields_new (result i32)))
  (import "wasi:http/types@0.2.12" "[method]fields.append" (func $fields_append (param i32 i32 i32 i32 i32 i32)))
  (import "wasi:http/types@0.2.12" "[constructor]outgoing-request" (func $oreq_new (param i32) (result i32)))
  (import "wasi:http/outgoing-handler@0.2.12" "handle" (func $handle (param i32 i32 i32 i32)))
  (import "wasi:http/types@0.2.12" "[constructor]outgoing-response" (func $response_new (param i32) (result i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-response.body" (func $response_body (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[static]response-outparam.set"
    (func $outparam_set (param i32 i32 i32 i32 i64 i32 i32 i32 i32)))
  (import "wasi:http/types@0.2.12" "[method]outgoing-body.write" (func $body_write (param i32 i32)))
  (import "wasi:http/types@0.2.12" "[static]outgoing-body.finish" (func $body_finish (param i32 i32 i32 i32)))
  (import "wasi:http/types@0.2.12" "[resource-drop]incoming-request" (func $request_drop (param i32)))

  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 8192))
  (data (i32.const 1024) "probe: stdout line\0a")  ;; 19 bytes
  (data (i32.const 1056) "x-probe")  ;; 7 bytes
  (data (i32.const 1072) "passed")  ;; 6 bytes
  ;; 2048..2111: return areas; 2112..2119: the list of two pollables given to poll

  (func (export "cabi_realloc") (param $old i32) (param $old_size i32) (param $align i32) (param $size i32)
    (result i32)
    (local $p i32)
    (local.set $p (i32.and (i32.add (global.get $heap) (i32.sub (local.get $align) (i32.const 1)))
                           (i32.sub (i32.const 0) (local.get $align))))
    (global.set $heap (i32.add (local.get $p) (local.get $size)))
    (if (i32.gt_u (global.get $heap) (i32.mul (memory.size) (i32.const 65536)))
      (then (if (i32.eq (memory.grow (i32.const 1)) (i32.const -1)) (then unreachable))))
    (local.get $p))

  (func $check (param $ok i32) (if (i32.eqz (local.get $ok)) (then unreachable)))

  (func (export "wasi:http/incoming-handler@0.2.12#handle") (param $request i32) (param $out i32)
    (local $stream i32) (local $headers i32) (local $response i32) (local $body i32) (local $p i32) (local $q i32)
    (local $total i32) (local $in i32)
    ;; stdout: one line, captured
    (local.set $stream (call $get_stdout))
    (call $write_and_flush (local.get $stream) (i32.const 1024) (i32.const 19) (i32.const 2048))
    (call $check (i32.eqz (i32.load8_u (i32.const 2048))))
    (call $ostream_drop (local.get $stream))
    ;; poll [10 s, 20 ms] -> [1]
    (local.set $p (call $after (i64.const 10000000000)))
    (local.set $q (call $after (i64.const 20000000)))
    (i32.store (i32.const 2112) (local.get $p))
    (i32.store (i32.const 2116) (local.get $q))
    (call $poll (i32.const 2112) (i32.const 2) (i32.const 2048))
    (call $check (i32.eq (i32.load (i32.const 2052)) (i32.const 1)))
    (call $check (i32.eq (i32.load (i32.load (i32.const 2048))) (i32.const 1)))
    (call $pollable_drop (local.get $p))
    (call $pollable_drop (local.get $q))
    ;; wall clock: after 2020, nanoseconds below 1e9
    (call $wall_now (i32.const 2048))
    (call $check (i64.gt_u (i64.load (i32.const 2048)) (i64.const 1577836800)))
    (call $check (i32.lt_u (i32.load (i32.const 2056)) (i32.const 1000000000)))
    (drop (call $random_u64))
    ;; the request's headers: three entries, the first named "host"
    (local.set $headers (call $req_headers (local.get $request)))
    (call $fields_entries (local.get $headers) (i32.const 2048))
    (call $check (i32.eq (i32.load (i32.const 2052)) (i32.const 3)))
    (local.set $p (i32.load (i32.const 2048)))
    (call $check (i32.eq (i32.load offset=4 (local.get $p)) (i32.const 4)))
    (call $check (i32.eq (i32.load (i32.load (local.get $p))) (i32.const 0x74736f68)))  ;; "host"
    (call $fields_drop (local.get $headers))
    ;; the body, 4 bytes per read, to closed: 10 bytes
    (call $req_consume (local.get $request) (i32.const 2048))
    (call $check (i32.eqz (i32.load8_u (i32.const 2048))))
    (local.set $body (i32.load (i32.const 2052)))
    (call $body_stream (local.get $body) (i32.const 2048))
    (call $check (i32.eqz (i32.load8_u (i32.const 2048))))
    (local.set $in (i32.load (i32.const 2052)))
    (block $done
      (loop $more
        (call $read (local.get $in) (i64.const 4) (i32.const 2048))
        (if (i32.load8_u (i32.const 2048))
          (then
            (call $check (i32.eq (i32.load8_u (i32.const 2052)) (i32.const 1)))  ;; closed
            (br $done)))
        (call $check (i32.le_u (i32.load (i32.const 2056)) (i32.const 4)))
        (local.set $total (i32.add (local.get $total) (i32.load (i32.const 2056))))
        (br $more)))
    (call $check (i32.eq (local.get $total) (i32.const 10)))
    (call $istream_drop (local.get $in))
    (call $in_body_drop (local.get $body))
    (call $request_drop (local.get $request))
    ;; an outbound call without the capability: err(HTTP-request-denied), case 15 of error-code
    (call $handle (call $oreq_new (call $fields_new)) (i32.const 0) (i32.const 0) (i32.const 2048))
    (call $check (i32.eq (i32.load8_u (i32.const 2048)) (i32.const 1)))
    (call $check (i32.eq (i32.load8_u (i32.const 2056)) (i32.const 15)))
    ;; the answer: 200, x-probe: passed, body "passed"
    (local.set $headers (call $fields_new))
    (call $fields_append (local.get $headers) (i32.const 1056) (i32.const 7) (i32.const 1072) (i32.const 6)
                         (i32.const 2048))
    (call $check (i32.eqz (i32.load8_u (i32.const 2048))))
    (local.set $response (call $response_new (local.get $headers)))
    (call $response_body (local.get $response) (i32.const 2048))
    (local.set $body (i32.load (i32.const 2052)))
    (call $outparam_set (local.get $out) (i32.const 0) (local.get $response)
                        (i32.const 0) (i64.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0))
    (call $body_write (local.get $body) (i32.const 2048))
    (local.set $stream (i32.load (i32.const 2052)))
    (call $write_and_flush (local.get $stream) (i32.const 1072) (i32.const 6) (i32.const 2048))
    (call $check (i32.eqz (i32.load8_u (i32.const 2048))))
    (call $ostream_drop (local.get $stream))
    (call $body_finish (local.get $body) (i32.const 0) (i32.const 0) (i32.const 2048))
    (call $check (i32.eqz (i32.load8_u (i32.const 2048)))))
)
"""
"""A guest checking, through the canonical ABI, what the host's values look like from inside: each check
that fails traps (`unreachable`). Its answer is 200 `x-probe: passed`."""


def build_probe(tmp_path: Path, wat: str) -> bytes:
    import shutil
    import subprocess

    if shutil.which("node") is None:
        pytest.skip("node is not installed: jco builds the component (make toolchains)")
    source, out = tmp_path / "probe.wat", tmp_path / "probe.wasm"
    source.write_text(wat)
    built = subprocess.run(["node", str(ROOT / "tests/components/build.mjs"), str(source), str(out)],
                           capture_output=True, text=True, timeout=120)
    if built.returncode == 3:
        pytest.skip(f"jco is not installed: {built.stderr.strip()}")
    assert built.returncode == 0, built.stderr
    return out.read_bytes()


def probe_exchange() -> Exchange:
    state = exchange(b"0123456789")
    state.request.entries = [("host", b"x"), ("x-echo", b"a"), ("x-echo", b"b")]
    return state


BLOCK_INSTEAD_OF_POLL = (
    """    (call $poll (i32.const 2112) (i32.const 2) (i32.const 2048))
    (call $check (i32.eq (i32.load (i32.const 2052)) (i32.const 1)))
    (call $check (i32.eq (i32.load (i32.load (i32.const 2048))) (i32.const 1)))""",
    # blocked until the 20 ms pollable is ready, not returned at once; the 10 s one is not
    """    (call $block (local.get $q))
    (call $check (call $ready (local.get $q)))
    (call $check (i32.eqz (call $ready (local.get $p))))""")


def test_a_component_sees_the_host_values_it_expects(bridge: Any, tmp_path: Path) -> None:
    """stdout, a clock pollable, the wall clock, random, header entries, a body read to `closed`, a
    denied outbound call (error-code case 15) and a response, end to end."""
    served = Served(bridge, build_probe(tmp_path, PROBE.replace(*BLOCK_INSTEAD_OF_POLL)))
    try:
        state = probe_exchange()
        assert served.run(state) + (state.error,) == (0, None, None)  # the probe traps if block did not wait
        assert state.response == (200, [("x-probe", b"passed")], b"passed")
        assert [(r.stream, r.message) for r in state.capture.finish()] == [  # type: ignore[union-attr]
            ("stdout", "probe: stdout line\n")]
        assert state.table == {}
    finally:
        served.close()


@pytest.mark.xfail(strict=True, reason="wasmtime 50 cannot lift a list<borrow<R>> argument of a dynamic host "
                                       "function (its C API, wasmtime-py's own add_func too): 'BUG: deferred "
                                       "host scope has no call context' (resources.rs:328)")
def test_poll_takes_a_list_of_borrowed_pollables(bridge: Any, tmp_path: Path) -> None:
    served = Served(bridge, build_probe(tmp_path, PROBE))
    try:
        state = probe_exchange()
        status, message = served.run(state)
        assert (status, state.error) == (0, None), message
        assert state.response == (200, [("x-probe", b"passed")], b"passed")
    finally:
        served.close()


def test_an_outbound_call_through_a_real_guest_io() -> None:
    """The envelope this module builds is one `GuestIO.http_send` accepts, and its answer reads back."""
    import http.server
    import threading

    from isolate.capabilities import GuestIO
    from isolate.capabilities._outbound import Outbound
    from isolate.capabilities._policy import parse_allowed_host

    class Echo(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
            body = self.rfile.read(int(self.headers["content-length"]))
            answer = f"{self.command} {self.path} {self.headers['x-api']} ".encode() + body
            self.send_response(207)
            self.send_header("content-length", str(len(answer)))
            self.send_header("x-origin", "echo")
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    outbound = Outbound()
    try:
        deadline = time.perf_counter() + 10
        io = GuestIO(outbound=outbound, kv=None, allowed_hosts=[parse_allowed_host("http://127.0.0.1:*")],  # type: ignore[arg-type]
                     stores=[], outbound_requests=4, outbound_timeout=5.0, outbound_response_size=1 << 20,
                     kv_operations=0, deadline=deadline, request_id="rid", traceparent=None, tracestate=None,
                     stopping=lambda: False, note=lambda level, text: None)
        ex = exchange(io=io)
        request, body = outgoing_request(ex, body=b"")
        port = server.server_address[1]
        assert types("[method]outgoing-request.set-authority", ex, request, f"127.0.0.1:{port}") == ("ok", None)
        future = call("wasi:http/outgoing-handler", "handle", ex, request, None)[1]
        stream = types("[method]outgoing-body.write", ex, body)[1]
        streams("[method]output-stream.write", ex, stream, b"the body")
        drop(ex, stream)
        types("[static]outgoing-body.finish", ex, body, None)
        ok, (ok2, response) = types("[method]future-incoming-response.get", ex, future)
        assert (ok, ok2) == ("ok", "ok")
        assert types("[method]incoming-response.status", ex, response) == 207
        headers = types("[method]incoming-response.headers", ex, response)
        assert types("[method]fields.get", ex, headers, "x-origin") == [b"echo"]
        answer = types("[method]incoming-response.consume", ex, response)[1]
        stream = types("[method]incoming-body.stream", ex, answer)[1]
        assert b"".join(read_all(ex, stream, 4096)) == b"POST /p?q k the body"
        assert io.results == {"ok": 1}
        assert ex.waited
    finally:
        server.shutdown()
        server.server_close()
        outbound.close()


def test_what_one_call_hands_the_guest_is_bounded() -> None:
    """A list<u8> costs the host ~80 bytes per byte to hand over: reads return at most MAX_HANDED, random
    bytes past MAX_RANDOM fail the request, and header entries count their overhead and their number."""
    ex = exchange(b"x" * (3 * MAX_HANDED))
    request = ex.handler_args()[0][1]
    body = types("[method]incoming-request.consume", ex, request)[1]
    stream = types("[method]incoming-body.stream", ex, body)[1]
    ok, chunk = streams("[method]input-stream.blocking-read", ex, stream, 2**64 - 1)
    assert ok == "ok" and len(chunk) == MAX_HANDED
    assert streams("[method]input-stream.skip", ex, stream, 2**64 - 1) == ("ok", MAX_HANDED)
    assert len(call("wasi:random/random", "get-random-bytes", ex, MAX_RANDOM)) == MAX_RANDOM
    with pytest.raises(AbiViolation, match="random bytes"):
        call("wasi:random/random", "get-random-bytes", ex, MAX_RANDOM + 1)
    assert types("[static]fields.from-list", ex, [("a", b"")] * MAX_ENTRIES)[0] == "ok"
    with pytest.raises(MemoryLimit, match=f"at most {MAX_ENTRIES}"):
        types("[static]fields.from-list", ex, [("a", b"")] * (MAX_ENTRIES + 1))
    with pytest.raises(MemoryLimit, match="hold more than"):  # empty entries count: each is host objects
        for _ in range(MAX_HELD // (ENTRY_OVERHEAD * MAX_ENTRIES) + 1):
            types("[static]fields.from-list", ex, [("a", b"")] * MAX_ENTRIES)
