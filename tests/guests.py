"""Inline-WAT guests for the tests: a well-behaved ABI v1 skeleton and hostile variations of it."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import msgpack
import pytest
import wasmtime

RESPONSE_AT = 1024  # where the canned response lives in guest memory
PREFIX_AT = 512  # where the echo guest keeps its response prefix
HEAP_START = 8192

# {"status": 200, "headers": [], "body": bin32(...)}: the echo guest appends a length and the body.
ECHO_PREFIX = b"\x83\xa6status\xcc\xc8\xa7headers\x90\xa4body\xc6"


def data_string(data: bytes) -> str:
    return "".join(f"\\{b:02x}" for b in data)


def response_bytes(status: int = 200, headers: list[list[str]] | None = None, body: bytes = b"hello") -> bytes:
    return msgpack.packb({"status": status, "headers": headers or [], "body": body}, use_bin_type=True)


def returns(data: bytes, at: int = RESPONSE_AT) -> str:
    """A handler body returning the (ptr, len) of `data` placed at `at`."""
    return f"(i64.or (i64.shl (i64.const {at}) (i64.const 32)) (i64.const {len(data)}))"


def module(
    handler: str | None = None,
    *,
    response: bytes | None = None,
    memory: str = "1",
    imports: str = "",
    extra: str = "",
    marker: str = "isolate_abi_v1",
    start: str | None = None,
    alloc: str | None = None,
) -> str:
    """WAT for an ABI v1 guest; every keyword swaps one part for a test's variation."""
    response = response_bytes() if response is None else response
    handler = returns(response) if handler is None else handler
    alloc_body = alloc or """
    (local $p i32) (local $end i32)
    (local.set $p (global.get $heap))
    (local.set $end (i32.add (local.get $p) (local.get $n)))
    (block $ok
      (br_if $ok (i32.le_u (local.get $end) (i32.mul (memory.size) (i32.const 65536))))
      (br_if $ok (i32.ne
        (memory.grow (i32.sub (i32.add (i32.shr_u (local.get $end) (i32.const 16)) (i32.const 1)) (memory.size)))
        (i32.const -1)))
      unreachable)
    (global.set $heap (local.get $end))
    (local.get $p)"""
    start_part = f"(func $start {start}) (start $start)" if start else ""
    marker_part = f'(func (export "{marker}"))' if marker else ""
    return f"""
(module
  {imports}
  (memory (export "memory") {memory})
  (global $heap (mut i32) (i32.const {HEAP_START}))
  (global $count (mut i32) (i32.const 0))
  (data (i32.const {PREFIX_AT}) "{data_string(ECHO_PREFIX)}")
  (data (i32.const {RESPONSE_AT}) "{data_string(response)}")
  {marker_part}
  (func $alloc (export "isolate_alloc") (param $n i32) (result i32) {alloc_body})
  (func (export "isolate_handle") (param $ptr i32) (param $len i32) (result i64) {handler})
  {start_part}
  {extra}
)"""


def wasm(wat: str) -> bytes:
    return bytes(wasmtime.wat2wasm(wat))


HELLO = module()

ECHO = module(
    """
    (local $out i32)
    (local.set $out (call $alloc (i32.add (local.get $len) (i32.const 29))))
    (memory.copy (local.get $out) (i32.const 512) (i32.const 25))
    (i32.store8 offset=25 (local.get $out) (i32.shr_u (local.get $len) (i32.const 24)))
    (i32.store8 offset=26 (local.get $out) (i32.shr_u (local.get $len) (i32.const 16)))
    (i32.store8 offset=27 (local.get $out) (i32.shr_u (local.get $len) (i32.const 8)))
    (i32.store8 offset=28 (local.get $out) (local.get $len))
    (memory.copy (i32.add (local.get $out) (i32.const 29)) (local.get $ptr) (local.get $len))
    (i64.or (i64.shl (i64.extend_i32_u (local.get $out)) (i64.const 32))
            (i64.extend_i32_u (i32.add (local.get $len) (i32.const 29))))"""
)

COUNTER_RESPONSE = response_bytes(body=b"\x00\x00")
# Counts requests in a global and in memory; a fresh isolate per request always answers 1, 1.
COUNTER_HANDLER = f"""
    (global.set $count (i32.add (global.get $count) (i32.const 1)))
    (i32.store8 (i32.const 100) (i32.add (i32.load8_u (i32.const 100)) (i32.const 1)))
    (i32.store8 (i32.const {RESPONSE_AT + len(COUNTER_RESPONSE) - 2}) (global.get $count))
    (i32.store8 (i32.const {RESPONSE_AT + len(COUNTER_RESPONSE) - 1}) (i32.load8_u (i32.const 100)))
    {returns(COUNTER_RESPONSE)}"""
COUNTER = module(COUNTER_HANDLER, response=COUNTER_RESPONSE)

_LOG_TEXT = b"structured hello"
_STDOUT_TEXT = b"printed to stdout\n"
# Logs through the host function and writes to WASI stdout, then answers hello.
LOGGER = module(
    f"""
    (call $log (i32.const 2) (i32.const 200) (i32.const {len(_LOG_TEXT)}))
    (i32.store (i32.const 300) (i32.const 320))
    (i32.store (i32.const 304) (i32.const {len(_STDOUT_TEXT)}))
    (drop (call $fd_write (i32.const 1) (i32.const 300) (i32.const 1) (i32.const 308)))
    {returns(response_bytes())}""",
    imports="""
    (import "isolate" "log" (func $log (param i32 i32 i32)))
    (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))""",
    extra=f"""
    (data (i32.const 200) "{data_string(_LOG_TEXT)}")
    (data (i32.const 320) "{data_string(_STDOUT_TEXT)}")""",
)

LOOP = "(loop $l (br $l)) (i64.const 0)"
RECURSE_EXTRA = """
    (func $deep (param i32) (result i32)
      (i32.add (call $deep (i32.add (local.get 0) (i32.const 1))) (i32.const 1)))"""
GROW_BOMB = """
    (loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))
    unreachable"""

# $down(n) recurses n frames deep and returns: depth 5000 needs more than 64 KiB of wasm stack and
# far less than the 512 KiB default.
BOUNDED_RECURSION = module(
    f"(drop (call $down (i32.const 5000))) {returns(response_bytes())}",
    extra="""
    (func $down (param i32) (result i32)
      (if (result i32) (i32.eqz (local.get 0))
        (then (i32.const 0))
        (else (i32.add (call $down (i32.sub (local.get 0) (i32.const 1))) (i32.const 1)))))""",
)

CACHE_IMPORTS = """
    (import "isolate" "cache_get" (func $cache_get (param i32 i32 i32 i32) (result i32)))
    (import "isolate" "cache_put" (func $cache_put (param i32 i32 i32 i32 i32) (result i32)))"""
VISITS_RESPONSE = response_bytes(body=b"\x00")
# Counts visits in the guest cache under key "n" (1 byte at 200): 1, 2, 3... across fresh isolates.
VISITS = module(
    f"""
    (local $n i32)
    (if (i32.ne (call $cache_get (i32.const 200) (i32.const 1) (i32.const 300) (i32.const 4)) (i32.const -1))
      (then (local.set $n (i32.load8_u (i32.const 300)))))
    (local.set $n (i32.add (local.get $n) (i32.const 1)))
    (i32.store8 (i32.const 300) (local.get $n))
    (drop (call $cache_put (i32.const 200) (i32.const 1) (i32.const 300) (i32.const 1) (i32.const 60000)))
    (i32.store8 (i32.const {RESPONSE_AT + len(VISITS_RESPONSE) - 1}) (local.get $n))
    {returns(VISITS_RESPONSE)}""",
    response=VISITS_RESPONSE,
    imports=CACHE_IMPORTS,
    extra='(data (i32.const 200) "n")',
)


def cache_call(call: str) -> str:
    """A guest answering the i32 result of one cache host call as a 4-byte little-endian body."""
    body = response_bytes(body=b"\x00" * 4)
    at = RESPONSE_AT + len(body) - 4
    return module(f"(i32.store (i32.const {at}) {call}) {returns(body)}", response=body, imports=CACHE_IMPORTS)


IO_IMPORTS = """
    (import "isolate" "http_send" (func $http_send (param i32 i32) (result i32)))
    (import "isolate" "http_take" (func $http_take (param i32 i32) (result i32)))
    (import "isolate" "kv_open" (func $kv_open (param i32 i32) (result i32)))
    (import "isolate" "kv_get" (func $kv_get (param i32 i32 i32 i32 i32) (result i32)))
    (import "isolate" "kv_set" (func $kv_set (param i32 i32 i32 i32 i32) (result i32)))
    (import "isolate" "kv_list" (func $kv_list (param i32 i32 i32 i32 i32 i32 i32) (result i32)))"""
ENVELOPE_AT = 16384
ANSWER_AT = 65536


def fetcher(envelope: bytes, *, calls: int = 1) -> str:
    """A guest sending `envelope` with http_send `calls` times. It answers 200 with the last answer
    envelope as its body, or 502 with the error code (4 bytes, little-endian)."""
    failed = response_bytes(status=502, body=b"\x00" * 4)
    code_at = RESPONSE_AT + len(failed) - 4
    return module(
        f"""
        (local $n i32) (local $i i32)
        (loop $again
          (local.set $n (call $http_send (i32.const {ENVELOPE_AT}) (i32.const {len(envelope)})))
          (if (i32.lt_s (local.get $n) (i32.const 0))
            (then (i32.store (i32.const {code_at}) (local.get $n)) (return {returns(failed)})))
          (local.set $i (i32.add (local.get $i) (i32.const 1)))
          (br_if $again (i32.lt_u (local.get $i) (i32.const {calls}))))
        (drop (call $http_take (i32.const {ANSWER_AT + 29}) (local.get $n)))
        (memory.copy (i32.const {ANSWER_AT}) (i32.const {PREFIX_AT}) (i32.const 25))
        (i32.store8 (i32.const {ANSWER_AT + 25}) (i32.shr_u (local.get $n) (i32.const 24)))
        (i32.store8 (i32.const {ANSWER_AT + 26}) (i32.shr_u (local.get $n) (i32.const 16)))
        (i32.store8 (i32.const {ANSWER_AT + 27}) (i32.shr_u (local.get $n) (i32.const 8)))
        (i32.store8 (i32.const {ANSWER_AT + 28}) (local.get $n))
        (i64.or (i64.shl (i64.const {ANSWER_AT}) (i64.const 32))
                (i64.extend_i32_u (i32.add (local.get $n) (i32.const 29))))""",
        response=failed,
        imports=IO_IMPORTS,
        memory="256",
        extra=f'(data (i32.const {ENVELOPE_AT}) "{data_string(envelope)}")',
    )


def io_call(call: str, data: bytes = b"") -> str:
    """A guest answering the i32 result of one I/O host call (4 bytes, little-endian); `data` sits at 200."""
    body = response_bytes(body=b"\x00" * 4)
    at = RESPONSE_AT + len(body) - 4
    return module(f"(i32.store (i32.const {at}) {call}) {returns(body)}", response=body, imports=IO_IMPORTS,
                  extra=f'(data (i32.const 200) "{data_string(data)}")' if data else "")


COMPONENTS = Path(__file__).resolve().parent / "components"
"""Hand-written wasi:http guests (WAT) and build.mjs, which makes components of them with jco."""


def jco_component(name: str, out_dir: Path) -> Path:
    """tests/components/`name`.wat built into a component with jco (guest-sdk/javascript's, else bench/peers');
    the test is skipped when node or jco is not installed."""
    if shutil.which("node") is None:
        pytest.skip("node is not installed: jco, which builds the component, runs on it (make toolchains)")
    out = out_dir / f"{name}.wasm"
    built = subprocess.run(["node", str(COMPONENTS / "build.mjs"), str(COMPONENTS / f"{name}.wat"), str(out)],
                           capture_output=True, text=True, timeout=120)
    if built.returncode == 3:  # build.mjs: no jco in any node_modules it knows
        pytest.skip(f"jco is not installed (make toolchains installs guest-sdk/javascript): {built.stderr.strip()}")
    assert built.returncode == 0, built.stderr or built.stdout
    assert out.read_bytes()[:8] == b"\0asm\x0d\0\x01\0", "not a component"
    return out
