"""guest-sdk/python/isolate_http.py against stand-in bindings: what the handler sees, what reaches the host.

The SDK runs inside a componentize-py component, where `wit_world` and `componentize_py_types` are the
generated bindings. Here they are small fakes that log every call the SDK makes to the host, so the
request's laziness (a part is asked for only when the handler reads it) and the response's calls are
checked without building a component (tests/test_component_guests.py runs the real thing).
"""

from __future__ import annotations

import importlib
import sys
import types as pytypes
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

SDK = Path(__file__).resolve().parent.parent / "guest-sdk" / "python"


class Err(Exception):
    def __init__(self, value: Any) -> None:
        super().__init__(value)
        self.value = value


@dataclass
class Ok:
    value: Any


class StreamErrorClosed:
    pass


@dataclass
class StreamErrorLastOperationFailed:
    value: Any


class Host:
    """The fake host: its log of calls, the request it holds and the response it was given."""

    def __init__(self, method: Any, path: str | None, headers: list[tuple[str, bytes]], body: bytes) -> None:
        self.calls: list[str] = []
        self.method, self.path, self.headers, self.body = method, path, headers, body
        self.response: Any = None
        self.written = bytearray()
        self.writes: list[int] = []
        self.sent: dict[str, Any] = {}
        """The outbound request fetch made: method, scheme, authority, path, headers, body."""
        self.refuse: Any = None
        """An error-code outgoing-handler.handle raises at once."""
        self.answer: Any = None
        """What the outbound call's future gets: (status, headers, body), or an error-code."""
        self.fail_read: Any = None
        """An error-code the outbound answer's body stream fails with once its data is read."""


def _bindings(host_ref: list[Host]) -> dict[str, pytypes.ModuleType]:
    def log(name: str) -> None:
        host_ref[0].calls.append(name)

    class Resource:
        """Like componentize-py's: a resource given to the host (an `own` argument) is no longer the
        guest's, and dropping it then, or twice, fails (there its finalizer is detached already)."""

        gone = False

        def __enter__(self) -> Any:
            return self

        def __exit__(self, *exc: object) -> None:
            assert not self.gone, f"{type(self).__name__} dropped when no longer the guest's"
            self.gone = True
            log(f"drop {type(self).__name__}")

        def take(self) -> Any:
            assert not self.gone, f"{type(self).__name__} given away when no longer the guest's"
            self.gone = True
            return self

    class Method_Get:  # noqa: N801 (the bindings' names)
        pass

    class Method_Post:  # noqa: N801
        pass

    class Method_Other:  # noqa: N801
        def __init__(self, value: str) -> None:
            self.value = value

    class Fields(Resource):
        def __init__(self, entries: list[tuple[str, bytes]]) -> None:
            self._entries = entries

        @staticmethod
        def from_list(entries: list[tuple[str, bytes]]) -> Fields:
            log("fields.from-list")
            return Fields(entries)

        def entries(self) -> list[tuple[str, bytes]]:
            log("fields.entries")
            return list(self._entries)

    class HostError(Resource):
        def __init__(self, code: Any) -> None:
            self.code = code

        def to_debug_string(self) -> str:
            return f"failed: {type(self.code).__name__}"

    class InputStream(Resource):
        def __init__(self, data: bytes, fail: Any = None) -> None:
            self.data = data
            self.fail = fail

        def blocking_read(self, size: int) -> bytes:
            log("input-stream.blocking-read")
            if not self.data:
                if self.fail is not None:
                    raise Err(StreamErrorLastOperationFailed(HostError(self.fail)))
                raise Err(StreamErrorClosed())
            chunk, self.data = self.data[:size], self.data[size:]
            return chunk

    class FutureTrailers(Resource):
        pass

    class IncomingBody(Resource):
        def __init__(self, data: bytes | None = None, fail: Any = None) -> None:
            self.data, self.fail = data, fail

        def stream(self) -> InputStream:
            log("incoming-body.stream")
            return InputStream(host_ref[0].body if self.data is None else self.data, self.fail)

        @staticmethod
        def finish(body: IncomingBody) -> FutureTrailers:
            log("incoming-body.finish")
            body.take()
            return FutureTrailers()

    class IncomingRequest(Resource):
        def method(self) -> Any:
            log("incoming-request.method")
            return host_ref[0].method

        def path_with_query(self) -> str | None:
            log("incoming-request.path-with-query")
            return host_ref[0].path

        def headers(self) -> Fields:
            log("incoming-request.headers")
            return Fields(host_ref[0].headers)

        def consume(self) -> IncomingBody:
            log("incoming-request.consume")
            return IncomingBody()

    class OutputStream(Resource):
        def blocking_write_and_flush(self, data: bytes) -> None:
            log("output-stream.blocking-write-and-flush")
            assert len(data) <= 4096
            host_ref[0].written += data
            host_ref[0].writes.append(len(data))

    class OutgoingBody(Resource):
        def write(self) -> OutputStream:
            log("outgoing-body.write")
            return OutputStream()

        @staticmethod
        def finish(body: OutgoingBody, trailers: Any) -> None:
            log("outgoing-body.finish")
            body.take()

    class Scheme_Http:  # noqa: N801
        pass

    class Scheme_Https:  # noqa: N801
        pass

    @dataclass
    class Scheme_Other:  # noqa: N801
        value: str

    class ErrorCode_HttpRequestDenied:  # noqa: N801
        pass

    class ErrorCode_HttpRequestUriInvalid:  # noqa: N801
        pass

    class ErrorCode_HttpResponseBodySize:  # noqa: N801
        pass

    @dataclass
    class ErrorCode_InternalError:  # noqa: N801
        value: str | None

    class OutgoingRequest(Resource):
        def __init__(self, headers: Fields) -> None:
            log("outgoing-request.new")
            self.entries = headers.take()._entries
            self.method: Any = Method_Get()
            self.scheme: Any = None
            self.authority: str | None = None
            self.path: str | None = None
            self.outgoing: OutgoingBody | None = None

        def set_method(self, method: Any) -> None:
            log("outgoing-request.set-method")
            self.method = method

        def set_scheme(self, scheme: Any) -> None:
            log("outgoing-request.set-scheme")
            self.scheme = scheme

        def set_authority(self, authority: str | None) -> None:
            log("outgoing-request.set-authority")
            if authority is not None and " " in authority:
                raise Err(None)
            self.authority = authority

        def set_path_with_query(self, path: str | None) -> None:
            log("outgoing-request.set-path-with-query")
            self.path = path

        def body(self) -> OutgoingBody:
            log("outgoing-request.body")
            self.outgoing = OutgoingBody()
            return self.outgoing

    class Pollable(Resource):
        def block(self) -> None:
            log("pollable.block")

    class IncomingResponse(Resource):
        def __init__(self, status: int, headers: list[tuple[str, bytes]], body: bytes, fail: Any) -> None:
            self._status, self._headers, self._body, self._fail = status, headers, body, fail

        def status(self) -> int:
            log("incoming-response.status")
            return self._status

        def headers(self) -> Fields:
            log("incoming-response.headers")
            return Fields(self._headers)

        def consume(self) -> IncomingBody:
            log("incoming-response.consume")
            return IncomingBody(self._body, self._fail)

    class FutureIncomingResponse(Resource):
        def __init__(self, request: OutgoingRequest) -> None:
            self.request = request

        def subscribe(self) -> Pollable:
            log("future-incoming-response.subscribe")
            return Pollable()

        def get(self) -> Any:
            log("future-incoming-response.get")
            host, request = host_ref[0], self.request
            assert request.outgoing is None or request.outgoing.gone, "asked for the answer before the body ended"
            host.sent = {"method": request.method, "scheme": request.scheme, "authority": request.authority,
                         "path": request.path, "headers": request.entries, "body": bytes(host.written)}
            answer = host.answer
            if not isinstance(answer, tuple):
                return Ok(Err(answer))
            status, headers, body = answer
            return Ok(Ok(IncomingResponse(status, headers, body, host.fail_read)))

    def handle(request: OutgoingRequest, options: Any) -> FutureIncomingResponse:
        log("outgoing-handler.handle")
        request.take()
        if host_ref[0].refuse is not None:
            raise Err(host_ref[0].refuse)
        return FutureIncomingResponse(request)

    def http_error_code(error: HostError) -> Any:
        log("http-error-code")
        return error.code

    class OutgoingResponse(Resource):
        def __init__(self, headers: Fields) -> None:
            log("outgoing-response.new")
            self.headers, self.status = headers._entries, 200

        def set_status_code(self, status: int) -> None:
            log("outgoing-response.set-status-code")
            self.status = status

        def body(self) -> OutgoingBody:
            log("outgoing-response.body")
            return OutgoingBody()

    class ResponseOutparam(Resource):
        @staticmethod
        def set(out: ResponseOutparam, result: Ok) -> None:
            log("response-outparam.set")
            host_ref[0].response = result.value

    class IncomingHandler:
        pass

    types_module = pytypes.ModuleType("wit_world.imports.types")
    for cls in (Method_Get, Method_Post, Method_Other, Fields, IncomingBody, IncomingRequest, OutgoingBody,
                OutgoingResponse, ResponseOutparam, Scheme_Http, Scheme_Https, Scheme_Other, OutgoingRequest,
                FutureIncomingResponse, IncomingResponse, FutureTrailers, ErrorCode_HttpRequestDenied,
                ErrorCode_HttpRequestUriInvalid, ErrorCode_HttpResponseBodySize, ErrorCode_InternalError):
        setattr(types_module, cls.__name__, cls)
    types_module.http_error_code = http_error_code  # type: ignore[attr-defined]
    for name in ("Head", "Put", "Delete", "Connect", "Options", "Trace", "Patch"):
        setattr(types_module, f"Method_{name}", type(f"Method_{name}", (), {}))
    streams_module = pytypes.ModuleType("wit_world.imports.streams")
    streams_module.StreamError_Closed = StreamErrorClosed  # type: ignore[attr-defined]
    streams_module.StreamError_LastOperationFailed = StreamErrorLastOperationFailed  # type: ignore[attr-defined]
    streams_module.InputStream = InputStream  # type: ignore[attr-defined]
    streams_module.OutputStream = OutputStream  # type: ignore[attr-defined]
    exports_module = pytypes.ModuleType("wit_world.exports")
    exports_module.IncomingHandler = IncomingHandler  # type: ignore[attr-defined]
    imports_module = pytypes.ModuleType("wit_world.imports")
    imports_module.types = types_module  # type: ignore[attr-defined]
    imports_module.streams = streams_module  # type: ignore[attr-defined]
    handler_module = pytypes.ModuleType("wit_world.imports.outgoing_handler")
    handler_module.handle = handle  # type: ignore[attr-defined]
    imports_module.outgoing_handler = handler_module  # type: ignore[attr-defined]
    world = pytypes.ModuleType("wit_world")
    world.exports = exports_module  # type: ignore[attr-defined]
    world.imports = imports_module  # type: ignore[attr-defined]
    results = pytypes.ModuleType("componentize_py_types")
    results.Ok, results.Err = Ok, Err  # type: ignore[attr-defined]
    return {"wit_world": world, "wit_world.exports": exports_module, "wit_world.imports": imports_module,
            "wit_world.imports.types": types_module, "wit_world.imports.streams": streams_module,
            "wit_world.imports.outgoing_handler": handler_module,
            "componentize_py_types": results}


@pytest.fixture
def sdk(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Any, list[Host]]]:
    host_ref: list[Host] = []
    for name, module in _bindings(host_ref).items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.syspath_prepend(str(SDK))
    monkeypatch.delitem(sys.modules, "isolate_http", raising=False)
    monkeypatch.delenv("ISOLATE_HTTP_WARM", raising=False)
    yield importlib.import_module("isolate_http"), host_ref
    sys.modules.pop("isolate_http", None)


def _serve(sdk: tuple[Any, list[Host]], handler: Any, host: Host) -> Host:
    module, host_ref = sdk
    host_ref[:] = [host]
    incoming = sys.modules["wit_world.imports.types"]
    module.serve(handler)().handle(incoming.IncomingRequest(), incoming.ResponseOutparam())
    return host


def test_a_handler_that_reads_the_path_makes_no_other_request_call(sdk: tuple[Any, list[Host]]) -> None:
    module = sdk[0]
    get = sys.modules["wit_world.imports.types"].Method_Get()
    host = _serve(sdk, lambda request: module.Response(200, {"content-type": "text/plain"}, f"at {request.path}"),
                  Host(get, "/a?b=1", [("x", b"y")], b"ignored"))
    assert host.calls == ["incoming-request.path-with-query", "fields.from-list", "outgoing-response.new",
                          "outgoing-response.body", "response-outparam.set", "outgoing-body.write",
                          "output-stream.blocking-write-and-flush", "drop OutputStream", "outgoing-body.finish"]
    assert (host.response.status, host.response.headers, bytes(host.written)) == (
        200, [("content-type", b"text/plain")], b"at /a?b=1")


def test_each_part_is_read_once_when_first_used(sdk: tuple[Any, list[Host]]) -> None:
    module = sdk[0]
    types = sys.modules["wit_world.imports.types"]
    seen: list[Any] = []

    def handle(request: Any) -> Any:
        seen.extend([request.method, request.method, request.path, request.headers, request.header("X-Name"),
                     request.body, request.body, request.text()])
        return module.Response(201, [("content-type", "application/octet-stream")], request.body)

    host = _serve(sdk, handle, Host(types.Method_Post(), None, [("x-name", "é".encode("latin-1"))], b"a" * 5000))
    assert seen == ["POST", "POST", "/", [("x-name", "é")], "é", b"a" * 5000, b"a" * 5000, "a" * 5000]
    for call in ("incoming-request.method", "incoming-request.path-with-query", "incoming-request.headers",
                 "incoming-request.consume", "incoming-body.finish"):
        assert host.calls.count(call) == 1, call
    assert host.calls.count("input-stream.blocking-read") == 2  # the data, then closed
    assert host.response.status == 201 and "outgoing-response.set-status-code" in host.calls
    assert bytes(host.written) == b"a" * 5000 and host.writes == [4096, 904]  # at most 4096 bytes a write


def test_other_methods_and_an_empty_body(sdk: tuple[Any, list[Host]]) -> None:
    module = sdk[0]
    types = sys.modules["wit_world.imports.types"]
    got: list[str] = []

    def handle(request: Any) -> Any:
        got.append(request.method)
        return module.Response(204)

    host = _serve(sdk, handle, Host(types.Method_Other("PURGE"), "/", [], b""))
    assert got == ["PURGE"] and host.response.status == 204 and host.response.headers == []
    assert "outgoing-body.write" not in host.calls and host.calls[-1] == "outgoing-body.finish"


def test_a_str_body_gets_a_content_type_unless_it_has_one(sdk: tuple[Any, list[Host]]) -> None:
    module = sdk[0]
    assert module._encode(module.Response(200, {}, "hé")) == (
        200, [("content-type", b"text/plain; charset=utf-8")], "hé".encode())
    assert module._encode(module.Response(200, {"Content-Type": "text/html"}, "x"))[1] == [
        ("Content-Type", b"text/html")]
    assert module._encode(module.Response(200, (("a", "b"),), bytearray(b"x"))) == (200, [("a", b"b")], b"x")


def test_request_is_still_a_dataclass_of_its_four_parts(sdk: tuple[Any, list[Host]]) -> None:
    import dataclasses

    module = sdk[0]
    request = module.Request("GET", "/x", [("a", "b")], b"body")
    assert [f.name for f in dataclasses.fields(module.Request)] == ["method", "path", "headers", "body"]
    assert request == module.Request("GET", "/x", [("a", "b")], b"body")
    assert dataclasses.replace(request, path="/y").path == "/y"
    assert "path='/x'" in repr(request) and request.header("A") == "b" and request.header("c", "-") == "-"
    request.body = b"changed"
    assert request.text() == "changed"


# -- fetch ----------------------------------------------------------------------------------------

def _fetching(sdk: tuple[Any, list[Host]], answer: Any = None, **host: Any) -> Host:
    """A host whose outbound call answers `answer` (default: 200, one header, b"hi")."""
    made = Host(None, None, [], b"")
    made.answer = (200, [("x-origin", b"o\xe9")], b"hi") if answer is None else answer
    for name, value in host.items():
        setattr(made, name, value)
    sdk[1][:] = [made]
    return made


def test_fetch_sends_the_request_and_returns_the_whole_response(sdk: tuple[Any, list[Host]]) -> None:
    module = sdk[0]
    types = sys.modules["wit_world.imports.types"]
    host = _fetching(sdk, (201, [("x-origin", b"o\xe9"), ("x-origin", b"2")], b"a" * 70_000))
    got = module.fetch("http://127.0.0.1:9/p/q?x=1#frag", headers={"x-a": "1"})
    assert (got.status, got.headers, got.body) == (201, [("x-origin", "o\xe9"), ("x-origin", "2")], b"a" * 70_000)
    assert got.header("X-Origin") == "o\xe9" and got.header("nope") is None
    sent = host.sent
    assert isinstance(sent["method"], types.Method_Get) and isinstance(sent["scheme"], types.Scheme_Http)
    assert (sent["authority"], sent["path"], sent["headers"], sent["body"]) == (
        "127.0.0.1:9", "/p/q?x=1", [("x-a", b"1")], b"")
    # A GET with no body: no method call, no body at all; one wait on the one future; children dropped first.
    assert host.calls == [
        "fields.from-list", "outgoing-request.new", "outgoing-request.set-scheme", "outgoing-request.set-authority",
        "outgoing-request.set-path-with-query", "outgoing-handler.handle", "future-incoming-response.subscribe",
        "pollable.block", "drop Pollable", "future-incoming-response.get", "drop FutureIncomingResponse",
        "incoming-response.status", "incoming-response.headers", "fields.entries", "drop Fields",
        "incoming-response.consume", "incoming-body.stream", "input-stream.blocking-read",
        "input-stream.blocking-read", "input-stream.blocking-read", "drop InputStream", "incoming-body.finish",
        "drop FutureTrailers", "drop IncomingResponse"]


def test_fetch_writes_a_body_in_chunks_after_handle(sdk: tuple[Any, list[Host]]) -> None:
    module = sdk[0]
    types = sys.modules["wit_world.imports.types"]
    host = _fetching(sdk)
    got = module.fetch("HTTPS://example.com", method="post", headers=[("a", "1"), ("a", "2")], body="é" * 5000)
    assert got.status == 200 and got.body == b"hi"
    sent = host.sent
    assert isinstance(sent["method"], types.Method_Post) and isinstance(sent["scheme"], types.Scheme_Https)
    assert (sent["authority"], sent["path"], sent["headers"]) == ("example.com", "/", [("a", b"1"), ("a", b"2")])
    assert sent["body"] == ("é" * 5000).encode() and host.writes == [4096, 4096, 1808]
    calls = host.calls
    assert calls.index("outgoing-request.body") < calls.index("outgoing-handler.handle") < calls.index(
        "outgoing-body.write") < calls.index("drop OutputStream") < calls.index("outgoing-body.finish") < calls.index(
        "pollable.block")
    other = module.fetch("http://h/x", method="PURGE")
    assert host.sent["method"].value == "PURGE" and other.status == 200


def test_a_refused_call_is_a_fetch_error_with_the_error_code(sdk: tuple[Any, list[Host]]) -> None:
    module = sdk[0]
    types = sys.modules["wit_world.imports.types"]
    host = _fetching(sdk, refuse=types.ErrorCode_HttpRequestDenied())
    with pytest.raises(module.FetchError) as caught:
        module.fetch("http://nope.test/x", body=b"unsent")
    error = caught.value
    assert isinstance(error.code, types.ErrorCode_HttpRequestDenied) and error.name == "HTTP-request-denied"
    assert str(error) == "fetch http://nope.test/x: HTTP-request-denied" and error.url == "http://nope.test/x"
    assert host.calls[-2:] == ["outgoing-handler.handle", "drop OutgoingBody"]  # the unsent body is dropped


def test_an_error_code_from_the_future_is_a_fetch_error(sdk: tuple[Any, list[Host]]) -> None:
    module = sdk[0]
    types = sys.modules["wit_world.imports.types"]
    host = _fetching(sdk, types.ErrorCode_InternalError("boom"))
    with pytest.raises(module.FetchError) as caught:
        module.fetch("http://h/")
    assert caught.value.name == "internal-error" and str(caught.value) == "fetch http://h/: internal-error (boom)"
    assert host.calls[-2:] == ["future-incoming-response.get", "drop FutureIncomingResponse"]


def test_a_body_that_fails_midway_is_a_fetch_error(sdk: tuple[Any, list[Host]]) -> None:
    module = sdk[0]
    types = sys.modules["wit_world.imports.types"]
    host = _fetching(sdk, fail_read=types.ErrorCode_HttpResponseBodySize())
    with pytest.raises(module.FetchError) as caught:
        module.fetch("http://h/")
    assert caught.value.name == "HTTP-response-body-size"
    assert "failed: ErrorCode_HttpResponseBodySize" in str(caught.value)
    assert host.calls[-6:] == ["input-stream.blocking-read", "http-error-code", "drop HostError", "drop InputStream",
                               "drop IncomingBody", "drop IncomingResponse"]


def test_fetch_refuses_what_is_not_an_absolute_url(sdk: tuple[Any, list[Host]]) -> None:
    module = sdk[0]
    host = _fetching(sdk)
    for url in ("/relative", "example.com/x", "http:///x"):
        with pytest.raises(ValueError):
            module.fetch(url)
    assert host.calls == []
    with pytest.raises(ValueError, match="authority"):
        module.fetch("http://bad host/")
    assert host.calls[-1] == "drop OutgoingRequest"


def test_error_code_names_are_the_wits(sdk: tuple[Any, list[Host]]) -> None:
    module = sdk[0]
    names = {"ErrorCode_DnsTimeout": "DNS-timeout", "ErrorCode_DestinationIpProhibited": "destination-IP-prohibited",
             "ErrorCode_TlsAlertReceived": "TLS-alert-received", "ErrorCode_HttpRequestUriTooLong":
             "HTTP-request-URI-too-long", "ErrorCode_ConnectionRefused": "connection-refused",
             "ErrorCode_LoopDetected": "loop-detected"}
    for cls, name in names.items():
        assert module._code_name(type(cls, (), {})()) == name
