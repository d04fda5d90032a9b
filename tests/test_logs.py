"""Logging off the event loop: the bounded queue, its writer thread, guest lines in batches, stuck outputs."""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import guests as g
import httpx
import pytest
from live import LiveServer

from isolate import LogRecord as GuestRecord
from isolate.http import _logs
from isolate.http._logs import defer_log, dropped_records, guest_lines, logging_off_loop

WRITER = "isolate-log-writer"
test_log = logging.getLogger("isolate.test")
guest_log = logging.getLogger("isolate.guest")
access_log = logging.getLogger("isolate.access")


class Lines(logging.Handler):
    """Formats like `isolate serve` without the time; with `block`, each write waits for it to be set."""

    def __init__(self, block: threading.Event | None = None) -> None:
        super().__init__()
        self.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
        self.block = block
        self.writing = threading.Event()
        self.lines: list[str] = []
        self.created: list[float] = []
        self.threads: set[str] = set()

    def emit(self, record: logging.LogRecord) -> None:
        self.writing.set()
        if self.block is not None:
            self.block.wait()
        self.lines.append(self.format(record))
        self.created.append(record.created)
        self.threads.add(threading.current_thread().name)


@contextlib.contextmanager
def only(handler: logging.Handler) -> Iterator[None]:
    """`handler` as the root logger's only handler (pytest's own stay out of the way), guest lines at INFO."""
    root = logging.getLogger()
    saved, level = root.handlers[:], root.level
    root.handlers = [handler]
    root.setLevel(logging.DEBUG)
    guest_log.setLevel(logging.INFO)
    try:
        yield
    finally:
        root.handlers = saved
        root.setLevel(level)
        guest_log.setLevel(logging.NOTSET)
        for thread in threading.enumerate():  # a writer a test left stuck, now released
            if thread.name == WRITER:
                thread.join(10)


def returns_at_once(calls: Callable[[], None]) -> None:
    """Run `calls` on a thread: had a log call waited for the blocked writer, it would never return."""
    thread = threading.Thread(target=calls, daemon=True)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "a log call waited for the writer"


def records(*specs: tuple[str, str, str]) -> tuple[GuestRecord, ...]:
    return tuple(GuestRecord(stream, level, message) for stream, level, message in specs)


def test_a_full_queue_drops_and_counts_instead_of_waiting() -> None:
    release = threading.Event()
    handler = Lines(block=release)
    before = dropped_records()
    with only(handler), logging_off_loop(capacity=6):
        test_log.warning("first")  # the writer takes it and blocks writing it: 1 of 6 lines
        assert handler.writing.wait(10)

        def flood() -> None:
            guest_lines(guest_log, "r1", "m", records(("log", "info", "a"), ("log", "info", "b")))  # 3 of 6
            guest_lines(guest_log, "r2", "m", records(*[("log", "info", "x")] * 4))  # 7 lines: all 4 dropped
            for i in range(5):
                test_log.warning("more %d", i)  # 0..2 fit; 3 and 4 are dropped
            defer_log(access_log, logging.INFO, "status=%d", 200)  # dropped

        returns_at_once(flood)
        assert dropped_records() - before == 7
        release.set()
    report = "WARNING isolate.logs 7 log records dropped: the log output is too slow"
    assert handler.lines.count(report) == 1  # once caught up (or after a second behind)
    assert [line for line in handler.lines if line != report] == [
        "WARNING isolate.test first",
        "INFO isolate.guest request_id=r1 module=m stream=log a",
        "INFO isolate.guest request_id=r1 module=m stream=log b",
        "WARNING isolate.test more 0", "WARNING isolate.test more 1", "WARNING isolate.test more 2",
    ]


def test_a_stuck_writer_is_given_up_on_and_later_records_are_dropped() -> None:
    release = threading.Event()
    handler = Lines(block=release)
    exited = threading.Event()

    def serve() -> None:
        with logging_off_loop(stop_timeout=0.2):
            test_log.warning("stuck")
            handler.writing.wait(10)
        exited.set()

    with only(handler):
        try:
            threading.Thread(target=serve, daemon=True).start()
            assert exited.wait(10)  # while its writer is still stuck on the output
            # logging.shutdown() at exit takes each handler's lock: the stuck writer's is not it
            assert handler.lock is not None and handler.lock.acquire(blocking=False)
            handler.lock.release()
            # the stuck output is not handed back to the root logger, where the next call would block
            assert handler not in logging.getLogger().handlers
            before = dropped_records()
            returns_at_once(lambda: test_log.warning("after"))
            assert dropped_records() == before + 1
        finally:
            release.set()  # the writer finishes its line and quits: its handler is no longer its own
    assert handler.lines == ["WARNING isolate.test stuck"]


def test_guest_lines_are_expanded_and_formatted_by_the_writer_in_order() -> None:
    release = threading.Event()
    handler = Lines(block=release)
    logs = records(
        ("log", "debug", "hidden at INFO"),
        ("log", "info", "one\n"),
        ("stdout", "info", "two\x1b[31m\nforged=1\n"),
        ("stderr", "error", "three"),
        ("log", "shout", "an unknown level is INFO"),
        ("host", "warn", "guest output truncated: 9 records (90 bytes) dropped"),
    )
    with only(handler), logging_off_loop():
        access_log.info("before %s", "guests")
        assert handler.writing.wait(10)
        guest_lines(guest_log, "rid-1", "mod", logs)
        defer_log(access_log, logging.INFO, "request_id=%s status=%d", "rid-1", 200)
        logged = time.time()
        release.set()
    assert handler.lines == [
        "INFO isolate.access before guests",
        "INFO isolate.guest request_id=rid-1 module=mod stream=log one",
        "INFO isolate.guest request_id=rid-1 module=mod stream=stdout two\\x1b[31m\\x0aforged=1",
        "ERROR isolate.guest request_id=rid-1 module=mod stream=stderr three",
        "INFO isolate.guest request_id=rid-1 module=mod stream=log an unknown level is INFO",
        "WARNING isolate.guest request_id=rid-1 module=mod stream=host guest output truncated: 9 records (90 bytes) "
        "dropped",
        "INFO isolate.access request_id=rid-1 status=200",
    ]
    assert handler.threads == {WRITER}
    assert max(handler.created) <= logged  # stamped when logged, although built after `release`


def test_guest_lines_follow_the_guest_loggers_level() -> None:
    handler = Lines()
    logs = records(("log", "info", "note"), ("log", "warn", "careful"), ("log", "error", "broken"))
    with only(handler):
        guest_log.setLevel(logging.ERROR)
        with logging_off_loop():
            guest_lines(guest_log, "r", "m", logs)
        guest_log.setLevel(logging.CRITICAL)
        with logging_off_loop():
            guest_lines(guest_log, "r", "m", logs)
    assert handler.lines == ["ERROR isolate.guest request_id=r module=m stream=log broken"]


def test_guest_lines_the_logger_would_not_write_are_not_queued(monkeypatch: pytest.MonkeyPatch) -> None:
    """A queued item wakes the writer thread, which then takes the GIL from the loop: for nothing."""
    queued: list[object] = []
    with only(Lines()):
        guest_log.setLevel(logging.WARNING)
        with logging_off_loop():
            pipe = _logs._pipe
            assert pipe is not None
            monkeypatch.setattr(pipe, "put", lambda item, lines: queued.append(item))
            guest_lines(guest_log, "r", "m", records(("log", "info", "a"), ("log", "debug", "b")))
            assert queued == []
            guest_lines(guest_log, "r", "m", records(("log", "info", "a"), ("stderr", "error", "b")))
            assert len(queued) == 1


def test_without_logging_off_the_loop_lines_are_logged_at_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    guest_lines(guest_log, "r", "m", records(("log", "debug", "hidden"), ("stderr", "error", "bad\rline")))
    defer_log(access_log, logging.INFO, "request_id=%s status=%d", "r", 500)
    assert [(r.name, r.levelname, r.getMessage()) for r in caplog.records] == [
        ("isolate.guest", "ERROR", "request_id=r module=m stream=stderr bad\\x0dline"),
        ("isolate.access", "INFO", "request_id=r status=500"),
    ]
    assert caplog.records[-1].funcName == "test_without_logging_off_the_loop_lines_are_logged_at_once"


TEXT = (b"a guest logging as much as it may, " * 8)[:250]


def capped_logger(count: int) -> str:
    """A guest calling `isolate.log` (info) `count` times with a 250-byte line, then answering hello."""
    return g.module(f"""
    (local $i i32)
    (loop $l
      (call $log (i32.const 1) (i32.const 200) (i32.const {len(TEXT)}))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $l (i32.lt_u (local.get $i) (i32.const {count}))))
    {g.returns(g.response_bytes())}""", imports='(import "isolate" "log" (func $log (param i32 i32 i32)))',
                    extra=f'(data (i32.const 200) "{g.data_string(TEXT)}")')


def test_a_server_writes_every_line_of_a_guest_at_the_cap(tmp_path: Path) -> None:
    with LiveServer(tmp_path / "data") as server, server.admin() as admin, server.edge() as edge:
        assert admin.put("/v1/modules/chatty", content=g.wasm(capped_logger(400))).status_code == 201
        assert admin.put("/v1/routes", json={"routes": [{"path": "/", "module": "chatty"}]}).status_code == 200
        assert edge.get("/", headers={"x-request-id": "cap-1"}).status_code == 200
        last = "request_id=cap-1 module=chatty stream=host guest output truncated:"
        log = server.wait_for_log(last, "INFO isolate.access request_id=cap-1 ")
        line = f"INFO isolate.guest request_id=cap-1 module=chatty stream=log {TEXT.decode()}\n"
        kept = 65536 // (len(TEXT) + 32)  # Config.log_limit bytes, each record charged 32 more
        assert log.count(line) == kept == 232
        # in order: every kept line, the truncation note, then the access line
        assert log.index(last) > log.rindex(line) and log.index("isolate.access request_id=cap-1") > log.index(last)
        assert f"{last} {400 - kept} records ({(400 - kept) * len(TEXT)} bytes) dropped" in log
        assert "log records dropped" not in log


class Unread(LiveServer):
    """A server whose log goes to `fifo`, which nobody reads."""

    def __init__(self, data_dir: Path, fifo: Path) -> None:
        super().__init__(data_dir)
        self.log_path = fifo

    def log(self) -> str:
        return "(the log went to a pipe nobody reads)"


def test_a_server_whose_log_nobody_reads_keeps_answering_and_stops(tmp_path: Path) -> None:
    fifo = tmp_path / "unread"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # there, so the server can open it; never read
    try:
        with Unread(tmp_path / "data", fifo) as server, server.admin() as admin:
            assert admin.put("/v1/modules/chatty", content=g.wasm(capped_logger(400))).status_code == 201
            routes = [{"path": "/", "module": "chatty", "cache": False}]
            assert admin.put("/v1/routes", json={"routes": routes}).status_code == 200
            # ~80 KB of log per request: the pipe (64 KiB) fills at once, then the writer's queue
            with httpx.Client(base_url=server.edge_url, timeout=30) as edge:
                for _ in range(100):
                    assert edge.get("/").status_code == 200
            assert server.stop() == 0  # SIGTERM: it gives up on the stuck writer instead of waiting forever
    finally:
        os.close(reader)
