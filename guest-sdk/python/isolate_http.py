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
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from componentize_py_types import Err, Ok
from wit_world import exports
from wit_world.imports import streams, types

# wasi:io output streams accept at most 4096 bytes per blocking_write_and_flush.
_WRITE_CHUNK = 4096
_READ_CHUNK = 64 * 1024


@dataclass
class Request:
    method: str
    path: str
    """The path with its query string, as the client sent it."""
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str, default: str | None = None) -> str | None:
        """The first value of header `name` (case-insensitive), else `default`."""
        name = name.lower()
        return next((value for key, value in self.headers if key.lower() == name), default)

    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


@dataclass
class Response:
    status: int = 200
    headers: Mapping[str, str] | list[tuple[str, str]] = field(default_factory=dict)
    body: bytes | str = b""


def _method(method: types.Method) -> str:
    if isinstance(method, types.Method_Other):
        return method.value
    return type(method).__name__.removeprefix("Method_").upper()


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
    return b"".join(chunks)


def _respond(out: types.ResponseOutparam, response: Response) -> None:
    pairs = response.headers.items() if isinstance(response.headers, Mapping) else response.headers
    payload = response.body.encode() if isinstance(response.body, str) else bytes(response.body)
    if isinstance(response.body, str) and not any(k.lower() == "content-type" for k, _ in pairs):
        pairs = [*pairs, ("content-type", "text/plain; charset=utf-8")]
    outgoing = types.OutgoingResponse(types.Fields.from_list([(k, v.encode()) for k, v in pairs]))
    outgoing.set_status_code(response.status)
    body = outgoing.body()
    types.ResponseOutparam.set(out, Ok(outgoing))
    with body.write() as stream:  # the stream is a child of the body: dropped before the body is finished
        for start in range(0, len(payload), _WRITE_CHUNK):
            stream.blocking_write_and_flush(payload[start:start + _WRITE_CHUNK])
    types.OutgoingBody.finish(body, None)


def serve(handler: Callable[[Request], Response]) -> type[exports.IncomingHandler]:
    """The `IncomingHandler` class componentize-py exports, calling `handler` once per request."""

    class IncomingHandler(exports.IncomingHandler):
        def handle(self, request: types.IncomingRequest, response_out: types.ResponseOutparam) -> None:
            headers = [(name, value.decode("latin-1")) for name, value in request.headers().entries()]
            response = handler(Request(_method(request.method()), request.path_with_query() or "/", headers,
                                       _read(request)))
            _respond(response_out, response)

    return IncomingHandler
