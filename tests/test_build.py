"""`isolate build`: which compiler it picks and reports, the warnings it passes on, Rust dependencies."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import HostFactory

from isolate import Request
from isolate.build import Rustc, build, find_asc, find_rustc, sdk_root
from isolate.errors import BuildError
from isolate.scaffold import RUST_CARGO

ROOT = Path(__file__).resolve().parent.parent
SDK = ROOT / "guest-sdk"

HANDLER = """use isolate_sdk::{{Error, Request, Response}};

fn handle(req: Request) -> Result<Response, Error> {{
    {body}
}}

isolate_sdk::handler!(handle);
"""


def cli(*args: str, cwd: Path = ROOT, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "isolate.cli", *args], capture_output=True, text=True, timeout=300,
                          cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})


def executable(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def fake_rustc(directory: Path, release: str, *, wasm: bool, real: Rustc | None = None) -> Path:
    """A rustc that reports `release`, has the wasm32 target in its sysroot or not, and compiles with `real`."""
    sysroot = directory / "sysroot"
    (sysroot / "lib" / "rustlib").mkdir(parents=True)
    if wasm and real is not None:
        (sysroot / "lib" / "rustlib" / "wasm32-unknown-unknown").symlink_to(
            real.sysroot / "lib" / "rustlib" / "wasm32-unknown-unknown")
    elif wasm:
        (sysroot / "lib" / "rustlib" / "wasm32-unknown-unknown").mkdir()
    compile_with = f'exec {real.path} "$@"' if real else "exit 1"
    return executable(directory / "bin" / "rustc", f"""#!/bin/sh
case "$1" in
  -vV) printf 'rustc {release}\\nbinary: rustc\\nrelease: {release}\\n' ;;
  --print) [ "$2" = sysroot ] && echo {sysroot} || {compile_with} ;;
  *) {compile_with} ;;
esac
""")


def rust_project(parent: Path, name: str, body: str, dependencies: str = "") -> Path:
    project = parent / name
    (project / "src").mkdir(parents=True)
    (project / "src" / "lib.rs").write_text(HANDLER.format(body=body))
    # The manifest `isolate new rust` writes, with the test's own dependencies after the SDK.
    (project / "Cargo.toml").write_text(RUST_CARGO.format(crate=name, sdk=SDK / "rust") + dependencies)
    return project


@pytest.fixture
def only_fakes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No rustup toolchains from the home directory: the fakes in PATH, and Debian's rustc if installed."""
    monkeypatch.setenv("RUSTUP_HOME", str(tmp_path / "no-rustup"))
    monkeypatch.delenv("ISOLATE_RUSTC", raising=False)
    return tmp_path


def test_the_newest_rustc_with_the_wasm_target_wins(only_fakes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    newer = fake_rustc(only_fakes / "newer", "1.80.0", wasm=True)
    fake_rustc(only_fakes / "newest", "1.99.0", wasm=False)  # like rustup's before `rustup target add`
    fake_rustc(only_fakes / "nightly", "1.80.0-nightly", wasm=True)
    path = os.pathsep.join(str(only_fakes / d / "bin") for d in ("newest", "nightly", "newer"))
    monkeypatch.setenv("PATH", f"{path}{os.pathsep}{os.environ['PATH']}")
    chosen = find_rustc()
    assert (chosen.path, chosen.release) == (str(newer), "1.80.0")


def test_no_rustc_with_the_target_says_what_it_found(only_fakes: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bare = fake_rustc(only_fakes / "bare", "1.95.0", wasm=False)
    monkeypatch.setenv("ISOLATE_RUSTC", str(bare))
    with pytest.raises(BuildError) as caught:
        find_rustc()
    assert "wasm32-unknown-unknown" in caught.value.detail and f"rustc 1.95.0 at {bare}" in caught.value.detail
    assert "rustup target add wasm32-unknown-unknown" in caught.value.detail


def test_build_reports_the_compiler_it_ran(only_fakes: Path, monkeypatch: pytest.MonkeyPatch,
                                           make_host: HostFactory) -> None:
    real = find_rustc()
    newer = fake_rustc(only_fakes / "newer", "1.200.0", wasm=True, real=real)
    monkeypatch.setenv("PATH", f"{newer.parent}{os.pathsep}{os.environ['PATH']}")
    project = rust_project(only_fakes, "picked", 'Ok(Response::text(format!("picked {}", req.path)))')
    result = build(project)
    assert result.compiler is not None and (result.compiler.path, result.compiler.version) == (str(newer), "1.200.0")
    assert result.warnings == ()
    host = make_host()
    host.deploy("picked", result.output.read_bytes())
    assert host.invoke("picked", Request(path="/p")).body == b"picked /p"
    shown = cli("build", str(project), "--force", env={"PATH": os.environ["PATH"], "RUSTUP_HOME": str(only_fakes)})
    assert shown.returncode == 0, shown.stderr
    assert f"(rust, {result.size} bytes, built in " in shown.stdout and f"with rustc 1.200.0 at {newer}" in shown.stdout


def test_c_warnings_are_kept_and_printed(tmp_path: Path) -> None:
    project = tmp_path / "warns"
    project.mkdir()
    (project / "warns.c").write_text("""#include "isolate.h"
isolate_response *isolate_on_request(const isolate_request *req) {
    int unused_thing = 3;
    return isolate_response_new(200);
}
""")
    result = build(project)
    assert any("unused_thing" in w and "warning" in w for w in result.warnings), result.warnings
    assert not any("generated." in w for w in result.warnings)  # the tally is not a warning
    shown = cli("build", str(project), "--force")
    assert shown.returncode == 0 and "unused_thing" in shown.stderr and "unused_thing" not in shown.stdout
    assert "with zig cc " in shown.stdout
    assert build(project).warnings == ()  # up to date: nothing ran


def test_rust_warnings_are_kept(tmp_path: Path) -> None:
    project = rust_project(tmp_path, "rwarn", 'let shadowed_value = 1;\n    Ok(Response::text(req.path))')
    result = build(project)
    assert len(result.warnings) == 1 and "unused variable: `shadowed_value`" in result.warnings[0]


def test_the_rust_sdk_is_built_under_a_lock(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Builds of one project in parallel processes share its SDK rlib: it is built (or found fresh)
    while holding the lock beside it, and another process cannot take that lock meanwhile."""
    import fcntl

    import isolate.build as building

    project = rust_project(tmp_path, "locked", "Ok(Response::text(req.path))")
    real_run = building._run
    held: list[bool] = []

    def run(tool: str, command: Any, *args: Any, **kwargs: Any) -> Any:
        if "rlib" in [str(part) for part in command]:
            rlib = Path(command[command.index("-o") + 1])
            with open(rlib.parent / ".lock", "w") as other:  # another process's attempt
                try:
                    fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    held.append(False)
                except BlockingIOError:
                    held.append(True)
        return real_run(tool, command, *args, **kwargs)

    monkeypatch.setattr(building, "_run", run)
    build(project)
    assert held == [True]


def test_assemblyscript_warnings_are_kept(tmp_path: Path) -> None:
    project = tmp_path / "aswarn"
    (project / "assembly").mkdir(parents=True)
    sdk = os.path.relpath(SDK / "assemblyscript" / "assembly" / "index", project / "assembly")
    (project / "assembly" / "index.ts").write_text(f"""import {{ Request, Response, serve }} from "{sdk}";
export {{ isolate_abi_v1, isolate_alloc }} from "{sdk}";
export function isolate_handle(ptr: usize, len: usize): u64 {{ return serve(ptr, len, handle); }}
function handle(req: Request): Response {{ return Response.text("as"); }}
export class NotExported {{ a: i32 = 0; }}
""")
    result = build(project)
    assert any("AS235" in w for w in result.warnings), result.warnings


def test_rust_path_dependency_builds_with_cargo(tmp_path: Path, make_host: HostFactory) -> None:
    helper = tmp_path / "shout"
    (helper / "src").mkdir(parents=True)
    (helper / "Cargo.toml").write_text('[package]\nname = "shout"\nversion = "0.1.0"\nedition = "2021"\n')
    (helper / "src" / "lib.rs").write_text('pub fn shout(s: &str) -> String { format!("{}!", s.to_uppercase()) }\n')
    project = rust_project(tmp_path, "loud", "Ok(Response::text(shout::shout(&req.path)))",
                           'shout = { path = "../shout" }\n')
    result = build(project)
    assert result.compiler is not None and result.compiler.driver.startswith("cargo ")
    host = make_host()
    host.deploy("loud", result.output.read_bytes())
    assert host.invoke("loud", Request(path="/hey")).body == b"/HEY!"
    assert build(project).cached
    time.sleep(0.01)
    (helper / "src" / "lib.rs").write_text('pub fn shout(s: &str) -> String { format!("{}?", s) }\n')
    assert not build(project).cached  # a path dependency's sources count as the project's
    host.deploy("loud", project.joinpath("build", "loud.wasm").read_bytes())
    assert host.invoke("loud", Request(path="/hey")).body == b"/hey?"


def test_unresolvable_registry_dependency_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    project = rust_project(tmp_path, "needs", "Ok(Response::text(req.path))",
                           'isolate-no-such-crate-anywhere = "0.3"\n')
    cargo_calls: list[list[str]] = []
    real_run = subprocess.run

    def recording_run(command: list[str], *args: Any, **kwargs: Any) -> Any:
        if command[1:2] in (["build"], ["rustc"]):  # cargo build / cargo rustc
            cargo_calls.append(list(command))
        return real_run(command, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", recording_run)
    with pytest.raises(BuildError) as caught:
        build(project)
    monkeypatch.undo()
    error = caught.value
    assert error.kind == "build_failed" and error.extra["dependency"] == "isolate-no-such-crate-anywhere"
    assert "`isolate-no-such-crate-anywhere`" in error.detail and "offline" in error.detail
    assert "cargo vendor" in error.detail and "path dependency" in error.detail
    assert cargo_calls and all("--offline" in call for call in cargo_calls)  # never a registry to wait on
    shown = cli("build", str(project))
    assert shown.returncode != 0 and "build_failed: dependency `isolate-no-such-crate-anywhere`" in shown.stderr


def test_missing_path_dependency_is_named(tmp_path: Path) -> None:
    project = rust_project(tmp_path, "lost", "Ok(Response::text(req.path))", 'gone = { path = "../gone" }\n')
    with pytest.raises(BuildError, match=r"dependency `gone` cannot be resolved: its path '../gone'"):
        build(project)


def test_dependencies_without_cargo_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Rustc, "cargo", lambda self: None)
    project = rust_project(tmp_path, "nocargo", "Ok(Response::text(req.path))", 'itoa = "1"\n')
    with pytest.raises(BuildError, match=r"declares dependencies \(itoa\), which need cargo"):
        build(project)


def test_sdk_only_projects_stay_on_the_fast_path(tmp_path: Path) -> None:
    project = rust_project(tmp_path, "fast", "Ok(Response::text(req.path))")
    result = build(project)
    assert result.compiler is not None and result.compiler.driver == ""
    assert not (project / "Cargo.lock").exists() and not (project / "build" / "cargo").exists()


def test_sdk_root_override_and_checkout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert sdk_root() == SDK  # a checkout (editable install) reads its own guest-sdk/
    monkeypatch.setenv("ISOLATE_SDK_DIR", str(tmp_path))
    assert sdk_root() == tmp_path


def sdk_without_compiler(tmp_path: Path) -> Path:
    sdk = tmp_path / "sdk" / "assemblyscript"
    sdk.mkdir(parents=True)
    for name in ("package.json", "package-lock.json"):
        (sdk / name).write_bytes((SDK / "assemblyscript" / name).read_bytes())
    return sdk.parent


def test_asc_is_installed_into_the_cache_on_first_use(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An installed wheel ships no node_modules: the pinned compiler goes into the user cache, once.
    monkeypatch.setenv("ISOLATE_SDK_DIR", str(sdk_without_compiler(tmp_path)))
    monkeypatch.setenv("ISOLATE_CACHE_DIR", str(tmp_path / "cache"))
    calls = tmp_path / "npm-calls"
    executable(tmp_path / "bin" / "npm", f"""#!/bin/sh
echo "$@" >> {calls}
test -f package-lock.json || exit 3
mkdir -p node_modules/assemblyscript/bin && echo '// asc' > node_modules/assemblyscript/bin/asc.js
""")
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}/usr/bin:/bin")
    project = tmp_path / "bare"
    project.mkdir()
    asc = find_asc(project)
    assert asc == tmp_path / "cache" / "assemblyscript-0.28.20" / "node_modules" / "assemblyscript" / "bin" / "asc.js"
    assert find_asc(project) == asc
    assert calls.read_text().split("\n")[0].startswith("ci ") and len(calls.read_text().splitlines()) == 1


def test_asc_without_npm_names_what_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ISOLATE_SDK_DIR", str(sdk_without_compiler(tmp_path)))
    monkeypatch.setenv("ISOLATE_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(BuildError, match=r"install Node.js and npm .*npm ci.*assemblyscript 0.28.20"):
        find_asc(tmp_path)
