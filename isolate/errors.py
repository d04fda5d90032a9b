"""The documented error tree: every failure has a stable `kind`, one HTTP status and a JSON diagnostic.

    IsolateError                      kind               status
    ├── InvalidConfig                 invalid_config     400   a limit, setting, route or manifest is invalid
    │   ├── ManifestError             invalid_manifest   400   a manifest problem, located as `file:line: where: reason`
    │   └── RouteConflict             route_conflict     409   two routes match the same requests
    ├── InvalidName                   invalid_name       400   module name breaks NAME_PATTERN
    ├── InvalidRequest                invalid_request    400   a malformed request (bad HTTP, JSON or parameter)
    │   └── UnknownRegion             unknown_region     400   x-isolate-region names no region in the table
    ├── Unauthorized                  unauthorized       401   missing or wrong admin bearer token
    ├── NotFound                      not_found          404   no such module, version or route
    ├── MethodNotAllowed              method_not_allowed 405   a route matches the path but not the method (`allow`)
    ├── RequestTimeout                request_timeout    408   the request head did not arrive in time
    ├── ModuleTooLarge                module_too_large   413   upload over Config.max_module_size
    ├── PayloadTooLarge               payload_too_large  413   request body over ServerConfig.max_body_size
    ├── UriTooLong                    uri_too_long       414   URL over ServerConfig.max_url_length
    ├── HeadersTooLarge               headers_too_large  431   request head over ServerConfig.max_header_size
    ├── InvalidModule                 invalid_module     422   not valid wasm, or breaks ABI v1 (imports/exports)
    ├── BuildError                    build_failed       422   a guest's toolchain failed (`isolate build`)
    ├── BrokenBuild                   build_broken       503   `isolate dev`: the module's sources fail to build
    ├── GuestError                                             the guest failed while serving a request
    │   ├── Timeout                   timeout            504   ran past limits.timeout (epoch deadline)
    │   ├── MemoryLimit               memory_limit       500   needed more than limits.memory
    │   ├── StackOverflow             stack_overflow     500   exhausted the wasm stack
    │   ├── Trap                      trap               500   any other trap; `trap_code` says which
    │   ├── AbiViolation              abi                502   broke the ABI: bad pointer, msgpack, status, header
    │   └── ResponseTooLarge          response_too_large 502   response over limits.response_size
    ├── Overloaded                    overloaded         503   no worker, isolate slot, memory budget or connection free
    ├── RegionForbidden               region_forbidden   451   placement allows no region this request may go to
    ├── RegionUnavailable             region_unavailable 503   every region allowed to serve it has no healthy node
    ├── ClusterUnavailable            cluster_unavailable 503  `serve --cluster`: NATS unreachable, no change taken
    ├── ForwardFailed                 forward_failed     502   the node a request was forwarded to failed mid-way
    ├── ForwardingLoop                forwarding_loop    508   a forwarded request would have been forwarded again
    ├── StorageError                  storage            500   the data directory is damaged or unwritable
    ├── StoreFull                     store_full         507   a key-value store would exceed its size
    └── InternalError                 internal           500   a bug: an unexpected exception, logged with its traceback

Statuses follow a gateway's view of the guest as its upstream: a guest that answers wrongly is a
502, one that answers too late a 504. `to_dict()` is the machine-readable diagnostic.
"""

from __future__ import annotations

from typing import Any, ClassVar


class IsolateError(Exception):
    """Base of every error `isolate` raises on purpose."""

    kind: ClassVar[str] = "internal"
    status: ClassVar[int] = 500

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail)
        self.detail = detail
        self.extra: dict[str, Any] = extra

    def to_dict(self) -> dict[str, Any]:
        """The JSON diagnostic: `{"error": kind, "detail": ..., **extra}`."""
        return {"error": self.kind, "detail": self.detail, **self.extra}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.detail!r})"


class InvalidConfig(IsolateError):
    kind = "invalid_config"
    status = 400


class RouteConflict(InvalidConfig):
    kind = "route_conflict"
    status = 409


class InvalidName(IsolateError):
    kind = "invalid_name"
    status = 400


class InvalidRequest(IsolateError):
    kind = "invalid_request"
    status = 400


class UnknownRegion(InvalidRequest):
    kind = "unknown_region"
    status = 400


class Unauthorized(IsolateError):
    kind = "unauthorized"
    status = 401


class MethodNotAllowed(IsolateError):
    """`allow` (in `extra`) lists the methods the matching routes accept; the reply carries `Allow`."""

    kind = "method_not_allowed"
    status = 405


class RequestTimeout(IsolateError):
    kind = "request_timeout"
    status = 408


class HeadersTooLarge(IsolateError):
    kind = "headers_too_large"
    status = 431


class PayloadTooLarge(IsolateError):
    kind = "payload_too_large"
    status = 413


class UriTooLong(IsolateError):
    kind = "uri_too_long"
    status = 414


class NotFound(IsolateError):
    kind = "not_found"
    status = 404


class ModuleTooLarge(IsolateError):
    kind = "module_too_large"
    status = 413


class InvalidModule(IsolateError):
    kind = "invalid_module"
    status = 422


class BuildError(IsolateError):
    kind = "build_failed"
    status = 422


class BrokenBuild(IsolateError):
    """`isolate dev`: the module's sources no longer build; its requests get the compiler's message
    (`detail`) until a build succeeds, rather than the last good version's answers."""

    kind = "build_broken"
    status = 503


class GuestError(IsolateError):
    """The guest failed during a request; `logs` holds what it wrote before failing, `backtrace` the
    wasm frames it was in (innermost first), which only a dev-mode diagnostic shows for every kind."""

    kind = "guest"
    status = 500

    def __init__(self, detail: str, **extra: Any) -> None:
        super().__init__(detail, **extra)
        self.logs: tuple[Any, ...] = ()
        self.backtrace: tuple[str, ...] = ()


class Timeout(GuestError):
    kind = "timeout"
    status = 504


class MemoryLimit(GuestError):
    kind = "memory_limit"
    status = 500


class StackOverflow(GuestError):
    kind = "stack_overflow"
    status = 500


class Trap(GuestError):
    kind = "trap"
    status = 500

    @property
    def trap_code(self) -> str:
        return str(self.extra.get("trap_code", "unknown"))


class AbiViolation(GuestError):
    kind = "abi"
    status = 502


class ResponseTooLarge(GuestError):
    kind = "response_too_large"
    status = 502


class Overloaded(IsolateError):
    kind = "overloaded"
    status = 503


class RegionForbidden(IsolateError):
    kind = "region_forbidden"
    status = 451


class RegionUnavailable(IsolateError):
    kind = "region_unavailable"
    status = 503


class ClusterUnavailable(IsolateError):
    """A cluster node cannot reach NATS JetStream: it serves what it has, but takes no change."""

    kind = "cluster_unavailable"
    status = 503


class ForwardFailed(IsolateError):
    kind = "forward_failed"
    status = 502


class ForwardingLoop(IsolateError):
    kind = "forwarding_loop"
    status = 508


class StorageError(IsolateError):
    kind = "storage"
    status = 500


class StoreFull(IsolateError):
    kind = "store_full"
    status = 507


class InternalError(IsolateError):
    kind = "internal"
    status = 500


class ManifestError(InvalidConfig):
    """A manifest problem, located: `path:line: where: reason`."""

    kind = "invalid_manifest"
    status = 400


ERRORS: tuple[type[IsolateError], ...] = (
    InvalidConfig,
    ManifestError,
    RouteConflict,
    InvalidName,
    InvalidRequest,
    UnknownRegion,
    Unauthorized,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    ModuleTooLarge,
    PayloadTooLarge,
    UriTooLong,
    HeadersTooLarge,
    InvalidModule,
    BuildError,
    BrokenBuild,
    Timeout,
    MemoryLimit,
    StackOverflow,
    Trap,
    AbiViolation,
    ResponseTooLarge,
    Overloaded,
    RegionForbidden,
    RegionUnavailable,
    ClusterUnavailable,
    ForwardFailed,
    ForwardingLoop,
    StorageError,
    InternalError,
)
"""Every concrete error, for documentation and for the table test that keeps kinds unique."""
