"""The listeners' HTTP protocol driven in memory: JSON errors from uvicorn's own paths, deadlines, caps, bounds."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import pytest
import uvicorn
from live import responses
from uvicorn.server import ServerState

from isolate.config import ServerConfig
from isolate.errors import InvalidConfig
from isolate.http._protocol import HttpProtocol, Listener
from isolate.http._server import _uvicorn_config, connection_caps

App = Callable[[Any, Any, Any], Awaitable[None]]


class Transport(asyncio.Transport):
    """Collects what the protocol writes (and how many writes it took); `close()` only records."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.writes = 0
        self.closed = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if not self.closed:
            self.written += data
            self.writes += 1

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8787), "peername": ("127.0.0.1", 50000)}.get(name, default)


async def hello(scope: Any, receive: Any, send: Any) -> None:
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


def listener(**bounds: Any) -> Listener:
    values: dict[str, Any] = {"max_connections": 8, "max_header_size": 4096, "max_url_length": 1024,
                              "head_timeout": 10.0}
    values.update(bounds)
    return Listener("edge", **values)


class Connection:
    def __init__(self, app: App, bounds: Listener, config: uvicorn.Config | None = None,
                 state: ServerState | None = None) -> None:
        self.config = config or _uvicorn_config(app, "127.0.0.1", 0, bounds)
        self.config.load()
        self.transport = Transport()
        self.protocol: HttpProtocol = bounds.protocol(self.config, state or ServerState(), {},
                                                      asyncio.get_running_loop())
        self.protocol.connection_made(self.transport)

    def send(self, data: bytes) -> None:
        self.protocol.data_received(data)

    async def settle(self) -> bytes:
        for _ in range(20):  # let the app's task run to its end
            await asyncio.sleep(0)
        return bytes(self.transport.written)


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


def test_an_app_exception_is_a_json_500_with_the_request_id() -> None:
    async def crash(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    async def silent(scope: Any, receive: Any, send: Any) -> None:
        return None  # returns without answering: uvicorn's other 500

    async def main() -> None:
        for app in (crash, silent):
            conn = Connection(app, listener())
            conn.send(b"GET / HTTP/1.1\r\nHost: a\r\nX-Request-Id: req-1\r\n\r\n")
            [(status, headers, body)] = responses(await conn.settle())
            assert status == 500 and headers["content-type"] == "application/json"
            assert headers["x-request-id"] == "req-1" and headers["connection"] == "close"
            assert json.loads(body)["error"] == "internal" and json.loads(body)["request_id"] == "req-1"
            assert conn.transport.closed

    run(main)


def test_limit_concurrency_answers_json_503() -> None:
    async def main() -> None:
        bounds = listener()
        config = uvicorn.Config(hello, http=bounds.protocol, ws="none", lifespan="off", limit_concurrency=1)
        conn = Connection(hello, bounds, config)
        conn.protocol.connections.add(conn.protocol)  # as uvicorn's server counts it
        conn.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        [(status, headers, body)] = responses(await conn.settle())
        assert status == 503 and json.loads(body)["error"] == "overloaded" and headers["retry-after"] == "1"

    run(main)


def test_trailers_never_join_the_headers() -> None:
    seen: list[list[tuple[bytes, bytes]]] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await hello(scope, receive, send)
        seen.append(list(scope["headers"]))

    async def main() -> None:
        conn = Connection(app, listener())
        conn.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"3\r\nabc\r\n0\r\nHost: evil\r\nX-Trailer: 1\r\n\r\n")
        [(status, _, body)] = responses(await conn.settle())
        assert (status, body) == (200, b"abc")
        assert [k for k, _ in seen[0]] == [b"host", b"transfer-encoding"]

    run(main)


def test_an_error_in_a_pipelined_request_waits_for_the_answers_before_it() -> None:
    release = asyncio.Event()

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        await release.wait()
        await hello(scope, receive, send)

    async def main() -> None:
        conn = Connection(slow, listener())
        conn.send(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
                  b"GET /3 HTTP/1.1\r\nBad header\r\n\r\n")
        assert await conn.settle() == b""  # nothing before the first answer
        release.set()
        answers = responses(await conn.settle())
        assert [status for status, _, _ in answers] == [200, 200, 400]
        assert json.loads(answers[2][2])["error"] == "invalid_request" and conn.transport.closed
        # the same when the error is in the body of a request queued behind a running one
        release.clear()
        conn = Connection(slow, listener())
        conn.send(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nPOST /2 HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
                  b"zz\r\n")
        assert await conn.settle() == b""
        release.set()
        assert [status for status, _, _ in responses(await conn.settle())] == [200, 400]

    run(main)


def test_an_answer_is_one_write() -> None:
    async def main() -> None:
        conn = Connection(hello, listener())
        conn.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhi")
        [(status, headers, body)] = responses(await conn.settle())
        assert (status, body, headers["content-length"]) == (200, b"hi", "2") and conn.transport.writes == 1
        conn.send(b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")  # a head alone is one write too
        await conn.settle()
        assert conn.transport.writes == 2

    run(main)


def test_answers_of_concurrent_requests_leave_together_and_in_order() -> None:
    """While other requests of the listener are in progress, answers wait for the end of the loop
    iteration: none is lost, a connection's answers keep their order, and a close comes after them."""
    release = asyncio.Event()
    written_when_answered: list[int] = []
    conns: list[Connection] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["path"] == "/slow":
            await release.wait()
        elif scope["path"] == "/fail":
            await hello(scope, receive, send)
            raise RuntimeError("after answering")  # uvicorn then closes the connection itself
        await hello(scope, receive, send)
        if scope["path"] == "/1":
            written_when_answered.append(len(conns[1].transport.written))

    async def main() -> None:
        bounds, state = listener(), ServerState()
        conns.extend(Connection(app, bounds, state=state) for _ in range(3))
        slow, quick, failing = conns
        slow.send(b"GET /slow HTTP/1.1\r\nHost: a\r\n\r\n")
        quick.send(b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
                   b"GET /3 HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        failing.send(b"GET /fail HTTP/1.1\r\nHost: a\r\n\r\n")
        await quick.settle()
        assert written_when_answered == [0]  # held back: another request was in progress
        assert [s for s, _, _ in responses(bytes(quick.transport.written))] == [200, 200, 200]
        assert quick.transport.closed and [s for s, _, _ in responses(bytes(failing.transport.written))] == [200]
        assert failing.transport.closed and slow.transport.written == b""
        release.set()
        assert [s for s, _, _ in responses(await slow.settle())] == [200]

    run(main)


def test_deadlines_close_silent_idle_and_slow_connections() -> None:
    async def main() -> None:
        bounds = listener(head_timeout=10.0)
        now = asyncio.get_running_loop().time()
        silent = Connection(hello, bounds)
        partial = Connection(hello, bounds)
        partial.send(b"GET / HTTP/1.1\r\nHo")
        served = Connection(hello, bounds)
        served.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        await served.settle()
        answered = len(served.transport.written)
        for conn in (silent, partial, served):
            conn.protocol.check_deadlines(now + 4)  # within both the keep-alive (5 s) and the head timeout
            assert not conn.transport.closed
        served.protocol.check_deadlines(now + 6)  # idle keep-alive: closed, nothing owed
        assert served.transport.closed and len(served.transport.written) == answered
        for conn in (silent, partial):
            conn.protocol.check_deadlines(now + 11)
            assert conn.transport.closed
        assert silent.transport.written == b""
        [(status, _, body)] = responses(bytes(partial.transport.written))
        assert status == 408 and json.loads(body)["error"] == "request_timeout"
        assert bounds.statistics().timed_out == 1

    run(main)


def test_a_request_being_answered_has_no_head_deadline() -> None:
    release = asyncio.Event()

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        await release.wait()
        await hello(scope, receive, send)

    async def main() -> None:
        conn = Connection(slow, listener(head_timeout=1.0))
        conn.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")
        await conn.settle()
        conn.protocol.check_deadlines(asyncio.get_running_loop().time() + 100)
        assert not conn.transport.closed
        release.set()
        assert responses(await conn.settle())[0][0] == 200

    run(main)


def test_a_stalled_body_gets_408_unless_the_server_holds_it_back() -> None:
    hold = asyncio.Event()

    async def lazy(scope: Any, receive: Any, send: Any) -> None:
        await hold.wait()  # does not read the body (yet)
        await hello(scope, receive, send)

    async def main() -> None:
        now = asyncio.get_running_loop().time()
        stalled = Connection(hello, listener())
        stalled.send(b"POST / HTTP/1.1\r\nHost: a\r\nX-Request-Id: up-1\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        expecting = Connection(lazy, listener())
        expecting.send(b"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 100\r\n\r\n")
        paused = Connection(lazy, listener())  # over uvicorn's high-water mark unread: reading is paused
        paused.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 200000\r\n\r\n" + b"x" * 70000)
        await stalled.settle()
        for conn in (stalled, expecting, paused):
            conn.protocol.check_deadlines(now + 5)
            assert not conn.transport.closed
            conn.protocol.check_deadlines(now + 100)
        [(status, headers, _)] = responses(await stalled.settle())
        assert status == 408 and headers["x-request-id"] == "up-1" and stalled.transport.closed
        assert not expecting.transport.closed and not paused.transport.closed

    run(main)


def test_the_cap_refuses_with_503_and_frees_on_close() -> None:
    async def main() -> None:
        bounds = listener(max_connections=2)
        first, _second = Connection(hello, bounds), Connection(hello, bounds)
        third = Connection(hello, bounds)
        [(status, headers, body)] = responses(bytes(third.transport.written))
        assert status == 503 and json.loads(body)["error"] == "overloaded" and headers["connection"] == "close"
        assert third.transport.closed and bounds.statistics().refused == 1
        third.send(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n")  # a refused connection ignores what still arrives
        third.protocol.connection_lost(None)
        first.protocol.connection_lost(None)
        fourth = Connection(hello, bounds)
        assert not fourth.transport.closed and bounds.statistics().connections == 2

    run(main)


def test_header_and_url_bounds_are_exact() -> None:
    async def main() -> None:
        # name + ": " + value + CRLF counts: the Host line takes 9 bytes of 4096, the X line 5 + its value
        for size, status in ((4096 - 9 - 5, 200), (4096 - 9 - 5 + 1, 431)):
            conn = Connection(hello, listener())
            conn.send(b"GET / HTTP/1.1\r\nHost: a\r\nX: " + b"v" * size + b"\r\n\r\n")
            assert responses(await conn.settle())[0][0] == status
        for length, status in ((1024, 200), (1025, 414)):
            conn = Connection(hello, listener())
            conn.send(b"GET /" + b"u" * (length - 1) + b" HTTP/1.1\r\nHost: a\r\n\r\n")
            assert responses(await conn.settle())[0][0] == status
        conn = Connection(hello, listener())
        conn.send(b"GET /" + b"u" * 2000)  # the request line is not even complete: refused as it arrives
        assert responses(await conn.settle())[0][0] == 414 and conn.transport.closed

    run(main)


def test_an_unfinished_head_is_refused_at_the_raw_budget() -> None:
    async def main() -> None:
        conn = Connection(hello, listener())
        conn.send(b"GET / HTTP/1.1\r\nHost: a\r\nX: ")
        for _ in range(10):  # 10 KiB of one header line that never ends, in small reads
            conn.send(b"v" * 1024)
        [(status, _, body)] = responses(await conn.settle())
        assert status == 431 and json.loads(body)["error"] == "headers_too_large"

    run(main)


def test_reads_holding_more_than_a_head_are_split_not_refused() -> None:
    async def main() -> None:
        # One read: a small head and a 64 KiB body (far over the 5 KiB head budget), then three
        # pipelined requests in one read: each head is within bounds, so all are answered.
        conn = Connection(hello, listener())
        body = b"b" * 65536
        conn.send(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 65536\r\n\r\n" + body)
        assert responses(await conn.settle()) == [(200, {"content-length": "65536"}, body)]
        conn = Connection(hello, listener())
        conn.send(b"".join(b"POST /%d HTTP/1.1\r\nHost: a\r\nContent-Length: 3000\r\n\r\n" % i + b"x" * 3000
                           for i in range(3)))
        assert [status for status, _, _ in responses(await conn.settle())] == [200, 200, 200]

    run(main)


def test_chunk_framing_is_bounded() -> None:
    async def main() -> None:
        conn = Connection(hello, listener())
        conn.send(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX-Trailer: ")
        for _ in range(10):
            conn.send(b"t" * 1024)
        [(status, _, _)] = responses(await conn.settle())
        assert status == 431 and conn.transport.closed

    run(main)


@pytest.mark.parametrize("field, value", [("max_header_size", 100), ("head_timeout", 0), ("head_timeout", 7200),
                                          ("max_connections", 0), ("admin_max_connections", 0)])
def test_server_config_validates_the_bounds(field: str, value: Any) -> None:
    with pytest.raises(InvalidConfig, match=field):
        ServerConfig(**{field: value})


def test_default_caps_fit_the_open_file_limit() -> None:
    assert connection_caps(ServerConfig(), 1_048_576, 1024) == (10_000, 64)
    edge, admin = connection_caps(ServerConfig(), 2048, 100)
    assert edge + admin + 256 + 100 == 2048
    assert connection_caps(ServerConfig(max_connections=50, admin_max_connections=5), 2048, 100) == (50, 5)
    # An ordinary hard limit of 1,024 with the default module cache of 1,024 still leaves a usable edge.
    edge, _ = connection_caps(ServerConfig(), 1024, 1024)
    assert edge >= 256
