"""Outbound HTTP for guests (`http_send`): the request envelope, the allow-list, the address guard,
redirects, limits, and the answer envelope. ABI.md, "Outbound HTTP", is the contract."""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urljoin

import msgpack

from .. import tracing
from ._client import Answer, Deadlines, OriginError, Pool
from ._policy import AllowedHost, Target, allowed, is_internal, names_exactly, parse_url

# http_send results (ABI.md)
BAD_REQUEST = -1
DENIED = -2
BLOCKED_ADDRESS = -3
TOO_MANY_REQUESTS = -4
UNREACHABLE = -5
TIMEOUT = -6
TOO_LARGE = -7
PROTOCOL = -8
TOO_MANY_REDIRECTS = -9
ERRORS = {BAD_REQUEST: "bad_request", DENIED: "denied", BLOCKED_ADDRESS: "blocked_address",
          TOO_MANY_REQUESTS: "too_many_requests", UNREACHABLE: "unreachable", TIMEOUT: "timeout",
          TOO_LARGE: "too_large", PROTOCOL: "protocol", TOO_MANY_REDIRECTS: "too_many_redirects"}
_BY_KIND = {"unreachable": UNREACHABLE, "timeout": TIMEOUT, "too_large": TOO_LARGE, "protocol": PROTOCOL}

MAX_REDIRECTS = 10
MAX_HEADERS = 100
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "proxy-authenticate", "proxy-authorization",
                        "te", "trailer", "transfer-encoding", "upgrade"})
# Set by the host alone: the framing, the target, and the ids that tie the call to its request.
HOST_SET = frozenset({"host", "content-length", "x-request-id", "traceparent", "tracestate"})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
_CREDENTIALS = frozenset({"authorization", "cookie", "proxy-authorization"})
LOOKUPS_PER_MODULE = 8

if TYPE_CHECKING:
    from opentelemetry.trace import Span


class Refused(Exception):
    """A call that gets an error code instead of an answer; `note` is logged when set."""

    def __init__(self, code: int, detail: str, note: bool = False) -> None:
        super().__init__(detail)
        self.code = code
        self.note = note


@dataclass(frozen=True, slots=True)
class Call:
    """One decoded request envelope."""

    method: str
    target: Target
    headers: list[tuple[str, bytes]]
    body: bytes
    redirects: int
    timeout: float | None  # seconds, None: the module's outbound_timeout


@dataclass(frozen=True, slots=True)
class Context:
    """What a call needs to know about the module and the incoming request."""

    allowed_hosts: Sequence[AllowedHost]
    timeout: float  # the module's outbound_timeout
    max_body: int  # the module's outbound_response_size
    deadline: float  # the request's, time.perf_counter()
    request_id: str
    traceparent: str | None
    tracestate: str | None
    stopping: Callable[[], bool]
    module: str = ""  # whose name lookups these are: each module may have only so many waiting
    trace: Span | None = None  # the guest's span when traces are on: each call gets a child span


def decode_call(data: bytes) -> Call:
    """The request envelope; `Refused(BAD_REQUEST)` naming the first problem."""
    try:
        raw = msgpack.unpackb(data, raw=False, strict_map_key=True, max_str_len=len(data),
                              max_bin_len=len(data), max_array_len=1024, max_map_len=64)
    except Exception as exc:
        raise Refused(BAD_REQUEST, f"the request envelope is not msgpack: {exc}") from None
    if not isinstance(raw, dict):
        raise Refused(BAD_REQUEST, "the request envelope is not a map")
    url = raw.get("url")
    if not isinstance(url, str):
        raise Refused(BAD_REQUEST, "the request has no url string")
    try:
        target = parse_url(url)
    except ValueError as exc:
        raise Refused(BAD_REQUEST, f"bad url: {exc}") from None
    method = raw.get("method", "GET")
    if not isinstance(method, str) or not method or len(method) > 32 or not set(method) <= _TOKEN:
        raise Refused(BAD_REQUEST, f"bad method {method!r}")
    if method.upper() == "CONNECT":  # a tunnel is not a request: the allow-list could not see where it goes
        raise Refused(BAD_REQUEST, "CONNECT is not an outbound request")
    headers = _headers(raw.get("headers", []))
    body = raw.get("body")
    if isinstance(body, str):
        body = body.encode()
    elif body is None:
        body = b""
    elif not isinstance(body, bytes):
        raise Refused(BAD_REQUEST, "body must be bin, str or nil")
    redirects = raw.get("redirects", 0)
    if type(redirects) is not int or not 0 <= redirects <= MAX_REDIRECTS:
        raise Refused(BAD_REQUEST, f"redirects must be an integer within 0-{MAX_REDIRECTS}")
    timeout_ms = raw.get("timeout_ms", 0)
    if type(timeout_ms) is not int or timeout_ms < 0:
        raise Refused(BAD_REQUEST, "timeout_ms must be a non-negative integer")
    return Call(method.upper(), target, headers, body, redirects,
                timeout_ms / 1000 if timeout_ms else None)


def _headers(raw: Any) -> list[tuple[str, bytes]]:
    if not isinstance(raw, list) or len(raw) > MAX_HEADERS:
        raise Refused(BAD_REQUEST, f"headers must be a list of at most {MAX_HEADERS} [name, value] pairs")
    headers = []
    for pair in raw:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise Refused(BAD_REQUEST, "each header is a [name, value] pair")
        name, value = pair
        if isinstance(name, bytes):
            name = name.decode("latin-1")
        if isinstance(value, str):
            value = value.encode()
        if not isinstance(name, str) or not isinstance(value, bytes):
            raise Refused(BAD_REQUEST, "header names and values are str or bin")
        if not name or not set(name) <= _TOKEN:
            raise Refused(BAD_REQUEST, f"header name {name[:40]!r} is not a token")
        if any(b < 32 and b != 9 or b == 127 for b in value):
            raise Refused(BAD_REQUEST, f"header {name!r} has a control character in its value")
        lowered = name.lower()
        if lowered in HOP_BY_HOP or lowered in HOST_SET:
            continue
        headers.append((lowered, value))
    return headers


def encode_answer(answer: Answer, url: str) -> bytes:
    headers = [[name.decode("latin-1"), value.decode("utf-8", "replace")] for name, value in answer.headers]
    packed: bytes = msgpack.packb({"status": answer.status, "headers": headers, "body": answer.body, "url": url},
                                  use_bin_type=True)
    return packed


class Outbound:
    """Sends guests' calls: one per host, shared by every module and thread."""

    def __init__(self, resolve: Callable[[str, int], list[str]] | None = None,
                 tls: ssl.SSLContext | None = None) -> None:
        """`resolve(name, port)` -> addresses replaces the system resolver, `tls` the system's trusted
        roots (tests: names and certificates that cannot be had here)."""
        self.pool = Pool(tls)
        self._resolve_name = resolve or _system_resolve
        self._lookups: dict[str, int] = {}  # module -> name lookups still running (abandoned ones too)
        self._lock = threading.Lock()

    def close(self) -> None:
        self.pool.close()

    def send(self, call: Call, context: Context) -> bytes:
        """Perform `call` (following redirects if asked) and return the answer envelope.

        Raises `Refused` for a guest-visible error, TimeoutError when the request's deadline passes,
        InterruptedError when the host is stopping.
        """
        if context.trace is not None:
            return self._traced(call, context, context.trace)
        return encode_answer(*self._send(call, context))

    def _traced(self, call: Call, context: Context, parent: Span) -> bytes:
        """`send` within an `outbound` span, whose id the call's `traceparent` carries."""
        target = call.target
        # The origin only, not the path: paths carry secrets too (API tokens in them are common), and a
        # trace collector is not where a module's secrets go.
        span, traceparent, tracestate = tracing.outbound(
            parent, call.method, f"{target.scheme}://{target.authority}/", target.host)
        context = dataclasses.replace(context, traceparent=traceparent, tracestate=tracestate, trace=None)
        try:
            answer, url = self._send(call, context)
        except Refused as exc:
            span.set_attribute("isolate.outbound.result", ERRORS[exc.code])
            tracing.fail(span, ERRORS[exc.code])
            raise
        except BaseException as exc:  # the request's deadline, or the host stopping
            tracing.fail(span, "deadline" if isinstance(exc, TimeoutError) else type(exc).__name__)
            raise
        tracing.outbound_done(span, answer.status)
        return encode_answer(answer, url)

    def _send(self, call: Call, context: Context) -> tuple[Answer, str]:
        started = time.perf_counter()
        budget = context.timeout if call.timeout is None else min(call.timeout, context.timeout)
        deadlines = Deadlines(started + budget, context.deadline, context.stopping)
        method, target, headers, body = call.method, call.target, call.headers, call.body
        hops = 0
        while True:
            answer = self._one(method, target, headers, body, context, deadlines)
            location = next((v for n, v in answer.headers if n == b"location"), None)
            if answer.status not in _REDIRECTS or location is None or call.redirects == 0:
                return answer, target.url
            if hops >= call.redirects:
                raise Refused(TOO_MANY_REDIRECTS, f"more than {call.redirects} redirects from {call.target.url}")
            hops += 1
            try:
                following = parse_url(urljoin(target.url, location.decode("latin-1")))
            except ValueError as exc:
                raise Refused(PROTOCOL, f"redirect from {target.url} to a bad location: {exc}") from None
            if answer.status == 303 or (answer.status in (301, 302) and method == "POST"):
                method, body = ("GET" if method != "HEAD" else "HEAD"), b""
                headers = [(n, v) for n, v in headers if n not in ("content-type",)]
            if following.origin != target.origin:  # credentials are for the origin they were given to
                headers = [(n, v) for n, v in headers if n not in _CREDENTIALS]
            target = following

    def _one(self, method: str, target: Target, headers: list[tuple[str, bytes]], body: bytes,
             context: Context, deadlines: Deadlines) -> Answer:
        if not allowed(context.allowed_hosts, target):
            raise Refused(DENIED, f"{target.scheme}://{target.authority} is not in the module's allowed_hosts",
                          note=True)
        addresses = self._resolve(target, deadlines, context.module)
        if not names_exactly(context.allowed_hosts, target):
            internal = [a for a in addresses if is_internal(ipaddress.ip_address(a))]
            if internal:
                raise Refused(BLOCKED_ADDRESS, f"{target.host} resolves to the internal address {internal[0]}, "
                              "which no allowed_hosts entry names", note=True)
        sent = [(b"host", target.authority.encode()), *((n.encode(), v) for n, v in headers)]
        if body or method in ("POST", "PUT", "PATCH"):
            sent.append((b"content-length", str(len(body)).encode()))
        sent.append((b"x-request-id", context.request_id.encode()))
        if context.traceparent:
            sent.append((b"traceparent", context.traceparent.encode()))
            if context.tracestate:
                sent.append((b"tracestate", context.tracestate.encode()))
        last: OriginError | None = None
        for address in addresses[:4]:
            try:
                return self.pool.request((target.scheme, address, target.port, target.host), method=method,
                                         target=target.target, headers=sent, body=body, deadlines=deadlines,
                                         max_body=context.max_body)
            except OriginError as exc:
                if exc.kind != "unreachable":
                    raise Refused(_BY_KIND[exc.kind], f"{target.url}: {exc}") from None
                last = exc
        raise Refused(UNREACHABLE, f"{target.url}: {last}")

    def _resolve(self, target: Target, deadlines: Deadlines, module: str) -> list[str]:
        """The addresses to connect to, resolved once: the guard checks exactly these.

        getaddrinfo cannot be cancelled, so each lookup runs on a thread of its own that outlives a
        caller who gave up; a module may have `LOOKUPS_PER_MODULE` running, so one tenant's slow
        names never hold up another's.
        """
        try:
            return [str(ipaddress.ip_address(target.host))]
        except ValueError:
            pass
        with self._lock:
            if self._lookups.get(module, 0) >= LOOKUPS_PER_MODULE:
                raise Refused(UNREACHABLE, f"cannot resolve {target.host}: {LOOKUPS_PER_MODULE} name lookups of "
                              "this module are still running")
            self._lookups[module] = self._lookups.get(module, 0) + 1
        done = threading.Event()
        outcome: list[object] = []

        def lookup() -> None:
            try:
                outcome.append(self._resolve_name(target.host, target.port))
            except Exception as exc:  # reported to the caller below, if it still waits
                outcome.append(exc)
            finally:
                with self._lock:
                    self._lookups[module] -= 1
                    if not self._lookups[module]:
                        del self._lookups[module]
                done.set()

        threading.Thread(target=lookup, name="isolate-dns", daemon=True).start()
        while True:
            try:
                wait = min(0.25, deadlines.remaining())  # raises past a deadline (TimeoutError: the request's)
            except OriginError as exc:
                raise Refused(_BY_KIND[exc.kind], f"resolving {target.host}: {exc}") from None
            if done.wait(wait):
                break
        infos = outcome[0]
        if isinstance(infos, BaseException):
            raise Refused(UNREACHABLE, f"cannot resolve {target.host}: {infos}")
        assert isinstance(infos, list)
        addresses = list(dict.fromkeys(str(ipaddress.ip_address(a)) for a in infos))
        if not addresses:
            raise Refused(UNREACHABLE, f"{target.host} has no address")
        return addresses


def _system_resolve(name: str, port: int) -> list[str]:
    """The addresses getaddrinfo gives for `name`, in its order (zone ids dropped)."""
    infos = socket.getaddrinfo(name, port, 0, socket.SOCK_STREAM)
    return [str(sockaddr[0]).split("%")[0] for _family, _type, _proto, _name, sockaddr in infos]
