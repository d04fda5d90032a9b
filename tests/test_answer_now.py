"""The edge's synchronous entry (`EdgeApp.answer_now`) answers exactly as its ASGI app does.

Two edges with the same modules, routes and cache take the same requests through the real HTTP
protocol: one as the server runs it (requests without a body are answered at once, with no Task),
the other as a plain ASGI app. Every answer must be byte for byte the same but for the request's
timing, and the fast one must really have answered the requests it can.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import guests as g
import pytest
from test_protocol import Connection, listener

from isolate import Config
from isolate.config import ServerConfig
from isolate.http import Apps, build

Answer = tuple[int, list[tuple[str, str]], bytes]
_VARYING = {"server-timing", "date", "age"}  # how long it took, and when: the only fields that may differ

CACHED = g.module(response=g.response_bytes(headers=[["cache-control", "max-age=60"]], body=b"cached"))
OWNED = g.module(response=g.response_bytes(
    headers=[["x-isolate-region", "mars"], ["content-length", "999"], ["x-fine", "yes"]], body=b"owned"))
EMPTY = g.module(response=g.response_bytes(status=204, body=b""))
TRAP = g.module("unreachable")


def _edge(data: Path) -> Apps:
    apps = build(Config(data_dir=data, pool_instances=16),
                 ServerConfig(admin_token="t", max_body_size=1024, max_url_length=200, threads=2))
    apps.state.ready = True
    for name, wat in (("hello", g.HELLO), ("cached", CACHED), ("owned", OWNED), ("empty", EMPTY),
                      ("trap", TRAP), ("echo", g.ECHO)):
        apps.node.deploy(name, g.wasm(wat))
    apps.node.set_routes([
        {"path": "/hello", "module": "hello"}, {"path": "/cached", "module": "cached"},
        {"path": "/owned", "module": "owned"}, {"path": "/empty", "module": "empty"},
        {"path": "/trap", "module": "trap"}, {"path": "/echo/:id", "module": "echo", "methods": ["GET", "POST"]},
        {"path": "/post-only", "module": "hello", "methods": ["POST"]},
    ])
    return apps


@pytest.fixture
def edges(tmp_path: Path) -> Iterator[tuple[Apps, Apps]]:
    fast, plain = _edge(tmp_path / "fast"), _edge(tmp_path / "plain")
    yield fast, plain
    fast.close()
    plain.close()


def _request(line: str, *headers: str, body: bytes = b"") -> bytes:
    head = [line, "Host: edge.test", "X-Request-Id: same-id", *headers]
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


# (request, answered at once by the fast edge?)
REQUESTS = [
    (_request("GET /hello HTTP/1.1"), True),
    (_request("HEAD /hello HTTP/1.1"), True),
    (_request("GET /cached HTTP/1.1"), True),  # a miss, stored
    (_request("GET /cached HTTP/1.1"), True),  # a hit
    (_request("HEAD /cached HTTP/1.1"), True),  # a hit, no body
    (_request("GET /cached HTTP/1.1", "Authorization: Bearer x"), True),  # private: bypasses the cache
    (_request("GET /owned HTTP/1.1"), True),  # headers the server owns are dropped
    (_request("GET /empty HTTP/1.1"), True),  # 204: no body, no length
    (_request("GET /trap HTTP/1.1"), True),  # the guest traps: the diagnostic
    (_request("GET /echo/7?q=1&r=%20 HTTP/1.1", "X-Custom: v", "Content-Length: 0"), True),
    (_request("GET /nowhere HTTP/1.1"), True),  # 404
    (_request("GET /post-only HTTP/1.1"), True),  # 405 with Allow
    (_request("GET /hello HTTP/1.1", "X-Isolate-Region: eu"), True),  # no region table: 400
    (_request("GET /" + "x" * 300 + " HTTP/1.1"), True),  # 414
    (_request("POST /echo/1 HTTP/1.1", "Content-Length: 4", body=b"ping"), False),  # a body: ASGI
    (_request("GET /hello HTTP/1.1", "Connection: close"), False),  # the connection closes: ASGI
    (_request("GET /hello HTTP/1.0"), False),
    (_request("GET /hello HTTP/1.1", "X-Isolate-Forwarded-By: n1"), False),  # a (claimed) hop: ASGI
    # an upgrade: answered as plain HTTP, then the connection closes, which the answer must say
    (_request("GET /hello HTTP/1.1", "Connection: Upgrade", "Upgrade: websocket"), False),
]


def _parse(raw: bytes) -> Answer:
    head, _, body = raw.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    fields = [(k.lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:])]
    return int(lines[0].split()[1]), [f for f in fields if f[0] not in _VARYING], body


async def _answer(app: Any, data: bytes) -> tuple[Answer, bool]:
    """Send one request on a new connection; its answer, and whether it came with no Task made."""
    conn = Connection(app, listener())  # URLs up to 1,024 bytes: the edge refuses those over 200 itself
    conn.send(data)
    at_once = not conn.protocol.tasks
    for _ in range(5000):  # a guest on the worker pool answers in its own time
        await asyncio.sleep(0.001)
        if conn.transport.written.count(b"\r\n\r\n") and not conn.protocol.tasks:
            break
    return _parse(bytes(conn.transport.written)), at_once


async def _until_inline(apps: Apps, module: str, data: bytes) -> None:
    for _ in range(300):  # a few quick runs on the worker pool and the dispatcher runs it inline
        await _answer(apps.edge, data)
        if apps.dispatcher.is_inline(module):
            return


def test_answer_now_answers_as_the_asgi_app_does(edges: tuple[Apps, Apps]) -> None:
    fast, plain = edges

    async def asgi_only(scope: Any, receive: Any, send: Any) -> None:
        await plain.edge(scope, receive, send)

    async def main() -> None:
        modules = ("hello", "cached", "owned", "empty", "trap", "echo")
        for _ in range(300):  # run every module until the dispatcher runs it inline (a few quick runs)
            for app in (fast.edge, asgi_only):
                for data, _ in REQUESTS:
                    await _answer(app, data)
            if all(apps.dispatcher.is_inline(m) for apps in (fast, plain) for m in modules):
                break
        for apps in (fast, plain):
            assert apps.cache is not None
            apps.cache.purge(everything=True)
        for data, expected in REQUESTS:
            (fast_answer, at_once), (plain_answer, _) = await _answer(fast.edge, data), await _answer(asgi_only, data)
            assert fast_answer == plain_answer, data
            assert at_once == expected, data
            if data.startswith(b"GET /trap"):
                assert fast_answer[0] == 500 and json.loads(fast_answer[2])["error"] == "trap"
            if data.startswith(b"GET /cached"):
                assert ("x-cache", "BYPASS" if b"Authorization" in data else "HIT") in fast_answer[1] or \
                    ("x-cache", "MISS") in fast_answer[1]

    asyncio.run(main())


def test_a_failing_answer_now_is_uvicorns_json_500_and_the_connection_closes() -> None:
    class Broken:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            raise AssertionError("not reached: answer_now answers")

        def answer_now(self, scope: Any) -> Any:
            raise RuntimeError("boom")

    class Unframed(Broken):
        def answer_now(self, scope: Any) -> Any:
            return 200, [(b"content-length", b"5")], b"too long"

    async def main() -> None:
        for app in (Broken(), Unframed()):
            (status, fields, body), at_once = await _answer(app, _request("GET / HTTP/1.1"))
            assert at_once and status == 500 and json.loads(body)["error"] == "internal"
            assert ("connection", "close") in fields and ("x-request-id", "same-id") in fields
            (status, fields, body), _ = await _answer(app, _request("HEAD / HTTP/1.1"))
            assert status == 500 and body == b"" and ("connection", "close") in fields

    asyncio.run(main())


def test_nothing_pipelined_behind_a_failed_answer_now_runs() -> None:
    calls: list[str] = []

    class Broken:
        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            calls.append("asgi " + scope["path"])

        def answer_now(self, scope: Any) -> Any:
            calls.append(scope["path"])
            raise RuntimeError("boom")

    async def main() -> None:
        conn = Connection(Broken(), listener())
        conn.send(_request("GET /boom HTTP/1.1") + _request("DELETE /account HTTP/1.1") + _request("GET /x HTTP/1.1"))
        await asyncio.sleep(0.01)
        assert calls == ["/boom"] and conn.transport.closed
        assert bytes(conn.transport.written).count(b"HTTP/1.1 ") == 1

    asyncio.run(main())


def test_answers_made_at_once_respect_back_pressure(edges: tuple[Apps, Apps]) -> None:
    """A read of many pipelined requests makes at most _MAX_HELD answers at once, and none while the
    client is not reading (writing paused): the rest wait as ASGI cycles, which wait on the client."""
    fast, _ = edges

    async def main() -> None:
        await _until_inline(fast, "echo", _request("GET /echo/0 HTTP/1.1"))
        conn = Connection(fast.edge, listener())
        conn.send(b"".join(_request(f"GET /echo/{n} HTTP/1.1") for n in range(40)))
        assert conn.protocol.pipeline or conn.protocol.tasks  # past the bound, they queue as cycles
        for _ in range(5000):
            await asyncio.sleep(0.001)
            if bytes(conn.transport.written).count(b"HTTP/1.1 200") == 40:
                break
        raw = bytes(conn.transport.written)
        assert raw.count(b"HTTP/1.1 200") == 40
        positions = [raw.index(b"/echo/%d\xa5query" % n) for n in range(40)]
        assert positions == sorted(positions)

        paused = Connection(fast.edge, listener())
        paused.protocol.pause_writing()  # as the transport says when the client reads nothing
        paused.send(_request("GET /echo/1 HTTP/1.1"))
        assert paused.protocol.tasks  # an ASGI cycle, which waits for the client before answering
        paused.protocol.resume_writing()
        for _ in range(5000):
            await asyncio.sleep(0.001)
            if b"HTTP/1.1 200" in paused.transport.written:
                break
        assert b"HTTP/1.1 200" in paused.transport.written

    asyncio.run(main())


def test_pipelined_requests_answered_at_once_keep_their_order(edges: tuple[Apps, Apps]) -> None:
    fast, _ = edges

    async def main() -> None:
        await _until_inline(fast, "echo", _request("GET /echo/0 HTTP/1.1"))
        conn = Connection(fast.edge, listener())
        conn.send(b"".join(_request(f"GET /echo/{n} HTTP/1.1") for n in range(1, 4)))
        assert not conn.protocol.tasks
        await asyncio.sleep(0)  # the held answers leave at the end of the loop's iteration
        raw = bytes(conn.transport.written)
        assert conn.transport.writes == 1 and raw.count(b"HTTP/1.1 200") == 3
        assert raw.index(b"/echo/1") < raw.index(b"/echo/2") < raw.index(b"/echo/3")

    asyncio.run(main())
