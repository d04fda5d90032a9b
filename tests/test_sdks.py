"""The three guest SDKs: ABI conformance byte for byte, each SDK's API (the guest cache too), and
`isolate new` projects."""

from __future__ import annotations

import random
from pathlib import Path

import msgpack
import pytest
from conftest import HostFactory

from isolate import GuestError, Host, Request
from isolate.build import build
from isolate.engine import run
from isolate.scaffold import scaffold

ROOT = Path(__file__).resolve().parent.parent
SDK = ROOT / "guest-sdk"
LANGUAGES = ["c", "rust", "assemblyscript"]
VECTORS = msgpack.unpackb((SDK / "abi" / "vectors.msgpack").read_bytes())


@pytest.mark.parametrize("language", LANGUAGES)
def test_conformance_vectors_byte_for_byte(host: Host, language: str) -> None:
    wasm = build(SDK / language / "conformance").output.read_bytes()
    host.deploy("conformance", wasm)
    limits = host.module("conformance").limits
    prepared = host._cache.get(f"{host.module('conformance').active.digest}/{limits.stack}", host._load)
    assert len(VECTORS) >= 17
    for vector in VECTORS:
        outcome = run(prepared, vector["request"], limits, 65536)
        assert outcome.payload == vector["response"], f"{language}: vector {vector['name']}"


def test_vectors_match_their_generator() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate", SDK / "abi" / "generate.py")
    assert spec and spec.loader
    generate = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(generate)
    for (name, request), vector in zip(generate.VECTORS, VECTORS, strict=True):
        assert vector["name"] == name
        assert vector["request"] == msgpack.packb(request, use_bin_type=True)
        assert vector["response"] == msgpack.packb(generate.expected(request), use_bin_type=True)


# What each SDK's error paths look like to a client.
FAIL = {"c": (500, b"handler returned no response\n"), "rust": (404, b"feature failure"),
        "assemblyscript": (404, b"feature failure")}
CRASH_LOG = {"c": None, "rust": "panic: panicked at 'feature panic'", "assemblyscript": "feature panic"}


@pytest.mark.parametrize("language", LANGUAGES)
def test_sdk_api(host: Host, language: str) -> None:
    host.deploy("features", build(SDK / language / "tests" / "features").output.read_bytes(),
                variables={"k": "value"})

    def call(path: str, **kwargs: object) -> tuple[int, bytes]:
        response = host.invoke("features", Request(path=path, **kwargs))  # type: ignore[arg-type]
        return response.status, response.body

    assert call("/header", headers=[("x-mixed-case", "found")]) == (200, b"found")
    assert call("/header") == (200, b"missing")
    assert call("/param", params={"id": "42"}) == (200, b"42")
    assert call("/var") == (200, b"value")
    logged = host.invoke("features", Request(path="/log"))
    assert logged.status == 204 and [(r.level, r.message) for r in logged.logs] == [("warn", "feature log")]
    assert call("/fail") == FAIL[language]
    assert call("/nope") == (404, b"unknown")
    with pytest.raises(GuestError) as info:
        host.invoke("features", Request(path="/crash"))
    assert info.value.kind == "trap" and info.value.to_dict()["trap_code"] == "unreachable"
    if CRASH_LOG[language]:
        assert any(CRASH_LOG[language] in r.message for r in info.value.logs), info.value.logs
    assert call("/var") == (200, b"value")  # healthy after the crash


# What each SDK's features guest answers for a cache failure: 500 with "<code>: <message>".
CACHE_ERRORS = {
    -2: b"-2: cache key is empty or longer than 1024 bytes",
    -3: b"-3: cache value is longer than 1 MiB",
    -4: b"-4: cache TTL is not within 1 ms and 24 h",
}
MAX_CACHE_VALUE = 1024 * 1024


@pytest.mark.parametrize("language", LANGUAGES)
def test_sdk_cache_state_outlives_the_isolate_per_module(host: Host, language: str) -> None:
    wasm = build(SDK / language / "tests" / "features").output.read_bytes()
    host.deploy("features", wasm)
    host.deploy("other", wasm)

    def visit(module: str) -> tuple[int, bytes]:
        response = host.invoke(module, Request(path="/visits"))
        return response.status, response.body

    # Every request runs in a fresh isolate: only the guest cache can carry the count.
    assert [visit("features") for _ in range(3)] == [(200, b"1"), (200, b"2"), (200, b"3")]
    assert visit("other") == (200, b"1")  # the same wasm as another module: its own namespace
    assert visit("features") == (200, b"4")


@pytest.mark.parametrize("language", LANGUAGES)
def test_sdk_cache_values_round_trip_intact(host: Host, language: str) -> None:
    host.deploy("features", build(SDK / language / "tests" / "features").output.read_bytes())

    def call(path: str, body: bytes = b"") -> tuple[int, bytes]:
        response = host.invoke("features", Request(method="POST" if body else "GET", path=path, body=body))
        return response.status, response.body

    assert call("/cache/get") == (404, b"missing")
    # The SDKs ask for 256 bytes first and again with the full length when the value is larger.
    for size in (0, 1, 255, 256, 257, 5000, MAX_CACHE_VALUE):
        value = random.Random(size).randbytes(size)
        assert call("/cache/put", value) == (204, b""), size
        status, body = call("/cache/get")
        assert status == 200 and len(body) == size and body == value, size
    assert call("/cache/put", b"x" * (MAX_CACHE_VALUE + 1)) == (500, CACHE_ERRORS[-3])
    assert call("/cache/get")[1] == value  # the refused put left the stored value alone


@pytest.mark.parametrize("language", LANGUAGES)
def test_sdk_cache_errors_surface_as_documented(host: Host, language: str) -> None:
    host.deploy("features", build(SDK / language / "tests" / "features").output.read_bytes())

    def call(path: str) -> tuple[int, bytes]:
        response = host.invoke("features", Request(path=path))
        return response.status, response.body

    assert call("/cache/bad-ttl") == (500, CACHE_ERRORS[-4])  # put with a TTL of 0
    assert call("/cache/bad-key") == (500, CACHE_ERRORS[-2])  # put with an empty key
    if language == "assemblyscript":  # a bad key in `cache.get` throws: the isolate traps, logged
        with pytest.raises(GuestError) as info:
            host.invoke("features", Request(path="/cache/long-key"))
        assert info.value.kind == "trap"
        assert any("cache key is empty or longer than 1024 bytes" in r.message for r in info.value.logs)
    else:
        assert call("/cache/long-key") == (500, CACHE_ERRORS[-2])  # get with a 1025-byte key
    assert host.statistics().guest_cache.entries == 0  # nothing was stored


def test_rust_cache_errors_convert_with_question_mark(host: Host) -> None:
    host.deploy("features", build(SDK / "rust" / "tests" / "features").output.read_bytes())
    response = host.invoke("features", Request(path="/cache/try"))  # a TTL under 1 ms, then `?`
    assert response.status == 500 and response.body == b"cache TTL is not within 1 ms and 24 h"
    assert any("handler error" in r.message for r in response.logs)


def test_rust_std_errors_become_500s(host: Host) -> None:
    host.deploy("features", build(SDK / "rust" / "tests" / "features").output.read_bytes())
    response = host.invoke("features", Request(path="/parse"))
    assert response.status == 500 and response.body == b"invalid digit found in string"
    assert any("handler error" in r.message for r in response.logs)


@pytest.mark.parametrize("language", LANGUAGES)
def test_new_project_builds_and_runs(make_host: HostFactory, tmp_path: Path, language: str) -> None:
    project = scaffold(language, f"my-{language[:4]}", tmp_path)
    result = build(project)
    assert result.output == project / "build" / f"{project.name}.wasm" and result.size > 0
    assert build(project).cached
    host = make_host()
    host.deploy(project.name, result.output.read_bytes())
    response = host.invoke(project.name, Request(path="/x"))
    assert response.status == 200 and response.body == f"hello from {project.name}\n/x\n".encode()
