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


class Host:
    """The fake host: its log of calls, the request it holds and the response it was given."""

    def __init__(self, method: Any, path: str | None, headers: list[tuple[str, bytes]], body: bytes) -> None:
        self.calls: list[str] = []
        self.method, self.path, self.headers, self.body = method, path, headers, body
        self.response: Any = None
        self.written = bytearray()
        self.writes: list[int] = []


def _bindings(host_ref: list[Host]) -> dict[str, pytypes.ModuleType]:
    def log(name: str) -> None:
        host_ref[0].calls.append(name)

    class Resource:
        def __enter__(self) -> Any:
            return self

        def __exit__(self, *exc: object) -> None:
            log(f"drop {type(self).__name__}")

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

    class InputStream(Resource):
        def __init__(self, data: bytes) -> None:
            self.data = data

        def blocking_read(self, size: int) -> bytes:
            log("input-stream.blocking-read")
            if not self.data:
                raise Err(StreamErrorClosed())
            chunk, self.data = self.data[:size], self.data[size:]
            return chunk

    class IncomingBody(Resource):
        def stream(self) -> InputStream:
            log("incoming-body.stream")
            return InputStream(host_ref[0].body)

        @staticmethod
        def finish(body: IncomingBody) -> None:
            log("incoming-body.finish")

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
                OutgoingResponse, ResponseOutparam):
        setattr(types_module, cls.__name__, cls)
    for name in ("Head", "Put", "Delete", "Connect", "Options", "Trace", "Patch"):
        setattr(types_module, f"Method_{name}", type(f"Method_{name}", (), {}))
    streams_module = pytypes.ModuleType("wit_world.imports.streams")
    streams_module.StreamError_Closed = StreamErrorClosed  # type: ignore[attr-defined]
    streams_module.InputStream = InputStream  # type: ignore[attr-defined]
    streams_module.OutputStream = OutputStream  # type: ignore[attr-defined]
    exports_module = pytypes.ModuleType("wit_world.exports")
    exports_module.IncomingHandler = IncomingHandler  # type: ignore[attr-defined]
    imports_module = pytypes.ModuleType("wit_world.imports")
    imports_module.types = types_module  # type: ignore[attr-defined]
    imports_module.streams = streams_module  # type: ignore[attr-defined]
    world = pytypes.ModuleType("wit_world")
    world.exports = exports_module  # type: ignore[attr-defined]
    world.imports = imports_module  # type: ignore[attr-defined]
    results = pytypes.ModuleType("componentize_py_types")
    results.Ok, results.Err = Ok, Err  # type: ignore[attr-defined]
    return {"wit_world": world, "wit_world.exports": exports_module, "wit_world.imports": imports_module,
            "wit_world.imports.types": types_module, "wit_world.imports.streams": streams_module,
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
