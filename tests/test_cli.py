"""The `isolate` command line: against a live server, and in-process `invoke`."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import guests as g
import pytest
from live import ROOT, LiveServer

SAMPLE = ROOT / "samples" / "hello-wat" / "hello.wat"


def isolate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "isolate.cli", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT, env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> LiveServer:
    with LiveServer(tmp_path_factory.mktemp("cli") / "data") as live:
        yield live  # type: ignore[misc]


def test_deploy_with_route_then_manage(server: LiveServer, tmp_path: Path) -> None:
    cli = server.cli_args()
    result = isolate("deploy", "hello", str(SAMPLE), "--route", "/hi", "--route", "/hi/:name",
                     "--timeout", "200ms", "--memory", "16MiB", "--var", "a=b", *cli)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("deployed hello v1 sha256:") and "routed /hi, /hi/:name → hello" in result.stdout
    with server.edge() as edge:
        assert edge.get("/hi/bob").text == "hello from isolate\n"
    echo = tmp_path / "echo.wasm"
    echo.write_bytes(g.wasm(g.ECHO))
    assert isolate("deploy", "hello", str(echo), *cli).returncode == 0
    listed = isolate("modules", *cli)
    assert listed.returncode == 0 and listed.stdout.startswith("hello\tv2/2\t")
    routes = isolate("routes", *cli).stdout.splitlines()
    assert routes[0].split() == ["ROUTE", "METHODS", "MODULE", "CACHE", "FROM"]
    assert [line.split() for line in routes[1:]] == [["*/hi", "*", "hello", "yes", "api"],
                                                     ["*/hi/:name", "*", "hello", "yes", "api"]]
    assert isolate("rollback", "hello", *cli).stdout.strip() == "hello now serves v1"
    assert isolate("rollback", "hello", "2", *cli).stdout.strip() == "hello now serves v2"
    info = server.admin().get("/v1/modules/hello").json()
    assert info["limits"]["timeout"] == 0.2 and info["variables"] == {"a": "b"}
    assert isolate("delete", "hello", *cli).stdout.strip() == "deleted hello"
    assert isolate("modules", *cli).stdout.startswith("no modules")


def test_token_and_invoke_in_process(server: LiveServer) -> None:
    result = isolate("token", "--data-dir", str(server.data_dir))
    assert result.returncode == 0 and result.stdout.strip() == server.token
    isolate("deploy", "greeter", str(SAMPLE), *server.cli_args())
    result = isolate("invoke", "greeter", "--data-dir", str(server.data_dir), "--path", "/x?y=1")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("HTTP 200\ncontent-type: text/plain\n") and "hello from isolate" in result.stdout
    assert "[log info] hello-wat handled a request" in result.stderr


def test_errors_are_one_line_and_non_zero(server: LiveServer, tmp_path: Path) -> None:
    bad = tmp_path / "bad.wasm"
    bad.write_bytes(b"not wasm")
    for args, prefix in [
        (("deploy", "../evil", str(bad)), "error: invalid_name:"),
        (("deploy", "ok", str(bad)), "error: invalid_module:"),
        (("rollback", "missing"), "error: not_found:"),
        (("deploy", "ok", str(SAMPLE), "--memory", "lots"), "error: invalid_config:"),
        (("modules", "--admin-token", "wrong"), "error: unauthorized:"),
    ]:
        result = isolate(*args, *server.cli_args())
        assert result.returncode == 1 and result.stderr.startswith(prefix), (args, result.stderr)
        assert result.stderr.count("\n") == 1
    down = isolate("modules", "--admin-url", "http://127.0.0.1:9", "--admin-token", "x")
    assert down.returncode == 1 and "is `isolate serve` running?" in down.stderr
    no_token = isolate("modules", "--data-dir", str(tmp_path / "empty"))
    assert no_token.returncode == 1 and "no admin token" in no_token.stderr


def test_invoke_failure_prints_the_diagnostic(server: LiveServer, tmp_path: Path) -> None:
    wasm = tmp_path / "loop.wasm"
    wasm.write_bytes(g.wasm(g.module(g.LOOP)))
    assert isolate("deploy", "loop", str(wasm), "--timeout", "50ms", *server.cli_args()).returncode == 0
    result = isolate("invoke", "loop", "--data-dir", str(server.data_dir))
    assert result.returncode == 1 and result.stderr.strip().startswith("error: timeout: guest ran past its 50 ms")


def test_guest_output_control_characters_are_escaped(server: LiveServer, tmp_path: Path) -> None:
    wasm = tmp_path / "ansi.wasm"
    wasm.write_bytes(g.wasm(g.module(response=g.response_bytes(body=b"\x1b[31mred\x07"))))
    assert isolate("deploy", "ansi", str(wasm), *server.cli_args()).returncode == 0
    result = isolate("invoke", "ansi", "--data-dir", str(server.data_dir))
    assert result.returncode == 0 and "\x1b" not in result.stdout and "\\x1b[31mred\\x07" in result.stdout


def test_stats_regions_and_purge(server: LiveServer, tmp_path: Path) -> None:
    cli = server.cli_args()
    cached = g.response_bytes(headers=[["cache-control", "max-age=300"]], body=b"cached")
    wasm = tmp_path / "cached.wasm"
    wasm.write_bytes(g.wasm(g.module(response=cached)))
    assert isolate("deploy", "cached", str(wasm), "--route", "/cached", *cli).returncode == 0
    with server.edge() as edge:
        assert [edge.get("/cached").headers["x-cache"] for _ in range(3)] == ["MISS", "HIT", "HIT"]
    stats = isolate("stats", *cli)
    assert stats.returncode == 0, stats.stderr
    assert "region local:" in stats.stdout and "response cache  1 entries" in stats.stdout
    assert "2 hits (0 coalesced)" in stats.stdout  # the server is shared: other tests made misses
    assert json.loads(isolate("stats", "--json", *cli).stdout)["response_cache"]["hits"] == 2
    assert isolate("purge", "--url", "/cached", *cli).stdout.strip() == "purged 1 responses"
    assert isolate("purge", "--module", "cached", *cli).stdout.strip() == "purged 0 responses"
    both = isolate("purge", "--url", "/a", "--all", *cli)
    assert both.returncode == 1 and "exactly one of" in both.stderr
    table = tmp_path / "regions.json"
    table.write_text(json.dumps({"regions": [{"id": "local", "name": "Here", "nodes": []},
                                             {"id": "eu", "nodes": ["http://127.0.0.1:9"]}]}))
    shown = isolate("regions", "--set", str(table), *cli)
    assert shown.returncode == 0, shown.stderr
    assert "this node: region local" in shown.stdout and "* local    Here" in shown.stdout
    assert "http://127.0.0.1:9" in shown.stdout
    table.write_text(json.dumps({"regions": [{"id": "eu"}]}))
    refused = isolate("regions", "--set", str(table), *cli)
    assert refused.returncode == 1 and "serves region 'local'" in refused.stderr
    table.write_text(json.dumps({"regions": []}))
    assert isolate("regions", "--set", str(table), *cli).returncode == 0
    isolate("delete", "cached", *cli)


def test_help_documents_every_command() -> None:
    result = isolate("--help")
    for command in ("serve", "deploy", "modules", "routes", "rollback", "delete", "token", "invoke", "build", "new",
                    "stats", "regions", "purge"):
        assert command in result.stdout
    serve_help = isolate("serve", "--help").stdout
    for option in ("--admin-port", "--region", "--regions", "--simulate-regions", "--no-cache", "--cache-size"):
        assert option in serve_help


def test_bench_command_prints_medians(tmp_path: Path) -> None:
    wasm = tmp_path / "hello.wasm"
    wasm.write_bytes(g.wasm(g.HELLO))
    result = isolate("bench", str(wasm), "--iterations", "300", "--body-size", "100", "--body-size", "4KiB")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[:3] == ["measure", "median", "µs"]
    assert [line.split()[0] for line in lines[1:]] == ["instantiate", "invoke_100", "invoke_4096"]


def test_bench_over_http_beside_the_reference_guest(tmp_path: Path) -> None:
    """`isolate bench FILE --http`: a private server under bounded load (the built-in client here, so
    the test needs no wrk); it reports figures, never judges them."""
    root = Path(__file__).resolve().parent.parent
    result = subprocess.run([sys.executable, "-m", "isolate.cli", "bench", "samples/hello-wat/hello.wat", "--http",
                             "--duration", "0.5", "--connections", "2", "--client", "builtin", "--path", "/x"],
                            capture_output=True, text=True, cwd=root, timeout=120)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("built-in, 2 connections, 0.5 s per module")
    rows = {line.split()[0]: line.split() for line in lines[2:]}
    assert set(rows) == {"hello.wat", "reference"}
    for row in rows.values():
        assert row[1] == "200" and float(row[2]) > 0 and row[5] == "0"  # status, req/s, errors
        assert "instantiate" in " ".join(row[6:]) and "guest" in " ".join(row[6:])
