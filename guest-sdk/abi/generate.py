"""Generate the ABI v1 conformance vectors: request envelopes and the exact bytes a conforming
echo guest must answer. Run from the repository root: `python guest-sdk/abi/generate.py`.

The echo contract (every SDK's `conformance` guest implements it with the SDK's public API):
  status  200, or the integer value of request header `x-status` when present
  headers, in this order:
          x-method, x-path, x-query, x-region, x-client-region, x-request-id   (request fields)
          x-param-<name>  for each route parameter, in request order
          x-var-<name>    for each variable, in request order
          x-echo-<name>   for each request header, in request order
          x-header-count  the number of request headers, in decimal
  body    the request body, unchanged
Encoded as a map {"status", "headers", "body"} with msgpack's shortest forms (what msgpack-python
writes), so every SDK's encoder must agree byte for byte.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack

HERE = Path(__file__).resolve().parent


def request(**fields: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "method": "GET", "path": "/", "query": "", "headers": [], "body": b"", "params": {}, "vars": {},
        "region": "local", "client_region": "local", "request_id": "req-1",
    }
    base.update(fields)
    return base


def expected(req: dict[str, Any]) -> dict[str, Any]:
    status = 200
    headers = [["x-method", req["method"]], ["x-path", req["path"]], ["x-query", req["query"]],
               ["x-region", req["region"]], ["x-client-region", req["client_region"]],
               ["x-request-id", req["request_id"]]]
    headers += [["x-param-" + k, v] for k, v in req["params"].items()]
    headers += [["x-var-" + k, v] for k, v in req["vars"].items()]
    for name, value in req["headers"]:
        if name == "x-status":
            status = int(value)
        headers.append(["x-echo-" + name, value])
    headers.append(["x-header-count", str(len(req["headers"]))])
    return {"status": status, "headers": headers, "body": req["body"]}


VECTORS: list[tuple[str, dict[str, Any]]] = [
    ("minimal", request()),
    ("post-with-body", request(method="POST", path="/submit", body=b"hello, world")),
    ("query-and-headers", request(path="/search", query="q=wasm&page=2",
                                  headers=[["accept", "text/html"], ["x-a", "1"], ["x-a", "2"]])),
    ("params-and-vars", request(path="/users/42/posts/7", params={"id": "42", "post": "7"},
                                vars={"greeting": "hi", "mode": "test"})),
    ("regions", request(region="eu", client_region="us", request_id="abc-123")),
    ("status-from-header", request(headers=[["x-status", "201"]])),
    ("status-404", request(headers=[["x-status", "404"]])),
    ("utf8", request(path="/caf\u00e9", query="n=\u00fcber", vars={"emoji": "\U0001f600 ok"},
                     body="gr\u00fc\u00df dich".encode())),
    ("binary-body", request(method="PUT", body=bytes(range(256)))),
    ("empty-strings", request(method="OPTIONS", path="/", query="", request_id="", headers=[["x-empty", ""]])),
    ("str8-lengths", request(path="/" + "p" * 40, query="q" * 200, headers=[["x-long", "v" * 255]])),
    ("str16-lengths", request(query="q" * 300, headers=[["x-longer", "w" * 70000]])),
    ("bin16-body", request(method="POST", body=b"\x00\xff" * 200)),
    ("bin32-body", request(method="POST", body=bytes(i % 251 for i in range(70000)))),
    ("many-headers", request(headers=[[f"x-h{i}", str(i)] for i in range(20)])),
    ("array16-headers", request(headers=[[f"h{i}", "v"] for i in range(40)])),
    ("map16-vars", request(vars={f"v{i}": str(i) for i in range(20)})),
]


def main() -> None:
    out = []
    for name, req in VECTORS:
        packed_request = msgpack.packb(req, use_bin_type=True)
        packed_response = msgpack.packb(expected(req), use_bin_type=True)
        out.append({"name": name, "request": packed_request, "response": packed_response})
    (HERE / "vectors.msgpack").write_bytes(msgpack.packb(out, use_bin_type=True))
    summary = [{"name": v["name"], "request_bytes": len(v["request"]), "response_bytes": len(v["response"])}
               for v in out]
    (HERE / "vectors.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"wrote {len(out)} vectors to {HERE / 'vectors.msgpack'}")


if __name__ == "__main__":
    main()
