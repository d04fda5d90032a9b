"""Building guests from source: one toolchain per SDK language, detected from a project's files.

    C               *.c files          zig cc (PyPI `ziglang`) --target=wasm32-wasi, reactor model
    Rust            src/lib.rs         rustc --target wasm32-unknown-unknown, the SDK as an rlib
    AssemblyScript  assembly/index.ts  asc (npm `assemblyscript`) with the stub runtime

Outputs go to PROJECT/build/NAME.wasm; a build whose inputs are older than its output is skipped.
The SDKs are read from the source checkout's guest-sdk/ (or ISOLATE_SDK_DIR).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

from .errors import BuildError

LANGUAGES = ("c", "rust", "assemblyscript")

def sdk_root() -> Path:
    override = os.environ.get("ISOLATE_SDK_DIR")
    return Path(override) if override else Path(__file__).resolve().parent.parent / "guest-sdk"


@dataclass(frozen=True)
class BuildResult:
    project: Path
    language: str
    output: Path
    size: int
    seconds: float
    cached: bool


class Toolchain(Protocol):
    language: ClassVar[str]

    def detect(self, project: Path) -> bool: ...
    def sources(self, project: Path) -> list[Path]: ...
    def compile(self, project: Path, output: Path) -> None: ...


def _run(tool: str, command: Sequence[str | Path], cwd: Path | None = None) -> None:
    result = subprocess.run([str(c) for c in command], cwd=cwd, capture_output=True, text=True)
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip()
        raise BuildError(f"{tool} failed:\n{output}", command=[str(c) for c in command])


def _files(root: Path, patterns: Iterable[str]) -> list[Path]:
    return sorted(p for pattern in patterns for p in root.glob(pattern) if "build" not in p.relative_to(root).parts
                  and "node_modules" not in p.relative_to(root).parts)


class C:
    language: ClassVar[str] = "c"

    def detect(self, project: Path) -> bool:
        return any(project.glob("*.c"))

    def sources(self, project: Path) -> list[Path]:
        sdk = sdk_root() / "c"
        return _files(project, ["*.c", "*.h"]) + [sdk / "isolate.c", sdk / "isolate.h"]

    def compile(self, project: Path, output: Path) -> None:
        sdk = sdk_root() / "c"
        # A reactor (exports _initialize); -s strips debug info; 1 MiB of shadow stack, not zig's 16.
        _run("zig cc", [sys.executable, "-m", "ziglang", "cc", "--target=wasm32-wasi", "-mexec-model=reactor",
                        "-O2", "-s", "-Wl,-z,stack-size=1048576", "-Wall", "-Wextra", f"-I{sdk}", "-o", output,
                        sdk / "isolate.c", *sorted(project.glob("*.c"))])


def find_rustc() -> str:
    """A rustc that has the wasm32-unknown-unknown standard library (rustup's or Debian's)."""
    candidates = [os.environ.get("ISOLATE_RUSTC"), shutil.which("rustc"), "/usr/bin/rustc"]
    for rustc in filter(None, candidates):
        try:
            sysroot = subprocess.run([rustc, "--print", "sysroot"], capture_output=True, text=True).stdout.strip()
        except OSError:
            continue
        if sysroot and (Path(sysroot) / "lib" / "rustlib" / "wasm32-unknown-unknown").is_dir():
            return rustc
    raise BuildError("no rustc with the wasm32-unknown-unknown target: run `make toolchains` (Debian rustc + "
                     "libstd-rust-dev-wasm32) or `rustup target add wasm32-unknown-unknown`")


class Rust:
    language: ClassVar[str] = "rust"
    _flags: ClassVar[list[str]] = ["--edition", "2021", "--target", "wasm32-unknown-unknown", "-C", "opt-level=s"]

    def detect(self, project: Path) -> bool:
        return (project / "src" / "lib.rs").is_file()

    def sources(self, project: Path) -> list[Path]:
        return _files(project, ["src/**/*.rs", "Cargo.toml"]) + _files(sdk_root() / "rust", ["src/**/*.rs"])

    def compile(self, project: Path, output: Path) -> None:
        rustc = find_rustc()
        sdk = sdk_root() / "rust"
        deps = output.parent / ".sdk"
        deps.mkdir(exist_ok=True)
        rlib = deps / "libisolate_sdk.rlib"
        sdk_sources = _files(sdk, ["src/**/*.rs"])
        if not rlib.exists() or max(p.stat().st_mtime for p in sdk_sources) > rlib.stat().st_mtime:
            _run("rustc", [rustc, *self._flags, "--crate-type", "rlib", "--crate-name", "isolate_sdk", "-o", rlib,
                  sdk / "src" / "lib.rs"])
        _run("rustc", [rustc, *self._flags, "--crate-type", "cdylib", "--crate-name", project.name.replace("-", "_"),
              "-C", "strip=symbols", "-L", deps, "--extern", f"isolate_sdk={rlib}", "-o", output,
              project / "src" / "lib.rs"])


class AssemblyScript:
    language: ClassVar[str] = "assemblyscript"

    def detect(self, project: Path) -> bool:
        return (project / "assembly" / "index.ts").is_file()

    def sources(self, project: Path) -> list[Path]:
        return _files(project, ["assembly/**/*.ts", "package.json"]) + _files(
            sdk_root() / "assemblyscript", ["assembly/**/*.ts"])

    def compile(self, project: Path, output: Path) -> None:
        sdk = sdk_root() / "assemblyscript"
        if (project / "package.json").is_file() and not (project / "node_modules").is_dir():
            npm = shutil.which("npm")
            if npm is None:
                raise BuildError("npm is not installed: run `make toolchains`")
            _run("npm install", [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=project)
        # the project's own compiler if it has one, else the SDK's (installed by `make toolchains`)
        asc = next((d / "node_modules" / "assemblyscript" / "bin" / "asc.js" for d in (project, sdk)
                    if (d / "node_modules" / "assemblyscript").is_dir()), None)
        if asc is None:
            raise BuildError("the AssemblyScript compiler is not installed: run `make toolchains`")
        # AssemblyScript imports `env.abort` unless told otherwise; the SDK's abort logs, then traps.
        # Its internal name depends on whether the SDK came in as a package or by relative path.
        if (project / "node_modules" / "isolate-sdk").exists():
            abort = "~lib/isolate-sdk/assembly/index/abort"
        else:
            abort = os.path.relpath(sdk / "assembly" / "index", project) + "/abort"
        _run("asc", ["node", asc, "assembly/index.ts", "--outFile", output, "--runtime", "stub", "--optimize",
              "--use", f"abort={abort}"], cwd=project)


TOOLCHAINS: dict[str, Toolchain] = {"c": C(), "rust": Rust(), "assemblyscript": AssemblyScript()}


def detect(project: Path) -> str:
    for name, toolchain in TOOLCHAINS.items():
        if toolchain.detect(project):
            return name
    raise BuildError(f"cannot tell the language of {project}: expected *.c, src/lib.rs or assembly/index.ts "
                     "(or pass --lang)")


def build(project: Path, language: str | None = None, *, force: bool = False) -> BuildResult:
    """Build `project` into `project/build/<name>.wasm`, unless it is up to date."""
    project = Path(project).resolve()
    if not project.is_dir():
        raise BuildError(f"{project} is not a directory")
    language = language or detect(project)
    if language not in TOOLCHAINS:
        raise BuildError(f"unknown language {language!r}: choose one of {', '.join(LANGUAGES)}")
    toolchain = TOOLCHAINS[language]
    output = project / "build" / f"{project.name}.wasm"
    output.parent.mkdir(exist_ok=True)
    started = time.perf_counter()
    sources = toolchain.sources(project)
    fresh = output.exists() and all(p.stat().st_mtime <= output.stat().st_mtime for p in sources)
    if force or not fresh:
        tmp = output.with_name(output.name + ".tmp")
        toolchain.compile(project, tmp)
        os.replace(tmp, output)
    return BuildResult(project, language, output, output.stat().st_size, time.perf_counter() - started, fresh and
                       not force)
