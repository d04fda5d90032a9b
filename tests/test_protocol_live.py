"""Real `isolate serve` processes on loopback: request-head bounds and deadlines, connection caps, HTTP framing
(Host, the smuggling shapes) and JSON errors from below the apps, on both listeners."""

from __future__ import annotations

import json
import os
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import guests as g
import httpx
import pytest
from live import ROOT, LiveServer, responses

KiB = 1024


def read_until_closed(sock: socket.socket, wait: float = 20.0) -> tuple[bytes, bool]:
    """What the server sends until it closes the connection: (bytes, True), or (bytes, False) after `wait` s."""
    deadline = time.monotonic() + wait
    chunks: list[bytes] = []
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return b"".join(chunks), True
        if not chunk:
            return b"".join(chunks), True
        chunks.append(chunk)
    return b"".join(chunks), False


def talk(port: int, data: bytes, wait: float = 20.0) -> tuple[bytes, bool]:
    """Send `data` on a new connection and read until the server closes it (at most `wait` s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=wait) as sock:
        try:
            sock.sendall(data)
        except OSError:  # refused (and reset) before all of it was sent
            pass
        return read_until_closed(sock, wait)


def push(port: int, head: bytes, total: int) -> bytes:
    """Send `head`, then up to `total` bytes of filler (as long as the server reads); what it answered."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(head)
        filler = b"a" * (64 * KiB)
        deadline = time.monotonic() + 30
        try:
            for _ in range(total // len(filler)):
                if time.monotonic() > deadline:
                    break
                sock.sendall(filler)
        except OSError:  # the server answered and closed: the rest cannot be sent
            pass
        return read_until_closed(sock, 20)[0]


def diagnostic(raw: bytes, status: int, kind: str) -> dict[str, object]:
    """The one response in `raw`: a JSON diagnostic of `kind` that closes the connection."""
    [(code, headers, body)] = responses(raw)
    assert code == status, raw[:300]
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    found = json.loads(body)
    assert found["error"] == kind and found["request_id"] == headers["x-request-id"], found
    return dict(found)


def deploy(server: LiveServer) -> None:
    with server.admin() as admin:
        assert admin.put("/v1/modules/hello", content=g.wasm(g.HELLO)).status_code == 201
        assert admin.put("/v1/modules/echo", content=g.wasm(g.ECHO)).status_code == 201
        routes = [{"path": "/hello", "module": "hello"}, {"path": "/echo", "module": "echo"}]
        assert admin.put("/v1/routes", json={"routes": routes}).status_code == 200


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Default bounds but a 1 s head timeout, so idle keep-alive connections end quickly."""
    with LiveServer(tmp_path_factory.mktemp("protocol") / "data", "--head-timeout", "0.5s") as live:
        deploy(live)
        yield live


# What httptools 0.9 (llhttp, strict) does with each shape, and what the client sees. Every request
# ends with a pipelined `GET /smuggled`: a 404 in the answer would mean it was read as a request.
SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: a\r\n\r\n"
REJECTED = [
    ("CL then TE", b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"0\r\n\r\n", "Transfer-Encoding can't be present with Content-Length"),
    ("TE then CL", b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n"
     b"0\r\n\r\n", "Content-Length can't be present with Transfer-Encoding"),
    ("two different CL", b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nContent-Length: 37\r\n\r\n",
     "Duplicate Content-Length"),
    ("two equal CL", b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\nok",
     "Duplicate Content-Length"),
    ("CL list", b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2, 2\r\n\r\nok",
     "Invalid character in Content-Length"),
    ("CL with sign", b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: +2\r\n\r\nok",
     "Invalid character in Content-Length"),
    ("obs-fold", b"GET /hello HTTP/1.1\r\nHost: a\r\nX-A: one\r\n two\r\n\r\n",
     "Unexpected whitespace after header value"),
    ("obs-fold TE", b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\n chunked\r\n\r\n0\r\n\r\n",
     "Invalid header value char"),
    ("bare LF request line", b"GET /hello HTTP/1.1\nHost: a\r\n\r\n", "Expected CRLF after version"),
    ("bare LF after a header", b"GET /hello HTTP/1.1\r\nHost: a\nX: y\r\n\r\n",
     "Missing expected CR after header value"),
    ("bare CR after a header", b"GET /hello HTTP/1.1\r\nHost: a\rX: y\r\n\r\n",
     "Missing expected LF after header value"),
    ("space before colon CL", b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length : 2\r\n\r\nok",
     "Invalid header field char"),
    ("space before colon TE", b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
     "Invalid header field char"),
    ("TE chunked not last", b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
     "Invalid `Transfer-Encoding` header value"),
    ("TE unknown", b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
     "Request has invalid `Transfer-Encoding`"),
    ("TE twice", b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n"
     b"0\r\n\r\n", "Invalid `Transfer-Encoding` header value"),
    ("TE in HTTP/1.0", b"POST /echo HTTP/1.0\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
     "Transfer-Encoding in an HTTP/1.0 request"),
    ("chunk size bare LF", b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\nok\r\n0\r\n\r\n",
     "Missing expected CR after chunk size"),
    ("chunk size overflow", b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n"
     b"fffffffffffffffffff\r\n", "Chunk size overflow"),
    ("NUL in a value", b"GET /hello HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n", "Invalid header value char"),
    ("space before the first header", b"GET /hello HTTP/1.1\r\n Host: a\r\n\r\n", "Unexpected space after start line"),
    ("unknown method", b"SMUGGLE /hello HTTP/1.1\r\nHost: a\r\n\r\n", "Invalid method"),
    ("CONNECT", b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", "malformed request target"),
    ("HTTP/2.0 in HTTP/1 syntax", b"GET /hello HTTP/2.0\r\nHost: a\r\n\r\n", "HTTP/2.0 is not supported"),
    ("HTTP/0.9", b"GET /hello\r\n\r\n", "HTTP/0.9 is not supported"),
    ("h2 preface", b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "Pause on PRI/Upgrade"),
]


@pytest.mark.parametrize("request_bytes, detail", [(r, d) for _, r, d in REJECTED], ids=[n for n, _, _ in REJECTED])
def test_smuggling_shapes_are_rejected_with_json_400(server: LiveServer, request_bytes: bytes, detail: str) -> None:
    raw, closed = talk(server.port, request_bytes + SMUGGLED)
    assert closed
    found = diagnostic(raw, 400, "invalid_request")
    assert detail in str(found["detail"])


HANDLED = [
    # Upgrades are answered as plain HTTP and the connection closed: the bytes after the head are
    # another protocol's, never a request (h2c smuggling).
    ("h2c upgrade", b"GET /hello HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\n"
     b"HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n", [200]),
    ("websocket upgrade", b"GET /hello HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n", [200]),
    # Controls: framing by one Content-Length or chunked ends exactly where it should, so the next
    # request is a real pipelined one, answered in order (the 404 is its own answer).
    ("Content-Length body", b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nok", [200, 404]),
    ("chunked body", b"POST /echo HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
     [200, 404]),
    ("GET with a body", b"GET /hello HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello", [200, 404]),
    ("tab inside a value", b"GET /hello HTTP/1.1\r\nHost: a\r\nX: a\tb\r\n\r\n", [200, 404]),
]


@pytest.mark.parametrize("request_bytes, statuses", [(r, s) for _, r, s in HANDLED], ids=[n for n, _, _ in HANDLED])
def test_handled_shapes_smuggle_nothing(server: LiveServer, request_bytes: bytes, statuses: list[int]) -> None:
    raw, closed = talk(server.port, request_bytes + SMUGGLED)
    assert closed  # upgrades at once; the others when the idle keep-alive connection times out
    assert [status for status, _, _ in responses(raw)] == statuses


def test_malformed_http_keeps_the_client_request_id(server: LiveServer) -> None:
    # (httptools hands a header over when the next one starts, so one more line precedes the bad one)
    raw, _ = talk(server.port, b"GET /hello HTTP/1.1\r\nHost: a\r\nX-Request-Id: trace-7\r\nX: 1\r\nBad header\r\n\r\n")
    assert diagnostic(raw, 400, "invalid_request")["request_id"] == "trace-7"


@pytest.mark.parametrize("listener", ["edge", "admin"])
@pytest.mark.parametrize("request_bytes, status, detail", [
    (b"GET /readyz HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400, "2 Host headers"),
    (b"GET /readyz HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n", 400, "2 Host headers"),
    (b"GET /readyz HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n", 400, "2 Host headers"),
    (b"GET /readyz HTTP/1.1\r\n\r\n", 400, "without a Host header"),
    (b"GET /readyz HTTP/1.1\r\nHost: a b\r\n\r\n", 400, "invalid Host header"),
    (b"GET /readyz HTTP/1.1\r\nHost: a/b\r\n\r\n", 400, "invalid Host header"),
    (b"GET http://b/readyz HTTP/1.1\r\nHost: a\r\n\r\n", 400, "differs from the Host header"),
    (b"FOO /readyz HTTP/1.1\r\nHost: a\r\n\r\n", 400, "Invalid method"),
], ids=["two", "two-cased", "two-http10", "none", "space", "slash", "absolute-form-mismatch", "bad-method"])
def test_host_framing_on_both_listeners(server: LiveServer, listener: str, request_bytes: bytes, status: int,
                                        detail: str) -> None:
    port = server.port if listener == "edge" else server.admin_port
    raw, closed = talk(port, request_bytes)
    assert closed and detail in str(diagnostic(raw, status, "invalid_request")["detail"])


def test_http10_may_omit_host_and_absolute_form_may_match_it(server: LiveServer) -> None:
    raw, _ = talk(server.port, b"GET /hello HTTP/1.0\r\n\r\n")
    assert [(status, body) for status, _, body in responses(raw)] == [(200, b"hello")]
    raw, _ = talk(server.port, b"GET http://A:80/hello HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert [status for status, _, _ in responses(raw)] == [200]


def test_header_fields_up_to_128_kib_reach_the_guest_and_beyond_get_431(server: LiveServer) -> None:
    head = b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n"
    raw, _ = talk(server.port, head + b"X-Big: " + b"v" * (120 * KiB) + b"\r\n\r\n")
    [(status, _, body)] = responses(raw)
    assert status == 200 and b"v" * (120 * KiB) in body  # the echo guest got the whole header
    lines = b"".join(b"X-%d: %s\r\n" % (i, b"v" * 1000) for i in range(140))  # ~140 KiB in complete lines
    raw, closed = talk(server.port, head + lines + b"\r\n")
    assert closed and diagnostic(raw, 431, "headers_too_large")["limit"] == 128 * KiB


def test_an_8_mb_header_is_refused_while_it_arrives(server: LiveServer) -> None:
    reply = push(server.port, b"GET /hello HTTP/1.1\r\nHost: a\r\nX-Big: ", 8 * 1024 * KiB)
    diagnostic(reply, 431, "headers_too_large")


def test_url_limit_applies_while_the_url_arrives(server: LiveServer) -> None:
    exact = b"/hello?" + b"q" * (16 * KiB - 7)
    raw, _ = talk(server.port, b"GET " + exact + b" HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert [status for status, _, _ in responses(raw)] == [200]
    raw, _ = talk(server.port, b"GET " + exact + b"q HTTP/1.1\r\nHost: a\r\n\r\n")
    diagnostic(raw, 414, "uri_too_long")
    # The request line never ends: the 414 comes anyway, without waiting for the rest of the URL.
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(b"GET /" + b"u" * (20 * KiB))
        raw, closed = read_until_closed(sock)
    assert closed
    diagnostic(raw, 414, "uri_too_long")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads RSS from /proc")
def test_unfinished_huge_headers_do_not_grow_memory(server: LiveServer) -> None:
    assert server.process is not None
    before = rss_kib(server.process.pid)
    replies: list[bytes] = []
    senders = [threading.Thread(target=lambda: replies.append(
        push(server.port, b"GET /hello HTTP/1.1\r\nHost: a\r\nX-Big: ", 64 * 1024 * KiB))) for _ in range(4)]
    for thread in senders:
        thread.start()
    for thread in senders:
        thread.join(timeout=120)
    assert len(replies) == 4
    for reply in replies:
        diagnostic(reply, 431, "headers_too_large")
    assert rss_kib(server.process.pid) - before < 64 * KiB  # was +257 MB with four 64 MB headers


@pytest.mark.parametrize("listener", ["edge", "admin"])
def test_a_silent_connection_is_closed_without_an_answer(server: LiveServer, listener: str) -> None:
    with socket.create_connection(("127.0.0.1", server.port if listener == "edge" else server.admin_port)) as sock:
        assert read_until_closed(sock, 20) == (b"", True)


@pytest.mark.parametrize("listener", ["edge", "admin"])
def test_a_partial_head_gets_408(server: LiveServer, listener: str) -> None:
    with socket.create_connection(("127.0.0.1", server.port if listener == "edge" else server.admin_port)) as sock:
        sock.sendall(b"GET /readyz HTTP/1.1\r\nHost: a\r\nX-Request-Id: slow-1\r\nX-Par")
        raw, closed = read_until_closed(sock, 20)
    assert closed and diagnostic(raw, 408, "request_timeout")["request_id"] == "slow-1"


def test_slowloris_gets_408_before_its_head_is_done(server: LiveServer) -> None:
    head = b"GET /hello HTTP/1.1\r\nHost: a\r\nX-Slow: " + b"s" * 200 + b"\r\n\r\n"  # 40 s at 1 byte / 0.2 s
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        for i in range(len(head)):
            try:
                sock.sendall(head[i:i + 1])
            except OSError:
                break
            if select.select([sock], [], [], 0.2)[0]:
                break
        else:
            pytest.fail("the whole head went through")
        raw, closed = read_until_closed(sock, 20)
    assert closed and diagnostic(raw, 408, "request_timeout")


def test_keep_alive_connections_end_when_idle_or_slow(server: LiveServer) -> None:
    request = b"GET /hello HTTP/1.1\r\nHost: a\r\n\r\n"

    def answered(sock: socket.socket) -> bytes:
        """One whole answer (head and body may arrive in separate reads)."""
        raw = b""
        while not raw.endswith(b"hello"):
            chunk = sock.recv(65536)
            assert chunk, raw
            raw += chunk
        return raw

    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(request)
        assert answered(sock).startswith(b"HTTP/1.1 200")
        assert read_until_closed(sock, 20) == (b"", True)  # idle: closed, nothing owed
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(request)
        assert answered(sock).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /hello HT")  # the next head starts but never ends
        raw, closed = read_until_closed(sock, 20)
    assert closed and diagnostic(raw, 408, "request_timeout")


def test_a_stalled_body_gets_408(server: LiveServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n" + b"x" * 10)
        raw, closed = read_until_closed(sock, 20)
    assert closed and diagnostic(raw, 408, "request_timeout")


def test_a_trickled_body_gets_408(server: LiveServer) -> None:
    """Bytes that keep coming, one every 0.3 s: never a stall, but far under the minimum rate."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=20) as sock:
        sock.sendall(b"POST /echo HTTP/1.1\r\nHost: a\r\nContent-Length: 100\r\n\r\n")
        deadline = time.monotonic() + 15
        raw = b""
        sock.settimeout(0.3)
        while time.monotonic() < deadline:
            try:
                sock.sendall(b"x")
                chunk = sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                break
            if not chunk:
                break
            raw += chunk
    assert diagnostic(raw, 408, "request_timeout") and time.monotonic() < deadline


def hold(port: int, count: int) -> list[socket.socket]:
    return [socket.create_connection(("127.0.0.1", port), timeout=20) for _ in range(count)]


def until_served(url: str) -> httpx.Response:
    """GET `url` until the cap has room again (freed connections are counted out asynchronously)."""
    for _ in range(100):
        response = httpx.get(url, timeout=20)
        if response.status_code != 503:
            return response
        time.sleep(0.05)
    return response


def test_connection_caps_are_per_listener(tmp_path: Path) -> None:
    args = ("--max-connections", "4", "--admin-max-connections", "2", "--head-timeout", "30s")
    with LiveServer(tmp_path / "data", *args) as server:
        deploy(server)
        held = hold(server.port, 4)
        try:
            response = httpx.get(f"{server.edge_url}/hello", timeout=20)
            assert response.status_code == 503 and response.headers["retry-after"] == "1"
            assert response.json()["error"] == "overloaded" and response.json()["limit"] == 4
            with server.admin() as admin:  # the admin API is not locked out by a full edge
                assert admin.put("/v1/modules/more", content=g.wasm(g.HELLO)).status_code == 201
        finally:
            for sock in held:
                sock.close()
        assert until_served(f"{server.edge_url}/hello").status_code == 200
        held = hold(server.admin_port, 2)
        try:
            response = httpx.get(f"{server.admin_url}/readyz", timeout=20)
            assert response.status_code == 503 and response.json()["error"] == "overloaded"
            assert httpx.get(f"{server.edge_url}/hello", timeout=20).status_code == 200
        finally:
            for sock in held:
                sock.close()
        assert until_served(f"{server.admin_url}/readyz").status_code == 200


SITECUSTOMIZE = """
import os, resource
soft, hard = (int(v) for v in os.environ["ISOLATE_TEST_NOFILE"].split(":"))
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
"""


@pytest.mark.skipif(not Path("/proc/self/limits").exists(), reason="reads limits from /proc")
def test_more_sockets_than_the_fd_limit_leave_both_listeners_working(tmp_path: Path) -> None:
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 1024:  # this test holds 540 sockets itself
        if hard != resource.RLIM_INFINITY and hard < 1024:
            pytest.skip(f"the test process may open only {hard} files")
        resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {"PYTHONPATH": f"{site}{os.pathsep}{ROOT}", "ISOLATE_TEST_NOFILE": "256:512"}
    with LiveServer(tmp_path / "data", "--module-cache-size", "8", "--head-timeout", "60s", env=env) as server:
        assert server.process is not None
        limits = Path(f"/proc/{server.process.pid}/limits").read_text()
        assert [line.split()[3:5] for line in limits.splitlines() if line.startswith("Max open files")] == [
            ["512", "512"]]  # the soft limit was raised to the hard one
        held = hold(server.port, 540)  # more idle sockets than the server has descriptors
        try:
            response = httpx.get(f"{server.edge_url}/hello", timeout=20)
            # the default cap leaves room for the admin cap and the reserve: 512 - 64 - 256 - 8 hot modules
            assert response.status_code == 503 and response.json()["limit"] == 184
            deploy(server)  # the admin API still works, and the data directory can still open files
        finally:
            for sock in held:
                sock.close()
        assert until_served(f"{server.edge_url}/hello").text == "hello"
