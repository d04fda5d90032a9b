"""The request and response envelopes of ABI v1 (see guest-sdk/ABI.md) and their validation."""

from __future__ import annotations

import re
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack

from ..errors import AbiViolation, InvalidRequest

ABI_VERSION = 1
HOST_NAMESPACE = "isolate"
EXPORT_MEMORY = "memory"
EXPORT_ALLOC = "isolate_alloc"
EXPORT_HANDLE = "isolate_handle"
EXPORT_ABI_PREFIX = "isolate_abi_v"
EXPORT_INITIALIZE = "_initialize"

MAX_RESPONSE_HEADERS = 256
# RFC 9110 token for names; field values are visible ASCII, SP, HTAB or obs-text: never CR, LF, NUL.
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e\x80-\xff]*")


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One line of guest output: a `log` host call, or a write to WASI stdout/stderr."""

    stream: str  # "log", "stdout" or "stderr"
    level: str  # "debug" | "info" | "warn" | "error"
    message: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Request:
    """An HTTP request as the guest sees it."""

    method: str = "GET"
    path: str = "/"
    query: str = ""
    headers: Sequence[tuple[str, str]] = ()
    body: bytes = b""
    params: Mapping[str, str] = field(default_factory=dict)
    region: str = "local"
    client_region: str | None = None
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class Response:
    """What a guest answered, validated; `logs` and `info` describe the run that produced it."""

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes = b""
    logs: tuple[LogRecord, ...] = ()
    info: Mapping[str, Any] = field(default_factory=dict)

    def header(self, name: str) -> str | None:
        """The first value of header `name` (case-insensitive), or None."""
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None


_packers = threading.local()


def encode_request(request: Request, variables: Mapping[str, str]) -> bytes:
    """The msgpack request envelope written into guest memory."""
    packer = getattr(_packers, "packer", None)
    if packer is None:  # one per thread: a Packer keeps its buffer between calls, and is not thread-safe
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    headers = request.headers
    if type(headers) is not list and type(headers) is not tuple:
        headers = list(headers)
    for pair in headers:
        if type(pair) is not tuple and type(pair) is not list or len(pair) != 2:
            raise InvalidRequest(f"request cannot be encoded for the guest: header {pair!r} is not a "
                                 "(name, value) pair")
    envelope = {
        "method": request.method,
        "path": request.path,
        "query": request.query,
        "headers": headers,
        "body": request.body,
        "params": request.params,
        "vars": variables,
        "region": request.region,
        "client_region": request.client_region or request.region,
        "request_id": request.request_id,
    }
    try:
        packed: bytes = packer.pack(envelope)
    except (TypeError, ValueError):
        # Lists, tuples, dicts and bytes pack as they are; other mappings and buffers are converted
        # first (the slow path, and the one that names what cannot be encoded).
        packer.reset()
        try:
            envelope.update(body=bytes(request.body), params=dict(request.params), vars=dict(variables))
            packed = packer.pack(envelope)
        except (TypeError, ValueError) as exc:
            packer.reset()
            raise InvalidRequest(f"request cannot be encoded for the guest: {exc}") from None
    return packed


def decode_response(data: bytes) -> tuple[int, tuple[tuple[str, str], ...], bytes]:
    """Parse and check a guest's response envelope; anything off is an `AbiViolation`."""
    try:
        obj = msgpack.unpackb(data, raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise AbiViolation(f"response is not valid msgpack: {type(exc).__name__} {exc}".strip()) from None
    if not isinstance(obj, dict):
        raise AbiViolation(f"response must be a msgpack map, got {type(obj).__name__}")
    status = obj.get("status")
    # 1xx are interim responses: sent by a guest they would split the response stream (an interim
    # head, then the guest's body parsed as the final answer), so a guest's final status is 200-599.
    if type(status) is not int or not 200 <= status <= 599:
        raise AbiViolation(f"response status must be an integer in 200-599, got {status!r}", field="status")
    headers = check_headers(obj.get("headers", ()))
    body = obj.get("body", b"")
    if body is None:
        body = b""
    elif isinstance(body, str):
        body = body.encode()
    elif not isinstance(body, bytes):
        raise AbiViolation(f"response body must be bin, str or nil, got {type(body).__name__}", field="body")
    return status, headers, body


def check_headers(raw: Any) -> tuple[tuple[str, str], ...]:
    """A guest's response headers as (name, value) strings, checked; anything off is an `AbiViolation`."""
    if not isinstance(raw, (list, tuple)):
        raise AbiViolation("response headers must be an array of [name, value] pairs", field="headers")
    if len(raw) > MAX_RESPONSE_HEADERS:
        raise AbiViolation(f"response has {len(raw)} headers; at most {MAX_RESPONSE_HEADERS}", field="headers")
    out = []
    for pair in raw:
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise AbiViolation("each response header must be a [name, value] pair", field="headers")
        name, value = pair
        if isinstance(name, bytes):
            name = name.decode("latin-1")
        if isinstance(value, bytes):
            value = value.decode("latin-1")
        if not isinstance(name, str) or not _HEADER_NAME.fullmatch(name):
            raise AbiViolation(f"invalid response header name {name!r}", field="headers")
        if not isinstance(value, str) or not _HEADER_VALUE.fullmatch(value):
            raise AbiViolation(
                f"invalid value for response header {name!r}: control characters (CR, LF, NUL) are not allowed",
                field="headers",
            )
        out.append((name, value))
    return tuple(out)
