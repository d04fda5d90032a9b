"""Signed hops: an HMAC-SHA256 with the cluster secret over a forwarded request's identity."""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable

HOP = b"x-isolate-hop"
"""The signature header."""
HOPS = b"x-isolate-hops"
"""The untrusted forward counter."""
WINDOW = 30.0
"""Seconds a signature stays valid, and the clock skew allowed between nodes."""
MAX_HOPS = 3
"""A request that was forwarded this many times is not forwarded again (508 `forwarding_loop`)."""
_PREFIX = b"isolate-hop-v1"


def hops_of(value: bytes) -> int:
    """The forward count a request arrived with: 1-3 digits, anything else counts as 0 (only a client
    could send it, and a client can only make its own request fail sooner)."""
    return int(value) if 0 < len(value) <= 3 and value.isdigit() else 0


class HopSigner:
    """Signs and verifies hops with one cluster secret; `clock` (unix seconds) is injectable for tests.

    The forwarding node sends `x-isolate-hop: t=<unix seconds>;v1=<hex HMAC>` over (forwarded-by,
    client region, method, request target, request id, timestamp), each field length-prefixed. The
    receiving node trusts `x-isolate-forwarded-by` and `x-isolate-client-region` only when that
    verifies (in constant time) and the timestamp is within `window` seconds of its clock either way;
    otherwise the request is a client's. `x-isolate-hops` counts forwards and is never trusted: each
    node sends one more than it received, so a client can only raise it, and no node forwards a
    request that already made MAX_HOPS hops, so even nodes that do not trust each other cannot loop.
    """

    def __init__(self, secret: str, window: float = WINDOW, clock: Callable[[], float] = time.time) -> None:
        if not secret:
            raise ValueError("the cluster secret is empty")
        self._key = secret.encode()
        self._window = window
        self._clock = clock

    def _mac(self, stamp: bytes, fields: tuple[bytes, ...]) -> bytes:
        message = b"".join(len(f).to_bytes(4, "big") + f for f in (_PREFIX, stamp, *fields))
        return hmac.new(self._key, message, hashlib.sha256).hexdigest().encode()

    def sign(self, forwarded_by: bytes, client_region: bytes, method: bytes, target: bytes,
             request_id: bytes) -> bytes:
        """The `x-isolate-hop` value for a request forwarded now."""
        stamp = str(int(self._clock())).encode()
        return b"t=" + stamp + b";v1=" + self._mac(stamp, (forwarded_by, client_region, method, target, request_id))

    def verify(self, value: bytes, forwarded_by: bytes, client_region: bytes, method: bytes, target: bytes,
               request_id: bytes) -> bool:
        """Whether `value` signs exactly these fields, made within the window of this node's clock."""
        stamp, sep, mac = value.partition(b";v1=")
        if not sep or stamp[:2] != b"t=" or not stamp[2:].isdigit() or len(stamp) > 14:
            return False
        stamp = stamp[2:]
        if abs(self._clock() - int(stamp)) > self._window:
            return False
        expected = self._mac(stamp, (forwarded_by, client_region, method, target, request_id))
        return hmac.compare_digest(mac, expected)
