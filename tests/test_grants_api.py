"""The operators' side of guest I/O on a real server: grants and secrets through the admin API and the
CLI, and the key-value stores under /v1/kv and `isolate kv`."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import guests as g
import pytest
from live import ROOT, LiveServer


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with LiveServer(tmp_path_factory.mktemp("grants") / "data") as live:
        yield live


def cli(server: LiveServer, *args: str, env: dict[str, str] | None = None,
        stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    import os

    return subprocess.run([sys.executable, "-m", "isolate.cli", *args, *server.cli_args()], capture_output=True,
                          cwd=ROOT, env={**os.environ, **(env or {})}, input=stdin, timeout=60)


def test_grants_through_the_admin_api(server: LiveServer) -> None:
    with server.admin() as admin:
        wasm = g.wasm(g.HELLO)
        bad = admin.put("/v1/modules/g1", content=wasm, params={"allow_host": "ftp://x"})
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_config"
        assert admin.put("/v1/modules/g1", content=wasm, params={"kv_store": "Bad"}).status_code == 400
        made = admin.put("/v1/modules/g1", content=wasm,
                         params=[("allow_host", "https://api.example.com"), ("kv_store", "default")])
        assert made.status_code == 201
        info = admin.get("/v1/modules/g1").json()
        assert info["allowed_hosts"] == ["https://api.example.com"] and info["key_value_stores"] == ["default"]
        # a new version without the parameters keeps the grants; PATCH replaces them
        assert admin.put("/v1/modules/g1", content=wasm).status_code == 201
        assert admin.get("/v1/modules/g1").json()["allowed_hosts"] == ["https://api.example.com"]
        patched = admin.patch("/v1/modules/g1", json={"allowed_hosts": [], "key_value_stores": ["a", "b"]})
        assert patched.json()["allowed_hosts"] == [] and patched.json()["key_value_stores"] == ["a", "b"]
        assert admin.patch("/v1/modules/g1", json={"allowed_hosts": "https://x.example"}).status_code == 400
        assert admin.patch("/v1/modules/g1", json={"limits": {"outbound_requests": 2000}}).status_code == 400
        assert admin.patch("/v1/modules/g1", json={"limits": {"outbound_timeout": "2s"}}).json()["limits"][
            "outbound_timeout"] == 2.0


def test_secrets_through_the_admin_api(server: LiveServer) -> None:
    with server.admin() as admin:
        admin.put("/v1/modules/s1", content=g.wasm(g.HELLO), params={"var": "shown=yes"})
        assert admin.put("/v1/modules/s1/secrets", json={"token": "t0p"}).json() == {"module": "s1",
                                                                                     "secrets": ["token"]}
        clash = admin.put("/v1/modules/s1/secrets", json={"shown": "x"})
        assert clash.status_code == 400 and "both a variable and a secret" in clash.json()["detail"]
        assert admin.put("/v1/modules/s1/secrets", json={"token": 5}).status_code == 400
        assert admin.put("/v1/modules/s1/secrets", json={"token": None}).json()["secrets"] == []
        assert admin.patch("/v1/modules/s1", json={"secrets": {"a": "1"}}).json()["secrets"] == ["a"]
        assert admin.delete("/v1/modules/s1").status_code == 200
        assert not (server.data_dir / "secrets" / "s1.json").exists()


def test_kv_admin_api(server: LiveServer) -> None:
    with server.admin() as admin:
        assert admin.put("/v1/kv/api/plain", content=b"one").json() == {"store": "api", "key": "plain", "bytes": 3}
        assert admin.put("/v1/kv/api/sp%20ace%2Fslash", content=b"two").json()["key"] == "sp%20ace/slash"
        assert admin.put("/v1/kv/api/%FF%00bin", content=b"\x00\xff").status_code == 200
        assert admin.get("/v1/kv/api/sp%20ace%2Fslash").content == b"two"
        assert admin.get("/v1/kv/api/%FF%00bin").content == b"\x00\xff"
        listed = admin.get("/v1/kv/api").json()
        assert listed == {"store": "api", "keys": ["plain", "sp%20ace/slash", "%FF%00bin"], "cursor": None}  # bytes
        first = admin.get("/v1/kv/api", params={"limit": "1"}).json()
        assert first["keys"] == ["plain"] and first["cursor"] == "plain"
        assert admin.get("/v1/kv/api", params={"cursor": "plain"}).json()["keys"] == ["sp%20ace/slash", "%FF%00bin"]
        assert admin.get("/v1/kv/api", params={"prefix": "sp"}).json()["keys"] == ["sp%20ace/slash"]
        missing = admin.get("/v1/kv/api/nope")
        assert missing.status_code == 404 and missing.json()["error"] == "not_found"
        assert admin.put("/v1/kv/api/big", content=b"x" * (1024 * 1024 + 1)).status_code == 413
        assert admin.put("/v1/kv/Bad/k", content=b"x").status_code == 400
        assert admin.put(f"/v1/kv/api/{'k' * 1025}", content=b"x").status_code == 400
        assert admin.delete("/v1/kv/api/plain").json()["deleted"] is True
        assert admin.delete("/v1/kv/api/plain").json()["deleted"] is False
        stores = admin.get("/v1/kv").json()["stores"]
        assert {"name": "api", "keys": 2, "bytes": len("sp ace/slash") + 3 + 5 + 2} in stores


def test_cli_secrets_and_grants(server: LiveServer, tmp_path: Path) -> None:
    hello = tmp_path / "hello.wat"
    hello.write_text(g.HELLO)
    secret_file = tmp_path / "db-password"
    secret_file.write_text("from-a-file\n")
    result = cli(server, "deploy", "c1", str(hello), "--allow-host", "https://*.example.org", "--kv-store", "default",
                 "--secret", "inline=in-line-value", "--secret", "env_one@env:C1_SECRET",
                 "--secret", f"file_one@file:{secret_file}", "--limit", "outbound_requests=4",
                 env={"C1_SECRET": "from-the-env"})
    assert result.returncode == 0, result.stderr
    assert b"secrets set: env_one, file_one, inline" in result.stdout
    for value in (b"in-line-value", b"from-the-env", b"from-a-file"):
        assert value not in result.stdout + result.stderr
    with server.admin() as admin:
        info = admin.get("/v1/modules/c1").json()
    assert info["secrets"] == ["env_one", "file_one", "inline"]
    assert info["allowed_hosts"] == ["https://*.example.org"] and info["limits"]["outbound_requests"] == 4
    stored = (server.data_dir / "secrets" / "c1.json").read_text()
    assert "from-a-file" in stored and "from-the-env" in stored  # kept for the guest, 0600, apart
    for bad, message in [("--secret=x@env:NOT_SET_ANYWHERE", b"NOT_SET_ANYWHERE is not set"),
                         ("--secret=x@vault:y", b"expected NAME=VALUE"), ("--secret=API_KEY:hunter2", b"malformed"),
                         ("--allow-host=gopher://x", b"http or https"),
                         ("--limit=nope=1", b"unknown limit")]:
        failed = cli(server, "deploy", "c2", str(hello), bad)
        assert failed.returncode == 1 and message in failed.stderr, failed.stderr
        assert b"hunter2" not in failed.stderr + failed.stdout
    with server.admin() as admin:
        assert admin.get("/v1/modules/c2").status_code == 404  # nothing was deployed


def test_cli_kv(server: LiveServer, tmp_path: Path) -> None:
    assert cli(server, "kv", "set", "cli", "k1", "v1").stdout == b"set cli/k1 (2 bytes)\n"
    assert cli(server, "kv", "set", "cli", "bin", "--file", "-", stdin=b"\x00\x01\xff").returncode == 0
    assert cli(server, "kv", "get", "cli", "bin").stdout == b"\x00\x01\xff"
    assert cli(server, "kv", "list", "cli").stdout == b"bin\nk1\n"
    assert cli(server, "kv", "list", "cli", "--prefix", "k").stdout == b"k1\n"
    assert b"cli\t2 keys" in cli(server, "kv", "list").stdout
    missing = cli(server, "kv", "get", "cli", "nope")
    assert missing.returncode == 1 and missing.stderr.startswith(b"error: not_found:")
    assert cli(server, "kv", "delete", "cli", "k1").stdout == b"deleted cli/k1\n"
    assert cli(server, "kv", "set", "cli", "k").returncode == 1  # no value
