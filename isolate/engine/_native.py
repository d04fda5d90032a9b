"""libc calls the engine needs: give freed heap back to the kernel, and size native thread stacks.

wasm runs on the native stack of the thread that calls it. wasmtime stops a guest at its
`max_wasm_stack`, but only if the thread's own stack is larger still; if it is not, the process
dies of SIGSEGV. Threads created by Python get glibc's default size: RLIMIT_STACK (8 MiB usually),
but only 2 MiB when `ulimit -s` is unlimited.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import resource
import threading

HOST_HEADROOM = 1 << 20
"""Native stack kept free beyond the wasm stack: the frames already on the thread below the guest,
and Python host functions called from the guest's deepest frame."""
_UNLIMITED_THREAD_STACK = 2 << 20  # glibc's default thread stack when RLIMIT_STACK is unlimited

try:
    _libc: ctypes.CDLL | None = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
except OSError:  # pragma: no cover - every Linux has a libc
    _libc = None

_malloc_trim = getattr(_libc, "malloc_trim", None)  # glibc only
_getattr_np = getattr(_libc, "pthread_getattr_np", None)
if _libc is not None and _getattr_np is not None:
    _libc.pthread_self.restype = ctypes.c_ulong
    _getattr_np.argtypes = [ctypes.c_ulong, ctypes.c_void_p]
    _libc.pthread_attr_getstack.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
    _libc.pthread_attr_destroy.argtypes = [ctypes.c_void_p]


def trim_heap() -> None:
    """Return freed heap to the kernel: glibc keeps the arenas a compile grew (1 GB for 200k functions)."""
    if _malloc_trim is not None:
        _malloc_trim(0)


def thread_stack_size() -> int | None:
    """Bytes of native stack of the calling thread, or None where it cannot be known."""
    if _libc is None or _getattr_np is None:
        return None
    attr = ctypes.create_string_buffer(256)  # pthread_attr_t is 56 bytes on x86-64 glibc
    if _getattr_np(_libc.pthread_self(), attr) != 0:
        return None
    address, size = ctypes.c_void_p(), ctypes.c_size_t()
    try:
        if _libc.pthread_attr_getstack(attr, ctypes.byref(address), ctypes.byref(size)) != 0:
            return None
    finally:
        _libc.pthread_attr_destroy(attr)
    return size.value


def default_thread_stack() -> int:
    """The stack size of threads Python creates from now on (`threading.stack_size()` or glibc's default)."""
    explicit = threading.stack_size()
    if explicit:
        return explicit
    soft, _ = resource.getrlimit(resource.RLIMIT_STACK)
    return _UNLIMITED_THREAD_STACK if soft == resource.RLIM_INFINITY else int(soft)


def ensure_thread_stacks(wasm_stack: int) -> None:
    """Make threads created from now on deep enough to run a guest with `wasm_stack` bytes of stack.

    Process-wide (`threading.stack_size`), and only ever raised: the worker threads that run guests
    are created after the engines, so they get it. Threads that already exist keep their size; the
    engine checks each thread before it runs a guest there.
    """
    needed = wasm_stack + HOST_HEADROOM
    if default_thread_stack() < needed:
        page = resource.getpagesize()
        threading.stack_size((needed + page - 1) // page * page)
