"""The host side of wasi:http 0.2 (types, outgoing-handler) and `Exchange`, the state of one request to a component."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import msgpack

from ..errors import AbiViolation, MemoryLimit, ResponseTooLarge
from . import _output
from ._wasip2 import (
    CLOSED,
    ENTRY_OVERHEAD,
    MAX_ENTRIES,
    OK_NONE,
    InputStream,
    OutputStream,
    Pollable,
    Resources,
    Spec,
    definer,
    drop,
    failed,
    get,
    hold,
    interrupt,
    ready_pollable,
)
from ._wasip2 import SPECS as WASI_SPECS

# Resource type ids (the bridge's `define_resource` ids), distinct from _wasip2's.
FIELDS = 16
INCOMING_REQUEST = 17
OUTGOING_RESPONSE = 18
INCOMING_BODY = 19
OUTGOING_BODY = 20
RESPONSE_OUTPARAM = 21
FUTURE_TRAILERS = 22
OUTGOING_REQUEST = 23
REQUEST_OPTIONS = 24
INCOMING_RESPONSE = 25
FUTURE_INCOMING_RESPONSE = 26

OUTBOUND_BODY_LIMIT = 16 << 20
"""Bytes a guest may write to an outbound request's body (the whole body is sent in one envelope)."""

ERR_NONE = ("err", None)
INVALID_SYNTAX = ("err", ("invalid-syntax", None))
FORBIDDEN = ("err", ("forbidden", None))
IMMUTABLE = ("err", ("immutable", None))

# As wasmtime (and the `http` crate it uses): a name is a non-empty RFC 9110 token of at most 64 KiB
# (compared lower-cased), a value any bytes but controls other than tab.
_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,65535}\Z").match
_VALUE = re.compile(rb"[\t\x20-\x7e\x80-\xff]*\Z").match
FORBIDDEN_HEADERS = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                               "proxy-connection", "transfer-encoding", "upgrade", "host", "http2-settings"})
"""Headers a guest may not set (wasmtime's default list): the host owns the framing and the target."""

_METHODS = {name.upper(): (name, None) for name in
            ("get", "head", "post", "put", "delete", "connect", "options", "trace", "patch")}
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+\Z").match
_PATH = re.compile(r"[^\x00-\x20\x7f#]*\Z").match
_AUTHORITY = re.compile(r"[^\x00-\x20\x7f/?#@]+\Z").match


def _method(name: str) -> tuple[str, str | None]:
    return _METHODS.get(name) or ("other", name)


def _method_name(method: tuple[str, str | None]) -> str:
    case, other = method
    return other if case == "other" and other is not None else case.upper()


def _scheme(name: str) -> tuple[str, str | None]:
    lowered = name.lower()
    if lowered == "http":
        return ("HTTP", None)
    if lowered == "https":
        return ("HTTPS", None)
    return ("other", name)


# -- fields -------------------------------------------------------------------------------------

class Fields:
    """Headers or trailers: (lower-cased name, value) pairs in order. Views handed out by a request
    or response (`headers()`) share its list and are immutable, as in wasmtime."""

    __slots__ = ("entries", "mutable")

    def __init__(self, entries: list[tuple[str, bytes]], mutable: bool) -> None:
        self.entries = entries
        self.mutable = mutable


def _refusal(name: str) -> tuple[str, Any] | None:
    """Why a guest may not set `name`, as a header-error result; None if it may."""
    if not _NAME(name):
        return INVALID_SYNTAX
    if name.lower() in FORBIDDEN_HEADERS:
        return FORBIDDEN
    return None


def _fields_new(state: Resources) -> int:
    return state.add(Fields([], True))


def _fields_from_list(state: Resources, entries: list[tuple[str, bytes]]) -> tuple[str, Any]:
    checked = []
    for name, value in entries:
        refused = _refusal(name)
        if refused is not None:
            return refused
        if not _VALUE(value):
            return INVALID_SYNTAX
        checked.append((name.lower(), bytes(value)))
    _hold_entries(state, checked, len(checked))
    return ("ok", state.add(Fields(checked, True)))


def _hold_entries(state: Resources, added: list[tuple[str, bytes]], total: int) -> None:
    """Count header entries the host keeps for the guest: bytes with a per-entry overhead, and at most
    MAX_ENTRIES in one fields resource (wasmtime's HeaderMap limit)."""
    if total > MAX_ENTRIES:
        raise MemoryLimit(f"guest made a fields resource of {total} entries; at most {MAX_ENTRIES}",
                          limit="host_memory")
    hold(state, sum(len(name) + len(value) + ENTRY_OVERHEAD for name, value in added))


def _fields_get(state: Resources, rep: int, name: str) -> list[bytes]:
    fields: Fields = get(state, rep)
    name = name.lower()
    return [value for key, value in fields.entries if key == name]


def _fields_has(state: Resources, rep: int, name: str) -> bool:
    fields: Fields = get(state, rep)
    name = name.lower()
    return any(key == name for key, _ in fields.entries)


def _fields_set(state: Resources, rep: int, name: str, values: list[bytes]) -> tuple[str, Any]:
    fields: Fields = get(state, rep)
    refused = _refusal(name)
    if refused is not None:
        return refused
    if not all(_VALUE(value) for value in values):
        return INVALID_SYNTAX
    if not fields.mutable:
        return IMMUTABLE
    name = name.lower()
    entries = fields.entries
    _hold_entries(state, [(name, value) for value in values], len(entries) + len(values))
    at = next((index for index, (key, _) in enumerate(entries) if key == name), len(entries))
    kept = [entry for entry in entries if entry[0] != name]
    # in place: a view of these fields sees the change; the values take the first old one's place
    entries[:] = kept[:at] + [(name, bytes(value)) for value in values] + kept[at:]
    return OK_NONE


def _fields_delete(state: Resources, rep: int, name: str) -> tuple[str, Any]:
    fields: Fields = get(state, rep)
    refused = _refusal(name)
    if refused is not None:
        return refused
    if not fields.mutable:
        return IMMUTABLE
    name = name.lower()
    fields.entries[:] = [entry for entry in fields.entries if entry[0] != name]
    return OK_NONE


def _fields_append(state: Resources, rep: int, name: str, value: bytes) -> tuple[str, Any]:
    fields: Fields = get(state, rep)
    refused = _refusal(name)
    if refused is not None:
        return refused
    if not _VALUE(value):
        return INVALID_SYNTAX
    if not fields.mutable:
        return IMMUTABLE
    _hold_entries(state, [(name, value)], len(fields.entries) + 1)
    fields.entries.append((name.lower(), bytes(value)))
    return OK_NONE


def _fields_entries(state: Resources, rep: int) -> list[tuple[str, bytes]]:
    fields: Fields = get(state, rep)
    return fields.entries


def _fields_clone(state: Resources, rep: int) -> int:
    fields: Fields = get(state, rep)
    _hold_entries(state, fields.entries, len(fields.entries))
    return state.add(Fields(list(fields.entries), True))


def _take_fields(state: Resources, rep: int) -> list[tuple[str, bytes]]:
    """The entries of fields the guest gave away (an own<fields> parameter): its handle is gone."""
    fields: Fields = get(state, rep)
    del state.table[rep]
    return fields.entries if fields.mutable else list(fields.entries)


# -- bodies -------------------------------------------------------------------------------------

class IncomingBody:
    __slots__ = ("data", "streamed")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.streamed = False


def _incoming_body_stream(state: Resources, rep: int) -> tuple[str, Any]:
    body: IncomingBody = get(state, rep)
    if body.streamed:
        return ERR_NONE
    body.streamed = True
    return ("ok", state.add(InputStream(body.data)))


class FutureTrailers:
    """The trailers of a buffered body: none, known at once; `get` answers once."""

    __slots__ = ("taken",)

    def __init__(self) -> None:
        self.taken = False


def _incoming_body_finish(state: Resources, rep: int) -> int:
    get(state, rep)
    del state.table[rep]
    return state.add(FutureTrailers())


def _future_trailers_subscribe(state: Resources, rep: int) -> int:
    get(state, rep)
    return ready_pollable(state)


def _future_trailers_get(state: Resources, rep: int) -> tuple[str, Any]:
    future: FutureTrailers = get(state, rep)
    if future.taken:
        return ERR_NONE
    future.taken = True
    return ("ok", OK_NONE)  # some(ok(ok(none))): no trailers


class OutgoingBody:
    """A body the guest writes, buffered whole: a response's (limited by the request's response
    size, over which the request fails) or an outbound request's."""

    __slots__ = ("buffer", "limit", "response", "streamed", "finished")

    def __init__(self, limit: int, response: bool) -> None:
        self.buffer = bytearray()
        self.limit = limit
        self.response = response
        self.streamed = False
        self.finished = False


class BodyStream(OutputStream):
    __slots__ = ("body",)

    def __init__(self, body: OutgoingBody) -> None:
        self.body = body

    def write(self, state: Resources, data: bytes) -> tuple[str, Any]:
        body = self.body
        if body.finished:
            return CLOSED
        size = len(body.buffer) + len(data)
        if size > body.limit:
            if body.response:
                raise ResponseTooLarge(f"response of {size} bytes or more exceeds the {body.limit}-byte limit",
                                       limit="response_size", size=size)
            return failed(state, f"outbound request body over the {body.limit}-byte limit")
        if not body.response:
            hold(state, len(data))
        body.buffer += data
        return OK_NONE


def _outgoing_body_write(state: Resources, rep: int) -> tuple[str, Any]:
    body: OutgoingBody = get(state, rep)
    if body.streamed:
        return ERR_NONE
    body.streamed = True
    return ("ok", state.add(BodyStream(body)))


def _outgoing_body_finish(state: Resources, rep: int, trailers: int | None) -> tuple[str, Any]:
    body: OutgoingBody = get(state, rep)
    del state.table[rep]
    if trailers is not None:  # a buffered body has no way to send trailers: they are dropped
        _take_fields(state, trailers)
    body.finished = True
    return OK_NONE


# -- the incoming request and its response ------------------------------------------------------

class IncomingRequest:
    __slots__ = ("method", "scheme", "authority", "path_with_query", "entries", "body")

    def __init__(self, method: str, scheme: str, authority: str, path_with_query: str,
                 entries: list[tuple[str, bytes]], body: bytes) -> None:
        self.method = _method(method.upper())
        self.scheme = _scheme(scheme)
        self.authority = authority
        self.path_with_query = path_with_query
        self.entries = entries
        self.body: bytes | None = body


def _request_method(state: Resources, rep: int) -> tuple[str, str | None]:
    request: IncomingRequest = get(state, rep)
    return request.method


def _request_path_with_query(state: Resources, rep: int) -> str:
    request: IncomingRequest = get(state, rep)
    return request.path_with_query


def _request_scheme(state: Resources, rep: int) -> tuple[str, str | None]:
    request: IncomingRequest = get(state, rep)
    return request.scheme


def _request_authority(state: Resources, rep: int) -> str:
    request: IncomingRequest = get(state, rep)
    return request.authority


def _request_headers(state: Resources, rep: int) -> int:
    request: IncomingRequest | IncomingResponse = get(state, rep)
    return state.add(Fields(request.entries, False))


def _request_consume(state: Resources, rep: int) -> tuple[str, Any]:
    request: IncomingRequest | IncomingResponse = get(state, rep)
    body = request.body
    if body is None:
        return ERR_NONE
    request.body = None
    return ("ok", state.add(IncomingBody(body)))


class OutgoingResponse:
    __slots__ = ("status", "entries", "body")

    def __init__(self, entries: list[tuple[str, bytes]]) -> None:
        self.status = 200
        self.entries = entries
        self.body: OutgoingBody | None = None


def _response_new(state: Resources, headers: int) -> int:
    return state.add(OutgoingResponse(_take_fields(state, headers)))


def _response_status(state: Resources, rep: int) -> int:
    response: OutgoingResponse = get(state, rep)
    return response.status


def _response_set_status(state: Resources, rep: int, status: int) -> tuple[str, None]:
    response: OutgoingResponse = get(state, rep)
    if not 100 <= status <= 999:  # what the `http` crate (wasmtime) accepts as a status code
        return ERR_NONE
    response.status = status
    return OK_NONE


def _response_headers(state: Resources, rep: int) -> int:
    response: OutgoingResponse | OutgoingRequest = get(state, rep)
    return state.add(Fields(response.entries, False))


def _response_body(state: Resources, rep: int) -> tuple[str, Any]:
    response: OutgoingResponse = get(state, rep)
    if response.body is not None:
        return ERR_NONE
    response.body = OutgoingBody(getattr(state, "response_limit", OUTBOUND_BODY_LIMIT), True)
    return ("ok", state.add(response.body))


class ResponseOutparam:
    __slots__ = ()


def _outparam_set(state: Exchange, rep: int, response: tuple[str, Any]) -> None:
    if not isinstance(get(state, rep), ResponseOutparam):
        raise AbiViolation(f"resource handle {rep} is not a response-outparam")
    del state.table[rep]
    case, value = response
    if case == "ok":
        outgoing: OutgoingResponse = get(state, value)
        del state.table[value]
        state.outgoing = outgoing
    else:
        state.response_error = value


def _http_error_code(state: Resources, rep: int) -> None:
    get(state, rep)
    return None  # io errors here are the host's own (a closed or failed stream), never an HTTP error


# -- outbound requests --------------------------------------------------------------------------

class OutgoingRequest:
    __slots__ = ("method", "scheme", "authority", "path_with_query", "entries", "body")

    def __init__(self, entries: list[tuple[str, bytes]]) -> None:
        self.method: tuple[str, str | None] = ("get", None)
        self.scheme: tuple[str, str | None] | None = None
        self.authority: str | None = None
        self.path_with_query: str | None = None
        self.entries = entries
        self.body: OutgoingBody | None = None


def _outgoing_request_new(state: Resources, headers: int) -> int:
    return state.add(OutgoingRequest(_take_fields(state, headers)))


def _outgoing_request_body(state: Resources, rep: int) -> tuple[str, Any]:
    request: OutgoingRequest = get(state, rep)
    if request.body is not None:
        return ERR_NONE
    request.body = OutgoingBody(OUTBOUND_BODY_LIMIT, False)
    return ("ok", state.add(request.body))


def _outgoing_request_method(state: Resources, rep: int) -> tuple[str, str | None]:
    request: OutgoingRequest = get(state, rep)
    return request.method


def _outgoing_request_set_method(state: Resources, rep: int, method: tuple[str, str | None]) -> tuple[str, None]:
    request: OutgoingRequest = get(state, rep)
    if method[0] == "other" and not (method[1] and _TOKEN(method[1])):
        return ERR_NONE
    request.method = method
    return OK_NONE


def _outgoing_request_path(state: Resources, rep: int) -> str | None:
    request: OutgoingRequest = get(state, rep)
    return request.path_with_query


def _outgoing_request_set_path(state: Resources, rep: int, path: str | None) -> tuple[str, None]:
    request: OutgoingRequest = get(state, rep)
    if path is not None and not _PATH(path):
        return ERR_NONE
    request.path_with_query = path
    return OK_NONE


def _outgoing_request_scheme(state: Resources, rep: int) -> tuple[str, str | None] | None:
    request: OutgoingRequest = get(state, rep)
    return request.scheme


def _outgoing_request_set_scheme(state: Resources, rep: int, scheme: tuple[str, str | None] | None) -> tuple[str, None]:
    request: OutgoingRequest = get(state, rep)
    if scheme is not None and scheme[0] == "other" and not (scheme[1] and re.fullmatch(r"[A-Za-z][A-Za-z0-9+.\-]*",
                                                                                         scheme[1])):
        return ERR_NONE
    request.scheme = scheme
    return OK_NONE


def _outgoing_request_authority(state: Resources, rep: int) -> str | None:
    request: OutgoingRequest = get(state, rep)
    return request.authority


def _outgoing_request_set_authority(state: Resources, rep: int, authority: str | None) -> tuple[str, None]:
    request: OutgoingRequest = get(state, rep)
    if authority is not None and not _AUTHORITY(authority):
        return ERR_NONE
    request.authority = authority
    return OK_NONE


class RequestOptions:
    """Timeouts in nanoseconds (None: the module's outbound timeout)."""

    __slots__ = ("connect", "first_byte", "between_bytes")

    def __init__(self) -> None:
        self.connect: int | None = None
        self.first_byte: int | None = None
        self.between_bytes: int | None = None


def _options_new(state: Resources) -> int:
    return state.add(RequestOptions())


def _option_getter(attribute: str) -> Callable[[Resources, int], int | None]:
    def read(state: Resources, rep: int) -> int | None:
        options: RequestOptions = get(state, rep)
        value: int | None = getattr(options, attribute)
        return value

    return read


def _option_setter(attribute: str) -> Callable[[Resources, int, int | None], tuple[str, None]]:
    def write(state: Resources, rep: int, duration: int | None) -> tuple[str, None]:
        options: RequestOptions = get(state, rep)
        setattr(options, attribute, duration)
        return OK_NONE

    return write


class IncomingResponse:
    __slots__ = ("status", "entries", "body")

    def __init__(self, status: int, entries: list[tuple[str, bytes]], body: bytes) -> None:
        self.status = status
        self.entries = entries
        self.body: bytes | None = body


def _incoming_response_status(state: Resources, rep: int) -> int:
    response: IncomingResponse = get(state, rep)
    return response.status


# http_send's refusal codes (ABI.md) as wasi:http error codes
_SEND_ERRORS: dict[int, tuple[str, Any]] = {
    -1: ("internal-error", "the host refused the request as malformed"),
    -2: ("HTTP-request-denied", None),
    -3: ("destination-IP-prohibited", None),
    -4: ("connection-limit-reached", None),
    -5: ("connection-refused", None),
    -6: ("HTTP-response-timeout", None),
    -7: ("HTTP-response-body-size", None),
    -8: ("HTTP-protocol-error", None),
    -9: ("loop-detected", None),
}


class FutureIncomingResponse:
    """An outbound call, sent when the guest first asks for its answer once the request's body is
    complete (guests write the body after `handle`); `get` answers once."""

    __slots__ = ("request", "timeout_ms", "forced", "answered")

    def __init__(self, request: OutgoingRequest, timeout_ms: int) -> None:
        self.request = request
        self.timeout_ms = timeout_ms
        self.forced = False
        self.answered = False

    def ready(self) -> bool:
        body = self.request.body
        return body is None or body.finished or self.forced

    def force(self) -> None:
        self.forced = True


def _outgoing_handle(state: Exchange, rep: int, options: int | None) -> tuple[str, Any]:
    request: OutgoingRequest = get(state, rep)
    del state.table[rep]
    timeout_ms = 0
    if options is not None:
        chosen: RequestOptions = get(state, options)
        del state.table[options]
        # one timeout bounds the whole call here: until the first byte is the closest of the three
        parts = [part for part in (chosen.connect, chosen.first_byte) if part is not None]
        timeout_ms = max(1, sum(parts) // 1_000_000) if parts else 0
    if state.io is None:
        return ("err", ("HTTP-request-denied", None))
    if not request.authority:
        return ("err", ("HTTP-request-URI-invalid", None))
    scheme = request.scheme
    if scheme is not None and scheme[0] == "other":
        return ("err", ("HTTP-request-URI-invalid", None))
    return ("ok", state.add(FutureIncomingResponse(request, timeout_ms)))


def _future_response_subscribe(state: Resources, rep: int) -> int:
    future: FutureIncomingResponse = get(state, rep)
    return state.add(Pollable(0.0, future))


def _future_response_get(state: Exchange, rep: int) -> tuple[str, Any] | None:
    future: FutureIncomingResponse = get(state, rep)
    if future.answered:
        return ERR_NONE
    if not future.ready():
        return None
    future.answered = True
    result = _send(state, future)
    return ("ok", result)


def _send(state: Exchange, future: FutureIncomingResponse) -> tuple[str, Any]:
    """Make the call through the request's GuestIO: ok(incoming-response) or err(error-code)."""
    request = future.request
    body = request.body
    if body is not None:
        body.finished = True  # what was not written by now never will be sent
    scheme = "http" if request.scheme is not None and request.scheme[0] == "HTTP" else "https"
    envelope: dict[str, Any] = {
        "url": f"{scheme}://{request.authority}{request.path_with_query or '/'}",
        "method": _method_name(request.method),
        "headers": [[name, value] for name, value in request.entries],
    }
    if body is not None and body.buffer:
        envelope["body"] = bytes(body.buffer)
    if future.timeout_ms:
        envelope["timeout_ms"] = future.timeout_ms
    io = state.io
    state.waited = True
    try:
        size = io.http_send(msgpack.packb(envelope, use_bin_type=True))
        if size < 0:
            return ("err", _SEND_ERRORS.get(size, ("internal-error", f"outbound call failed ({size})")))
        answer = io.http_take(size)
    except TimeoutError:
        interrupt(state, "timeout")
    except InterruptedError:
        interrupt(state, "shutdown")
    if not isinstance(answer, bytes):
        return ("err", ("internal-error", "the outbound answer was lost"))
    decoded = msgpack.unpackb(answer, raw=False)
    entries = [(str(name), value.encode() if isinstance(value, str) else bytes(value))
               for name, value in decoded["headers"]]
    return ("ok", state.add(IncomingResponse(int(decoded["status"]), entries, decoded["body"])))


# -- the exchange -------------------------------------------------------------------------------

OUTPARAM = ResponseOutparam()


class Exchange(Resources):
    """One request to a wasi:http component: the resources its guest holds and what it answered.

    After the run, `response` is (status, headers, body) once the guest called
    `response-outparam.set` with a response (the body as written by then: it is buffered, so a body
    the guest did not finish is sent as it stands), `response_error` the error-code it set instead,
    `error` what failed the guest in a host call (first one wins) and `waited` whether it waited in
    one. Call `flush_output()` once the run returns, before reading the capture: stdout and stderr
    are recorded a line at a time and may hold an unfinished one.
    """

    __slots__ = ("request", "io", "response_limit", "outgoing", "response_error")

    def __init__(self, *, method: str, scheme: str, authority: str, path_with_query: str,
                 headers: Sequence[tuple[str, bytes]], body: bytes, environment: Sequence[tuple[str, str]],
                 capture: _output.Capture | None, deadline: float, io: Any = None, response_limit: int) -> None:
        super().__init__(capture, deadline, environment)
        entries = [(name.lower(), bytes(value)) for name, value in headers]
        self.request = IncomingRequest(method, scheme, authority, path_with_query, entries, body)
        self.io = io
        self.response_limit = response_limit
        self.outgoing: OutgoingResponse | None = None
        self.response_error: Any = None

    def handler_args(self) -> tuple[tuple[int, int], tuple[int, int]]:
        """The arguments of `incoming-handler.handle`: the request and the outparam, as (type id, rep)."""
        return ((INCOMING_REQUEST, self.add(self.request)), (RESPONSE_OUTPARAM, self.add(OUTPARAM)))

    @property
    def response(self) -> tuple[int, list[tuple[str, bytes]], bytes] | None:
        outgoing = self.outgoing
        if outgoing is None:
            return None
        body = outgoing.body
        return (outgoing.status, outgoing.entries, bytes(body.buffer) if body is not None else b"")


# -- the interfaces -----------------------------------------------------------------------------

SPECS: dict[str, Spec] = {
    "wasi:http/types": (
        (("fields", FIELDS, drop),
         ("incoming-request", INCOMING_REQUEST, drop),
         ("outgoing-request", OUTGOING_REQUEST, drop),
         ("request-options", REQUEST_OPTIONS, drop),
         ("response-outparam", RESPONSE_OUTPARAM, drop),
         ("incoming-response", INCOMING_RESPONSE, drop),
         ("incoming-body", INCOMING_BODY, drop),
         ("future-trailers", FUTURE_TRAILERS, drop),
         ("outgoing-response", OUTGOING_RESPONSE, drop),
         ("outgoing-body", OUTGOING_BODY, drop),
         ("future-incoming-response", FUTURE_INCOMING_RESPONSE, drop)),
        (("http-error-code", _http_error_code),
         ("[constructor]fields", _fields_new),
         ("[static]fields.from-list", _fields_from_list),
         ("[method]fields.get", _fields_get),
         ("[method]fields.has", _fields_has),
         ("[method]fields.set", _fields_set),
         ("[method]fields.delete", _fields_delete),
         ("[method]fields.append", _fields_append),
         ("[method]fields.entries", _fields_entries),
         ("[method]fields.clone", _fields_clone),
         ("[method]incoming-request.method", _request_method),
         ("[method]incoming-request.path-with-query", _request_path_with_query),
         ("[method]incoming-request.scheme", _request_scheme),
         ("[method]incoming-request.authority", _request_authority),
         ("[method]incoming-request.headers", _request_headers),
         ("[method]incoming-request.consume", _request_consume),
         ("[constructor]outgoing-request", _outgoing_request_new),
         ("[method]outgoing-request.body", _outgoing_request_body),
         ("[method]outgoing-request.method", _outgoing_request_method),
         ("[method]outgoing-request.set-method", _outgoing_request_set_method),
         ("[method]outgoing-request.path-with-query", _outgoing_request_path),
         ("[method]outgoing-request.set-path-with-query", _outgoing_request_set_path),
         ("[method]outgoing-request.scheme", _outgoing_request_scheme),
         ("[method]outgoing-request.set-scheme", _outgoing_request_set_scheme),
         ("[method]outgoing-request.authority", _outgoing_request_authority),
         ("[method]outgoing-request.set-authority", _outgoing_request_set_authority),
         ("[method]outgoing-request.headers", _response_headers),
         ("[constructor]request-options", _options_new),
         ("[method]request-options.connect-timeout", _option_getter("connect")),
         ("[method]request-options.set-connect-timeout", _option_setter("connect")),
         ("[method]request-options.first-byte-timeout", _option_getter("first_byte")),
         ("[method]request-options.set-first-byte-timeout", _option_setter("first_byte")),
         ("[method]request-options.between-bytes-timeout", _option_getter("between_bytes")),
         ("[method]request-options.set-between-bytes-timeout", _option_setter("between_bytes")),
         ("[static]response-outparam.set", _outparam_set),
         ("[method]incoming-response.status", _incoming_response_status),
         ("[method]incoming-response.headers", _request_headers),
         ("[method]incoming-response.consume", _request_consume),
         ("[method]incoming-body.stream", _incoming_body_stream),
         ("[static]incoming-body.finish", _incoming_body_finish),
         ("[method]future-trailers.subscribe", _future_trailers_subscribe),
         ("[method]future-trailers.get", _future_trailers_get),
         ("[constructor]outgoing-response", _response_new),
         ("[method]outgoing-response.status-code", _response_status),
         ("[method]outgoing-response.set-status-code", _response_set_status),
         ("[method]outgoing-response.headers", _response_headers),
         ("[method]outgoing-response.body", _response_body),
         ("[method]outgoing-body.write", _outgoing_body_write),
         ("[static]outgoing-body.finish", _outgoing_body_finish),
         ("[method]future-incoming-response.subscribe", _future_response_subscribe),
         ("[method]future-incoming-response.get", _future_response_get)),
    ),
    "wasi:http/outgoing-handler": ((), (("handle", _outgoing_handle),)),
}
"""wasi:http's host-implemented interfaces by unversioned name (incoming-handler is the guest's export)."""

HTTP_INTERFACES: dict[str, Callable[[int], None]] = {name: definer(spec) for name, spec in SPECS.items()}
ALL_SPECS: dict[str, Spec] = {**WASI_SPECS, **SPECS}
INTERFACES: dict[str, Callable[[int], None]] = {name: definer(spec) for name, spec in ALL_SPECS.items()}
"""Every interface a wasi:http proxy component may import that the host implements, by unversioned name."""
