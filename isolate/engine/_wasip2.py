"""The host side of WASI 0.2 for components, per request: wasi:io, wasi:cli, wasi:clocks, wasi:random, no files."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, NoReturn

from ..errors import AbiViolation, MemoryLimit, Timeout
from . import _output, _shutdown

# Resource type ids: one fixed id per resource type for every 0.2.x version (the bridge's
# `define_resource` ids; _wasi_http's start at 16).
INPUT_STREAM = 1
OUTPUT_STREAM = 2
POLLABLE = 3
IO_ERROR = 4
TERMINAL_INPUT = 5
TERMINAL_OUTPUT = 6
DESCRIPTOR = 7
DIRECTORY_ENTRY_STREAM = 8

OK_NONE = ("ok", None)
CLOSED = ("err", ("closed", None))
PERMIT = 1 << 20
"""What `check-write` allows at once: every sink buffers in memory, so a large permit only saves
guest round trips; the limits are enforced by the writes themselves."""
MAX_RESOURCES = 100_000
"""Host resources a request's guest may have made (pollables, fields, streams, ...), alive or not."""
MAX_HELD = 64 << 20
"""Bytes of headers and outbound bodies the host may hold for a request's guest, over its life
(a guest's memory limit bounds what it holds itself, not what it can make the host keep)."""
MAX_BYTES = 64 << 20
"""The most one call may ask the host to make up (zeroes): beyond any guest's memory, and a guest must
not make the host allocate gigabytes."""
MAX_HANDED = 64 << 10
"""The most one call hands the guest (a read, a skip): a list<u8> crosses the C API as one 32-byte
value per byte, about 80 bytes of host memory per byte handed over and ~35 ns, so a read of a 10 MiB
body at once held 800 MiB of host memory and ran past the deadline. wasmtime serve hands out frames of
about this size too; a read may return fewer bytes than asked."""
MAX_RANDOM = 1 << 20
"""The most random bytes one call makes (get-random-bytes must return as many as asked: larger asks
fail the request), for the same reason."""
ENTRY_OVERHEAD = 96
"""Bytes counted per header entry on top of its name and value: each entry is Python objects in the
host, so 250,000 empty entries held 2 GB while counting as 16 MB."""
MAX_ENTRIES = 32768
"""Entries one fields resource may have: what wasmtime's HeaderMap allows."""

Func = Callable[..., Any]
Dtor = Callable[[Any, int], None]
Spec = tuple[tuple[tuple[str, int, Dtor], ...], tuple[tuple[str, Func], ...]]
"""An interface: its resources (name, type id, destructor) and functions (WIT name, host function)."""


class GuestExit(Exception):
    """The guest called wasi:cli/exit: `exit_code` is 0 for exit(ok), 1 for exit(err), or exit-with-code's."""

    def __init__(self, exit_code: int) -> None:
        super().__init__(f"guest called exit with code {exit_code}")
        self.exit_code = exit_code


class Resources:
    """A request's host resources (rep -> object, reps never reused) and what WASI calls need of it.

    The bridge passes the object given to `run()` as every host function's first argument: these
    functions read only the attributes below (`_wasi_http.Exchange` adds the HTTP ones).
    """

    __slots__ = ("table", "next_rep", "capture", "deadline", "environment", "error", "partial", "held",
                 "waited")

    def __init__(self, capture: _output.Capture | None, deadline: float,
                 environment: Sequence[tuple[str, str]] = ()) -> None:
        self.table: dict[int, object] = {}
        self.next_rep = 1
        self.capture = capture
        self.deadline = deadline
        self.environment = [(str(key), str(value)) for key, value in environment]
        self.error: BaseException | None = None
        self.partial: list[bytes] | None = None  # stdout's and stderr's unfinished lines (LogStream)
        self.held = 0  # bytes counted by `hold`
        self.waited = False  # whether the guest waited in a host call (a timer, an outbound call)

    def flush_output(self) -> None:
        """Record what stdout and stderr hold of an unfinished line: call once the guest has run."""
        partial, self.partial = self.partial, None
        if partial is not None and self.capture is not None:
            for stream, held in zip((STDOUT, STDERR), partial, strict=True):
                if held:
                    self.capture.add(stream.stream, stream.level, held)

    def add(self, item: object) -> int:
        rep = self.next_rep
        if rep > MAX_RESOURCES:
            raise MemoryLimit(f"guest made more than {MAX_RESOURCES} host resources in one request",
                              limit="host_resources")
        self.next_rep = rep + 1
        self.table[rep] = item
        return rep


def hold(state: Resources, size: int) -> None:
    """Count `size` more bytes the host keeps for the guest; past MAX_HELD the request fails."""
    state.held += size
    if state.held > MAX_HELD:
        raise MemoryLimit(f"guest made the host hold more than {MAX_HELD} bytes of headers and bodies",
                          limit="host_memory")


def get(state: Resources, rep: int) -> Any:
    """The object behind `rep`; a consumed or dropped one fails the guest (wasmtime traps the same misuse)."""
    try:
        return state.table[rep]
    except KeyError:
        raise AbiViolation(f"resource handle {rep} was used after it was consumed or dropped") from None


def drop(state: Resources, rep: int) -> None:
    state.table.pop(rep, None)


def interrupt(state: Resources, why: str) -> NoReturn:
    """Fail the guest from a wait: the engine's trap translator reads `why` off the capture."""
    capture = state.capture
    if capture is not None:
        capture.interrupted = why
    if why == "timeout":
        raise Timeout("guest ran past its time limit (in a host call)", limit="timeout")
    raise InterruptedError("the host is shutting down")


def wait_until(state: Resources, due: float) -> None:
    """Sleep until `due` (a perf_counter time), but never past the request's deadline."""
    state.waited = True
    why = _shutdown.sleep_until(due, state.deadline)
    if why is not None:
        interrupt(state, why)


# -- wasi:io/error and wasi:io/poll -------------------------------------------------------------

class IoError:
    __slots__ = ("message",)

    def __init__(self, message: str) -> None:
        self.message = message


def failed(state: Resources, message: str) -> tuple[str, tuple[str, int]]:
    """A stream-error `last-operation-failed` carrying a new io error."""
    return ("err", ("last-operation-failed", state.add(IoError(message))))


def _error_to_debug_string(state: Resources, rep: int) -> str:
    error: IoError = get(state, rep)
    return error.message


class Pollable:
    """Ready once `time.perf_counter()` reaches `due` (0: at once) and, for an outbound call's future,
    once the request's body is complete (`future.ready()`)."""

    __slots__ = ("due", "future")

    def __init__(self, due: float, future: Any = None) -> None:
        self.due = due
        self.future = future

    def is_ready(self, now: float) -> bool:
        return self.due <= now and (self.future is None or self.future.ready())


READY = Pollable(0.0)
"""Shared by every pollable that is ready at once (streams never wait): each subscribe gets its own rep."""


def ready_pollable(state: Resources) -> int:
    return state.add(READY)


def _pollable_ready(state: Resources, rep: int) -> bool:
    pollable: Pollable = get(state, rep)
    return pollable.is_ready(time.perf_counter())


def _pollable_block(state: Resources, rep: int) -> None:
    _poll(state, [rep])


def _poll(state: Resources, reps: list[int]) -> list[int]:
    if not reps:
        raise AbiViolation("wasi:io/poll.poll called with an empty list")
    pollables: list[Pollable] = [get(state, rep) for rep in reps]
    now = time.perf_counter()
    ready = [index for index, pollable in enumerate(pollables) if pollable.is_ready(now)]
    if ready:
        return ready
    # Nothing is ready. A future waiting for its request's body would wait forever (the guest that
    # writes the body is the one waiting): it is sent with the body written so far, as wasmtime
    # sends a streaming body's start (an origin may answer before the whole body arrives).
    waiting = [index for index, pollable in enumerate(pollables) if pollable.future is not None]
    if waiting:
        for index in waiting:
            pollables[index].future.force()
        return [index for index in waiting if pollables[index].is_ready(now)]
    wait_until(state, min(pollable.due for pollable in pollables))
    now = time.perf_counter()
    return [index for index, pollable in enumerate(pollables) if pollable.is_ready(now)]


# -- wasi:io/streams ----------------------------------------------------------------------------

class InputStream:
    """A stream over bytes the host already holds (request bodies, outbound answers, stdin): never waits."""

    __slots__ = ("data", "pos")

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def take(self, size: int) -> memoryview | None:
        pos = self.pos
        if pos >= len(self.data):
            return None
        end = pos + size if size < len(self.data) - pos else len(self.data)
        self.pos = end
        return self.data[pos:end]


def _read(state: Resources, rep: int, size: int) -> tuple[str, Any]:
    stream: InputStream = get(state, rep)
    chunk = stream.take(min(size, MAX_HANDED))
    return CLOSED if chunk is None else ("ok", chunk)


def _skip(state: Resources, rep: int, size: int) -> tuple[str, Any]:
    stream: InputStream = get(state, rep)
    chunk = stream.take(min(size, MAX_HANDED))
    return CLOSED if chunk is None else ("ok", len(chunk))


class OutputStream:
    """A sink: `write` returns OK_NONE, or a stream error, or raises to fail the request."""

    __slots__ = ()

    def write(self, state: Resources, data: bytes) -> tuple[str, Any]:
        raise NotImplementedError


LINE_LIMIT = 4096
"""Bytes of an unfinished line a log stream holds back before recording it anyway."""


class LogStream(OutputStream):
    """stdout or stderr: complete lines become records of the request's captured output.

    Language runtimes write a line in pieces (CPython's traceback: "RuntimeError", ": ", the
    message, "\n"); a record per write would split it and spend the request's record budget.
    What follows the last newline waits for the next write or for `Resources.flush_output()`.
    """

    __slots__ = ("stream", "level", "index")

    def __init__(self, stream: str, level: str, index: int) -> None:
        self.stream = stream
        self.level = level
        self.index = index

    def write(self, state: Resources, data: bytes) -> tuple[str, Any]:
        capture = state.capture
        if capture is None or not data:
            return OK_NONE
        partial = state.partial
        held = partial[self.index] if partial is not None else b""
        end = data.rfind(b"\n") + 1
        if end:
            capture.add(self.stream, self.level, held + data[:end] if held else bytes(data[:end]))
            held = data[end:]
        else:
            held += data
            if len(held) >= LINE_LIMIT:
                capture.add(self.stream, self.level, held)
                held = b""
        if held or partial is not None:
            if partial is None:
                state.partial = partial = [b"", b""]
            partial[self.index] = bytes(held)
        return OK_NONE


STDOUT = LogStream("stdout", "info", 0)
STDERR = LogStream("stderr", "error", 1)


def _check_write(state: Resources, rep: int) -> tuple[str, Any]:
    get(state, rep)
    return ("ok", PERMIT)


def _write(state: Resources, rep: int, data: bytes) -> tuple[str, Any]:
    stream: OutputStream = get(state, rep)
    return stream.write(state, data)


def _flush(state: Resources, rep: int) -> tuple[str, Any]:
    get(state, rep)
    return OK_NONE


def _write_zeroes(state: Resources, rep: int, size: int) -> tuple[str, Any]:
    stream: OutputStream = get(state, rep)
    if size > MAX_BYTES:
        return failed(state, f"write-zeroes of {size} bytes is over the {MAX_BYTES}-byte limit of one call")
    return stream.write(state, bytes(size))


def _splice(state: Resources, rep: int, src: int, size: int) -> tuple[str, Any]:
    stream: OutputStream = get(state, rep)
    source: InputStream = get(state, src)
    chunk = source.take(min(size, MAX_BYTES))
    if chunk is None:
        return CLOSED
    result = stream.write(state, bytes(chunk))
    return ("ok", len(chunk)) if result is OK_NONE else result


def _subscribe(state: Resources, rep: int) -> int:
    get(state, rep)
    return state.add(READY)


# -- wasi:cli -----------------------------------------------------------------------------------

def _get_environment(state: Resources) -> list[tuple[str, str]]:
    return state.environment


def _get_arguments(state: Resources) -> list[str]:
    return []


def _initial_cwd(state: Resources) -> None:
    return None


def _exit(state: Resources, status: tuple[str, None]) -> None:
    raise GuestExit(0 if status[0] == "ok" else 1)


def _exit_with_code(state: Resources, code: int) -> None:
    raise GuestExit(code)


def _get_stdin(state: Resources) -> int:
    return state.add(InputStream(b""))


def _get_stdout(state: Resources) -> int:
    return state.add(STDOUT)


def _get_stderr(state: Resources) -> int:
    return state.add(STDERR)


def _no_terminal(state: Resources) -> None:
    return None


# -- wasi:clocks and wasi:random ----------------------------------------------------------------

def _monotonic_now(state: Resources) -> int:
    return time.perf_counter_ns()  # the clock pollables' `due` is measured on


def _monotonic_resolution(state: Resources) -> int:
    return 1


def _subscribe_instant(state: Resources, when: int) -> int:
    return state.add(Pollable(when / 1e9))


def _subscribe_duration(state: Resources, duration: int) -> int:
    return state.add(Pollable(time.perf_counter() + duration / 1e9 if duration else 0.0))


def _wall_now(state: Resources) -> tuple[int, int]:
    now = time.time_ns()
    return (now // 1_000_000_000, now % 1_000_000_000)


def _wall_resolution(state: Resources) -> tuple[int, int]:
    return (0, 1)


def _checked_size(size: int) -> int:
    if size > MAX_RANDOM:
        raise AbiViolation(f"asked for {size} random bytes, over the {MAX_RANDOM}-byte limit of one call")
    return size


def _random_bytes(state: Resources, size: int) -> bytes:
    return os.urandom(_checked_size(size))


def _random_u64(state: Resources) -> int:
    return int.from_bytes(os.urandom(8), "little")


def _insecure_bytes(state: Resources, size: int) -> bytes:
    return random.randbytes(_checked_size(size))


def _insecure_u64(state: Resources) -> int:
    return random.getrandbits(64)


def _insecure_seed(state: Resources) -> tuple[int, int]:
    return (random.getrandbits(64), random.getrandbits(64))


# -- wasi:filesystem: no directories ----------------------------------------------------------

def _get_directories(state: Resources) -> list[tuple[int, str]]:
    # No preopened directory, so no descriptor can ever exist: the descriptor methods are left to
    # the linker's traps. Language runtimes (wasi-libc, so CPython's traceback printing) ask for
    # the preopens on their first path lookup and must find none, not trap.
    return []


def _filesystem_error_code(state: Resources, rep: int) -> None:
    get(state, rep)
    return None


# -- the interfaces -----------------------------------------------------------------------------

SPECS: dict[str, Spec] = {
    "wasi:io/error": (
        (("error", IO_ERROR, drop),),
        (("[method]error.to-debug-string", _error_to_debug_string),),
    ),
    "wasi:io/poll": (
        (("pollable", POLLABLE, drop),),
        (("[method]pollable.ready", _pollable_ready),
         ("[method]pollable.block", _pollable_block),
         ("poll", _poll)),
    ),
    "wasi:io/streams": (
        (("input-stream", INPUT_STREAM, drop), ("output-stream", OUTPUT_STREAM, drop)),
        (("[method]input-stream.read", _read),
         ("[method]input-stream.blocking-read", _read),  # the data is all there: nothing to wait for
         ("[method]input-stream.skip", _skip),
         ("[method]input-stream.blocking-skip", _skip),
         ("[method]input-stream.subscribe", _subscribe),
         ("[method]output-stream.check-write", _check_write),
         ("[method]output-stream.write", _write),
         ("[method]output-stream.blocking-write-and-flush", _write),
         ("[method]output-stream.flush", _flush),
         ("[method]output-stream.blocking-flush", _flush),
         ("[method]output-stream.subscribe", _subscribe),
         ("[method]output-stream.write-zeroes", _write_zeroes),
         ("[method]output-stream.blocking-write-zeroes-and-flush", _write_zeroes),
         ("[method]output-stream.splice", _splice),
         ("[method]output-stream.blocking-splice", _splice)),
    ),
    "wasi:cli/environment": ((), (
        ("get-environment", _get_environment),
        ("get-arguments", _get_arguments),
        ("initial-cwd", _initial_cwd),
    )),
    "wasi:cli/exit": ((), (("exit", _exit), ("exit-with-code", _exit_with_code))),
    "wasi:cli/stdin": ((), (("get-stdin", _get_stdin),)),
    "wasi:cli/stdout": ((), (("get-stdout", _get_stdout),)),
    "wasi:cli/stderr": ((), (("get-stderr", _get_stderr),)),
    "wasi:cli/terminal-input": ((("terminal-input", TERMINAL_INPUT, drop),), ()),
    "wasi:cli/terminal-output": ((("terminal-output", TERMINAL_OUTPUT, drop),), ()),
    "wasi:cli/terminal-stdin": ((), (("get-terminal-stdin", _no_terminal),)),
    "wasi:cli/terminal-stdout": ((), (("get-terminal-stdout", _no_terminal),)),
    "wasi:cli/terminal-stderr": ((), (("get-terminal-stderr", _no_terminal),)),
    "wasi:filesystem/preopens": ((), (("get-directories", _get_directories),)),
    "wasi:filesystem/types": (
        (("descriptor", DESCRIPTOR, drop), ("directory-entry-stream", DIRECTORY_ENTRY_STREAM, drop)),
        (("filesystem-error-code", _filesystem_error_code),),
    ),
    "wasi:clocks/monotonic-clock": ((), (
        ("now", _monotonic_now),
        ("resolution", _monotonic_resolution),
        ("subscribe-instant", _subscribe_instant),
        ("subscribe-duration", _subscribe_duration),
    )),
    "wasi:clocks/wall-clock": ((), (("now", _wall_now), ("resolution", _wall_resolution))),
    "wasi:random/random": ((), (("get-random-bytes", _random_bytes), ("get-random-u64", _random_u64))),
    "wasi:random/insecure": ((), (
        ("get-insecure-random-bytes", _insecure_bytes),
        ("get-insecure-random-u64", _insecure_u64),
    )),
    "wasi:random/insecure-seed": ((), (("insecure-seed", _insecure_seed),)),
}
"""Every interface this module implements, by unversioned name: 0.2.0 through 0.2.x define the same
items (later minors only added some, all here); a definition the component does not import is ignored."""


def definer(spec: Spec) -> Callable[[int], None]:
    """The function defining `spec`'s resources and functions in a linker instance (by its address)."""
    resources, functions = spec

    def define(instance: int) -> None:
        from ._component_bridge import BRIDGE  # loaded on first use: the extension is optional

        if BRIDGE is None:
            raise RuntimeError("the component bridge (isolate.engine._components) is not available")
        for name, type_id, dtor in resources:
            BRIDGE.define_resource(instance, name, type_id, dtor)
        for name, fn in functions:
            BRIDGE.define_func(instance, name, fn)

    return define


INTERFACES: dict[str, Callable[[int], None]] = {name: definer(spec) for name, spec in SPECS.items()}
