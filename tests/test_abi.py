"""ABI v1 envelopes: what the host sends, and every check on what a guest returns."""

from __future__ import annotations

import msgpack
import pytest

from isolate import AbiViolation, InvalidRequest, Request
from isolate.abi import decode_response, encode_request


def pack(obj: object) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def test_request_envelope_fields() -> None:
    request = Request(method="POST", path="/a", query="x=1", headers=[("h", "v")], body=b"\x00b",
                      params={"id": "7"}, region="eu", request_id="r1")
    envelope = msgpack.unpackb(encode_request(request, {"k": "v"}))
    assert envelope == {
        "method": "POST", "path": "/a", "query": "x=1", "headers": [["h", "v"]], "body": b"\x00b",
        "params": {"id": "7"}, "vars": {"k": "v"}, "region": "eu", "client_region": "eu", "request_id": "r1",
    }


def test_request_that_cannot_be_encoded() -> None:
    with pytest.raises(InvalidRequest):
        encode_request(Request(headers=[("h", object())]), {})  # type: ignore[list-item]


def test_valid_response_forms() -> None:
    assert decode_response(pack({"status": 201})) == (201, (), b"")
    assert decode_response(pack({"status": 200, "headers": [["a", "b"]], "body": "text"})) == (
        200, (("a", "b"),), b"text")
    assert decode_response(pack({"status": 204, "body": None}))[2] == b""
    # obs-text (latin-1) and tabs are legal in field values
    assert decode_response(pack({"status": 200, "headers": [["x", "a\tb\xe9"]]}))[1] == (("x", "a\tb\xe9"),)


@pytest.mark.parametrize(
    "payload, match",
    [
        (b"\xc1", "not valid msgpack"),
        (pack({"status": 200}) + b"\x00", "not valid msgpack"),
        (pack([200]), "must be a msgpack map"),
        (pack({"headers": []}), "status"),
        (pack({"status": 999}), "status"),
        (pack({"status": 99}), "status"),
        (pack({"status": True}), "status"),
        (pack({"status": "200"}), "status"),
        (pack({"status": 200, "headers": {"a": "b"}}), "array of"),
        (pack({"status": 200, "headers": [["a"]]}), "pair"),
        (pack({"status": 200, "headers": [["bad name", "v"]]}), "header name"),
        (pack({"status": 200, "headers": [["", "v"]]}), "header name"),
        (pack({"status": 200, "headers": [["x", "a\r\nset-cookie: evil"]]}), "CR, LF"),
        (pack({"status": 200, "headers": [["x", "a\nb"]]}), "CR, LF"),
        (pack({"status": 200, "headers": [["x", "a\x00b"]]}), "CR, LF"),
        (pack({"status": 200, "headers": [["x", "\u2603"]]}), "CR, LF"),
        (pack({"status": 200, "headers": [["x", 1]]}), "CR, LF"),
        (pack({"status": 200, "headers": [["x", "v"]] * 257}), "at most"),
        (pack({"status": 200, "body": 5}), "body"),
    ],
)
def test_invalid_responses_are_abi_violations(payload: bytes, match: str) -> None:
    with pytest.raises(AbiViolation, match=match) as info:
        decode_response(payload)
    assert info.value.kind == "abi" and info.value.status == 502
