"""`isolate logs` and `GET /v1/logs`: recent and followed lines, by module, JSON lines, slow and gone clients."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import guests as g
import httpx
from live import ROOT, LiveServer
from starlette.applications import Starlette
from starlette.routing import Route
from test_logs import capped_logger

from isolate.http._logs import JsonFormatter, clean, fields_of, logfmt_line
from isolate.http._tail import (
    BATCH,
    BATCH_BYTES,
    LINE_BYTES,
    MAX_FOLLOWERS,
    RING_BYTES,
    RING_SIZE,
    LogRing,
    keep_recent,
    logs_endpoint,
    read_workers,
)

ACCESS = ("request_id=%s method=%s path=%s module=%s version=%s status=%d isolate_us=%.1f bytes=%d cache=%s "
          "duration_us=%.1f")
GUEST = "request_id=%s module=%s stream=%s %s"


def record(name: str, msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord(name, logging.INFO, "", 0, msg, args, None)


# -- fields, formats and the ring -------------------------------------------------------------------


def test_access_and_guest_lines_become_the_fields_of_their_templates() -> None:
    access = fields_of(record("isolate.access", ACCESS, "r-1", "GET", "/a", "m", None, 200, 12.34, 5, "MISS", 99.0))
    assert list(access)[:3] == ["time", "level", "logger"] and access["time"].endswith("Z")
    assert {k: access[k] for k in ("request_id", "module", "version", "status", "isolate_us", "cache")} == {
        "request_id": "r-1", "module": "m", "version": None, "status": 200, "isolate_us": 12.3, "cache": "MISS"}
    # a guest message that looks like fields stays the message: fields come from the template only
    guest = fields_of(record("isolate.guest", GUEST, "r-1", "m", "log", "status=500 module=other"))
    assert guest["msg"] == "status=500 module=other"
    assert (guest["module"], guest["stream"], "status" in guest) == ("m", "log", False)
    other = fields_of(record("isolate.server", "ready: %d modules (%s)", 3, "x"))
    assert other["msg"] == "ready: 3 modules (x)" and "module" not in other


def test_the_json_format_is_one_object_a_line_and_logfmt_lines_read_like_the_servers() -> None:
    text = JsonFormatter({"worker": 2}).format(record("isolate.guest", GUEST, "r-2", "m", "log", 'two\nlines "x"'))
    assert "\n" not in text
    fields = json.loads(text)
    assert fields["worker"] == 2 and fields["msg"] == 'two\nlines "x"'
    line = logfmt_line(json.loads(JsonFormatter().format(
        record("isolate.access", ACCESS, "r-3", "GET", "/a b", "m", "1", 200, 1.0, 5, "MISS", 2.0))))
    assert ' INFO isolate.access request_id=r-3 method=GET path="/a b" module=m version=1 status=200 ' in line


def test_the_ring_keeps_the_last_lines_and_counts_what_a_reader_missed() -> None:
    ring = LogRing(size=10)
    for i in range(25):
        ring.emit(record("isolate.guest", GUEST, f"r-{i}", "a" if i % 2 else "b", "log", f"line {i}"))
    recent, missed, position = ring.read(None, "a", 3)
    assert [f["msg"] for f in recent] == ["line 19", "line 21", "line 23"] and (missed, position) == (0, 25)
    lines, missed, position = ring.read(5, None, 4)  # 5..14 left the ring: 10 missed
    assert [f["msg"] for f in lines] == ["line 15", "line 16", "line 17", "line 18"] and (missed, position) == (10, 19)
    lines, missed, position = ring.read(19, "b", 100)
    assert [f["msg"] for f in lines] == ["line 20", "line 22", "line 24"] and (missed, position) == (0, 25)
    assert ring.read(25, None, 100) == ([], 0, 25)


def test_long_guest_lines_are_cut_and_the_ring_stays_within_its_bytes() -> None:
    ring = LogRing()
    at_the_cap = clean("\x00" * (64 * 1024 - 64))  # a record filling the default log_limit, escaped 4x
    for i in range(RING_SIZE):
        ring.emit(record("isolate.guest", GUEST, f"r-{i}", "m", "stdout", at_the_cap))
        assert ring.bytes <= RING_BYTES
    assert RING_BYTES - 2 * LINE_BYTES < ring.bytes and len(ring) < RING_SIZE  # bytes, not lines, bound it
    recent, _, position = ring.read(None, None, RING_SIZE)  # `GET /v1/logs?lines=5000`: the ring, no more
    assert len(recent) == len(ring) and position == RING_SIZE
    cut = len(at_the_cap) - (LINE_BYTES - len("r-4999mstdout"))
    assert recent[-1]["msg"] == f"{at_the_cap[:LINE_BYTES - len('r-4999mstdout')]}... ({cut} bytes cut)"
    assert recent[-1]["request_id"] == "r-4999" and recent[-1]["module"] == "m"  # the fields stay whole
    assert sum(len(json.dumps(fields)) for fields in recent) < 2 * RING_BYTES
    # the lines that left for want of room are counted like any others a reader missed
    lines, missed, position = ring.read(0, None, RING_SIZE)
    assert missed == RING_SIZE - len(ring) and lines[0]["request_id"] == f"r-{missed}"
    # a follower's read is bounded in bytes too, and goes on where it stopped
    assert len(lines) < BATCH and len(lines) * LINE_BYTES <= BATCH_BYTES and position == missed + len(lines)
    _, _, _, more = ring.read_more(missed, None, BATCH)
    assert more and not ring.read_more(RING_SIZE - 1, None, BATCH)[3]


def test_lines_are_cut_to_whole_characters_and_short_ones_kept_as_they_are() -> None:
    ring = LogRing(line_bytes=200)
    ring.emit(record("isolate.guest", GUEST, "r-1", "m", "log", "é" * 200))  # 2 bytes each in UTF-8
    ring.emit(record("isolate.guest", GUEST, "r-2", "m", "log", "short é"))
    ring.emit(record("isolate.access", ACCESS, "r-3", "GET", "/" + "p" * 300, "m", None, 200, 1.0, 5, "MISS", 2.0))
    ring.emit(record("isolate.other", "%s and %r", ["a", "list"], {"a": "dict"}))  # kept formatted
    ring.emit(record("isolate.other", "x" * 300))
    cut, short, access, other, long = ring.read(None, None, 10)[0]
    left = 200 - len("r-1mlog")  # the template is not counted: only what was logged
    assert cut["msg"] == "é" * (left // 2) + f"... ({400 - left // 2 * 2} bytes cut)"
    assert (cut["request_id"], cut["module"], cut["stream"]) == ("r-1", "m", "log")
    assert short["msg"] == "short é"
    left = 200 - len("r-3GETmMISS")  # the short fields whole, the long one cut
    assert access["path"] == ("/" + "p" * 300)[:left] + f"... ({301 - left} bytes cut)"
    assert (access["module"], access["version"], access["status"], access["cache"]) == ("m", None, 200, "MISS")
    assert other["msg"] == "['a', 'list'] and {'a': 'dict'}"
    assert long["msg"] == "x" * 200 + "... (100 bytes cut)"


class FakeWorker:
    """A worker's channel as `read_workers` uses it: each `call` answers the next of `answers` (an
    exception is raised)."""

    def __init__(self, index: int, *answers: object) -> None:
        self.index = index
        self.answers = list(answers)
        self.calls: list[Any] = []

    def call(self, message: Any, timeout: float) -> dict[str, Any]:
        self.calls.append(message["since"])
        answer = self.answers.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        assert isinstance(answer, dict)
        return answer


def answer(pid: int, *ids: str, next: int = 1) -> dict[str, Any]:
    return {"lines": [{"time": f"t-{i}", "level": "info", "logger": "isolate.access", "request_id": i}
                      for i in ids], "missed": 0, "next": next, "pid": pid}


def test_a_worker_that_fails_or_answers_badly_gives_no_lines_that_round_and_never_an_error() -> None:
    cursor = {"0": [100, 5], "1": [101, 5], "2": [102, 5], "3": [103, 5], "4": [104, 5]}
    workers = [
        FakeWorker(0, answer(100, "a", next=6)),  # as usual
        FakeWorker(1, answer(201, "old"), ConnectionError("restarting")),  # restarted, then gone again
        FakeWorker(2, TimeoutError("slow")),
        FakeWorker(3, {"lines": "nope", "pid": 103, "missed": 0, "next": 6}),  # malformed answers
        FakeWorker(4, {"lines": [], "missed": 0}),
        FakeWorker(5, answer(205, "new", next=1)),  # started since: read from its start
    ]
    lines, missed, marks = read_workers(workers, cursor, None, 100, 1.0)
    assert [(f["worker"], f["request_id"]) for f in lines] == [(0, "a"), (5, "new")] and missed == 0
    assert [w.calls for w in workers] == [[5], [5, 0], [5], [5], [5], [0]]
    # the workers without an answer keep their marks: a successor (another pid) is read from its start
    assert marks == {**cursor, "0": [100, 6], "5": [205, 1]}
    workers[1].answers = [answer(201, "b"), answer(201, "b", "c", next=2)]
    lines, _, marks = read_workers(workers[1:2], marks, None, 100, 1.0)
    assert [f["request_id"] for f in lines] == ["b", "c"] and marks["1"] == [201, 2]


def test_a_follower_that_reads_too_slowly_is_told_what_it_missed() -> None:
    """The admin endpoint itself, driven by an ASGI client whose writes wait until it reads again."""

    async def run() -> list[dict[str, Any]]:
        with keep_recent(size=50) as ring:
            app = Starlette(routes=[Route("/v1/logs", logs_endpoint(), methods=["GET"])])
            reading = asyncio.Event()
            reading.set()
            gone = asyncio.Event()
            blocked = asyncio.Event()
            bodies: list[bytes] = []
            scope = {"type": "http", "method": "GET", "path": "/v1/logs", "query_string": b"follow=1&lines=0",
                     "headers": [], "http_version": "1.1", "scheme": "http", "asgi": {"spec_version": "2.3"}}

            async def receive() -> dict[str, Any]:
                await gone.wait()
                return {"type": "http.disconnect"}

            async def send(message: dict[str, Any]) -> None:
                if not reading.is_set():
                    blocked.set()
                await reading.wait()  # a full socket: the server's write waits
                if message["type"] == "http.response.body":
                    bodies.append(message.get("body", b""))

            task = asyncio.create_task(app(scope, receive, send))  # type: ignore[arg-type]
            for _ in range(1000):  # until the response started (bounded)
                if bodies:
                    break
                await asyncio.sleep(0.01)
            reading.clear()
            for i in range(10):
                ring.emit(record("isolate.guest", GUEST, f"r-{i}", "m", "log", f"line {i}"))
            await asyncio.wait_for(blocked.wait(), 10)  # the stream took them and waits to write them
            for i in range(10, 210):
                ring.emit(record("isolate.guest", GUEST, f"r-{i}", "m", "log", f"line {i}"))
            reading.set()
            for _ in range(500):
                if b"line 209" in b"".join(bodies):
                    break
                await asyncio.sleep(0.01)
            gone.set()
            await asyncio.wait_for(task, 10)
        return [json.loads(line) for line in b"".join(bodies).splitlines()]

    lines = asyncio.run(run())
    messages = [f["msg"] for f in lines]
    # the 10 it had taken, then the 150 that left the 50-line ring unread, counted, then the 50 left
    assert messages[:10] == [f"line {i}" for i in range(10)]
    assert lines[10]["dropped"] == 150 and lines[10]["logger"] == "isolate.logs"
    assert messages[11:] == [f"line {i}" for i in range(160, 210)]


# -- a real server ------------------------------------------------------------------------------------


def deploy(server: LiveServer, admin: httpx.Client, **modules: bytes) -> None:
    for name, wasm in modules.items():
        assert admin.put(f"/v1/modules/{name}", content=wasm).status_code == 201
    routes = [{"path": f"/{name}", "module": name, "cache": False} for name in modules]
    assert admin.put("/v1/routes", json={"routes": routes}).status_code == 200


class Follower:
    """`isolate logs --follow --json` as a user runs it: its lines arrive on a queue, read by a thread."""

    def __init__(self, server: LiveServer, *args: str) -> None:
        command = [sys.executable, "-m", "isolate.cli", "logs", "--follow", "--json", *server.cli_args(), *args]
        self.process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT,
                                        env=server.env)
        self.lines: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(json.loads(line))

    def until(self, done: Any, timeout: float = 15.0) -> list[dict[str, Any]]:
        """Lines read until `done(lines)` holds, or `timeout` seconds passed."""
        seen: list[dict[str, Any]] = []
        deadline = time.monotonic() + timeout
        while not done(seen) and time.monotonic() < deadline:
            try:
                seen.append(self.lines.get(timeout=0.1))
            except queue.Empty:
                pass
        return seen

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=10)


@contextlib.contextmanager
def requests_to(server: LiveServer, path: str, prefix: str) -> Iterator[None]:
    """Requests to `path` with ids `prefix-0`, `prefix-1`, ... on a thread, for the duration."""
    stop = threading.Event()

    def run() -> None:
        with server.edge() as edge:
            for i in range(2000):
                if stop.wait(0.01):
                    return
                edge.get(path, headers={"x-request-id": f"{prefix}-{i}"})

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(30)


def test_follow_streams_one_modules_guest_and_access_lines_while_requests_run(tmp_path: Path) -> None:
    with LiveServer(tmp_path / "data") as server, server.admin() as admin, server.edge() as edge:
        deploy(server, admin, chatty=g.wasm(g.LOGGER), quiet=g.wasm(g.HELLO))
        edge.get("/quiet", headers={"x-request-id": "before"})  # already in the ring: --lines 0 skips it
        follower = Follower(server, "--module", "chatty", "--lines", "0")
        try:
            with requests_to(server, "/chatty", "c"), requests_to(server, "/quiet", "q"):
                lines = follower.until(lambda seen: sum(f["logger"] == "isolate.access" for f in seen) >= 3)
            server.stop()  # with a follower attached: its stream ends, and the command with it
            assert follower.process.wait(timeout=30) == 0
        finally:
            follower.stop()
        assert sum(f["logger"] == "isolate.access" for f in lines) >= 3
        assert {f["module"] for f in lines} == {"chatty"}
        # the last request seen whole (the follower may have come between the first one's lines)
        last = [f["request_id"] for f in lines if f["logger"] == "isolate.access"][-1]
        mine = [f for f in lines if f["request_id"] == last]
        assert [(f["logger"], f.get("stream"), f.get("msg")) for f in mine] == [
            ("isolate.guest", "log", "structured hello"), ("isolate.guest", "stdout", "printed to stdout"),
            ("isolate.access", None, None)]
        assert mine[-1]["status"] == 200 and mine[-1]["path"] == "/chatty"


def test_without_follow_logs_prints_recent_lines_with_request_ids_and_exits(tmp_path: Path) -> None:
    with LiveServer(tmp_path / "data") as server, server.admin() as admin, server.edge() as edge:
        deploy(server, admin, chatty=g.wasm(g.LOGGER), quiet=g.wasm(g.HELLO))
        for i in range(3):
            edge.get("/chatty", headers={"x-request-id": f"c-{i}"})
            edge.get("/quiet", headers={"x-request-id": f"q-{i}"})
        wanted = "isolate.access request_id=q-2 "
        server.wait_for_log(wanted)
        out = subprocess.run([sys.executable, "-m", "isolate.cli", "logs", "-n", "4", *server.cli_args()],
                             capture_output=True, text=True, timeout=60, cwd=ROOT, env=server.env)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert len(lines) == 4 and wanted in lines[-1]
        assert "INFO isolate.guest request_id=c-2 module=chatty stream=stdout printed to stdout" in lines[1]
        by_module = admin.get("/v1/logs", params={"module": "quiet", "lines": 100})
        assert by_module.headers["content-type"] == "application/x-ndjson"
        assert [json.loads(line)["request_id"] for line in by_module.text.splitlines()] == ["q-0", "q-1", "q-2"]
        assert httpx.get(f"{server.admin_url}/v1/logs").status_code == 401  # the token, like all of /v1
        assert admin.get("/v1/logs", params={"lines": "many"}).json()["error"] == "invalid_request"


def test_log_format_json_makes_every_server_line_one_json_object(tmp_path: Path) -> None:
    with LiveServer(tmp_path / "data", "--log-format", "json") as server, server.admin() as admin, \
            server.edge() as edge:
        deploy(server, admin, chatty=g.wasm(g.LOGGER))
        assert edge.get("/chatty", headers={"x-request-id": "j-1"}).status_code == 200
        server.wait_for_log('"request_id": "j-1", "method"')
        server.stop()
        lines = [json.loads(line) for line in server.log().splitlines()]  # every line parses
    assert any(f["logger"] == "isolate.server" and f["msg"].startswith("isolate ready") for f in lines)
    mine = [f for f in lines if f.get("request_id") == "j-1"]
    assert [(f["logger"], f.get("msg")) for f in mine] == [
        ("isolate.guest", "structured hello"), ("isolate.guest", "printed to stdout"), ("isolate.access", None)]
    assert mine[-1]["status"] == 200 and mine[-1]["module"] == "chatty"


def read_head(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    head = b""
    while b"\r\n\r\n" not in head:
        byte = sock.recv(1)
        assert byte, "closed before an answer"
        head += byte
    return head


def follow_raw(server: LiveServer, receive_buffer: int | None = None) -> socket.socket:
    """A follow request on a bare socket (a client that may stop reading, or vanish)."""
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.connect(("127.0.0.1", server.admin_port))
    sock.sendall(f"GET /v1/logs?follow=1&lines=0 HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {server.token}"
                 "\r\n\r\n".encode())
    return sock


def fresh_follower(server: LiveServer) -> dict[str, Any]:
    """The first line a new follower gets: 503 while `MAX_FOLLOWERS` others follow, so the followers that
    went must have been counted out (the server notices a closed connection on its own time)."""
    deadline = time.monotonic() + 10
    with httpx.Client(base_url=server.admin_url, timeout=10,
                      headers={"authorization": f"Bearer {server.token}"}) as client:
        while True:
            with client.stream("GET", "/v1/logs", params={"follow": 1, "lines": 1}) as fresh:
                if fresh.status_code == 200 or time.monotonic() > deadline:
                    assert fresh.status_code == 200
                    return dict(json.loads(next(fresh.iter_lines())))
            time.sleep(0.1)


def test_clients_that_vanish_or_stop_reading_do_not_disturb_the_server(tmp_path: Path) -> None:
    with LiveServer(tmp_path / "data") as server, server.admin() as admin, server.edge() as edge:
        deploy(server, admin, flood=g.wasm(capped_logger(400)))
        stuck = follow_raw(server, receive_buffer=4096)  # asks to follow, then reads nothing but the head
        assert read_head(stuck).startswith(b"HTTP/1.1 200 ")
        for _ in range(3 * 16):  # more than the followers allowed at once: each one that went is let go
            follow_raw(server).close()
        # ~233 lines (~80 KB) a request: several rings' worth, more than the socket buffers hold
        last = 4 * RING_SIZE // 233 - 1
        for i in range(last + 1):
            assert edge.get("/flood", headers={"x-request-id": f"f-{i}"}).status_code == 200
        assert admin.get("/v1/stats").status_code == 200
        server.wait_for_log(f"isolate.access request_id=f-{last} ")
        assert fresh_follower(server)["request_id"] == f"f-{last}"
        # the stuck client, reading at last, catches up with the newest lines (what it missed is counted:
        # test_a_follower_that_reads_too_slowly_is_told_what_it_missed)
        received = b""
        wanted = f'"request_id": "f-{last}", "method"'.encode()
        deadline = time.monotonic() + 30
        while wanted not in received and time.monotonic() < deadline:
            chunk = stuck.recv(1 << 16)
            if not chunk:
                break
            received = received[-4096:] + chunk
        stuck.close()
        assert wanted in received
        assert edge.get("/flood").status_code == 200
        still_stuck = follow_raw(server, receive_buffer=4096)
        for i in range(last + 1):  # its stream waits on a full socket
            assert edge.get("/flood", headers={"x-request-id": f"g-{i}"}).status_code == 200
        assert server.stop() == 0  # SIGTERM: its stream is cut, and the server exits all the same
        still_stuck.close()


def test_followers_are_bounded_and_each_that_goes_frees_its_place(tmp_path: Path) -> None:
    with LiveServer(tmp_path / "data") as server:
        followers = [follow_raw(server) for _ in range(MAX_FOLLOWERS)]
        for sock in followers:
            assert read_head(sock).startswith(b"HTTP/1.1 200 ")
        extra = follow_raw(server)
        head = read_head(extra)
        assert head.startswith(b"HTTP/1.1 503 ")
        assert b'"error":"overloaded"' in extra.recv(4096).replace(b" ", b"")
        extra.close()
        for sock in followers:
            sock.close()
        assert httpx.get(f"{server.edge_url}/nowhere", headers={"x-request-id": "n-1"}).status_code == 404
        server.wait_for_log("isolate.access request_id=n-1 ")
        assert fresh_follower(server)["request_id"] == "n-1"  # a place again
        assert httpx.get(f"{server.admin_url}/readyz").status_code == 200


def test_the_supervisor_streams_every_workers_lines(tmp_path: Path) -> None:
    with LiveServer(tmp_path / "data", "--workers", "2", env={"ISOLATE_LOG_FORMAT": "json"}) as server, \
            server.admin() as admin:
        deploy(server, admin, chatty=g.wasm(g.LOGGER), quiet=g.wasm(g.HELLO))
        assert httpx.get(f"{server.edge_url}/chatty", headers={"x-request-id": "first"}).status_code == 200
        server.wait_for_log('"request_id": "first", "method"')
        follower = Follower(server, "--module", "chatty", "--lines", "1")
        try:
            # the recent line, once the follower is there: every line from now on reaches it
            assert [f["request_id"] for f in follower.until(bool)] == ["first"]
            sent: set[str] = set()
            workers: set[int] = set()
            seen: list[dict[str, Any]] = []
            deadline = time.monotonic() + 30
            while len(workers) < 2 and time.monotonic() < deadline:
                # a new connection each: the kernel spreads them over the workers (SO_REUSEPORT)
                rid = f"w-{len(sent)}"
                assert httpx.get(f"{server.edge_url}/chatty", headers={"x-request-id": rid}).status_code == 200
                httpx.get(f"{server.edge_url}/quiet")
                sent.add(rid)
                seen += follower.until(lambda lines: bool(lines), timeout=0.2)
                workers = {f["worker"] for f in seen}
            seen += follower.until(lambda lines: {f["request_id"] for f in seen + lines
                                                  if f["logger"] == "isolate.access"} >= sent)
        finally:
            follower.stop()
        assert workers == {0, 1}
        assert {f["request_id"] for f in seen if f["logger"] == "isolate.access"} == sent
        assert {f["module"] for f in seen} == {"chatty"}
        recent = [json.loads(line) for line in admin.get("/v1/logs", params={"lines": 5}).text.splitlines()]
        assert len(recent) == 5 and [f["time"] for f in recent] == sorted(f["time"] for f in recent)
        server.stop()
        every_line = [json.loads(line) for line in server.log().splitlines()]  # ISOLATE_LOG_FORMAT=json
        assert {f["worker"] for f in every_line if "worker" in f} == {0, 1}
