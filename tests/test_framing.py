"""The response head in C (http/_framing.c) against `_protocol._head` in Python: the same head, the
same length and flags, and every head the Python one refuses or reads specially left to it."""

from __future__ import annotations

import random
from typing import Any

import pytest

from isolate.http import _protocol

HEADS: list[Any] = [
    [],
    [(b"content-type", b"text/plain"), (b"content-length", b"5")],
    [(b"Content-Type", b"Text/Plain"), (b"X-Request-ID", b"abc"), (b"Content-Length", b"0")],
    [(b"content-length", b"12"), (b"content-length", b"not a number")],  # only the first is read
    [(b"content-length", b"")], [(b"content-length", b"abc")], [(b"content-length", b"+5")],
    [(b"content-length", b" 12")], [(b"content-length", b"1_0")], [(b"content-length", b"9" * 19)],
    [(b"content-length", b"9" * 18)], [(b"content-length", b"007")],
    [(b"transfer-encoding", b"chunked")], [(b"Transfer-Encoding", b"CHUNKED")],
    [(b"transfer-encoding", b"gzip, chunked")], [(b"transfer-encoding", b" chunked")],
    [(b"connection", b"close")], [(b"Connection", b"keep-alive, Close")], [(b"connection", b" close\t")],
    [(b"connection", b"closed")], [(b"connection", b",,close,")], [(b"connection", b"")],
    [(b"bad name", b"v")], [(b"bad:name", b"v")], [(b"", b"v")], [(b"x\x7f", b"v")], [(b"x\xff", b"v")],
    [(b"x", b"a\x00b")], [(b"x", b"a\nb")], [(b"x", b"a\rb")], [(b"x", b"a\tb")], [(b"x", b"\x7f")],
    [(b"x", b"\xff\xfe")], [(b"x", b"\x0b")],
    [("str-name", b"v")], [(b"x", "str value")], [[b"x", b"list pair"]], [(b"x", b"v", b"extra")],
    ((b"a", b"tuple of pairs"),), [(bytearray(b"x"), b"v")],
]


def reference(status: int, headers: Any) -> Any:
    saved = _protocol._framing
    _protocol._framing = None
    try:
        return outcome(status, headers)
    finally:
        _protocol._framing = saved


def outcome(status: int, headers: Any) -> Any:
    try:
        content, length, chunked, close = _protocol._head(status, headers)
    except Exception as exc:  # the Python head's refusals: the same type and message either way
        return type(exc), str(exc)
    return b"".join(content), length, chunked, close


def test_the_native_head_is_built() -> None:
    # `make test` builds it (a compiler is guaranteed): a failed build must fail here, not fall back quietly.
    assert _protocol._framing is not None
    made = _protocol._framing.head(b"HTTP/1.1 200 OK\r\n", [(b"Content-Length", b"2"), (b"Connection", b"close")])
    assert made == ([b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n"], 2, False, True)
    # Most heads are made in C; only the refused or unusual ones fall to Python.
    handled = [h for h in HEADS if _protocol._framing.head(b"HTTP/1.1 200 OK\r\n", h) is not None]
    assert len(handled) >= len(HEADS) // 2


@pytest.mark.parametrize("headers", HEADS, ids=[str(i) for i in range(len(HEADS))])
@pytest.mark.parametrize("status", [200, 204, 404, 599])
def test_the_same_head_as_the_python_one(status: int, headers: Any) -> None:
    assert outcome(status, headers) == reference(status, headers)


def test_the_same_head_for_random_fields() -> None:
    rng = random.Random(7)
    names = [b"content-length", b"Content-Length", b"transfer-encoding", b"connection", b"x-a", b"X-B", b"a b",
             b"x\x00", b"x:y"]
    pieces = [b"close", b"Close", b"chunked", b"12", b"0", b" ", b"\t", b",", b"a", b"\x00", b"\r", b"\x7f", b"\xff",
              b"keep-alive", b"-", b"9"]
    for _ in range(3000):
        headers = [(rng.choice(names), b"".join(rng.choice(pieces) for _ in range(rng.randrange(0, 4))))
                   for _ in range(rng.randrange(0, 5))]
        assert outcome(200, headers) == reference(200, headers), headers
