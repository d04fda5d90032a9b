"""Traces: two real nodes (us forwards to eu) export OTLP/HTTP to a receiver on loopback; one trace end to end."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from live import ROOT, LiveServer
from otlp_receiver import ReceivedSpan, Receiver

from isolate import tracing
from isolate.build import build

TRACE_ID = secrets.token_hex(16)
CLIENT_SPAN = secrets.token_hex(8)


@pytest.fixture(scope="module")
def traced(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Receiver, dict[str, LiveServer]]]:
    for sample in ("hello", "proxy", "crash"):
        build(ROOT / "samples" / sample)
    root = tmp_path_factory.mktemp("traces")
    with Receiver() as receiver:
        env = {"ISOLATE_CLUSTER_SECRET": secrets.token_urlsafe(32), "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
               "OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_TRACES_EXPORTER": "", "OTEL_SDK_DISABLED": "",
               "OTEL_SERVICE_NAME": "edge"}
        nodes = {region: LiveServer(root / region, env=env) for region in ("us", "eu")}
        eu = nodes["eu"].edge_url
        # proxy runs only in eu and calls eu's own /hello: its outbound call is a third request span
        (root / "isolate.toml").write_text(f'''
[modules.hello]
path = "{ROOT / "samples" / "hello"}"

[modules.proxy]
path = "{ROOT / "samples" / "proxy"}"
variables = {{ origin = "{eu}" }}
allowed_hosts = ["{eu}"]
limits = {{ timeout = "5s" }}
regions = ["eu"]

[modules.denied]
path = "{ROOT / "samples" / "proxy"}"
variables = {{ origin = "{eu}" }}

[modules.crash]
path = "{ROOT / "samples" / "crash"}"

[[routes]]
path = "/hello"
module = "hello"

[[routes]]
path = "/denied/..."
module = "denied"

[[routes]]
path = "/crash/..."
module = "crash"

[[routes]]
path = "/proxy/..."
module = "proxy"
''')
        (root / "regions.json").write_text(json.dumps({"regions": [
            {"id": r, "name": r.upper(), "nodes": [nodes[r].edge_url]} for r in ("us", "eu")]}))
        for region, node in nodes.items():
            node.args = ["--manifest", str(root / "isolate.toml"), "--regions", str(root / "regions.json"),
                         "--region", region, "--node-name", f"node-{region}"]
        try:
            for node in nodes.values():
                node.start()
            deadline = time.monotonic() + 15
            while not healthy(nodes["us"]):  # us's first check of eu may have run before eu listened
                assert time.monotonic() < deadline, "us never saw eu healthy"
                time.sleep(0.1)
            yield receiver, nodes
        finally:
            for node in nodes.values():
                if node.process is not None and node.process.poll() is None:
                    node.stop()


def healthy(node: LiveServer) -> bool:
    with node.admin() as admin:
        health = admin.get("/v1/regions").json()["health"]
    return bool(health) and all(state["healthy"] for state in health.values())


def spans_of(receiver: Receiver, trace_id: str, count: int, timeout: float = 15) -> list[ReceivedSpan]:
    """The trace's spans once `count` of them arrived (exported in batches, by a thread of each node)."""
    deadline = time.monotonic() + timeout
    while True:
        spans = [s for s in receiver.received() if s.trace_id == trace_id]
        if len(spans) >= count or time.monotonic() > deadline:
            return spans
        time.sleep(0.05)


def test_one_trace_across_a_forwarding_hop_and_an_outbound_call(traced: tuple[Receiver, dict[str, LiveServer]]
                                                                 ) -> None:
    receiver, nodes = traced
    with httpx.Client(base_url=nodes["us"].edge_url, timeout=30) as client:
        response = client.get("/proxy/hello", headers={"traceparent": f"00-{TRACE_ID}-{CLIENT_SPAN}-01",
                                                        "tracestate": "vendor=x"})
    assert response.status_code == 200 and response.headers["x-isolate-region"] == "eu"
    assert "HELLO, WORLD!" in response.text
    # us: request, route, forward; eu: request, route, cache, guest, instantiate, outbound; and eu's
    # /hello called by the guest: request, route, cache, guest, instantiate
    spans = spans_of(receiver, TRACE_ID, 14)
    assert sorted(s.name for s in spans) == sorted(
        ["request", "route", "forward"] + ["request", "route", "cache", "guest", "instantiate", "outbound"]
        + ["request", "route", "cache", "guest", "instantiate"]), [(s.name, s.resource) for s in spans]
    by_id = {s.span_id: s for s in spans}
    assert len(by_id) == len(spans)

    def children(parent: ReceivedSpan) -> list[str]:
        return sorted(s.name for s in spans if s.parent_id == parent.span_id)

    def region(span: ReceivedSpan) -> str:
        return str(span.resource["isolate.region"])

    # us: the client's span is the parent of the first request span
    entry = next(s for s in spans if s.name == "request" and region(s) == "us")
    assert entry.parent_id == CLIENT_SPAN and entry.kind == "SERVER"
    assert entry.resource["service.name"] == "edge" and entry.resource["service.instance.id"] == "node-us"
    assert entry.attributes["http.request.method"] == "GET" and entry.attributes["url.path"] == "/proxy/hello"
    assert entry.attributes["isolate.module"] == "proxy" and entry.attributes["http.route"] == "/proxy/..."
    assert entry.attributes["isolate.region"] == "eu" and entry.attributes["isolate.forwarded"] is True
    assert entry.attributes["http.response.status_code"] == 200
    assert entry.attributes["isolate.request_id"] == response.headers["x-request-id"]
    assert children(entry) == ["forward", "route"]
    forward = next(s for s in spans if s.name == "forward")
    assert forward.kind == "CLIENT" and forward.attributes["isolate.forward.region"] == "eu"
    assert forward.attributes["http.response.status_code"] == 200

    # eu: the forward span is the parent of eu's request span, through the hop's traceparent
    hop = next(s for s in spans if s.name == "request" and s.parent_id == forward.span_id)
    assert region(hop) == "eu" and hop.resource["service.instance.id"] == "node-eu"
    assert hop.attributes["isolate.module"] == "proxy" and hop.attributes["isolate.region"] == "eu"
    assert hop.attributes["isolate.client_region"] == "us" and hop.attributes["isolate.forwarded"] is False
    assert hop.attributes["isolate.cache"] == "MISS" and hop.attributes["http.response.status_code"] == 200
    assert children(hop) == ["cache", "guest", "route"]
    guest = next(s for s in spans if s.name == "guest" and s.parent_id == hop.span_id)
    assert guest.attributes["isolate.module"] == "proxy" and guest.attributes["http.response.status_code"] == 200
    assert isinstance(guest.attributes["isolate.module.version"], int)
    assert children(guest) == ["instantiate", "outbound"]
    instantiate = next(s for s in spans if s.name == "instantiate" and s.parent_id == guest.span_id)
    assert guest.start_ns <= instantiate.start_ns <= instantiate.end_ns <= guest.end_ns
    outbound = next(s for s in spans if s.name == "outbound")
    assert outbound.kind == "CLIENT" and outbound.attributes["url.full"] == f"{nodes['eu'].edge_url}/"
    assert outbound.attributes["http.request.method"] == "GET" and outbound.attributes["server.address"] == "127.0.0.1"
    assert outbound.attributes["http.response.status_code"] == 200
    assert outbound.attributes["isolate.outbound.result"] == "ok"

    # the outbound call's traceparent carries the outbound span's id: eu's /hello request is its child
    called = next(s for s in spans if s.name == "request" and s.parent_id == outbound.span_id)
    assert called.attributes["url.path"] == "/hello" and called.attributes["isolate.module"] == "hello"
    assert children(called) == ["cache", "guest", "route"]
    route = next(s for s in spans if s.name == "route" and s.parent_id == called.span_id)
    assert route.attributes["http.route"] == "/hello" and route.attributes["isolate.region"] == "eu"
    assert not any(s.error for s in spans)
    # health checks between the nodes are not traced
    assert not any(s.attributes.get("url.path") == "/.isolate/health" for s in receiver.received())


def get(node: LiveServer, path: str, trace_id: str) -> httpx.Response:
    with httpx.Client(base_url=node.edge_url, timeout=30) as client:
        return client.get(path, headers={"traceparent": f"00-{trace_id}-{CLIENT_SPAN}-01"})


def test_failures_are_traced(traced: tuple[Receiver, dict[str, LiveServer]]) -> None:
    receiver, nodes = traced
    trace_id = secrets.token_hex(16)
    assert get(nodes["eu"], "/nowhere", trace_id).status_code == 404
    (span,) = spans_of(receiver, trace_id, 1)
    assert span.name == "request" and span.parent_id == CLIENT_SPAN
    assert span.attributes["http.response.status_code"] == 404 and not span.error

    trace_id = secrets.token_hex(16)  # a guest that traps: its guest span says how, the request is a 500
    assert get(nodes["eu"], "/crash/abort", trace_id).status_code == 500
    spans = {s.name: s for s in spans_of(receiver, trace_id, 4)}
    assert sorted(spans) == ["cache", "guest", "request", "route"]
    assert spans["guest"].error and spans["guest"].attributes["error.type"] == "trap"
    assert spans["request"].error and spans["request"].attributes["http.response.status_code"] == 500

    trace_id = secrets.token_hex(16)  # an outbound call refused (no allowed_hosts): its span says why
    assert get(nodes["eu"], "/denied/hello", trace_id).status_code == 502
    spans = {s.name: s for s in spans_of(receiver, trace_id, 6)}
    assert sorted(spans) == ["cache", "guest", "instantiate", "outbound", "request", "route"]
    outbound = spans["outbound"]
    assert outbound.error and outbound.attributes["error.type"] == "denied"
    assert outbound.attributes["isolate.outbound.result"] == "denied"
    assert outbound.parent_id == spans["guest"].span_id
    # without a valid traceparent each request starts a trace of its own
    with httpx.Client(base_url=nodes["eu"].edge_url, timeout=30) as client:
        client.get("/hello", headers={"traceparent": "00-garbage-01"})
    deadline = time.monotonic() + 15
    while not any(s.parent_id == "" and s.name == "request" and s.attributes.get("url.path") == "/hello"
                  for s in receiver.received()):
        assert time.monotonic() < deadline, "no root span for a request without a valid traceparent"
        time.sleep(0.05)


@pytest.mark.parametrize(("environ", "on"), [
    ({}, False),
    ({"OTEL_SERVICE_NAME": "edge"}, False),
    ({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, True),
    ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4318/v1/traces"}, True),
    ({"OTEL_TRACES_EXPORTER": "otlp"}, True),
    ({"OTEL_TRACES_EXPORTER": "console, otlp"}, True),
    ({"OTEL_TRACES_EXPORTER": "none", "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"}, False),
    ({"OTEL_SDK_DISABLED": "true", "OTEL_TRACES_EXPORTER": "otlp"}, False),
])
def test_traces_are_off_unless_the_environment_asks(environ: dict[str, str], on: bool) -> None:
    assert tracing.enabled_by(environ) is on


def test_off_by_default_in_process(tmp_path: Path) -> None:
    from isolate.config import Config, ServerConfig
    from isolate.http._server import build as build_apps

    apps = build_apps(Config(data_dir=tmp_path), ServerConfig(admin_token="t", cluster_secret="s"))
    try:
        assert not tracing.enabled() and apps.edge.tracing is False
    finally:
        apps.close()


def test_an_outbound_call_carries_its_own_span_as_traceparent(tmp_path: Path) -> None:
    """In-process: a guest's call (through GuestIO, as core modules and components make it) names its
    `outbound` span in the `traceparent` the origin gets, keeps the trace's `tracestate`, and the span
    reaches the receiver once tracing shuts down (the last batch is flushed)."""
    import msgpack
    from origin import Origin

    from isolate.capabilities import GuestIO, Outbound, SqliteKeyValue, parse_allowed_host

    trace_id = secrets.token_hex(16)
    with Receiver() as receiver, Origin() as origin:
        assert tracing.setup({"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint}, region="test")
        outbound = Outbound()
        try:
            scope = {"method": "GET", "path": "/x", "headers": [
                (b"traceparent", f"00-{trace_id}-{CLIENT_SPAN}-01".encode()), (b"tracestate", b"vendor=x")]}

            async def send(message: dict[str, object]) -> None:
                pass

            request, _ = tracing.request(scope, "rid", time.perf_counter(), send)
            guest, start = tracing.guest(request, "m")
            io = GuestIO(outbound=outbound, kv=SqliteKeyValue(tmp_path / "kv.sqlite3"),
                         allowed_hosts=[parse_allowed_host(origin.url)], stores=[], outbound_requests=4,
                         outbound_timeout=5.0, outbound_response_size=1 << 20, kv_operations=0,
                         deadline=time.perf_counter() + 10, request_id="rid", traceparent="00-ignored-01",
                         tracestate=None, stopping=lambda: False, note=lambda level, text: None, trace=guest)
            size = io.http_send(msgpack.packb({"url": f"{origin.url}/echo?secret=1"}))
            assert size > 0
            seen = json.loads(msgpack.unpackb(io.http_take(size))["body"])["headers"]
            tracing.guest_done(guest, start, 1, 3.0, 200)
            request.end()
        finally:
            outbound.close()
            tracing.shutdown()
        assert not tracing.enabled()
        spans = {s.name: s for s in receiver.received() if s.trace_id == trace_id}
        assert sorted(spans) == ["guest", "instantiate", "outbound", "request"]
        call = spans["outbound"]
        assert seen["traceparent"] == f"00-{trace_id}-{call.span_id}-01" and seen["tracestate"] == "vendor=x"
        assert call.parent_id == spans["guest"].span_id and spans["request"].parent_id == CLIENT_SPAN
        assert call.attributes["url.full"] == f"{origin.url}/"  # the origin only: paths and queries hold secrets
        assert call.resource["isolate.region"] == "test" and call.resource["service.name"] == "isolate"
