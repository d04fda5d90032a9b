"""Deploy-time checks, versions, rollback, delete and per-module settings."""

from __future__ import annotations

from pathlib import Path

import guests as g
import pytest
from conftest import HostFactory

from isolate import Config, Host, InvalidConfig, InvalidModule, InvalidName, Limits, ModuleTooLarge, NotFound


def test_deploy_returns_version_and_lists_module(host: Host) -> None:
    wasm = g.wasm(g.HELLO)
    info = host.deploy("hello", wasm)
    assert (info.name, info.version, info.size) == ("hello", 1, len(wasm))
    assert len(info.digest) == 64 and info.compile_ms > 0
    [module] = host.modules()
    assert module.name == "hello" and module.active_version == 1 and module.limits == Limits()


def test_versions_and_rollback(host: Host) -> None:
    host.deploy("site", g.wasm(g.module(response=g.response_bytes(body=b"one"))))
    host.deploy("site", g.wasm(g.module(response=g.response_bytes(body=b"two"))))
    host.deploy("site", g.wasm(g.module(response=g.response_bytes(body=b"three"))))
    assert host.invoke("site").body == b"three"
    assert host.rollback("site").active_version == 2
    assert host.invoke("site").body == b"two"
    assert host.rollback("site", 1).active_version == 1
    assert host.invoke("site").body == b"one"
    with pytest.raises(NotFound, match="no version before 1"):
        host.rollback("site")
    with pytest.raises(NotFound, match="no version 9"):
        host.rollback("site", 9)
    assert host.rollback("site", 3).active_version == 3
    # a new deploy after rollbacks gets the next number, never reuses one
    assert host.deploy("site", g.wasm(g.HELLO)).version == 4
    assert [v.version for v in host.module("site").versions] == [1, 2, 3, 4]


def test_delete(host: Host) -> None:
    host.deploy("gone", g.wasm(g.HELLO))
    host.delete("gone")
    assert host.modules() == []
    with pytest.raises(NotFound):
        host.invoke("gone")
    with pytest.raises(NotFound):
        host.delete("gone")


@pytest.mark.parametrize(
    "name",
    ["../x", "a/b", "a\\b", ".", "..", "...", "", "a\x00b", "a\nb", "A", "x" * 64, "-lead", "a b", "é", None],
)
def test_bad_names_are_rejected(host: Host, name: str) -> None:
    with pytest.raises(InvalidName) as info:
        host.deploy(name, g.wasm(g.HELLO))
    assert info.value.status == 400 and "pattern" in info.value.to_dict()
    assert host.modules() == []
    assert not any((host.config.data_dir / "modules").iterdir())


def test_good_names(host: Host) -> None:
    for name in ["a", "0", "my-module_2", "x" * 63]:
        host.deploy(name, g.wasm(g.HELLO))
    assert len(host.modules()) == 4


def test_module_size_cap(make_host: HostFactory) -> None:
    host = make_host(max_module_size=1000)
    with pytest.raises(ModuleTooLarge) as info:
        host.deploy("big", g.wasm(g.HELLO) + b"\x00" * 1000)
    assert info.value.status == 413


VALID = g.wasm(g.HELLO)


@pytest.mark.parametrize(
    "wasm, match",
    [
        (b"", "magic"),
        (b"hello world, not wasm", "magic"),
        (VALID[: len(VALID) // 2], "invalid WebAssembly"),  # truncated
        (VALID[:8] + b"\xff" * 20, "invalid WebAssembly"),  # malformed section
        (b"\0asm\x0d\x00\x01\x00", "component does not export wasi:http/incoming-handler"),  # an empty component
        (b"\0asm\x02\x00\x00\x00", "unknown WebAssembly binary version"),
        (g.wasm(g.module(marker="")), "missing ABI version marker"),
        (g.wasm(g.module(marker="isolate_abi_v2")), "unsupported ABI version 2"),
        (g.wasm("(module (func (export \"isolate_abi_v1\")))"), "missing export 'memory'"),
        (g.wasm(g.module().replace('(export "isolate_handle")', "")), "missing export 'isolate_handle'"),
        (g.wasm(g.module().replace('(export "isolate_alloc")', "")), "missing export 'isolate_alloc'"),
        (g.wasm(g.module(imports='(import "env" "now" (func (result i64)))')), "unknown import env.now"),
        (g.wasm(g.module(imports='(import "isolate" "fetch" (func))')), "unknown import isolate.fetch"),
        (g.wasm(g.module(imports='(import "isolate" "log" (func (param i32)))')), "wrong signature"),
        (g.wasm(g.module(imports='(import "env" "mem" (memory 1))').replace('(memory (export "memory") 1)', "")),
         "unknown import env.mem"),
        (g.wasm(g.module(imports='(import "wasi_snapshot_preview1" "fd_write" (func (param i32)))')),
         "cannot link"),
        (g.wasm(g.module(imports='(import "wasi_snapshot_preview1" "no_such_call" (func))')), "cannot link"),
        (g.wasm(g.module(extra='(func (export "_initialize") (param i32))')), "_initialize"),
    ],
)
def test_invalid_modules_are_rejected(host: Host, wasm: bytes, match: str) -> None:
    with pytest.raises(InvalidModule, match=match) as info:
        host.deploy("bad", wasm)
    assert info.value.status == 422
    assert host.modules() == []
    host.deploy("ok", VALID)  # the host is still healthy
    assert host.invoke("ok").status == 200


def test_all_export_problems_are_reported_together(host: Host) -> None:
    with pytest.raises(InvalidModule) as info:
        host.deploy("bad", g.wasm("(module)"))
    problems = info.value.to_dict()["problems"]
    assert len(problems) == 4  # marker, memory, alloc, handle


def test_declared_memory_over_limit_is_rejected_at_deploy(host: Host) -> None:
    with pytest.raises(InvalidModule, match="initial memory"):
        host.deploy("fat", g.wasm(g.module(memory="3000")))  # 187.5 MiB > 128 MiB
    host.deploy("fat", g.wasm(g.module(memory="3000")), limits={"memory": 256 << 20})
    assert host.invoke("fat").status == 200


def test_limits_and_variables_are_validated_and_kept(host: Host) -> None:
    with pytest.raises(InvalidConfig, match="unknown limit"):
        host.deploy("m", VALID, limits={"cpu": 5})
    with pytest.raises(InvalidConfig, match="host maximum"):
        host.deploy("m", VALID, limits={"memory": 8 << 30})
    with pytest.raises(InvalidConfig, match="variables"):
        host.deploy("m", VALID, variables={"k": 1})  # type: ignore[dict-item]
    host.deploy("m", VALID, limits={"timeout": 1.5}, variables={"k": "v"})
    host.deploy("m", VALID)  # settings carry over to the next version
    info = host.module("m")
    assert info.limits.timeout == 1.5 and info.limit_overrides == {"timeout": 1.5}
    assert info.variables == {"k": "v"}
    info = host.configure("m", limits={"timeout": None}, variables={})  # None: back to the default
    assert info.limits == Limits() and info.variables == {}
    assert host.deploy("m", VALID, limits=Limits(memory=64 << 20)).version == 3
    assert host.module("m").limit_overrides == {"memory": 64 << 20}


def test_a_limit_changes_only_when_it_is_named(tmp_path: Path) -> None:
    with Host(Config(data_dir=tmp_path)) as host:
        host.deploy("m", VALID, limits={"memory": 8 << 20})
        assert host.configure("m", limits={"timeout": 1.0}).limits.memory == 8 << 20
        host.deploy("m", VALID, limits={"response_size": 4096})
        info = host.module("m")
        assert (info.limits.memory, info.limits.timeout, info.limits.response_size) == (8 << 20, 1.0, 4096)
        assert host.configure("m", limits={"memory": None}).limit_overrides == {"timeout": 1.0, "response_size": 4096}


def test_versions_are_never_reused_after_a_delete(tmp_path: Path) -> None:
    with Host(Config(data_dir=tmp_path)) as host:
        host.deploy("m", VALID)
        host.deploy("m", VALID)
        host.delete("m")
        assert host.deploy("m", VALID).version == 3
    with Host(Config(data_dir=tmp_path)) as host:  # and after a restart
        host.delete("m")
    with Host(Config(data_dir=tmp_path)) as host:
        assert host.deploy("m", VALID).version == 4


def test_deploy_accepts_webassembly_text(tmp_path: Path) -> None:
    with Host(Config(data_dir=tmp_path)) as host:
        text = (Path(__file__).parent.parent / "samples" / "hello-wat" / "hello.wat").read_text()
        assert host.deploy("t", text).version == 1
        assert host.deploy("t", text.encode()).digest == host.module("t").versions[0].digest
        assert host.invoke("t").status == 200
