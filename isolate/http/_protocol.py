"""The HTTP/1.1 protocol of both listeners: uvicorn's httptools protocol, with request heads bounded and timed."""

from __future__ import annotations

import asyncio
import logging
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import httptools
from httptools.parser.url_parser import URL
from uvicorn._types import ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.config import Config as UvicornConfig
from uvicorn.protocols.http.flow_control import HIGH_WATER_LIMIT
from uvicorn.protocols.http.httptools_impl import (
    HEADER_RE,
    HEADER_VALUE_RE,
    STATUS_LINE,
    HttpToolsProtocol,
    RequestResponseCycle,
)
from uvicorn.protocols.utils import get_client_addr, get_path_with_query_string
from uvicorn.server import ServerState

from ..errors import (
    HeadersTooLarge,
    InternalError,
    InvalidRequest,
    IsolateError,
    Overloaded,
    RequestTimeout,
    UriTooLong,
)
from ._errors import Reply, new_request_id, raw_response, render, request_id_of, send_error

try:  # the same head in one C call (built by `pip install`; without a compiler, `_head` alone serves)
    from . import _framing  # type: ignore[attr-defined]
except ImportError:
    _framing = None

log = logging.getLogger("isolate.server")

MIN_BODY_RATE = 1024  # bytes/s a request body must average once `head_timeout` has passed (a trickle is a 408)
_REQUEST_LINE = 64  # bytes of a head besides the URL and the header fields: method, version, CRLFs
# What an RFC 3986 authority without userinfo is made of (reg-name or IP-literal, and a port): no
# whitespace, `/`, `?`, `#`, `@`, controls or non-ASCII, which could make routing and the guest disagree.
_HOST_CHARS = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz.-_~!$&'()*+,;=%:[]"
_DEFAULT_PORTS = {b"http": b":80", b"https": b":443"}
_CLOSE = (b"connection", b"close")
_JOIN_LIMIT = 16384  # body bytes copied behind a head into one buffer; larger bodies go by writev
_MAX_HELD = 32  # answers made at once and held for one flush; later pipelined requests of that read wait


class _Refusal(Exception):
    """Raised in a parser callback to stop parsing; `data_received` answers `error` and closes."""

    def __init__(self, error: IsolateError) -> None:
        super().__init__(error.detail)
        self.error = error


@dataclass(frozen=True)
class ListenerStatistics:
    name: str
    connections: int
    max_connections: int
    refused: int
    """Connections answered 503 at the cap."""
    timed_out: int
    """Heads not complete within head_timeout (answered 408)."""
    rejected: int
    """Requests refused below the app: malformed, too large, bad framing."""


class Listener:
    """One listener's bounds and open connections; uvicorn instantiates `self.protocol` per connection."""

    def __init__(self, name: str, *, max_connections: int, max_header_size: int, max_url_length: int,
                 head_timeout: float) -> None:
        if min(max_connections, max_header_size, max_url_length) < 1 or not head_timeout > 0:
            raise ValueError("listener bounds must be positive")
        self.name = name
        self.max_connections = max_connections
        self.max_header_size = max_header_size
        self.max_url_length = max_url_length
        self.head_timeout = head_timeout
        self.connections: set[HttpProtocol] = set()
        self.refused = self.timed_out = self.rejected = 0
        self._sweep_every = min(1.0, head_timeout / 4)
        self._timer: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._full = False
        self._corked: list[HttpProtocol] = []  # connections with answers to write at the next flush

        class Protocol(HttpProtocol):
            pass

        Protocol.listener = self
        self.protocol: type[HttpProtocol] = Protocol

    def statistics(self) -> ListenerStatistics:
        return ListenerStatistics(self.name, len(self.connections), self.max_connections, self.refused,
                                  self.timed_out, self.rejected)

    def admit(self, protocol: HttpProtocol, loop: asyncio.AbstractEventLoop) -> bool:
        """Count a new connection in, or False when the listener is at its cap."""
        if len(self.connections) >= self.max_connections:
            self.refused += 1
            if not self._full:  # once per episode, not once per refused connection
                self._full = True
                log.warning("%s listener at its cap of %d connections: new ones get 503 until some close",
                            self.name, self.max_connections)
            return False
        self.connections.add(protocol)
        if self._timer is None or self._loop is not loop:
            self._loop = loop
            self._timer = loop.call_later(self._sweep_every, self._sweep)
        return True

    def cork(self, protocol: HttpProtocol) -> None:
        """Write `protocol`'s held answers once the loop has run what is ready now (see `HttpProtocol`)."""
        if not self._corked:
            protocol.loop.call_soon(self._flush)
        self._corked.append(protocol)

    def _flush(self) -> None:
        corked, self._corked = self._corked, []
        for protocol in corked:
            protocol.flush()

    def _sweep(self) -> None:
        loop = self._loop
        assert loop is not None
        now = loop.time()
        for protocol in list(self.connections):
            protocol.check_deadlines(now)
        if self._full and len(self.connections) < self.max_connections:
            self._full = False
        self._timer = loop.call_later(self._sweep_every, self._sweep) if self.connections else None


class _CycleTransport:
    """The transport as a request/response cycle sees it: through its connection, so that answers
    held back for the next flush (`HttpProtocol.answer`) go out before anything written or closed
    later (uvicorn's cycle closes the transport itself when an app fails after answering)."""

    __slots__ = ("_conn",)

    def __init__(self, conn: HttpProtocol) -> None:
        self._conn = conn

    def write(self, data: bytes) -> None:
        self._conn.write(data)

    def close(self) -> None:
        self._conn.flush()
        self._conn.transport.close()

    def is_closing(self) -> bool:
        return self._conn.transport.is_closing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn.transport, name)


def _head(status_code: int, headers: Any) -> tuple[list[bytes], int | None, bool, bool]:
    """The status line and header lines of an answer, checked as uvicorn checks them: (its lines, the
    Content-Length or None, whether Transfer-Encoding is chunked, whether Connection says close).

    Header names and values are checked with one regex search for all names and one for all values
    (each pattern is a character class, so a search over the concatenation finds a forbidden
    character exactly when one of the parts has it). `_framing.head` makes the same head in C
    (its lines as one bytes) and leaves to this code every head it would refuse or finds unusual.
    """
    if _framing is not None:
        made: tuple[list[bytes], int | None, bool, bool] | None = _framing.head(STATUS_LINE[status_code], headers)
        if made is not None:
            return made
    content = [STATUS_LINE[status_code]]
    names = []
    values = []
    length: int | None = None
    chunked = close = False
    for name, value in headers:
        names.append(name)
        values.append(value)
        name = name.lower()
        if name == b"content-length":
            if length is None:
                length = int(value.decode())
        elif name == b"transfer-encoding" and value.lower() == b"chunked":
            chunked = True
        elif name == b"connection":
            if b"close" in [token.lower().strip() for token in value.split(b",")]:
                close = True
        content.extend((name, b": ", value, b"\r\n"))
    if HEADER_RE.search(b"".join(names)):
        raise RuntimeError("Invalid HTTP header name.")
    if HEADER_VALUE_RE.search(b"".join(values)):
        raise RuntimeError("Invalid HTTP header value.")
    return content, length, chunked, close


class _Cycle(RequestResponseCycle):
    """uvicorn's request/response cycle, with its 500 (app raised, or returned without answering) as
    JSON, and one write per response where uvicorn makes two.

    A head that declares its Content-Length is held until the first body message and written with
    it: one syscall and one TCP segment instead of two (on loopback, each write also runs the
    receiver's TCP path). A head without a length (chunked, a stream) is written at once as before.
    `_head` makes the head and checks its fields as uvicorn does.
    """

    conn: HttpProtocol  # the connection: every write goes through it, in order
    _head: bytes | None = None  # a written-with-the-body head, until the first body message

    async def send(self, message: Any) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got '{message['type']}'.")
            self.response_started = True
            self.waiting_for_100_continue = False
            status_code = message["status"]
            headers = message.get("headers", ())
            if self.default_headers:
                headers = [*self.default_headers, *headers]
            if self.access_log:
                self.access_logger.info('%s - "%s %s HTTP/%s" %d', get_client_addr(self.scope), self.scope["method"],
                                        get_path_with_query_string(self.scope), self.scope["http_version"],
                                        status_code)
            content, length, chunked, has_connection_close = _head(status_code, headers)
            if chunked:
                self.expected_content_length = 0
                self.chunked_encoding = True
            elif length is not None:
                self.expected_content_length = length
                self.chunked_encoding = False
            if has_connection_close:
                self.keep_alive = False
            if not self.keep_alive and not has_connection_close:
                content.append(b"connection: close\r\n")
            if self.chunked_encoding is None and self.scope["method"] != "HEAD" and status_code not in (204, 304):
                self.chunked_encoding = True
                content.append(b"transfer-encoding: chunked\r\n")
            content.append(b"\r\n")
            if self.chunked_encoding is False:
                self._head = b"".join(content)  # written with the body, which follows at once
            else:
                self.conn.write(b"".join(content))
        elif not self.response_complete:
            if message["type"] != "http.response.body":
                raise RuntimeError(f"Expected ASGI message 'http.response.body', but got '{message['type']}'.")
            body = message.get("body", b"")
            more_body = message.get("more_body", False)
            head = self._head
            if head is not None:
                self._head = None
            if self.scope["method"] == "HEAD":
                self.expected_content_length = 0
                if head is not None and not more_body:
                    self.conn.answer(head)
                elif head is not None:
                    self.conn.write(head)
            elif self.chunked_encoding:
                content = [b"%x\r\n" % len(body), body, b"\r\n"] if body else []
                if not more_body:
                    content.append(b"0\r\n\r\n")
                self.conn.write(b"".join(content))
            else:
                if len(body) > self.expected_content_length:
                    raise RuntimeError("Response content longer than Content-Length")
                self.expected_content_length -= len(body)
                if head is None:
                    self.conn.write(body)
                elif len(body) > _JOIN_LIMIT:
                    self.conn.write(head, body)  # one writev, no copy of a large body
                elif more_body:
                    self.conn.write(head + body)
                else:
                    self.conn.answer(head + body)
            if not more_body:
                if self.expected_content_length != 0:
                    raise RuntimeError("Response content shorter than Content-Length")
                self.response_complete = True
                self.message_event.set()
                if not self.keep_alive:
                    self.transport.close()  # the connection's: what it holds is written first
                self.on_response()
        else:
            raise RuntimeError(f"Unexpected ASGI message '{message['type']}' sent, after response already completed.")

    async def send_500_response(self) -> None:
        error = InternalError("internal error: the application failed; the server log has the traceback")
        await send_error(self.send, error, request_id_of(self.scope["headers"]),
                         head_only=self.scope["method"] == "HEAD", extra=[_CLOSE])


async def _overloaded(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    """Stands in for the app when uvicorn's `limit_concurrency` is reached."""
    assert scope["type"] == "http"
    await send_error(send, Overloaded("too many requests in progress; retry"), request_id_of(scope["headers"]),
                     head_only=scope["method"] == "HEAD", extra=[_CLOSE])


class HttpProtocol(HttpToolsProtocol):
    """One connection; use a `Listener`'s `protocol`, which carries the bounds and counts connections.

    What it adds to `uvicorn.protocols.http.httptools_impl.HttpToolsProtocol`, all in parser callbacks
    so the cost per request is a few comparisons (httptools is kept: h11 is several times slower):

    - A request head is bounded while it arrives: the URL by `max_url_length` (414 `uri_too_long`, as
      soon as that many bytes of it came), header fields by `max_header_size` (431 `headers_too_large`),
      and the raw bytes the parser may hold for one head by their sum plus a little (431), which also
      bounds a header line that never ends. Chunk extensions and trailers get the same raw bound;
      trailer fields are dropped, never merged into the headers the app already has.
    - A head must be complete within `head_timeout` of the connection becoming ready for it (accepted,
      or the previous answer sent): 408 `request_timeout` if part of it came, else the connection is
      just closed. A body being read that stalls that long is a 408 too (slow POST), and so is one
      that, past `head_timeout`, averages under `MIN_BODY_RATE` (1 KiB/s: a trickle). Idle keep-alive
      connections close after uvicorn's `timeout_keep_alive` (or `head_timeout` if shorter). One timer
      per listener sweeps the connections, none per request.
    - Each listener caps its open connections: the one over the cap is answered 503 `overloaded` at
      once (before reading anything) and closed. Edge and admin listeners count apart.
    - Framing: HTTP/1.1 needs exactly one Host, HTTP/1.0 at most one; a Host holds only authority
      characters and equals the target's authority in absolute form; Transfer-Encoding in HTTP/1.0,
      other HTTP versions and upgrades (WebSocket, h2c, CONNECT) are refused or closed after their
      answer, so bytes after them are never read as another request. httptools (llhttp, strict mode)
      rejects the classic smuggling shapes itself: Content-Length with Transfer-Encoding, duplicate
      Content-Length, obs-fold, bare LF or CR, whitespace before a colon.
    - Every error, including uvicorn's own (malformed HTTP, its 500 on an app exception and its 503 on
      `limit_concurrency`), is the JSON diagnostic of `_errors`.
    - Answers are written in one piece (head and body, `_Cycle`), and while other requests of the
      listener are in progress, at the end of the loop iteration (`answer`): the answers of a batch
      of requests then leave together. On loopback each write also runs the reader's TCP receive
      path and wakes it; written one by one as they are made, a busy client is woken once per answer
      (a cross-CPU wakeup is most of a write's cost on a VM), written together, once per batch. An
      answer waits for at most the rest of the iteration; a lone request is answered at once.
    """

    listener: ClassVar[Listener]

    def __init__(self, config: UvicornConfig, server_state: ServerState, app_state: dict[str, Any],
                 _loop: asyncio.AbstractEventLoop | None = None) -> None:
        super().__init__(config, server_state, app_state, _loop)
        listener = self.listener
        self._max_url = listener.max_url_length
        self._max_header = listener.max_header_size
        self._budget = listener.max_url_length + listener.max_header_size + _REQUEST_LINE
        self._room = self._budget  # raw bytes the parser may still take for the current head
        self._slack = 0  # body-phase bytes not yet delivered as body: chunk framing and trailers
        self._reading_head = True  # the parser is between messages or in a head, not in a body
        self._in_head = False  # a head has begun and is not complete
        self._busy = False  # a request is being answered (or queued behind a pipelined one)
        self._served = False  # a response was sent: idle time is keep-alive from now on
        self._since = 0.0  # when the connection became ready for the current head
        self._body_started = 0.0  # when the current body began (or the server last held it back)
        self._body_bytes = 0  # body bytes since then
        self._heads = 0
        self._header_bytes = 0
        self._hosts = 0
        self._host = b""
        self._transfer_encoding = False
        self._has_body = False  # the head declares a Content-Length other than 0
        # The app's synchronous entry (`EdgeApp.answer_now`), for requests without a body; None: ASGI only.
        self._answer_now: Callable[[Any], Reply | None] | None = getattr(self.app, "answer_now", None)
        self._refused = False  # turned away at the cap: never set up
        self._closing = False  # an error answer is written or due: further bytes are dropped
        self._pending: bytes | None = None  # that answer, when earlier pipelined answers go first
        self._out: list[bytes] | None = None  # answers held for the listener's next flush (`answer`)
        self._cycle_transport = _CycleTransport(self)

    # Connection

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if not self.listener.admit(self, self.loop):
            self._refused = True
            transport.write(raw_response(Overloaded(
                f"the {self.listener.name} listener has its limit of {self.listener.max_connections} "
                "connections open; retry", limit=self.listener.max_connections)))
            transport.close()
            return
        super().connection_made(transport)
        self._since = self.loop.time()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._refused:
            return
        self._out = None
        self.listener.connections.discard(self)
        super().connection_lost(exc)

    def shutdown(self) -> None:
        self.flush()
        super().shutdown()

    # Writing answers

    def answer(self, data: bytes, hold: bool = False) -> None:
        """Write a whole answer: now if this is the listener's only request in progress and `hold` is
        not set, else at its next flush, which runs once the loop has run what is ready now (one per
        iteration)."""
        out = self._out
        if out is not None:
            out.append(data)
        elif hold or len(self.tasks) > 1:
            self._out = [data]
            self.listener.cork(self)
        else:
            self.transport.write(data)

    def write(self, *data: bytes) -> None:
        """Write now, after whatever this connection holds."""
        if self._out is not None:
            self.flush()
        if len(data) == 1:
            self.transport.write(data[0])
        else:
            self.transport.writelines(data)

    def flush(self) -> None:
        out = self._out
        if out is not None:
            self._out = None
            if not self.transport.is_closing():
                if len(out) == 1:
                    self.transport.write(out[0])
                else:
                    self.transport.writelines(out)

    def data_received(self, data: bytes) -> None:
        if self._closing or self._refused:
            return
        if not self._reading_head:
            self._feed_body(data)
        elif len(data) <= self._room:
            self._room -= len(data)
            try:
                self.parser.feed_data(data)
            except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
                self._parse_failed(exc)
        else:
            self._feed_bounded(memoryview(data))

    def _feed(self, data: bytes | memoryview) -> None:
        try:
            self.parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            self._parse_failed(exc)

    def _feed_body(self, data: bytes | memoryview) -> None:
        # Body bytes leave the parser as on_body (uvicorn's flow control bounds those); what does not
        # (chunk framing, extensions, trailers, which httptools buffers) is bounded like a head.
        self._slack += len(data)
        self._feed(data)
        if self._slack > self._budget and not self._reading_head:
            self._refuse(HeadersTooLarge(f"chunk extensions or trailers over {self._budget} bytes",
                                         limit=self._budget), request_id_of(self.headers))

    def _feed_bounded(self, data: memoryview) -> None:
        """Feed a read larger than what is left for the current head, one head at a time."""
        while data and not self._closing:  # each round takes >= 1 byte, or refuses and ends
            if not self._reading_head:
                self._feed_body(data)
                return
            room = self._room
            if len(data) <= room:
                self._room = room - len(data)
                self._feed(data)
                return
            heads = self._heads
            self._feed(data[:room])
            if self._closing:
                return
            if self._heads == heads:  # that much and still no end of the head
                self._refuse(HeadersTooLarge(
                    f"request head not complete after {self._budget} bytes (header fields may take "
                    f"{self._max_header}, the URL {self._max_url})", limit=self._max_header),
                    request_id_of(self.headers or ()))
                return
            data = data[room:]

    def _parse_failed(self, exc: Exception) -> None:
        if isinstance(exc, httptools.HttpParserUpgrade):
            # No upgrade is supported: the request was answered as plain HTTP; whatever follows its
            # head belongs to another protocol, so it is never parsed as a request (h2c smuggling).
            self._closing = True
            if self.cycle is not None and not self.cycle.response_complete:
                self.cycle.keep_alive = False
            else:
                self.flush()
                self.transport.close()
            return
        cause = exc.__context__
        error = cause.error if isinstance(cause, _Refusal) else InvalidRequest(f"malformed HTTP request: {exc}")
        self._refuse(error, request_id_of(self.headers or ()))

    def _refuse(self, error: IsolateError, request_id: str | None = None) -> None:
        """Answer `error` and close; after the answers to earlier pipelined requests, if any are due."""
        if self._closing:
            return
        self._closing = True
        if isinstance(error, RequestTimeout):
            self.listener.timed_out += 1
        else:
            self.listener.rejected += 1
        log.debug("%s listener: %s %s", self.listener.name, error.kind, error.detail)
        response = raw_response(error, request_id or new_request_id())
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            if self._reading_head:  # the error is in a later request: written once the earlier are answered
                self._pending = response
                return
            if self.pipeline and self.pipeline[0][0] is cycle:  # in the body of a request not started yet
                self.pipeline.popleft()
                self._pending = response
                return
            # The error is in the body of the request being answered: its app sees the client gone.
            cycle.disconnected = True
            cycle.message_event.set()
            if cycle.response_started:
                self.flush()
                self.transport.close()
                return
        self.write(response)
        self.transport.close()

    def check_deadlines(self, now: float) -> None:
        """Called by the listener's sweep: head_timeout for heads and stalled bodies, keep-alive idle time."""
        if self._closing or self.transport.is_closing():
            return
        timeout = self.listener.head_timeout
        if self._in_head:
            if now - self._since > timeout:
                self._refuse(RequestTimeout(f"request head not complete within {timeout:g} s", limit=timeout),
                             request_id_of(self.headers))
        elif not self._busy:
            if now - self._since > (min(timeout, self.timeout_keep_alive) if self._served else timeout):
                self.flush()
                self.transport.close()  # nothing of a request came: no answer is owed
        elif not self._reading_head:  # in a body: its bytes must keep coming while it is read
            if self.flow.read_paused or self.cycle.waiting_for_100_continue:
                # The server holds the client back, not the other way round: the clocks start again.
                self._since = self._body_started = now
                self._body_bytes = 0
            elif now - self._since > timeout:
                self._refuse(RequestTimeout(f"request body stalled for {timeout:g} s", limit=timeout),
                             request_id_of(self.headers))
            elif now - self._body_started > timeout + self._body_bytes / MIN_BODY_RATE:
                # Bytes that keep coming, too slowly (one a second): a held connection all the same.
                self._refuse(RequestTimeout(f"request body arriving slower than {MIN_BODY_RATE} bytes/s",
                                            limit=timeout, min_rate=MIN_BODY_RATE), request_id_of(self.headers))

    # Parser callbacks: uvicorn's, inlined (they run for every request) with the checks added.

    def on_message_begin(self) -> None:
        self.url = b""
        self.expect_100_continue = False
        self.headers = []
        self.scope = {  # type: ignore[typeddict-item]
            "type": "http",
            "asgi": {"version": self.asgi_version, "spec_version": "2.3"},
            "http_version": "1.1",
            "server": self.server,
            "client": self.client,
            "scheme": self.scheme,  # type: ignore[typeddict-item]
            "root_path": self.root_path,
            "headers": self.headers,
            "state": self.app_state.copy(),
        }
        self._in_head = True
        if self._busy:  # a pipelined head: its deadline runs from when it began
            self._since = self.loop.time()
        self._header_bytes = self._hosts = 0
        self._transfer_encoding = self._has_body = False

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self._max_url:
            raise _Refusal(UriTooLong(f"URL longer than {self._max_url} bytes", limit=self._max_url))

    def on_header(self, name: bytes, value: bytes) -> None:
        # Sizes are checked once the head is complete; until then the raw budget bounds memory.
        if not self._in_head:
            return  # a trailer field (chunked body): dropped, the app has the headers already
        self._header_bytes += len(name) + len(value) + 4
        name = name.lower()
        if name == b"host":
            self._hosts += 1
            self._host = value
        elif name == b"expect":
            self.expect_100_continue = value.lower() == b"100-continue"
        elif name == b"transfer-encoding":
            self._transfer_encoding = True
        elif name == b"content-length":
            self._has_body = value != b"0"
        self.headers.append((name, value))

    def on_headers_complete(self) -> None:
        parser = self.parser
        version = parser.get_http_version()
        url = self.url
        if (self._header_bytes > self._max_header or version != "1.1" or self._hosts != 1
                or self._host.translate(None, _HOST_CHARS) or url[:1] != b"/"):
            target = self._check_head(version, url)  # raises unless an unusual but valid head
        else:
            try:
                target = httptools.parse_url(url)
            except httptools.HttpParserInvalidURLError:
                raise _Refusal(InvalidRequest("malformed request target")) from None
        self._in_head = self._reading_head = False
        self._busy = True
        self._heads += 1
        self._slack = 0
        self._since = self._body_started = self.loop.time()  # from here, when the body last made progress
        self._body_bytes = 0
        self.scope["method"] = parser.get_method().decode("ascii")
        if version != "1.1":
            self.scope["http_version"] = version
        raw_path = target.path or b"/"
        path = raw_path.decode("ascii")  # llhttp allows only ASCII in a target
        if "%" in path:
            path = urllib.parse.unquote(path)
        self.scope["path"] = self.root_path + path
        self.scope["raw_path"] = self.root_path.encode("ascii") + raw_path if self.root_path else raw_path
        self.scope["query_string"] = target.query or b""

        app = self.app
        if self.limit_concurrency is not None and (
            len(self.connections) >= self.limit_concurrency or len(self.tasks) >= self.limit_concurrency
        ):
            app = _overloaded
        existing_cycle = self.cycle
        keep_alive = version != "1.0" and parser.should_keep_alive()
        idle = existing_cycle is None or existing_cycle.response_complete
        # Not for an upgrade (the connection closes after its answer, which must say so), nor while the
        # client is not reading its answers (back-pressure, as `_Cycle.send` waits on it), nor past
        # _MAX_HELD answers held for this iteration's flush (one read of pipelined requests).
        if (idle and keep_alive and self._answer_now is not None and app is self.app and not self._has_body
                and not self._transfer_encoding and not parser.should_upgrade() and not self.flow.write_paused
                and (self._out is None or len(self._out) < _MAX_HELD) and self._answered_now()):
            return
        self.cycle = _Cycle(
            scope=self.scope,
            transport=self._cycle_transport,  # type: ignore[arg-type]
            flow=self.flow,
            logger=self.logger,
            access_logger=self.access_logger,
            access_log=self.access_log,
            default_headers=self.server_state.default_headers,
            message_event=asyncio.Event(),
            expect_100_continue=self.expect_100_continue,
            keep_alive=keep_alive,
            on_response=self.on_response_complete,
        )
        self.cycle.conn = self
        if existing_cycle is None or existing_cycle.response_complete:
            self._start_asgi_task(self.cycle, app)
        else:  # pipelined: answered in order
            self.flow.pause_reading()
            self.pipeline.appendleft((self.cycle, app))

    def _answered_now(self) -> bool:
        """Answer a request without a body through the app's `answer_now`, if it can answer at once;
        False: it could not, and the request becomes an ASGI cycle (a Task) as usual.

        Such a request is complete once its head is, so the answer is written before the parser
        moves on. It is framed as `_Cycle` frames an answer (`_head`, the server's default headers
        first), and a failure of the app is uvicorn's 500, as for a Task that raises.
        """
        assert self._answer_now is not None
        scope = self.scope
        try:
            reply = self._answer_now(scope)
            if reply is None:
                return False
            status, headers, body = reply
            default = self.server_state.default_headers
            content, length, chunked, close = _head(status, [*default, *headers] if default else headers)
            if chunked or close or not (length == len(body) or not body and (
                    scope["method"] == "HEAD" or length is None and status in (204, 304))):
                raise RuntimeError("answer_now gave an answer that is not framed by its Content-Length")
        except Exception:
            # As uvicorn answers an app that raised (`_Cycle.send_500_response`): a 500 that closes the
            # connection; and nothing read after it is run (the parser stops here).
            self.logger.error("Exception in ASGI application\n", exc_info=True)
            error = InternalError("internal error: the application failed; the server log has the traceback")
            status, headers, body = render(error, request_id_of(self.headers), head_only=scope["method"] == "HEAD",
                                           extra=[_CLOSE])
            content = _head(status, headers)[0]
            content.append(b"\r\n")
            self._closing = True
            self.write(b"".join(content) + body)
            self.transport.close()
            raise _Refusal(error) from None  # `_refuse` then does nothing more: the connection is closing
        content.append(b"\r\n")
        if body:
            content.append(body)
        # Held to the end of the iteration: the loop may be about to read other connections' requests,
        # whose answers then leave together (see the class doc); a lone one waits a few µs.
        self.answer(b"".join(content), hold=True)
        self.on_response_complete()
        return True

    def _check_head(self, version: str, url: bytes) -> URL:
        """The slow path of on_headers_complete: the error in a head, or its target if it is valid."""
        if self._header_bytes > self._max_header:
            raise _Refusal(HeadersTooLarge(f"request header fields over {self._max_header} bytes",
                                           limit=self._max_header))
        if version == "1.1":
            if self._hosts != 1:
                raise _Refusal(InvalidRequest("HTTP/1.1 request without a Host header" if not self._hosts
                                              else f"{self._hosts} Host headers (exactly one is allowed)"))
        elif version == "1.0":
            if self._hosts > 1:
                raise _Refusal(InvalidRequest(f"{self._hosts} Host headers (at most one is allowed)"))
            if self._transfer_encoding:
                raise _Refusal(InvalidRequest("Transfer-Encoding in an HTTP/1.0 request"))
        else:
            raise _Refusal(InvalidRequest(f"HTTP/{version} is not supported (only HTTP/1.0 and HTTP/1.1)"))
        host = self._host if self._hosts else b""
        if host.translate(None, _HOST_CHARS):
            raise _Refusal(InvalidRequest("invalid Host header: not an authority (host[:port])"))
        try:
            target = httptools.parse_url(url)
        except httptools.HttpParserInvalidURLError:
            raise _Refusal(InvalidRequest("malformed request target")) from None
        if url[:1] != b"/" and url != b"*":  # absolute form: its authority wins over Host, so they must agree
            if target.schema not in _DEFAULT_PORTS or not target.host:
                raise _Refusal(InvalidRequest("request target is neither a path nor an http(s) URL"))
            authority = target.host + (b":%d" % target.port if target.port is not None else b"")
            if not _same_authority(authority, host, _DEFAULT_PORTS[target.schema]):
                raise _Refusal(InvalidRequest("the request target's authority differs from the Host header"))
        return target

    def on_body(self, body: bytes) -> None:
        self._slack -= len(body)
        self._body_bytes += len(body)
        self._since = self.loop.time()
        cycle = self.cycle
        if cycle.response_complete:
            return
        cycle.body += body
        if len(cycle.body) > HIGH_WATER_LIMIT:
            self.flow.pause_reading()
        cycle.message_event.set()

    def on_message_complete(self) -> None:
        self._reading_head = True
        self._room = self._budget
        self._slack = 0
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:  # None: answered at once (`_answered_now`)
            cycle.more_body = False
            cycle.message_event.set()

    def on_response_complete(self) -> None:
        # uvicorn's, without its keep-alive timer per response: the listener's sweep does that.
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            return
        self.flow.resume_reading()
        if self.pipeline:
            cycle, app = self.pipeline.pop()
            self._start_asgi_task(cycle, app)
            return
        if self._pending is not None:
            self.write(self._pending)
            self.transport.close()
            return
        self._busy = False
        self._served = True
        if not self._in_head:
            self._since = self.loop.time()


def _same_authority(target: bytes, host: bytes, default_port: bytes) -> bool:
    target, host = target.lower(), host.lower()
    if target.endswith(default_port):
        target = target[: -len(default_port)]
    if host.endswith(default_port):
        host = host[: -len(default_port)]
    return target == host
