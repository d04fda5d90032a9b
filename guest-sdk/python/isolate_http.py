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

Outbound HTTP: `fetch(url, method=..., headers=..., body=...)` makes a request through
wasi:http/outgoing-handler (the module's allowed_hosts decide where it may go) and returns the whole
response as a `Response`; a request that gets no response raises `FetchError` with the wasi:http
error-code. It waits on one pollable at a time (`pollable.block()`), never with wasi:io/poll.poll.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import outgoing_handler, streams, types

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
    """A response: the handler's answer, or what `fetch` got (then headers is a list of (name, value)
    pairs as received, and body bytes)."""

    status: int = 200
    headers: Mapping[str, str] | list[tuple[str, str]] = field(default_factory=dict)
    body: bytes | str = b""

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of header `name` (case-insensitive), else `default`."""
        name = name.lower()
        pairs = self.headers.items() if isinstance(self.headers, Mapping) else self.headers
        return next((value for key, value in pairs if key.lower() == name), default)

    def text(self) -> str:
        body = self.body
        return body if isinstance(body, str) else bytes(body).decode("utf-8", "replace")


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


# -- outbound requests -------------------------------------------------------------------------------

_ACRONYMS = frozenset({"dns", "ip", "tls", "http", "uri"})


def _code_name(code: object) -> str:
    """The WIT case name of an error-code value: `ErrorCode_HttpRequestUriInvalid()` -> "HTTP-request-URI-invalid"."""
    camel = type(code).__name__.partition("_")[2] or type(code).__name__
    words: list[str] = []
    for char in camel:
        if char.isupper() or not words:
            words.append(char.lower())
        else:
            words[-1] += char
    return "-".join(word.upper() if word in _ACRONYMS else word for word in words)


class FetchError(Exception):
    """`fetch` got no response. `code` is the wasi:http error-code the host gave (a
    `wit_world.imports.types.ErrorCode_*` value, e.g. `ErrorCode_HttpRequestDenied()` for a host outside
    the module's allowed_hosts; None when there was none), `name` its WIT case name
    ("HTTP-request-denied"; "unknown" without a code)."""

    def __init__(self, url: str, code: types.ErrorCode | None, detail: str | None = None) -> None:
        self.url = url
        self.code = code
        self.name = "unknown" if code is None else _code_name(code)
        payload = getattr(code, "value", None)
        if detail is None and payload is not None:
            detail = str(payload)
        super().__init__(f"fetch {url}: {self.name}" + (f" ({detail})" if detail else ""))


def _split_url(url: str) -> tuple[types.Scheme, str, str]:
    """An absolute http(s) URL's scheme, authority and path with its query (the fragment dropped)."""
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme:
        raise ValueError(f"fetch: not an absolute URL: {url!r}")
    end = len(rest)
    for mark in "/?#":
        found = rest.find(mark)
        if found != -1 and found < end:
            end = found
    authority, path = rest[:end], rest[end:].partition("#")[0]
    if not authority:
        raise ValueError(f"fetch: no host in {url!r}")
    if not path.startswith("/"):
        path = "/" + path
    lowered = scheme.lower()
    variant: types.Scheme = (types.Scheme_Http() if lowered == "http" else types.Scheme_Https() if lowered == "https"
                             else types.Scheme_Other(scheme))
    return variant, authority, path


def _method_variant(method: str) -> types.Method:
    upper = method.upper()
    for variant, name in _METHODS.items():
        if name == upper:
            made: types.Method = variant()
            return made
    return types.Method_Other(method)


def _stream_failure(exc: Err[Any], url: str) -> FetchError:
    """The FetchError for a stream's error (closed, or last-operation-failed with the host's error)."""
    if isinstance(exc.value, streams.StreamError_LastOperationFailed):
        with exc.value.value as failure:  # the error resource: dropped once read
            code = types.http_error_code(failure)
            detail = failure.to_debug_string()
        return FetchError(url, code, detail)
    return FetchError(url, None, "stream closed")


def _write_body(body: types.OutgoingBody, payload: bytes, url: str) -> None:
    """Write a request body through its stream and finish it; on a failed write, drop it and raise."""
    failed: FetchError | None = None
    with body.write() as stream:  # the stream, a child of the body, is dropped before the body is finished
        try:
            for start in range(0, len(payload), _WRITE_CHUNK):
                stream.blocking_write_and_flush(payload[start:start + _WRITE_CHUNK])
        except Err as exc:
            failed = _stream_failure(exc, url)
    if failed is not None:
        body.__exit__(None, None, None)  # dropped unfinished: the request is abandoned
        raise failed
    types.OutgoingBody.finish(body, None)


def _read_body(response: types.IncomingResponse, url: str) -> bytes:
    body = response.consume()
    chunks: list[bytes] = []
    failed: FetchError | None = None
    with body.stream() as stream:  # dropped before the body is finished
        while True:
            try:
                chunks.append(stream.blocking_read(_READ_CHUNK))
            except Err as exc:
                if not isinstance(exc.value, streams.StreamError_Closed):
                    failed = _stream_failure(exc, url)
                break
    if failed is not None:
        body.__exit__(None, None, None)
        raise failed
    with types.IncomingBody.finish(body):  # the trailers' future: not waited for, dropped
        pass
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def fetch(url: str, *, method: str = "GET", headers: Mapping[str, str] | list[tuple[str, str]] | None = None,
          body: bytes | str = b"") -> Response:
    """Make an outbound HTTP request and return its whole response: status, headers as a list of
    (name, value) pairs, body bytes. Only hosts in the module's allowed_hosts are reachable.

    Raises `FetchError` (with the wasi:http error-code) when the request gets no response: a host outside
    the allow-list (HTTP-request-denied), a connection refused, a timeout, a body over a limit, ... A
    response with an error status (404, 503, ...) is a response, not an error; redirects are not followed.
    Raises ValueError for a URL without a scheme or host, or a header, method or authority the host refuses
    (a scheme other than http and https is the host's FetchError HTTP-request-URI-invalid).

    Synchronous: the response is awaited with `pollable.block()` on the one future, not with
    wasi:io/poll.poll (which componentize-py's poll_loop/asyncio helpers use and which the host cannot
    run), and the body is read with blocking reads. A str body is sent UTF-8 encoded."""
    scheme, authority, path = _split_url(url)
    if headers is None:
        pairs: Any = ()
    elif isinstance(headers, Mapping):
        pairs = headers.items()
    else:
        pairs = headers
    try:
        fields = types.Fields.from_list([(name, value.encode()) for name, value in pairs])
    except Err as exc:
        raise ValueError(f"fetch {url}: invalid headers ({_code_name(exc.value)})") from None
    payload = body.encode() if isinstance(body, str) else bytes(body)
    request = types.OutgoingRequest(fields)  # takes the fields
    try:
        if method.upper() != "GET":  # a new outgoing-request's method is GET
            request.set_method(_method_variant(method))
        request.set_scheme(scheme)
        request.set_authority(authority)
        request.set_path_with_query(path)
        outgoing = request.body() if payload else None  # no body at all for an empty one
    except Err:
        request.__exit__(None, None, None)
        raise ValueError(f"fetch {url}: the host refused method {method!r}, scheme or authority") from None
    try:
        future = outgoing_handler.handle(request, None)  # takes the request (the body stays the guest's)
    except Err as exc:
        if outgoing is not None:
            outgoing.__exit__(None, None, None)
        raise FetchError(url, exc.value) from None
    with future:
        if outgoing is not None:
            _write_body(outgoing, payload, url)  # after handle: a streaming host sends it as it is written
        with future.subscribe() as ready:  # a child of the future: dropped first
            ready.block()
        got = future.get()
    if got is None or isinstance(got, Err):  # not ready after block, or taken already: not expected
        raise FetchError(url, None, "the host gave no response after the wait")
    answer = got.value
    if isinstance(answer, Err):
        raise FetchError(url, answer.value)
    with answer.value as response:  # dropped after its headers and body, its children
        status = response.status()
        with response.headers() as received:
            entries = received.entries()
        data = _read_body(response, url)
    return Response(status, [(name, value.decode("latin-1")) for name, value in entries], data)


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
