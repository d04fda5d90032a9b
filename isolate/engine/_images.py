"""How each isolate's memory gets a module's initial data: copied from a few small data segments, or
mapped copy-on-write from a memory image. The two need engines configured apart (`Runtime(copies=)`).

With images, wasmtime keeps each pooled memory slot affine to the module that last used it, since
moving a slot to another module remaps its image (measured: 29 µs a request). So each of 1,000
tenants gets a slot of its own and every request resets a slot gone cold in the CPU caches: the
1,000-tenant invoke took 14 µs against 7 µs for one tenant. Copying instead costs a memcpy per
segment at instantiation, so any slot serves any module, and the engine reuses the slot freed last,
still in the cache (8.6–10.6 µs). Copying loses where data is large (componentize-py's snapshots
hold megabytes) or split in many segments (AssemblyScript writes one per static object: 266
segments cost the router sample 2 µs a request): those modules keep images.
"""

from __future__ import annotations

COPY_MAX_SEGMENTS = 16
"""Data segments a module may have and still be copied per isolate (~8 ns of instantiation each)."""
COPY_MAX_BYTES = 64 * 1024
"""Bytes of data a module may have and still be copied per isolate."""

_DATA_SECTION = 11
_CORE_VERSION = b"\x01\x00\x00\x00"
_MAX_SECTIONS = 256  # a module has a dozen standard sections and some custom ones; past this, images


def copies_data(wasm: bytes) -> bool:
    """Whether a core module's initial data is small enough to copy into each isolate's memory.

    False for a component and for anything this cannot read (compiling it is what judges it)."""
    if len(wasm) < 8 or wasm[:4] != b"\0asm" or wasm[4:8] != _CORE_VERSION:
        return False
    try:
        pos = 8
        # Read before wasmtime validates the module: bounded, so a module of millions of tiny sections
        # costs microseconds here rather than seconds of the GIL.
        for _ in range(_MAX_SECTIONS):
            if pos >= len(wasm):
                return True  # no data section: nothing to copy
            section = wasm[pos]
            size, pos = _uleb(wasm, pos + 1)
            if pos + size > len(wasm):  # cut short
                return False
            if section == _DATA_SECTION:
                return _small_data(memoryview(wasm)[pos:pos + size])  # a view: no copy of the data
            pos += size
    except IndexError:
        return False
    return False  # more sections than any module this copies has


def _small_data(section: memoryview) -> bool:
    count, pos = _uleb(section, 0)
    if count > COPY_MAX_SEGMENTS:
        return False
    total = 0
    for _ in range(count):
        flags, pos = _uleb(section, pos)
        if flags == 1:  # passive: no offset expression
            pass
        elif flags in (0, 2):
            if flags == 2:
                _, pos = _uleb(section, pos)  # memory index
            pos = _skip_offset(section, pos)
            if pos < 0:
                return False
        else:
            return False
        length, pos = _uleb(section, pos)
        total += length
        pos += length
        if total > COPY_MAX_BYTES or pos > len(section):
            return False
    return True


_CONST = (0x41, 0x42)  # i32.const, i64.const: a LEB128 immediate
_GLOBAL_GET = 0x23
_ARITHMETIC = (0x6A, 0x6B, 0x6C, 0x7C, 0x7D, 0x7E)  # extended constants: add, sub, mul (i32 and i64)
_END = 0x0B


def _skip_offset(section: memoryview, pos: int) -> int:
    """The position after a segment's offset expression, or -1 for one this does not know."""
    while True:
        op = section[pos]
        pos += 1
        if op == _END:
            return pos
        if op in _CONST:
            while section[pos] & 0x80:
                pos += 1
            pos += 1
        elif op == _GLOBAL_GET:
            _, pos = _uleb(section, pos)
        elif op not in _ARITHMETIC:
            return -1


def _uleb(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """An unsigned LEB128 at `pos`: (its value, the position after it). IndexError past the end."""
    result = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, pos
        shift += 7
        if shift > 35:
            raise IndexError("LEB128 too long")
