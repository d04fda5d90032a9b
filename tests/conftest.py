"""Shared fixtures: hosts on temporary data directories with small pools."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from origin import Origin, closed_port

from isolate import Config, Host
from isolate.build import cache_dir

HostFactory = Callable[..., Host]

_COMPILE_CACHE = "ISOLATE_COMPILE_CACHE"
_cache_key = pytest.StashKey[tuple[str | None, str | None]]()  # a directory to remove, and the variable before
UNUSED_ENTRY_DAYS = 7
KEPT_BYTES = 1 << 30  # about 28 builds of the Python or JavaScript sample component


def pytest_configure(config: pytest.Config) -> None:
    """Every `isolate serve` and `isolate dev` a test starts shares one compile cache: each has a data directory
    of its own and would otherwise compile the same samples again, run after run (a component with an
    interpreter inside takes ~10 s of a core). The cache is kept across runs in the toolchains' cache
    directory (`isolate.build.cache_dir()`); ISOLATE_TEST_COMPILE_CACHE names another, or `fresh` for a new
    one removed after the run. An entry is used only for the very bytes it was compiled from, by the same
    wasmtime and engine settings (tests/test_compile_cache.py). In-process hosts are built from `Config`,
    which never reads the environment: they compile for real, unless a test passes the cache on."""
    chosen = os.environ.get("ISOLATE_TEST_COMPILE_CACHE", "")
    temporary = None
    if chosen == "fresh":
        root = temporary = tempfile.mkdtemp(prefix="isolate-test-compile-cache-")
    else:
        root = chosen or str(cache_dir() / "test-compile-cache")
        _prune(Path(root))
    config.stash[_cache_key] = (temporary, os.environ.get(_COMPILE_CACHE))
    os.environ[_COMPILE_CACHE] = root


def pytest_unconfigure(config: pytest.Config) -> None:
    if _cache_key not in config.stash:
        return
    temporary, before = config.stash[_cache_key]
    if before is None:
        os.environ.pop(_COMPILE_CACHE, None)
    else:
        os.environ[_COMPILE_CACHE] = before
    if temporary is not None:
        shutil.rmtree(temporary, ignore_errors=True)


def _prune(root: Path) -> None:
    """Drop entries no run has used for a week, then the least recently used beyond KEPT_BYTES (a hit touches
    the entry's seal, never its artifact), so the kept cache does not grow with every build of every guest;
    and files a killed run left."""
    cutoff = time.time() - UNUSED_ENTRY_DAYS * 86400
    entries: list[tuple[float, int, Path]] = []
    for path in root.glob("*/*"):
        seal = path.with_suffix(".json")
        try:
            used = (seal if seal.exists() else path).stat().st_mtime
            if used < cutoff:
                path.unlink()
            else:
                entries.append((used, path.stat().st_size, path))
        except OSError:
            pass
    kept = 0
    for _, size, path in sorted(entries, key=lambda entry: entry[0], reverse=True):
        kept += size
        if kept > KEPT_BYTES:  # the seal goes with its artifact: an entry is whole or a miss
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
                path.with_suffix(".json").unlink(missing_ok=True)


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    """A real HTTP origin on 127.0.0.1 for a module's outbound calls (tests/origin.py)."""
    with Origin() as running:
        yield running


@pytest.fixture(scope="module")
def down() -> int:
    """A loopback port nothing listens on: a call to it is refused."""
    return closed_port()


@pytest.fixture
def make_host(tmp_path: Path) -> Iterator[HostFactory]:
    """Build hosts on `tmp_path/data` (shared, so a second host is a restart); all closed at the end."""
    hosts: list[Host] = []

    def factory(**overrides: Any) -> Host:
        overrides.setdefault("data_dir", tmp_path / "data")
        overrides.setdefault("pool_instances", 16)
        host = Host(Config(**overrides))
        hosts.append(host)
        return host

    yield factory
    for host in hosts:
        host.close()


@pytest.fixture
def host(make_host: HostFactory) -> Host:
    return make_host()


class AsgiClient:
    """A synchronous httpx client that drives an ASGI app in-process on its own event loop."""

    def __init__(self, app: Any, base_url: str = "http://test", headers: dict[str, str] | None = None) -> None:
        self._loop = asyncio.new_event_loop()
        self._client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url,
                                         headers=headers or {})

    def request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        return self._loop.run_until_complete(self._client.request(method, url, **kwargs))

    def get(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", url, **kwargs)

    def head(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("HEAD", url, **kwargs)

    def post(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("POST", url, **kwargs)

    def put(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PUT", url, **kwargs)

    def patch(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("PATCH", url, **kwargs)

    def delete(self, url: str, **kwargs: Any) -> httpx.Response:
        return self.request("DELETE", url, **kwargs)

    def close(self) -> None:
        self._loop.run_until_complete(self._client.aclose())
        self._loop.close()

    def __enter__(self) -> AsgiClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@pytest.fixture
def edge(apps: Any) -> Iterator[AsgiClient]:
    """The edge app of the test module's `apps` fixture (an `isolate.http.Apps`), in-process."""
    with AsgiClient(apps.edge, base_url="http://edge.test") as client:
        yield client


@pytest.fixture
def admin(apps: Any) -> Iterator[AsgiClient]:
    """The admin app of the test module's `apps` fixture, with its bearer token."""
    with AsgiClient(apps.admin, base_url="http://admin.test", headers={"authorization": f"Bearer {apps.token}"}) \
            as client:
        yield client
