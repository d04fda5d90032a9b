"""A small HTTP/1.1 client for guests' outbound calls: h11 on sockets, pooled, bounded in time and size.

Every wait is a `recv`/`send` with a socket timeout of at most `_SLICE`, checked against two
deadlines after each: the call's own (the guest gets `timeout`) and the request's (the whole
request ends as `timeout`). So a trickling or endless origin ends on time, whatever it sends, and
a shutdown is noticed within a slice. It runs on the guest's worker thread, never on the event loop.
"""

from __future__ import annotations

import errno
import os
import select
import socket
import ssl
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import h11

_SLICE = 0.25  # seconds: the longest a blocked socket call goes without checking deadlines and shutdown
_READ = 64 * 1024
IDLE_TIMEOUT = 30.0  # seconds an idle pooled connection is kept
MAX_IDLE = 256  # idle connections kept in all
MAX_IDLE_PER_ORIGIN = 64
_IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS", "TRACE"})


class OriginError(Exception):
    """The call failed on the origin's side; `kind` is "unreachable", "timeout", "too_large" or "protocol"."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Answer:
    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


@dataclass(frozen=True, slots=True)
class Deadlines:
    """Both bounds of one call (time.perf_counter() values) and how to notice a shutdown."""

    call: float
    request: float
    stopping: Callable[[], bool]

    def remaining(self) -> float:
        """Seconds until the nearer deadline; raises when it has passed or the host is stopping."""
        if self.stopping():
            raise InterruptedError("the host is shutting down")
        now = time.perf_counter()
        if now >= self.request:
            raise TimeoutError("the request's deadline passed during an outbound call")
        if now >= self.call:
            raise OriginError("timeout", "the call's timeout passed before the whole answer arrived")
        return min(self.call, self.request) - now


class _Connection:
    __slots__ = ("sock", "h11", "idle_since")

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.h11 = h11.Connection(our_role=h11.CLIENT, max_incomplete_event_size=64 * 1024)
        self.idle_since = 0.0

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass


Key = tuple[str, str, int, str]  # scheme, address, port, TLS server name


class Pool:
    """Keep-alive connections per (scheme, address, port, server name), shared by every guest thread."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        """`tls`: how origins' certificates are checked (default: the system's trusted roots)."""
        self._idle: OrderedDict[Key, list[_Connection]] = OrderedDict()
        self._count = 0
        self._lock = threading.Lock()
        self._tls = tls

    def close(self) -> None:
        with self._lock:
            for conns in self._idle.values():
                for conn in conns:
                    conn.close()
            self._idle.clear()
            self._count = 0

    def request(self, key: Key, *, method: str, target: str, headers: Sequence[tuple[bytes, bytes]],
                body: bytes, deadlines: Deadlines, max_body: int) -> Answer:
        """Send one request over a pooled or new connection and read the whole answer."""
        conn = self._take(key)
        reused = conn is not None
        if conn is None:
            conn = self._connect(key, deadlines)
        try:
            return self._exchange(key, conn, method, target, headers, body, deadlines, max_body)
        except _StaleConnection:
            conn.close()
            if not reused or method not in _IDEMPOTENT:
                raise OriginError("unreachable", "the origin closed the connection without answering") from None
            conn = self._connect(key, deadlines)
            try:
                return self._exchange(key, conn, method, target, headers, body, deadlines, max_body)
            except _StaleConnection:
                conn.close()
                raise OriginError("unreachable", "the origin closed the connection without answering") from None
        except BaseException:
            conn.close()
            raise

    # -- connections --------------------------------------------------------------------------

    def _take(self, key: Key) -> _Connection | None:
        # The lock guards the lists only: checks and closes are system calls, which release the GIL,
        # and every other guest thread would queue behind a lock held across them.
        while True:
            with self._lock:
                conns = self._idle.get(key)
                if not conns:
                    return None
                conn = conns.pop()
                self._count -= 1
            if time.monotonic() - conn.idle_since < IDLE_TIMEOUT and _still_open(conn.sock):
                return conn
            conn.close()

    def _put(self, key: Key, conn: _Connection) -> None:
        conn.idle_since = time.monotonic()
        dropped: list[_Connection] = []
        with self._lock:
            conns = self._idle.setdefault(key, [])
            self._idle.move_to_end(key)
            if len(conns) >= MAX_IDLE_PER_ORIGIN:
                dropped.append(conn)
            else:
                conns.append(conn)
                self._count += 1
            while self._count > MAX_IDLE:  # the least recently used origin gives one up
                oldest_key = next(iter(self._idle))
                oldest = self._idle[oldest_key]
                if oldest:
                    dropped.append(oldest.pop(0))
                    self._count -= 1
                if not oldest:
                    del self._idle[oldest_key]
        for old in dropped:
            old.close()

    def _connect(self, key: Key, deadlines: Deadlines) -> _Connection:
        scheme, address, port, server_name = key
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            sock.setblocking(False)
            err = sock.connect_ex((address, port))
            if err not in (0, errno.EINPROGRESS, errno.EAGAIN):
                raise OriginError("unreachable", f"cannot connect to {address} port {port}: {os.strerror(err)}")
            # poll, not select: select fails on descriptors above 1024, which a busy server has.
            poller = select.poll()
            poller.register(sock, select.POLLOUT)
            while not poller.poll(int(min(_SLICE, deadlines.remaining()) * 1000) + 1):
                pass
            err = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                raise OriginError("unreachable", f"cannot connect to {address} port {port}: {os.strerror(err)}")
            sock.setblocking(True)
            if scheme == "https":
                sock = self._handshake(sock, server_name, deadlines)
            return _Connection(sock)
        except BaseException:
            sock.close()
            raise

    def _handshake(self, sock: socket.socket, server_name: str, deadlines: Deadlines) -> socket.socket:
        if self._tls is None:
            self._tls = ssl.create_default_context()
        tls = self._tls.wrap_socket(sock, server_hostname=server_name, do_handshake_on_connect=False)
        while True:
            tls.settimeout(min(_SLICE, deadlines.remaining()))
            try:
                tls.do_handshake()
                return tls
            except TimeoutError:
                continue
            except (ssl.SSLError, OSError) as exc:
                raise OriginError("unreachable", f"TLS handshake with {server_name} failed: {exc}") from None

    # -- one exchange -------------------------------------------------------------------------

    def _exchange(self, key: Key, conn: _Connection, method: str, target: str,
                  headers: Sequence[tuple[bytes, bytes]], body: bytes, deadlines: Deadlines,
                  max_body: int) -> Answer:
        h = conn.h11
        try:
            data = h.send(h11.Request(method=method, target=target, headers=list(headers)))
            data = (data or b"") + (h.send(h11.Data(data=body)) or b"") if body else data
            data = (data or b"") + (h.send(h11.EndOfMessage()) or b"")
        except (h11.LocalProtocolError, UnicodeError) as exc:
            raise OriginError("protocol", f"cannot send the request: {exc}") from None
        self._send_all(conn, data, deadlines)
        received = 0
        status = 0
        answer_headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []
        size = 0
        while True:
            try:
                event = h.next_event()
            except h11.RemoteProtocolError as exc:
                raise OriginError("protocol", f"the origin's answer is not valid HTTP/1.1: {exc}") from None
            if event is h11.NEED_DATA:
                data = self._recv(conn, deadlines)
                if not data and received == 0:
                    raise _StaleConnection()
                received += len(data)
                h.receive_data(data)
                continue
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                status = event.status_code
                answer_headers = [(name, value) for name, value in event.headers]
                length = next((v for n, v in answer_headers if n == b"content-length"), None)
                bodiless = method == "HEAD" or status in (204, 304)  # a length here describes no body
                if length is not None and length.isdigit() and int(length) > max_body and not bodiless:
                    raise OriginError("too_large", f"the answer's body ({int(length)} bytes) exceeds {max_body} bytes")
                continue
            if isinstance(event, h11.Data):
                size += len(event.data)
                if size > max_body:
                    raise OriginError("too_large", f"the answer's body exceeds {max_body} bytes")
                chunks.append(bytes(event.data))
                continue
            if isinstance(event, h11.EndOfMessage):
                break
            if isinstance(event, h11.ConnectionClosed):
                raise OriginError("protocol", "the origin closed the connection mid-answer")
            raise OriginError("protocol", f"unexpected {type(event).__name__} from the origin")
        if h.our_state is h11.DONE and h.their_state is h11.DONE:
            h.start_next_cycle()
            self._put(key, conn)
        else:
            conn.close()
        return Answer(status, answer_headers, b"".join(chunks))

    def _send_all(self, conn: _Connection, data: bytes, deadlines: Deadlines) -> None:
        view = memoryview(data)
        while view:
            conn.sock.settimeout(min(_SLICE, deadlines.remaining()))
            try:
                sent = conn.sock.send(view)
            except TimeoutError:
                continue
            except (BrokenPipeError, ConnectionResetError):
                raise _StaleConnection() from None
            except OSError as exc:
                raise OriginError("unreachable", f"sending to the origin failed: {exc}") from None
            view = view[sent:]

    def _recv(self, conn: _Connection, deadlines: Deadlines) -> bytes:
        while True:
            conn.sock.settimeout(min(_SLICE, deadlines.remaining()))
            try:
                return conn.sock.recv(_READ)
            except TimeoutError:
                continue
            except ConnectionResetError:
                return b""  # h11 sees the close; before any byte it means a stale pooled connection
            except ssl.SSLError as exc:
                raise OriginError("protocol", f"TLS error from the origin: {exc}") from None
            except OSError as exc:
                raise OriginError("unreachable", f"reading from the origin failed: {exc}") from None


class _StaleConnection(Exception):
    """A kept-alive connection the origin had closed: nothing was received, retry on a new one."""


def _still_open(sock: socket.socket) -> bool:
    """An idle connection is usable if the origin has neither closed it nor sent anything unasked:
    either would make it readable."""
    try:
        poller = select.poll()
        poller.register(sock, select.POLLIN)
        return not poller.poll(0)
    except (OSError, ValueError):
        return False
