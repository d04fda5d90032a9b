"""Traces: OpenTelemetry spans of each request, exported over OTLP/HTTP when the `OTEL_*` environment asks."""

# Spans, parent first (attributes in brackets):
#
#   request   SERVER: the edge's whole answer [http.request.method, url.path, http.route, isolate.module,
#             isolate.region, isolate.client_region, isolate.request_id, isolate.cache, http.response.status_code]
#   ├ route     the route match and region decision [http.route, isolate.module, isolate.region (where it
#   │           runs), isolate.client_region, isolate.forwarded]
#   ├ forward   CLIENT: the hop to another region's node, whose `request` span is its child through
#   │           `traceparent` [isolate.forward.region, http.response.status_code]
#   ├ cache     the response-cache lookup (on a miss it includes running the guest) [isolate.cache]
#   └ guest     the module in a fresh isolate [isolate.module, isolate.module.version, http.response.status_code]
#     ├ instantiate  store + limits + instance, as the engine measured it
#     └ outbound     CLIENT: each outbound HTTP call of the guest, whose `traceparent` carries this span's id
#                    [http.request.method, server.address, url.full, http.response.status_code, isolate.outbound.result]
#
# Off unless `enabled_by(environ)`; when off nothing here runs: the edge checks one boolean per request and
# hands `None` on, so not even no-op spans are made. Spans are exported by a BatchSpanProcessor, whose own
# thread posts them: ending a span only queues it, on the event loop and on guest threads alike.

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported when tracing is set up, so a server without traces never loads the SDK
    from opentelemetry.context import Context
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter
    from opentelemetry.trace import Span, SpanKind, Status, Tracer

log = logging.getLogger("isolate.tracing")

SHUTDOWN_GRACE = 2.0
"""Seconds a stopping server gives the exporter to post what is queued (a collector that is down would
otherwise hold the exit for OTEL_EXPORTER_OTLP_TIMEOUT, 10 s, of retries)."""
_provider: TracerProvider | None = None
_exporter: SpanExporter | None = None
_tracer: Tracer | None = None
_EPOCH_NS = 0  # unix ns minus perf_counter ns: turns the edge's perf_counter stamps into span times
# Bound by `setup`, which imports the API: the first import must not happen on a request (it compiles
# modules for ~10 ms, which would also teach the dispatcher that the module is slow).
_in_context: Callable[[Span], Context]
_extract: Callable[[Mapping[str, str]], Context]
_status_of: Callable[..., Status]
_SERVER: SpanKind
_CLIENT: SpanKind
_INTERNAL: SpanKind
_ERROR: Status
Send = Callable[[dict[str, Any]], Awaitable[None]]


def _true(value: str | None) -> bool:
    return (value or "").strip().lower() == "true"


def enabled_by(environ: Mapping[str, str]) -> bool:
    """Whether `environ` asks for traces: `OTEL_TRACES_EXPORTER` naming `otlp`, or (that variable unset)
    an OTLP endpoint (`OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`); never with
    `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`.

    The SDK's own default exporter is `otlp`, which would trace every server: here silence is the default.
    """
    if _true(environ.get("OTEL_SDK_DISABLED")):
        return False
    exporters = environ.get("OTEL_TRACES_EXPORTER", "").strip()
    if exporters:
        return "otlp" in {e.strip().lower() for e in exporters.split(",")}
    return bool(environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
                or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip())


def setup(environ: Mapping[str, str], *, region: str = "", node: str = "") -> bool:
    """Start exporting if `environ` asks for it (`enabled_by`); True when traces are on. Once per process:
    a second call keeps the first provider. The endpoint is taken from `environ`; everything else
    (headers, timeout, compression, sampler, batch delay, resource attributes) the SDK reads from the
    process's standard `OTEL_*` variables."""
    global _provider, _exporter, _tracer, _EPOCH_NS, _in_context, _extract, _status_of, _SERVER, _CLIENT, _INTERNAL
    global _ERROR
    if _tracer is not None:
        return True
    if not enabled_by(environ):
        return False
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    _in_context, _extract, _status_of = set_span_in_context, TraceContextTextMapPropagator().extract, Status
    _SERVER, _CLIENT, _INTERNAL = SpanKind.SERVER, SpanKind.CLIENT, SpanKind.INTERNAL
    _ERROR = Status(StatusCode.ERROR)
    protocol = environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol and protocol.strip() != "http/protobuf":
        log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s is not supported: traces are sent as http/protobuf", protocol)
    attributes: dict[str, str] = {"isolate.region": region} if region else {}
    if node:
        attributes["service.instance.id"] = node
    resource = Resource.create(attributes)
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": "isolate"}))  # OTEL_SERVICE_NAME, when set, wins
    provider = TracerProvider(resource=resource, shutdown_on_exit=False)
    endpoint = (environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
                or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip().rstrip("/") + "/v1/traces")
    if endpoint == "/v1/traces":  # OTEL_TRACES_EXPORTER=otlp alone: the OTLP/HTTP default
        endpoint = "http://localhost:4318/v1/traces"
    exporter = OTLPSpanExporter(endpoint=endpoint)
    provider.add_span_processor(BatchSpanProcessor(exporter))
    _EPOCH_NS = time.time_ns() - time.perf_counter_ns()
    _provider, _exporter, _tracer = provider, exporter, provider.get_tracer("isolate")
    log.info("traces: exporting OTLP/HTTP to %s", endpoint)
    return True


def enabled() -> bool:
    return _tracer is not None


def shutdown(grace: float = SHUTDOWN_GRACE) -> None:
    """Export what is queued, for at most about `grace` seconds, and stop; traces are off afterwards."""
    global _provider, _exporter, _tracer
    provider, exporter, _provider, _exporter, _tracer = _provider, _exporter, None, None, None
    if provider is None or exporter is None:
        return
    # Shutting the exporter down ends its retries (and so the processor's last export) at once.
    stop = threading.Timer(grace, exporter.shutdown)
    stop.daemon = True
    stop.start()
    try:
        provider.shutdown()
    finally:
        stop.cancel()


def _ns(perf: float) -> int:
    """A `time.perf_counter()` stamp as unix nanoseconds."""
    return _EPOCH_NS + int(perf * 1e9)


def _start(name: str, parent: Span | None, kind: SpanKind | None = None, start: int | None = None,
           attributes: Mapping[str, str | int | bool] | None = None) -> Span:
    assert _tracer is not None, "tracing is not set up"
    context = _in_context(parent) if parent is not None else None
    return _tracer.start_span(name, context, kind or _INTERNAL, attributes, start_time=start)


def _status(span: Span, status: int) -> None:
    span.set_attribute("http.response.status_code", status)
    if status >= 500:
        span.set_status(_ERROR)


def fail(span: Span, kind: str) -> None:
    """End `span` as failed with `kind` (an error kind: `timeout`, `trap`, a disconnect, ...)."""
    span.set_attribute("error.type", kind)
    span.set_status(_status_of(_ERROR.status_code, kind))
    span.end()


def traceparent(span: Span) -> tuple[str, str | None]:
    """The W3C `traceparent` naming `span` as the parent, and the trace's `tracestate` (None if empty)."""
    context = span.get_span_context()
    state = context.trace_state.to_header() if context.trace_state else ""
    return f"00-{context.trace_id:032x}-{context.span_id:016x}-{context.trace_flags:02x}", state or None


# -- the edge ----------------------------------------------------------------------------------


def request(scope: Mapping[str, Any], request_id: str, started: float, send: Send) -> tuple[Span, Send]:
    """The `request` span of an edge request (child of the client's `traceparent` when valid), and a
    `send` that records the status and ends the span with the answer's last byte."""
    carrier = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]
               if k == b"traceparent" or k == b"tracestate"}
    parent = _extract(carrier) if carrier else None
    assert _tracer is not None, "tracing is not set up"
    span = _tracer.start_span("request", parent, _SERVER, {
        "http.request.method": scope["method"], "url.path": scope["path"], "isolate.request_id": request_id,
    }, start_time=_ns(started))

    async def replying(message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            _status(span, message["status"])
            for name, value in message.get("headers", ()):
                if name == b"x-cache":
                    span.set_attribute("isolate.cache", value.decode("latin-1"))
        await send(message)
        if kind == "http.response.body" and not message.get("more_body", False):
            span.end()

    return span, replying


def routed(span: Span, started: float, module: str, route: str, region: str, client_region: str,
           forwarded: bool = False) -> None:
    """Record the `route` step (from `started` until now) and what it decided on the request span."""
    attributes: dict[str, str | bool] = {"http.route": route, "isolate.module": module, "isolate.region": region,
                                         "isolate.client_region": client_region, "isolate.forwarded": forwarded}
    span.set_attributes(attributes)
    _start("route", span, start=_ns(started), attributes=attributes).end()


def forward(parent: Span, region: str) -> tuple[Span, tuple[bytes, bytes | None]]:
    """The `forward` span and the `traceparent` (and `tracestate`) the hop carries, naming it."""
    span = _start("forward", parent, _CLIENT, attributes={"isolate.forward.region": region})
    value, state = traceparent(span)
    return span, (value.encode(), state.encode("latin-1") if state else None)


def forwarded(span: Span, status: int) -> None:
    _status(span, status)
    span.end()


def cache(parent: Span) -> Span:
    return _start("cache", parent)


def cached(span: Span, hit: bool) -> None:
    span.set_attribute("isolate.cache", "HIT" if hit else "MISS")
    span.end()


# -- the host: a module in a fresh isolate ----------------------------------------------------------


def guest(parent: Span, module: str) -> tuple[Span, int]:
    """The `guest` span (the parent of the guest's outbound calls) and its start, unix ns."""
    start = time.time_ns()
    return _start("guest", parent, start=start, attributes={"isolate.module": module}), start


def guest_done(span: Span, start: int, version: int, instantiate_us: float, status: int) -> None:
    """End the `guest` span, with its `instantiate` child as long as the engine measured it."""
    _start("instantiate", span, start=start).end(start + int(instantiate_us * 1000))
    span.set_attribute("isolate.module.version", version)
    _status(span, status)
    span.end()


# -- outbound calls of a guest ------------------------------------------------------------------


def outbound(parent: Span, method: str, url: str, host: str) -> tuple[Span, str, str | None]:
    """The `outbound` span of one guest call, with the `traceparent` and `tracestate` the call carries."""
    span = _start("outbound", parent, _CLIENT,
                  attributes={"http.request.method": method, "url.full": url, "server.address": host})
    value, state = traceparent(span)
    return span, value, state


def outbound_done(span: Span, status: int) -> None:
    span.set_attribute("isolate.outbound.result", "ok")
    _status(span, status)
    span.end()
