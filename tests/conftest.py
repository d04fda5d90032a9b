"""Shared fixtures: hosts on temporary data directories with small pools."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

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
