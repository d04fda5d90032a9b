"""isolate's Python guest SDK: a wasi:http/proxy handler written as a function from a whole request to a response.

`isolate build` runs componentize-py with this directory on the Python path and the world
`isolate:guest/guest` (wasi:http/proxy plus wasi:cli/environment), whose bindings are the `wit_world`
package imported below. The module's variables are in os.environ (componentize-py fills it from
wasi:cli/environment when an instance starts, not at build time). An app module does:

    from isolate_http import Request, Response, serve

    def handle(request: Request) -> Response:
        return Response(200, {"content-type": "text/plain"}, "hello\\n")

    IncomingHandler = serve(handle)   # the class componentize-py looks for in the app module

An exception the handler raises escapes: componentize-py prints its traceback to stderr (which the host
keeps in the request's diagnostic) and traps, so the host answers 500.

Cost: every instance serves one request and starts from the build-time snapshot, so what a request
touches is paid for on every request (each host call, each resource object and its finalizer, each page
of the interpreter's heap written). The request handed to the handler therefore asks the host for a
part (method, path, headers, body) only when the handler first reads it, and the response makes no call
it can do without.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import streams, types

# wasi:io output streams accept at most 4096 bytes per blocking_write_and_flush.
_WRITE_CHUNK = 4096
_READ_CHUNK = 64 * 1024
_UNSET: Any = object()
"""A part of a request not read from the host yet."""

_METHODS: dict[type, str] = {
    types.Method_Get: "GET", types.Method_Head: "HEAD", types.Method_Post: "POST", types.Method_Put: "PUT",
    types.Method_Delete: "DELETE", types.Method_Connect: "CONNECT", types.Method_Options: "OPTIONS",
    types.Method_Trace: "TRACE", types.Method_Patch: "PATCH",
}


@dataclass(init=False)
class Request:
    """The request: `Request(method, path, headers, body)`. The one `serve` hands a handler reads each
    part from the host when first used (all of it is there: the body is read whole)."""

    method: str
    path: str
    """The path with its query string, as the client sent it."""
    headers: list[tuple[str, str]]
    body: bytes

    def __init__(self, method: str, path: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self._incoming: types.IncomingRequest | None = None
        self.method = method
        self.path = path
        self.headers = headers
        self.body = body

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of header `name` (case-insensitive), else `default`."""
        name = name.lower()
        return next((value for key, value in self.headers if key.lower() == name), default)

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def _part(name: str, read: Callable[[types.IncomingRequest], Any]) -> property:
    """A field of Request that, on a request from the host, asks the host for it on first use."""
    slot = "_" + name

    def get(self: Request) -> Any:
        value = self.__dict__.get(slot, _UNSET)
        if value is _UNSET:
            incoming = self._incoming
            if incoming is None:
                raise AttributeError(name)
            value = self.__dict__[slot] = read(incoming)
        return value

    def set_(self: Request, value: Any) -> None:
        self.__dict__[slot] = value

    return property(get, set_, doc=f"The request's {name}.")


def _method(request: types.IncomingRequest) -> str:
    method = request.method()
    name = _METHODS.get(type(method))
    if name is not None:
        return name
    if isinstance(method, types.Method_Other):
        return str(method.value)
    return type(method).__name__.removeprefix("Method_").upper()


def _path(request: types.IncomingRequest) -> str:
    return request.path_with_query() or "/"


def _headers(request: types.IncomingRequest) -> list[tuple[str, str]]:
    with request.headers() as fields:  # dropped now: the entries are copies
        entries = fields.entries()
    return [(name, value.decode("latin-1")) for name, value in entries]


def _read(request: types.IncomingRequest) -> bytes:
    body = request.consume()
    chunks: list[bytes] = []
    with body.stream() as stream:
        while True:
            try:
                chunks.append(stream.blocking_read(_READ_CHUNK))
            except Err as exc:
                if isinstance(exc.value, streams.StreamError_Closed):
                    break
                raise
    types.IncomingBody.finish(body)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


# After the dataclass is made (it would take a property for a default): each field reads the host lazily.
Request.method = _part("method", _method)  # type: ignore[assignment]
Request.path = _part("path", _path)  # type: ignore[assignment]
Request.headers = _part("headers", _headers)  # type: ignore[assignment]
Request.body = _part("body", _read)  # type: ignore[assignment]


def _incoming(request: types.IncomingRequest) -> Request:
    made = Request.__new__(Request)
    made._incoming = request
    return made


@dataclass
class Response:
    status: int = 200
    headers: Mapping[str, str] | list[tuple[str, str]] = field(default_factory=dict)
    body: bytes | str = b""


def _encode(response: Response) -> tuple[int, list[tuple[str, bytes]], bytes]:
    """The response's status, header entries and body as the host takes them (no host call)."""
    headers = response.headers
    # A dict or a list is told apart without the Mapping ABC: its isinstance runs Python code (abc's
    # __instancecheck__ and __subclasshook__) on every request, its caches being the snapshot's.
    if type(headers) is dict:
        pairs: Any = headers.items()
    elif type(headers) is list or not isinstance(headers, Mapping):
        pairs = headers
    else:
        pairs = headers.items()
    entries = [(k, v.encode()) for k, v in pairs]
    body = response.body
    if isinstance(body, str):
        payload = body.encode()
        for k, _ in entries:
            if k.lower() == "content-type":
                break
        else:
            entries.append(("content-type", b"text/plain; charset=utf-8"))
    else:
        payload = bytes(body)
    return response.status, entries, payload


def _respond(out: types.ResponseOutparam, response: Response) -> None:
    status, entries, payload = _encode(response)
    outgoing = types.OutgoingResponse(types.Fields.from_list(entries))
    if status != 200:  # a new outgoing-response's status is 200
        outgoing.set_status_code(status)
    body = outgoing.body()
    types.ResponseOutparam.set(out, Ok(outgoing))
    if payload:
        with body.write() as stream:  # the stream is a child of the body: dropped before the body is finished
            if len(payload) <= _WRITE_CHUNK:
                stream.blocking_write_and_flush(payload)
            else:
                for start in range(0, len(payload), _WRITE_CHUNK):
                    stream.blocking_write_and_flush(payload[start:start + _WRITE_CHUNK])
    types.OutgoingBody.finish(body, None)


def _warm() -> None:
    """Run, at build time, the pure-Python steps every request takes (none may call the host then), so
    that the snapshot holds them warm: their bytecode specialised, their attribute lookups in the type
    cache. A fresh instance then writes fewer pages of the snapshot, and each page written is a fault and
    a 4 KiB copy in the host (measured: ~0.3 ms less per request for the hello sample)."""
    import os
    import random
    import weakref

    class Probe:
        pass

    for _ in range(4):
        # What componentize-py does when an instance first runs: os.environ and random.seed() (environ is
        # emptied again after the app's import, at build time).
        os.environ["ISOLATE_HTTP_WARM"] = "1"
        os.environ.get("ISOLATE_HTTP_WARM")
        del os.environ["ISOLATE_HTTP_WARM"]
        os.environ.get("ISOLATE_HTTP_WARM", "")
        random.seed()
        # ... and for every resource handle and result.
        weakref.finalize(Probe(), int).detach()
        Ok(None), Err(None)
        request = Request("GET", "/", [("content-type", "text/plain")], b"")
        request.method, request.path, request.body, request.header("content-type"), request.text()
        _encode(Response(200, {"content-type": "text/plain"}, "warm"))
        _encode(Response(404, [("content-type", "text/plain")], b"warm"))
        _encode(Response(200, {}, "warm"))


def serve(handler: Callable[[Request], Response]) -> type[exports.IncomingHandler]:
    """The `IncomingHandler` class componentize-py exports, calling `handler` once per request."""
    _warm()

    class IncomingHandler(exports.IncomingHandler):
        def handle(self, request: types.IncomingRequest, response_out: types.ResponseOutparam) -> None:
            _respond(response_out, handler(_incoming(request)))

    return IncomingHandler
