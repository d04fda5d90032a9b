"""The one place an error becomes an HTTP answer: status, headers and the JSON diagnostic.

Both listeners (edge and admin), the connection-level checks of the HTTP protocol and the bearer
check all render through here, so every failure a client sees has the same shape:
`{"error": kind, "detail": ..., "request_id": ..., **extra}` with `x-request-id` beside it.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
from collections.abc import Iterable
from typing import Any

from ..errors import GuestError, InternalError, IsolateError, MethodNotAllowed, Unauthorized
from ._logs import defer_log

log = logging.getLogger("isolate.server")

Header = tuple[bytes, bytes]
Reply = tuple[int, list[Header], bytes]
"""An answer as the edge makes it: status, headers (with the length) and body; the protocol frames it."""
_JSON = (b"content-type", b"application/json")
REQUEST_ID = re.compile(rb"[A-Za-z0-9._:-]{1,128}")
"""A client's `x-request-id` is kept when it matches this (raw header bytes), else one is generated."""
# Generated request ids: a random per-process prefix and a counter (unique, and ~10x cheaper than uuid4).
_ID_PREFIX = os.urandom(8).hex()
_ID_COUNTER = itertools.count(1)


def new_request_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


def request_id_of(headers: Iterable[tuple[bytes, bytes]]) -> str:
    """The client's `x-request-id` if it is 1-128 characters of `A-Za-z0-9._:-`, else a new one."""
    for key, value in headers:
        if key == b"x-request-id" and REQUEST_ID.fullmatch(value):
            return value.decode("latin-1")
    return new_request_id()


def as_isolate_error(exc: BaseException) -> IsolateError:
    """Anything raised while serving, as a member of the error tree (unexpected ones are logged)."""
    if isinstance(exc, IsolateError):
        return exc
    log.error("unexpected error while serving a request", exc_info=exc)
    return InternalError(f"internal error ({type(exc).__name__}); the server log has the traceback")


_GUEST_MESSAGE_LINES = 24
"""At most this many trailing lines of a guest's stderr make its `guest_message` (a C assert, a Python
traceback, a JavaScript stack)."""


def guest_message(logs: Iterable[Any]) -> str | None:
    """The guest's own words about its failure, from what it wrote before failing (None: it said nothing).

    The SDKs say it as their last error-level log record (the Rust SDK's panic hook, the
    AssemblyScript SDK's `abort`); WASI guests write it to stderr (wasi-libc's `assert`), a write per
    record, so the trailing stderr writes are kept together. Failing both, the guest's last line. The
    host's own notes (a refused call, truncated output) are not the guest's words.
    """
    records = [r for r in logs if r.stream != "host" and str(r.message).strip()]
    if not records:
        return None
    last = len(records)
    while last and not (records[last - 1].stream == "stderr" or records[last - 1].level == "error"):
        last -= 1
    if not last:
        return str(records[-1].message).strip()
    first = last - 1
    while first and records[first].stream == records[first - 1].stream == "stderr":
        first -= 1
    lines = "".join(str(r.message) for r in records[first:last]).strip().splitlines()
    return "\n".join(lines[-_GUEST_MESSAGE_LINES:])


def diagnostic(exc: IsolateError, request_id: str, *, dev: bool = False) -> bytes:
    body: dict[str, Any] = {"error": exc.kind, "detail": exc.detail, "request_id": request_id}
    body.update((k, v) for k, v in exc.extra.items() if k not in body)
    if dev and isinstance(exc, GuestError):
        # Dev mode only: a production client learns no more of a guest's internals than it did
        # (the server log has both either way, see `log_guest_failure`).
        message = guest_message(exc.logs)
        if message is not None:
            body["guest_message"] = message
        if exc.backtrace:
            body["backtrace"] = list(exc.backtrace)
    return json.dumps(body, default=str).encode()


def log_guest_failure(exc: IsolateError, request_id: str) -> None:
    """Write a failed guest's diagnostic and frames to the server log, in every mode (its log lines are
    written beside, by the edge)."""
    if isinstance(exc, GuestError) and log.isEnabledFor(logging.WARNING):
        defer_log(log, logging.WARNING, "request_id=%s module=%s guest failed: error=%s detail=%s backtrace=%s",
                  request_id, exc.extra.get("module", ""), exc.kind, json.dumps(exc.detail),
                  json.dumps(list(exc.backtrace)))


def render(exc: IsolateError, request_id: str, *, head_only: bool = False,
           extra: Iterable[Header] = (), dev: bool = False) -> Reply:
    """Status, headers and body of the diagnostic for `exc` (no body for HEAD, but its length).

    `dev` (ServerConfig.dev): a guest failure's diagnostic also carries `guest_message` and a
    `backtrace` of every kind.
    """
    body = diagnostic(exc, request_id, dev=dev)
    headers = [_JSON, (b"content-length", str(len(body)).encode()), (b"x-request-id", request_id.encode())]
    if exc.status in (503, 429):
        headers.append((b"retry-after", b"1"))
    if isinstance(exc, Unauthorized):
        headers.append((b"www-authenticate", b'Bearer realm="isolate-admin"'))
    if isinstance(exc, MethodNotAllowed):
        headers.append((b"allow", ", ".join(exc.extra.get("allow", ())).encode()))
    headers.extend(extra)
    return exc.status, headers, b"" if head_only else body


async def send_error(send: Any, exc: IsolateError, request_id: str, *, head_only: bool = False,
                     extra: Iterable[Header] = (), dev: bool = False) -> None:
    """Send the diagnostic through an ASGI `send`."""
    log_guest_failure(exc, request_id)
    status, headers, body = render(exc, request_id, head_only=head_only, extra=extra, dev=dev)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def raw_response(exc: IsolateError, request_id: str | None = None) -> bytes:
    """A whole HTTP/1.1 response that closes the connection, for errors found below ASGI."""
    from http import HTTPStatus

    status, headers, body = render(exc, request_id or new_request_id(), extra=[(b"connection", b"close")])
    try:
        reason = HTTPStatus(status).phrase.encode()
    except ValueError:
        reason = b"Error"
    lines = [b"HTTP/1.1 %d %s" % (status, reason)] + [k + b": " + v for k, v in headers]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body
