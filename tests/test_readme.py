"""The README's examples, run as written: the quick start, "Deploy your own module" and the Python API.

Shell lines run against a real `isolate serve` (its ports substituted for 8787/8788); a `# → text`
comment is output the line must print (whitespace-insensitive).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from live import ROOT, LiveServer, core_manifest, repository_manifest

README = (ROOT / "README.md").read_text()


def block(heading: str, language: str) -> str:
    """The first fenced block of `language` after `heading`."""
    section = README[README.index(heading):]
    match = re.search(rf"```{language}\n(.*?)```", section, re.S)
    assert match, f"no {language} block after {heading}"
    return match.group(1)


def commands(text: str) -> list[tuple[str, str | None]]:
    """(command, expected output or None) per line; backslash continuations joined."""
    out = []
    for line in text.replace("\\\n", " ").splitlines():
        command, _, comment = line.partition("  #")
        if not command.strip():
            continue
        expected = comment.split("→", 1)[1].strip() if "→" in comment else None
        out.append((command.strip(), expected))
    return out


def squeeze(text: str) -> str:
    return " ".join(text.split())


def run(command: str, server: LiveServer) -> str:
    command = command.replace("http://127.0.0.1:8787", server.edge_url).replace("localhost:8787", server.edge_url)
    env = {**os.environ, "ISOLATE_ADMIN_URL": server.admin_url, "ISOLATE_DATA_DIR": str(server.data_dir),
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    result = subprocess.run(["bash", "-c", command], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def run_block(heading: str, server: LiveServer) -> None:
    """Every line of the section's sh block, each `# →` comment checked against what it printed."""
    lines = commands(block(heading, "sh"))
    assert len(lines) >= 10
    for command, expected in lines:
        output = run(command, server)
        if expected is not None:
            assert squeeze(expected) in squeeze(output), f"{command}: expected {expected!r} in {output!r}"


def test_quick_start_and_deploy_your_own_module(tmp_path: Path) -> None:
    # The manifest of `make serve`, but for its component samples (tests/test_samples.py serves those)
    with LiveServer(tmp_path / "data", "--manifest", str(core_manifest(tmp_path / "isolate.toml"))) as server:
        quick = [c for c in commands(block("## Quick start", "sh")) if c[0].startswith("curl")]
        assert quick
        for command, _ in quick:
            assert "Hello, ada! (from C, region local, client in local)" in run(command, server)
        run_block("## Deploy your own module", server)


def test_guests_reach_the_world_example(tmp_path: Path) -> None:
    live = LiveServer(tmp_path / "data", "--manifest", str(tmp_path / "isolate.toml"))
    repository_manifest(live, tmp_path / "isolate.toml")
    with live as server:
        run_block("## Guests reach the world", server)
        assert "hunter2" not in server.log()


def test_the_python_api_example(tmp_path: Path) -> None:
    code = block("## The Python API", "python")
    assert ".isolate-example" in code
    code = code.replace('".isolate-example"', repr(str(tmp_path / "example")))
    subprocess.run([sys.executable, "-m", "isolate.cli", "build", "samples/hello"], cwd=ROOT, check=True,
                   capture_output=True)
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("200 ") and "Hi, ada!" in result.stdout
    assert "active_version=1" in result.stdout and "timeout=0.2" in result.stdout and "memory=67108864" in result.stdout
