"""Shared fixtures: hosts on temporary data directories with small pools."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from isolate import Config, Host

HostFactory = Callable[..., Host]


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
