"""`GuestIO`: what one request's guest may reach, with its counters, called by the engine's host functions.

The engine copies bytes in and out of guest memory and nothing else; every decision (grants,
limits, error codes) is made here. Methods return bytes or a negative ABI code. They raise
TimeoutError when the request's deadline passes during a wait and InterruptedError when the host
is stopping: the engine turns both into the request's failure.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, ParamSpec, TypeVar

from ..errors import InvalidRequest, StorageError, StoreFull
from . import _kv, _outbound
from ._kv import KeyValue
from ._policy import AllowedHost

if TYPE_CHECKING:
    from opentelemetry.trace import Span

log = logging.getLogger("isolate.capabilities")
T = TypeVar("T")
R = TypeVar("R")
P = ParamSpec("P")


class _Code(Exception):
    """A key-value call refused with an ABI code."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _codes(method: Callable[P, R]) -> Callable[P, R | int]:
    """A key-value call that answers the code of a `_Code` raised inside it."""

    @functools.wraps(method)
    def call(*args: P.args, **kwargs: P.kwargs) -> R | int:
        try:
            return method(*args, **kwargs)
        except _Code as refused:
            return refused.code

    return call


class GuestIO:
    __slots__ = ("_outbound", "_context", "_requests", "_max_requests", "_held", "_kv", "_stores", "_granted",
                 "_ops", "_max_ops", "_kept", "note", "deadline", "results", "outbound_bytes")

    def __init__(self, *, outbound: _outbound.Outbound, kv: KeyValue, allowed_hosts: Sequence[AllowedHost],
                 stores: Sequence[str], outbound_requests: int, outbound_timeout: float,
                 outbound_response_size: int, kv_operations: int, deadline: float, request_id: str,
                 traceparent: str | None, tracestate: str | None, stopping: Callable[[], bool],
                 note: Callable[[str, str], None], module: str = "", trace: Span | None = None) -> None:
        """`trace`: the guest's span when traces are on; each outbound call gets a child span."""
        self._outbound = outbound
        self._context = _outbound.Context(allowed_hosts, outbound_timeout, outbound_response_size, deadline,
                                          request_id, traceparent, tracestate, stopping, module, trace)
        self._requests = 0
        self._max_requests = outbound_requests
        self._held: bytes | None = None
        self._kv = kv
        self._granted = frozenset(stores)
        self._stores: list[str] = []  # handle -> store name
        self._ops = 0
        self._max_ops = kv_operations
        self._kept: tuple[tuple[object, ...], bytes] | None = None  # a value too big for the guest's buffer
        self.note = note  # (level, message): a host log record of this request
        self.deadline = deadline
        self.results: dict[str, int] = {}  # outbound calls by result ("ok" or an error name), for metrics
        self.outbound_bytes = 0  # request and answer envelopes of outbound calls, for usage metering

    # -- outbound HTTP ------------------------------------------------------------------------

    def http_send(self, envelope: bytes) -> int:
        self._held = None
        try:
            call = _outbound.decode_call(envelope)
            if self._requests >= self._max_requests:
                raise _outbound.Refused(_outbound.TOO_MANY_REQUESTS,
                                        f"outbound call to {call.target.scheme}://{call.target.authority} refused: "
                                        f"this request already made "
                                        f"{self._max_requests} (limit outbound_requests)", note=True)
            self._requests += 1
            self._held = self._outbound.send(call, self._context)
            self.outbound_bytes += len(envelope) + len(self._held)
        except _outbound.Refused as exc:
            if exc.note:
                self.note("warn", f"http_send: {exc}")
            self._count_result(_outbound.ERRORS[exc.code])
            return exc.code
        except TimeoutError:  # the request's own deadline passed during the call: it fails, but was made
            self._count_result("deadline")
            raise
        self._count_result("ok")
        return len(self._held)

    def _count_result(self, result: str) -> None:
        self.results[result] = self.results.get(result, 0) + 1

    @property
    def kv_operations(self) -> int:
        """Key-value calls this request made (refused ones included)."""
        return self._ops

    def http_take(self, cap: int) -> bytes | int:
        """The held answer if it fits `cap` (and it is released), its length if not, −1 with none."""
        if self._held is None:
            return -1
        if len(self._held) > cap:
            return len(self._held)
        held, self._held = self._held, None
        return held

    # -- key-value ----------------------------------------------------------------------------
    # Each call returns its result or a negative code: the checks below raise `_Code`, which
    # `_codes` turns into the code the guest gets.

    @_codes
    def kv_open(self, name: bytes) -> int:
        self._count()
        try:
            store = name.decode()
        except UnicodeDecodeError:
            raise _Code(_kv.NO_SUCH_STORE) from None
        if store not in self._granted:
            self.note("warn", f"kv_open: store {store[:64]!r} is not granted to this module (key_value_stores)")
            raise _Code(_kv.NO_SUCH_STORE)
        self._stores.append(store)
        return len(self._stores) - 1

    @_codes
    def kv_get(self, handle: int, key: bytes, cap: int) -> bytes | int:
        what = ("get", handle, key)
        kept = self._kept_for(what, cap)
        if kept is not None:
            return kept
        store = self._checked(handle, key)
        value = self._storage(lambda: self._kv.get(store, key, self.deadline))
        if value is None:
            return _kv.NOT_FOUND
        return self._keep_if_large(what, value, cap)

    @_codes
    def kv_set(self, handle: int, key: bytes, value_len: int, read_value: Callable[[], bytes]) -> int:
        store = self._checked(handle, key)
        if value_len > _kv.MAX_VALUE:
            return _kv.TOO_LARGE  # judged before the value is copied out of the guest
        value = read_value()
        self._storage(lambda: self._kv.set(store, key, value, self.deadline))
        return 0

    @_codes
    def kv_delete(self, handle: int, key: bytes) -> int:
        store = self._checked(handle, key)
        self._storage(lambda: self._kv.delete(store, key, self.deadline))
        return 0  # whether or not the key was there

    @_codes
    def kv_exists(self, handle: int, key: bytes) -> int:
        store = self._checked(handle, key)
        return int(self._storage(lambda: self._kv.exists(store, key, self.deadline)))

    @_codes
    def kv_list(self, handle: int, prefix: bytes, cursor: bytes, cap: int) -> bytes | int:
        what = ("list", handle, prefix, cursor)
        kept = self._kept_for(what, cap)
        if kept is not None:
            return kept
        store = self._checked(handle, prefix, prefix=True)
        if len(cursor) > _kv.MAX_KEY:
            return _kv.BAD_KEY
        page = self._storage(lambda: self._kv.list(store, prefix, cursor, _kv.PAGE_KEYS, self.deadline))
        return self._keep_if_large(what, _kv.encode_page(page), cap)

    def _count(self) -> None:
        if self._ops >= self._max_ops:
            raise _Code(_kv.TOO_MANY_OPERATIONS)
        self._ops += 1

    def _checked(self, handle: int, key: bytes, *, prefix: bool = False) -> str:
        """The store behind `handle`, once the call is counted and the key (or prefix) checked."""
        self._count()
        if not 0 <= handle < len(self._stores):
            raise _Code(_kv.NO_SUCH_STORE)
        try:
            _kv.check_key(key, prefix=prefix)
        except InvalidRequest:
            raise _Code(_kv.BAD_KEY) from None
        return self._stores[handle]

    def _kept_for(self, what: tuple[object, ...], cap: int) -> bytes | None:
        """A value kept from a call whose buffer was too small, for the same call (one consistent read)."""
        if self._kept is None or self._kept[0] != what:
            return None
        value = self._kept[1]
        if len(value) <= cap:
            self._kept = None
        return value

    def _keep_if_large(self, what: tuple[object, ...], value: bytes, cap: int) -> bytes:
        self._kept = (what, value) if len(value) > cap else None
        return value

    def _storage(self, work: Callable[[], T]) -> T:
        """Run a backend call; a full store and storage failures become codes (the latter logged)."""
        try:
            return work()
        except StoreFull as exc:
            self.note("warn", f"kv_set: {exc}")
            raise _Code(_kv.STORE_FULL) from None
        except StorageError as exc:
            log.error("key-value storage failed: %s", exc.detail)
            self.note("error", "key-value storage failed (see the server log)")
            raise _Code(_kv.STORAGE) from None
