"""The `isolate` command line against a real data directory."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import guests as g
from click.testing import CliRunner

from isolate.cli import main

SAMPLE = Path(__file__).resolve().parent.parent / "samples" / "hello-wat" / "hello.wat"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_deploy_invoke_list_rollback_delete(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    code, out, _ = run("deploy", "hello", str(SAMPLE), "--data-dir", data, "--timeout", "0.5", "--var", "a=b")
    assert code == 0 and out.startswith("deployed hello v1 sha256:")
    wasm = tmp_path / "echo.wasm"
    wasm.write_bytes(g.wasm(g.ECHO))
    assert run("deploy", "hello", str(wasm), "--data-dir", data)[0] == 0
    code, out, _ = run("modules", "--data-dir", data)
    assert code == 0 and out.startswith("hello\tv2/2\t")
    code, out, err = run("rollback", "hello", "--data-dir", data)
    assert code == 0 and "v1" in out
    code, out, err = run("invoke", "hello", "--data-dir", data, "--path", "/x?y=1")
    assert code == 0 and out.startswith("HTTP 200\ncontent-type: text/plain\n") and "hello from isolate" in out
    assert "[log info] hello-wat handled a request" in err
    assert run("delete", "hello", "--data-dir", data)[0] == 0
    assert run("modules", "--data-dir", data)[1] == ""


def test_errors_are_one_line_and_non_zero(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    bad = tmp_path / "bad.wasm"
    bad.write_bytes(b"not wasm")
    code, _, err = run("deploy", "../evil", str(bad), "--data-dir", data)
    assert code == 1 and err.startswith("error: invalid_name:") and err.count("\n") == 1
    code, _, err = run("deploy", "ok", str(bad), "--data-dir", data)
    assert code == 1 and err.startswith("error: invalid_module:")
    code, _, err = run("invoke", "missing", "--data-dir", data)
    assert code == 1 and json.loads(err.strip().splitlines()[-1])["error"] == "not_found"


def test_guest_failure_prints_the_diagnostic(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    wasm = tmp_path / "loop.wasm"
    wasm.write_bytes(g.wasm(g.module(g.LOOP)))
    assert run("deploy", "loop", str(wasm), "--data-dir", data, "--timeout", "0.05")[0] == 0
    code, _, err = run("invoke", "loop", "--data-dir", data)
    assert code == 1 and json.loads(err.strip())["error"] == "timeout"


def test_guest_output_control_characters_are_escaped(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    wasm = tmp_path / "ansi.wasm"
    wasm.write_bytes(g.wasm(g.module(response=g.response_bytes(body=b"\x1b[31mred\x07"))))
    assert run("deploy", "ansi", str(wasm), "--data-dir", data)[0] == 0
    code, out, _ = run("invoke", "ansi", "--data-dir", data)
    assert code == 0 and "\x1b" not in out and "\\x1b[31mred\\x07" in out


def test_demo_runs_as_a_real_process(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "isolate.cli", "demo", "--data-dir", str(tmp_path / "d")],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "HTTP 200" in result.stdout and "hello from isolate" in result.stdout
