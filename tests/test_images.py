"""Modules with little initial data run on an engine that copies it into each isolate; the others
keep memory images (engine/_images.py). Both answer the same, survive restarts, and never mix."""

from __future__ import annotations

import gc
from pathlib import Path

import guests as g
import pytest
from conftest import HostFactory

from isolate import InvalidConfig, StorageError
from isolate.config import MAX_POOL_INSTANCES
from isolate.engine import copies_data
from isolate.engine._images import COPY_MAX_BYTES, COPY_MAX_SEGMENTS
from isolate.errors import Trap

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def with_segments(count: int, size: int = 8, offset: str = "(i32.const {at})", body: bytes = b"hello") -> bytes:
    """A guest answering `body`, with `count` more data segments of `size` bytes each above its own data."""
    segments = " ".join(f'(data {offset.format(at=8192 + i * (size + 8))} "{"x" * size}")' for i in range(count))
    return g.wasm(g.module(response=g.response_bytes(body=body), memory="4", extra=segments))


def answering(body: bytes) -> bytes:
    """A guest answering `body`: two small data segments, copied into each isolate."""
    return g.wasm(g.module(response=g.response_bytes(body=body)))


def test_small_data_is_copied_and_large_or_split_data_keeps_images() -> None:
    assert copies_data(g.wasm(g.HELLO))  # two segments of a few bytes
    assert copies_data(g.wasm("(module)"))  # no data at all
    assert copies_data(with_segments(COPY_MAX_SEGMENTS - 2))
    assert not copies_data(with_segments(COPY_MAX_SEGMENTS - 1))  # one over, with the guest's own two
    assert not copies_data(with_segments(1, size=COPY_MAX_BYTES + 1))
    # Offsets are read as expressions: an immediate that is the `end` byte (11), a global, arithmetic.
    assert copies_data(with_segments(2, offset="(i32.const 11)"))
    assert copies_data(g.wasm(g.module(extra='(global $base i32 (i32.const 8192)) (data (global.get $base) "ab")')))
    assert copies_data(g.wasm(g.module(extra='(data (i32.add (i32.const 8192) (i32.const 11)) "ab")')))
    passive = g.wasm(g.module(extra='(data "passive bytes")'))
    assert copies_data(passive)


def test_what_it_cannot_read_keeps_images() -> None:
    hello = g.wasm(g.HELLO)
    assert not copies_data(b"")
    assert not copies_data(b"\0asm\x0d\x00\x01\x00")  # a component's header
    inside_data = hello.index(g.response_bytes()) + 3
    assert not copies_data(hello[:inside_data])  # cut short inside its data section
    assert not copies_data(b"not wasm at all")


@pytest.mark.parametrize("sample", ["router/build/router.wasm", "hello-py/build/hello-py.wasm"])
def test_the_sdk_outputs_that_need_images_keep_them(sample: str) -> None:
    # AssemblyScript writes a segment per static object (hundreds); a componentize-py snapshot is a
    # component with megabytes of memory.
    assert not copies_data((SAMPLES / sample).read_bytes())


@pytest.mark.parametrize("sample", ["hello/build/hello.wasm", "echo/build/echo.wasm"])
def test_c_and_rust_outputs_are_copied(sample: str) -> None:
    assert copies_data((SAMPLES / sample).read_bytes())


def test_each_module_runs_on_its_engine_and_both_survive_a_restart(make_host: HostFactory, tmp_path: Path) -> None:
    small = answering(b"copied")
    split = with_segments(40, body=b"imaged")
    first = make_host()
    first.deploy("small", small)
    first.deploy("split", split)
    for _ in range(3):  # fresh isolates one after another, each module's data intact every time
        assert first.invoke("small").body == b"copied" and first.invoke("split").body == b"imaged"
    engines = {name: first._cache.get(f"{first.module(name).active.digest}/{first.module(name).limits.stack}",
                                      first._load).runtime for name in ("small", "split")}
    assert engines["small"].copies and not engines["split"].copies
    assert engines["small"].fingerprint != engines["split"].fingerprint
    first.close()

    second = make_host()  # a restart: each module's artifact is found under its own engine's fingerprint
    # Both engines made at start-up, not on a first request (see Host.__init__)
    assert sorted(key[1] for key in second._runtimes) == [False, True]
    assert second.invoke("small").body == b"copied" and second.invoke("split").body == b"imaged"
    assert second.statistics().artifact_recompiles == 0


def test_an_intact_artifact_serves_when_the_wasm_is_gone(make_host: HostFactory, tmp_path: Path) -> None:
    first = make_host()
    first.deploy("m", answering(b"still here"))
    digest = first.module("m").active.digest
    first.close()
    (tmp_path / "data" / "wasm" / f"{digest}.wasm").unlink()
    second = make_host()
    # Its engine is known from the sealed artifact, without the bytes, and made at start-up
    assert (second.module("m").limits.stack, True) in second._runtimes
    assert second.invoke("m").body == b"still here"
    assert second.statistics().artifact_recompiles == 0
    (tmp_path / "data" / "compiled").rename(tmp_path / "data" / "compiled-gone")
    third = make_host()
    with pytest.raises(StorageError, match="missing"):
        third.invoke("m")


def test_a_rollback_to_code_of_the_other_kind_runs(make_host: HostFactory) -> None:
    host = make_host()
    host.deploy("m", with_segments(40, body=b"v1"))
    host.deploy("m", answering(b"v2"))
    assert host.invoke("m").body == b"v2"
    host.rollback("m")
    assert host.invoke("m").body == b"v1"


def test_where_a_second_engine_has_no_room_one_engine_runs_both_kinds(make_host: HostFactory) -> None:
    host = make_host(pool_instances=MAX_POOL_INSTANCES)  # 40 TiB of the 64 TiB engines may reserve
    host.deploy("small", answering(b"copied"))
    assert host.invoke("small").body == b"copied"
    stack = host.module("small").limits.stack
    assert host._runtimes[(stack, True)] is host._runtimes[(stack, False)]
    assert host.statistics().engines == 1


@pytest.mark.parametrize("at", [40000, 1536 * 1024], ids=["resident part", "beyond keep_resident"])
def test_a_slot_another_module_used_starts_zeroed(make_host: HostFactory, at: int) -> None:
    # Copying modules share slots across tenants: what one wrote must never reach the next, in the part
    # of a slot reset with memset (keep_resident) or beyond it.
    grow = "(drop (memory.grow (i32.const 32)))"  # to 2 MiB + 64 KiB, whatever the first size
    writer = g.module(f"{grow} (i32.store (i32.const {at}) (i32.const 0x41414141)) {g.returns(g.response_bytes())}")
    reader = g.module(f"{grow} (if (i32.load (i32.const {at})) (then unreachable)) {g.returns(g.response_bytes())}")
    host = make_host()
    host.deploy("writer", g.wasm(writer))
    host.deploy("reader", g.wasm(reader))
    assert copies_data(g.wasm(writer)) and copies_data(g.wasm(reader))
    for _ in range(20):
        assert host.invoke("writer").status == 200
        assert host.invoke("reader").status == 200  # traps if it sees the writer's bytes
    # The reader's check works: in one isolate, written then read, it traps.
    both = g.module(f"{grow} (i32.store (i32.const {at}) (i32.const 0x41414141)) "
                    f"(if (i32.load (i32.const {at})) (then unreachable)) {g.returns(g.response_bytes())}")
    host.deploy("both", g.wasm(both))
    with pytest.raises(Trap):
        host.invoke("both")


def test_copying_engines_never_take_the_room_of_a_stack_size_without_an_engine(make_host: HostFactory) -> None:
    # With 5,000 slots an engine reserves ~20 TiB of the 64 TiB: three fit. Before there were two kinds,
    # three stack sizes could be served; copying engines must not lower that.
    gc.collect()  # engines of earlier tests in this process, unreachable but not yet collected, hold theirs
    host = make_host(pool_instances=5000)
    small = answering(b"small")
    for stack in (64 << 10, 128 << 10):
        host.deploy(f"s{stack}", small, limits={"stack": stack})
        assert host.invoke(f"s{stack}").body == b"small"
    assert host.statistics().engines == 3  # the default stack size's, and one each: images, serving both
    assert not any(runtime.copies for runtime in host._runtimes.values())
    with pytest.raises(InvalidConfig, match="no address space for another engine"):
        host.deploy("fourth", small, limits={"stack": 256 << 10})


def test_a_module_of_many_sections_is_judged_at_once() -> None:
    # Read before wasmtime validates it: a module made of a million empty custom sections must not
    # hold the GIL for seconds; past a bound it simply keeps images.
    hello = g.wasm(g.HELLO)
    empty_custom = b"\x00\x01\x00"  # section 0, one byte long: a name of length 0
    many = hello[:8] + empty_custom * 1_000_000 + hello[8:]
    assert not copies_data(many)  # walked to its data section, it would say True
    assert copies_data(hello[:8] + empty_custom * 10 + hello[8:])  # a few custom sections change nothing
