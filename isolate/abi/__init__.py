"""ABI v1 between host and guest: the msgpack envelopes and the checks on what a guest returns."""

from ._envelope import (
    ABI_VERSION,
    EXPORT_ABI_PREFIX,
    EXPORT_ALLOC,
    EXPORT_HANDLE,
    EXPORT_INITIALIZE,
    EXPORT_MEMORY,
    HOST_NAMESPACE,
    LogRecord,
    Request,
    Response,
    check_headers,
    decode_response,
    encode_request,
)

__all__ = [
    "ABI_VERSION",
    "EXPORT_ABI_PREFIX",
    "EXPORT_ALLOC",
    "EXPORT_HANDLE",
    "EXPORT_INITIALIZE",
    "EXPORT_MEMORY",
    "HOST_NAMESPACE",
    "LogRecord",
    "Request",
    "Response",
    "check_headers",
    "decode_response",
    "encode_request",
]
