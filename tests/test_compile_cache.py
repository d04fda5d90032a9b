"""The compile cache: code compiled in one data directory is loaded in another, only when intact and made for
this engine."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import guests as g
import httpx
import pytest
import wasmtime
from click.testing import CliRunner
from live import LiveServer

from isolate import Config, Host, InvalidConfig, InvalidModule, Request
from isolate.cli import main
from isolate.engine._runtime import Runtime

RuntimeFactory = Callable[..., Runtime]
BODY = b"compiled once"
WASM = g.wasm(g.module(response=g.response_bytes(body=BODY)))
DIGEST = hashlib.sha256(WASM).hexdigest()

HANDLER_TYPES = '''(import "wasi:http/types@0.2.0" (instance $types
     (export "incoming-request" (type (sub resource))) (export "response-outparam" (type (sub resource)))))
  (alias export $types "incoming-request" (type $req))
  (alias export $types "response-outparam" (type $out))'''
# The smallest component the deploy check accepts: an incoming handler with the wasi signature.
COMPONENT = bytes(wasmtime.wat2wasm(f'''(component {HANDLER_TYPES}
  (core module $m (func (export "h") (param i32 i32) unreachable))
  (core instance $i (instantiate $m))
  (func $handle (param "request" (own $req)) (param "response-out" (own $out)) (canon lift (core func $i "h")))
  (instance $h (export "handle" (func $handle)))
  (export "wasi:http/incoming-handler@0.2.0" (instance $h)))'''))


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    return tmp_path / "compile-cache"


@pytest.fixture
def runtime(tmp_path: Path, cache: Path) -> Iterator[RuntimeFactory]:
    """Runtimes on data directories of their own, all sharing `cache`; closed at the end."""
    made: list[Runtime] = []

    def factory(stack: int | None = None, **overrides: object) -> Runtime:
        overrides.setdefault("compile_cache", cache)
        config = Config(data_dir=tmp_path / f"data-{len(made)}", pool_instances=2, **overrides)  # type: ignore[arg-type]
        made.append(Runtime(config, stack))
        return made[-1]

    yield factory
    for each in made:
        each.close()


def entry(cache: Path, digest: str = DIGEST) -> tuple[Path, Path]:
    """The artifact and seal of `digest` (there is one engine fingerprint in these tests)."""
    [artifact] = cache.glob(f"*/{digest}.cwasm")
    return artifact, artifact.with_suffix(".json")


def counts(runtime: Runtime) -> tuple[int, int]:
    assert runtime.compile_cache is not None
    return runtime.compile_cache.hits, runtime.compile_cache.misses


def test_code_compiled_in_one_data_directory_is_loaded_in_another(runtime: RuntimeFactory, cache: Path) -> None:
    first = runtime()
    first.compile(WASM)
    assert counts(first) == (0, 1)
    artifact, seal = entry(cache)
    assert artifact.parent.name == first.fingerprint
    assert json.loads(seal.read_bytes())["artifact_sha256"] == hashlib.sha256(artifact.read_bytes()).hexdigest()
    second = runtime()
    module, shape, _ = second.compile(WASM)
    assert counts(second) == (1, 0)
    assert isinstance(module, wasmtime.Module) and shape == first.compile(WASM)[1]


def test_hosts_sharing_a_cache_serve_what_it_loaded(tmp_path: Path, cache: Path) -> None:
    for name in ("a", "b"):
        with Host(Config(data_dir=tmp_path / name, pool_instances=4, compile_cache=cache)) as host:
            assert host.deploy("m", WASM).digest == DIGEST
            assert host.invoke("m", Request(path="/")).body == BODY
    with Host(Config(data_dir=tmp_path / "b", pool_instances=4, compile_cache=cache)) as host:
        assert host.invoke("m", Request(path="/")).body == BODY  # its own artifact, after a restart
        assert host.statistics().artifact_recompiles == 0


def test_a_component_is_cached_as_a_component(runtime: RuntimeFactory) -> None:
    runtime().compile(COMPONENT)
    second = runtime()
    component, shape, _ = second.compile(COMPONENT)
    assert counts(second) == (1, 0)
    assert isinstance(component, wasmtime.component.Component) and shape.kind == "component"


@pytest.mark.parametrize("damage", ["flipped byte", "truncated", "missing artifact", "bad seal", "nested seal",
                                    "missing seal", "seal for other bytes"])
def test_a_damaged_entry_is_a_miss_and_is_rewritten(runtime: RuntimeFactory, cache: Path, tmp_path: Path,
                                                    damage: str) -> None:
    runtime().compile(WASM)
    artifact, seal = entry(cache)
    intact = artifact.read_bytes()
    if damage == "flipped byte":
        changed = bytearray(intact)
        changed[len(changed) // 2] ^= 0x01
        artifact.write_bytes(bytes(changed))
    elif damage == "truncated":
        artifact.write_bytes(intact[: len(intact) // 2])
    elif damage == "missing artifact":
        artifact.unlink()
    elif damage == "bad seal":
        seal.write_bytes(b"{not json")
    elif damage == "nested seal":
        seal.write_bytes(b"[" * 100_000)
    elif damage == "missing seal":
        seal.unlink()
    else:
        record = json.loads(seal.read_bytes())
        seal.write_text(json.dumps({**record, "wasm_sha256": "0" * 64}))
    second = runtime()
    assert isinstance(second.compile(WASM)[0], wasmtime.Module)
    assert counts(second) == (0, 1)
    third = runtime()
    third.compile(WASM)
    assert counts(third) == (1, 0)  # the entry was written again, whole
    with Host(Config(data_dir=tmp_path / "host", pool_instances=4, compile_cache=cache)) as host:
        host.deploy("m", WASM)  # from the rewritten entry
        assert host.invoke("m", Request(path="/")).body == BODY


def test_an_artifact_of_another_engine_configuration_is_refused_and_replaced(runtime: RuntimeFactory,
                                                                             cache: Path) -> None:
    """Sealed correctly, under this engine's fingerprint, yet compiled without epoch interruption: wasmtime
    refuses it, and the runtime compiles instead of failing."""
    first = runtime()
    other_config = wasmtime.Config()
    other_config.epoch_interruption = False
    foreign = bytes(wasmtime.Module(wasmtime.Engine(other_config), WASM).serialize())
    directory = cache / first.fingerprint
    directory.mkdir(parents=True)
    (directory / f"{DIGEST}.cwasm").write_bytes(foreign)
    (directory / f"{DIGEST}.json").write_text(json.dumps({
        "wasm_sha256": DIGEST, "fingerprint": first.fingerprint,
        "artifact_sha256": hashlib.sha256(foreign).hexdigest()}))
    first.compile(WASM)
    assert counts(first) == (0, 1)
    assert (directory / f"{DIGEST}.cwasm").read_bytes() != foreign
    second = runtime()
    second.compile(WASM)
    assert counts(second) == (1, 0)


def test_engines_that_compile_differently_do_not_share_entries(runtime: RuntimeFactory, cache: Path) -> None:
    first = runtime()
    first.compile(WASM)
    other = runtime(stack=1 << 20)
    assert other.fingerprint != first.fingerprint
    other.compile(WASM)
    assert counts(other) == (0, 1)
    assert sorted(p.name for p in cache.iterdir()) == sorted([first.fingerprint, other.fingerprint])


def test_invalid_wasm_is_not_cached(runtime: RuntimeFactory, cache: Path) -> None:
    with pytest.raises(InvalidModule):
        runtime().compile(WASM[:-3])
    with pytest.raises(InvalidModule):
        runtime().compile(g.wasm("(module)"))  # valid WebAssembly, but refused by the check after compiling
    assert not list(cache.glob("*/*"))


def test_a_cache_that_cannot_be_written_never_fails_a_compile(runtime: RuntimeFactory, tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_bytes(b"")
    for _ in range(2):
        compiled = runtime(compile_cache=blocked)
        assert isinstance(compiled.compile(WASM)[0], wasmtime.Module)
        assert counts(compiled) == (0, 1)


def test_the_cache_is_off_by_default_and_set_by_field_or_environment(tmp_path: Path) -> None:
    assert Config().compile_cache is None
    assert Config(compile_cache=tmp_path).compile_cache == str(tmp_path)
    assert Config.from_env({"ISOLATE_COMPILE_CACHE": str(tmp_path)}).compile_cache == str(tmp_path)
    assert Config.from_env({"ISOLATE_COMPILE_CACHE": ""}).compile_cache is None
    for bad in (1, b"/tmp", "", "a\0b", [str(tmp_path)]):
        with pytest.raises(InvalidConfig, match="compile_cache"):
            Config(compile_cache=bad)  # type: ignore[arg-type]
    with Host(Config(data_dir=tmp_path / "data", pool_instances=4)) as host:
        host.deploy("m", WASM)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]


def test_dev_takes_the_option() -> None:
    result = CliRunner().invoke(main, ["dev", "--help"])
    assert result.exit_code == 0 and "--compile-cache DIR" in result.output


def test_serve_fills_the_cache_it_is_given(tmp_path: Path, cache: Path) -> None:
    # The option, not the variable (empty: off) the test session sets for the servers it starts.
    with LiveServer(tmp_path / "data", "--compile-cache", str(cache), env={"ISOLATE_COMPILE_CACHE": ""}) as server, \
            server.admin() as admin:
        assert admin.put("/v1/modules/m", content=WASM).status_code == 201
        assert admin.put("/v1/routes", json={"routes": [{"path": "/m", "module": "m"}]}).status_code == 200
        assert httpx.get(f"{server.edge_url}/m", timeout=30).content == BODY
    entry(cache)
