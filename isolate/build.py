"""Building guests from source: one toolchain per SDK language, detected from a project's files.

    C               *.c files          zig cc (PyPI `ziglang`) --target=wasm32-wasi, reactor model
    Rust            src/lib.rs         the newest rustc with the wasm32-unknown-unknown target, the SDK
                                       as an rlib; `cargo rustc --offline` when Cargo.toml declares
                                       other dependencies (path, vendored or cached ones)
    AssemblyScript  assembly/index.ts  asc (npm `assemblyscript`) with the stub runtime
    Python          app.py             componentize-py (PyPI): a wasi:http/proxy component, not an ABI v1 module
    JavaScript      app.js             componentize-js (npm, run by guest-sdk/javascript/componentize.mjs): the same

C and Rust guests get a 32 KiB stack in linear memory (`build(stack=)`, or ISOLATE_STACK_SIZE), like
AssemblyScript's small one: every byte of a guest's memory is reset after each request, so the
pages a module declares cost every request (1 MiB cost ~15 µs; 64 KiB of stack made the samples
two 64 KiB pages instead of one, ~0.6 µs a request). Their SDKs bring a heap that uses those pages
before it grows memory.

Outputs go to PROJECT/build/NAME.wasm; a build whose inputs are older than its output, and whose
recipe (flags, stack size) is the one it was built with, is skipped. Debug builds (`build(debug=True)`,
for `isolate dev`) keep the module's name section, so wasmtime names the functions of a backtrace,
and go to PROJECT/build/debug/NAME.wasm: switching between the two never rebuilds or replaces either.
Component toolchains offer no such switch: a debug component is the release one (componentize-py's
runtime keeps its names anyway; componentize-js reports a failure as a stack on stderr, not a trap).
A result names the compiler that ran (path and version) and carries the warnings it printed.
The SDK sources come from ISOLATE_SDK_DIR, else the installed package (`isolate/_guest_sdk`, put
there by the wheel), else the source checkout's guest-sdk/. Toolchains installed on first use (the
AssemblyScript compiler, for an installed wheel) go to ISOLATE_CACHE_DIR or ~/.cache/isolate.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar, Protocol

from .config import parse_size
from .errors import BuildError, InvalidConfig

LANGUAGES = ("c", "rust", "assemblyscript", "python", "javascript")
WASM_TARGET = "wasm32-unknown-unknown"
SDK_CRATE = "isolate_sdk"
# Rust guests are built for speed: opt-level 3 and bulk memory (memcpy and memset as single wasm
# instructions, where the precompiled standard library otherwise copies byte by byte). Against opt-level
# "s" they measured 10.5 -> 9.6 µs per request (samples/echo, `isolate bench`), for 3.5 KB more code.
_BULK_MEMORY = "target-feature=+bulk-memory"
RUST_CODEGEN = ("-C", "opt-level=3", "-C", _BULK_MEMORY)
SDK_ALLOCATOR = "allocator"
"""The Rust SDK's default feature that makes its heap the global allocator."""
DEFAULT_STACK_SIZE = 32 * 1024
"""C and Rust: bytes of stack in linear memory (clang's and rustc's shadow stack), before the data."""
RECIPE = 2
"""Bump when a toolchain's flags change: outputs built by another recipe are rebuilt."""


def stack_size(value: int | str | None = None) -> int:
    """The stack size a build uses: `value`, else ISOLATE_STACK_SIZE, else 32 KiB; a multiple of 16."""
    value = value if value is not None else os.environ.get("ISOLATE_STACK_SIZE") or DEFAULT_STACK_SIZE
    try:
        size = parse_size(value)
    except InvalidConfig as exc:
        raise BuildError(f"stack size: {exc}") from exc
    if size < 4096 or size % 16 or size > 1 << 30:
        raise BuildError(f"stack size {size} must be a multiple of 16 bytes from 4 KiB to 1 GiB")
    return size


def sdk_root() -> Path:
    """The guest SDK sources: ISOLATE_SDK_DIR, else the installed package's copy, else the checkout's."""
    override = os.environ.get("ISOLATE_SDK_DIR")
    if override:
        return Path(override)
    packaged = resources.files("isolate") / "_guest_sdk"
    if isinstance(packaged, Path) and packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parent.parent / "guest-sdk"
    if checkout.is_dir():
        return checkout
    raise BuildError(f"the guest SDKs are missing (neither {packaged} nor {checkout} exists): reinstall "
                     "isolate-edge, or point ISOLATE_SDK_DIR at a guest-sdk/ directory")


def cache_dir() -> Path:
    """Where toolchains installed on first use live: ISOLATE_CACHE_DIR, else $XDG_CACHE_HOME/isolate."""
    override = os.environ.get("ISOLATE_CACHE_DIR")
    if override:
        return Path(override)
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "isolate"


@dataclass(frozen=True)
class Compiler:
    """The compiler a build ran: name, executable and version, and the driver that ran it, if any."""

    name: str
    path: str
    version: str
    driver: str = ""

    def __str__(self) -> str:
        text = f"{self.name} {self.version} at {self.path}"
        return f"{text} via {self.driver}" if self.driver else text


@dataclass(frozen=True)
class BuildResult:
    project: Path
    language: str
    output: Path
    size: int
    seconds: float
    cached: bool
    compiler: Compiler | None = None
    """None when the output was up to date and nothing ran."""
    warnings: tuple[str, ...] = ()
    """The compiler's warnings, one diagnostic each, as it rendered them."""


Compiled = tuple[Compiler, tuple[str, ...]]


class Toolchain(Protocol):
    language: ClassVar[str]

    def detect(self, project: Path) -> bool: ...
    def sources(self, project: Path) -> list[Path]: ...
    def recipe(self, project: Path, stack: int, debug: bool) -> dict[str, Any]: ...
    def compile(self, project: Path, output: Path, stack: int, debug: bool) -> Compiled: ...


def _run(tool: str, command: Sequence[str | Path], cwd: Path | None = None, env: Mapping[str, str] | None = None,
         render: Callable[[str], str] | None = None) -> subprocess.CompletedProcess[str]:
    args = [str(c) for c in command]
    try:
        result = subprocess.run(args, cwd=cwd, capture_output=True, text=True, env=env)
    except OSError as exc:
        raise BuildError(f"{tool} could not start: {exc}", command=args) from exc
    if result.returncode != 0:
        output = render(result.stderr) if render else (result.stderr or result.stdout)
        raise BuildError(f"{tool} failed:\n{output.strip()}", command=args)
    return result


_SUMMARY = re.compile(r"(\d+ warnings? generated\.|warning: \d+ warnings? emitted|warning: `.*` \(.*\) generated "
                      r"\d+ warnings?.*)$")


def _split(text: str, header: re.Pattern[str]) -> tuple[str, ...]:
    """A compiler's output cut into diagnostics, each starting at a `header` line, its tally dropped."""
    blocks: list[list[str]] = []
    for line in text.splitlines():
        if _SUMMARY.match(line.strip()):
            continue
        if header.match(line) or not blocks:
            blocks.append([line])
        else:
            blocks[-1].append(line)
    return tuple(b for b in ("\n".join(lines).strip() for lines in blocks) if b)


def _rustc_json(stderr: str) -> tuple[list[str], list[str]]:
    """rustc's `--error-format=json` stderr as rendered text: (warnings, everything else)."""
    warnings: list[str] = []
    other: list[str] = []
    for line in stderr.splitlines():
        try:
            diagnostic = json.loads(line)
        except ValueError:
            if line.strip():  # a linker's or a crash's plain text: never swallowed
                other.append(line)
            continue
        rendered = str(diagnostic.get("rendered") or diagnostic.get("message") or "").strip()
        if rendered and not _SUMMARY.match(rendered):
            (warnings if diagnostic.get("level") == "warning" else other).append(rendered)
    return warnings, other


def _files(root: Path, patterns: Iterable[str]) -> list[Path]:
    return sorted(p for pattern in patterns for p in root.glob(pattern) if "build" not in p.relative_to(root).parts
                  and "node_modules" not in p.relative_to(root).parts)


# --- C -------------------------------------------------------------------------------------------

@cache
def _zig_version(zig: str) -> str:
    return _run("zig", [zig, "version"]).stdout.strip()


def find_zig() -> Compiler:
    """zig: ISOLATE_ZIG, else the `ziglang` wheel's binary (called directly: no Python start-up), else PATH's."""
    zig = os.environ.get("ISOLATE_ZIG")
    if not zig:
        spec = importlib.util.find_spec("ziglang")
        bundled = [Path(p) / "zig" for p in (spec.submodule_search_locations or [])] if spec else []
        zig = next((str(p) for p in bundled if p.is_file()), None) or shutil.which("zig")
    if not zig:
        raise BuildError("zig is not installed: `pip install ziglang` (or install isolate-edge[sdk])")
    return Compiler("zig cc", zig, _zig_version(zig))


class C:
    language: ClassVar[str] = "c"
    _header: ClassVar[re.Pattern[str]] = re.compile(r"(\S[^:]*:\d+(:\d+)?: )?(warning|error|fatal error)\b|\S+: "
                                                    r"(warning|error):")

    def detect(self, project: Path) -> bool:
        return any(project.glob("*.c"))

    def sources(self, project: Path) -> list[Path]:
        sdk = sdk_root() / "c"
        return _files(project, ["*.c", "*.h"]) + [sdk / "isolate.c", sdk / "isolate.h"]

    def recipe(self, project: Path, stack: int, debug: bool) -> dict[str, Any]:
        return {"stack_size": stack}

    def compile(self, project: Path, output: Path, stack: int, debug: bool) -> Compiled:
        zig = find_zig()
        sdk = sdk_root() / "c"
        # A reactor (exports _initialize); -s strips debug info and the name section; `stack` bytes of
        # shadow stack (zig's default is 16 MiB), first in memory (zig links --stack-first), so an
        # overflow traps. A debug build is the same code with names and DWARF kept (-g): wasmtime names
        # frames from the first, and adds file:line from the second under WASMTIME_BACKTRACE_DETAILS=1;
        # and with assert() on (zig's -O2 defines NDEBUG), whose message is a C guest's last words.
        # A fresh local cache for release builds: on a hit zig cc prints no warnings. Debug builds (`isolate
        # dev`, rebuilding on every save) keep theirs in build/debug: the SDK's isolate.c is not compiled
        # again, which cut a reload from ~1.4 s to ~0.2 s; an unchanged file's warnings are not repeated.
        # libc stays in zig's global cache.
        kept = project / "build" / "debug" / ".zig-cache"
        if debug:
            kept.mkdir(parents=True, exist_ok=True)
        cache = contextlib.nullcontext(str(kept)) if debug else tempfile.TemporaryDirectory(prefix="isolate-zig-")
        with cache as local:
            result = _run("zig cc", [zig.path, "cc", "--target=wasm32-wasi", "-mexec-model=reactor", "-O2",
                                     *(["-g", "-UNDEBUG"] if debug else ["-s"]),
                                     f"-Wl,-z,stack-size={stack}", "-Wall", "-Wextra", f"-I{sdk}", "-o", output,
                                     sdk / "isolate.c", *sorted(project.glob("*.c"))], cwd=project,
                          env={**os.environ, "ZIG_LOCAL_CACHE_DIR": local})
        return zig, _split(result.stderr + result.stdout, self._header)


# --- Rust ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Rustc:
    """One rustc found on this machine, and whether its sysroot has the wasm32 standard library."""

    path: str
    release: str
    """As `rustc -vV` says: 1.63.0, 1.80.0-beta.3, 1.97.0-nightly."""
    sysroot: Path

    @property
    def has_wasm(self) -> bool:
        return (self.sysroot / "lib" / "rustlib" / WASM_TARGET).is_dir()

    @property
    def rank(self) -> tuple[int, int, int, int]:
        """Newer first; at one version a release beats a beta beats a nightly."""
        match = re.match(r"(\d+)\.(\d+)\.(\d+)(?:-(\w+))?", self.release)
        if match is None:
            return (0, 0, 0, 0)
        channel = match.group(4) or ""
        return (int(match.group(1)), int(match.group(2)), int(match.group(3)),
                2 if not channel else 1 if channel.startswith("beta") else 0)

    @property
    def compiler(self) -> Compiler:
        return Compiler("rustc", self.path, self.release)

    def cargo(self) -> str | None:
        """ISOLATE_CARGO, else the cargo of this rustc's own toolchain. Never another one from PATH: a newer
        cargo passes flags an older rustc rejects."""
        override = os.environ.get("ISOLATE_CARGO")
        if override:
            return override
        for cargo in (self.sysroot / "bin" / "cargo", Path(self.path).parent / "cargo"):
            if cargo.is_file() and os.access(cargo, os.X_OK):
                return str(cargo)
        return None


@cache
def _probe_rustc(path: str, stamp: tuple[int, int]) -> Rustc | None:
    """`rustc -vV` and `--print sysroot`, once per binary (and per modification of it)."""
    try:
        about = subprocess.run([path, "-vV"], capture_output=True, text=True, timeout=60)
        sysroot = subprocess.run([path, "--print", "sysroot"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    release = re.search(r"^release: (\S+)", about.stdout, re.MULTILINE)
    if release is None or sysroot.returncode != 0 or not sysroot.stdout.strip():
        return None
    root = Path(sysroot.stdout.strip())
    # A rustup proxy picks its toolchain per directory and environment: pin the toolchain's own binary.
    own = root / "bin" / "rustc"
    if Path(path).resolve().name.startswith("rustup") and own.is_file():
        path = str(own)
    return Rustc(path, release.group(1), root)


def _rustc_candidates() -> list[str]:
    """Every rustc in PATH, every rustup toolchain's, Debian's (and its versioned ones), without duplicates."""
    found = [os.path.join(d, "rustc") for d in os.environ.get("PATH", "").split(os.pathsep) if d]
    rustup_home = Path(os.environ.get("RUSTUP_HOME") or Path.home() / ".rustup")
    found += sorted(str(p) for p in rustup_home.glob("toolchains/*/bin/rustc"))
    found += ["/usr/bin/rustc", *sorted(str(p) for p in Path("/usr/lib").glob("rust-*/bin/rustc"))]
    # rustup's proxies run one of the toolchains listed above: asking them again only costs start-ups.
    proxies_covered = any(rustup_home.glob("toolchains/*/bin/rustc"))
    unique: dict[str, str] = {}
    for candidate in found:
        if proxies_covered and os.path.basename(os.path.realpath(candidate)).startswith("rustup"):
            continue
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            unique.setdefault(os.path.realpath(candidate), candidate)
    return list(unique.values())


def _probe(path: str) -> Rustc | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return _probe_rustc(path, (stat.st_mtime_ns, stat.st_size))


def find_rustc() -> Rustc:
    """The newest rustc whose sysroot has the wasm32-unknown-unknown standard library (or ISOLATE_RUSTC).

    rustup's toolchains often lack the target (it needs `rustup target add`), Debian's rustc has it
    with libstd-rust-dev-wasm32: every rustc found is asked, and the newest one able to build wins.
    """
    override = os.environ.get("ISOLATE_RUSTC")
    paths = [override] if override else _rustc_candidates()
    with ThreadPoolExecutor(max_workers=4) as pool:  # the probes are process start-ups: overlap them
        probed = [r for r in pool.map(_probe, paths) if r is not None]
    unique = list({r.path: r for r in reversed(probed)}.values())[::-1]
    usable = [r for r in unique if r.has_wasm]
    if usable:
        return max(usable, key=lambda r: r.rank)  # max keeps the first of equals: PATH order breaks ties
    seen = "; ".join(f"rustc {r.release} at {r.path}" for r in unique) or "none"
    where = f"ISOLATE_RUSTC={override} has" if override else "no rustc found has"
    raise BuildError(f"{where} the {WASM_TARGET} target (found: {seen}): run `rustup target add {WASM_TARGET}`, or "
                     "`make toolchains` / `apt-get install rustc libstd-rust-dev-wasm32` for Debian's")


def _manifest(project: Path) -> dict[str, Any]:
    path = project / "Cargo.toml"
    if not path.is_file():
        return {}
    try:
        return tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise BuildError(f"{path} is not valid TOML: {exc}") from exc


def cargo_dependencies(manifest: Mapping[str, Any], *, sdk: bool = False) -> dict[str, Any]:
    """What a Cargo.toml makes the build depend on (normal and build dependencies, every target), by name;
    the SDK crate only if `sdk`, since the fast path supplies it itself."""
    tables = [manifest, *(t for t in (manifest.get("target") or {}).values() if isinstance(t, dict))]
    found: dict[str, Any] = {}
    for table in tables:
        for key in ("dependencies", "build-dependencies"):
            found.update(table.get(key) or {})
    return {name: spec for name, spec in found.items() if sdk or name.replace("-", "_") != SDK_CRATE}


def sdk_features(manifest: Mapping[str, Any]) -> tuple[str, ...]:
    """The Rust SDK's features a project asks for, as cargo would enable them: its `default`
    (the heap as global allocator) unless the dependency says `default-features = false`."""
    spec = next((spec for name, spec in cargo_dependencies(manifest, sdk=True).items()
                 if name.replace("-", "_") == SDK_CRATE), None)
    if not isinstance(spec, dict):
        return (SDK_ALLOCATOR,)
    default = spec.get("default-features", spec.get("default_features", True))
    features = {str(f) for f in spec.get("features") or []} & {SDK_ALLOCATOR}
    return tuple(sorted(features | ({SDK_ALLOCATOR} if default is not False else set())))


def _dependency_kind(spec: Any) -> str:
    if isinstance(spec, dict):
        for kind in ("path", "git", "workspace"):
            if kind in spec:
                return kind
    return "registry"


def _path_crates(project: Path, manifest: Mapping[str, Any]) -> list[Path]:
    """The local crates a project pulls in through path dependencies, transitively."""
    seen: dict[Path, None] = {}
    todo = [(project, manifest)]
    while todo:
        root, current = todo.pop()
        for spec in cargo_dependencies(current, sdk=True).values():
            if _dependency_kind(spec) == "path":
                crate = (root / str(spec["path"])).resolve()
                if crate not in seen and crate != project and (crate / "Cargo.toml").is_file():
                    seen[crate] = None
                    try:
                        todo.append((crate, _manifest(crate)))
                    except BuildError:
                        pass  # cargo names the broken manifest itself
    return list(seen)


_CARGO_PROGRESS = re.compile(r"\s+(Compiling|Finished|Fresh|Locking|Adding|Updating|Downloaded|Downloading|"
                             r"Blocking|Checking|Running|Removing|Packaging|Unpacking)\b")
_CARGO_HEADER = re.compile(r"(warning|error)(\[\w+\])?:")
_UNRESOLVED = [re.compile(p) for p in (r"no matching package (?:named|found)[^`]*`([^`]+)`",
                                       r"failed to get `([^`]+)` as a dependency",
                                       r"failed to load source for dependency `([^`]+)`",
                                       r"failed to select a version for the requirement `([^ `=]+)")]
_WHY = {
    "registry": "it comes from a registry (crates.io), which builds cannot reach (`cargo build --offline`), and "
                "no vendored or cached copy of it was found",
    "git": "it is a git dependency, which builds cannot fetch (`cargo build --offline`), and cargo has no "
           "checkout of it cached",
    "workspace": "it is inherited from a workspace whose entry for it cannot be resolved offline",
    "path": "its path crate does not resolve",
}


class Rust:
    language: ClassVar[str] = "rust"

    def detect(self, project: Path) -> bool:
        return (project / "src" / "lib.rs").is_file()

    def sources(self, project: Path) -> list[Path]:
        crates = _path_crates(project, _manifest(project))
        return [*_files(project, ["src/**/*.rs", "Cargo.toml", "Cargo.lock", "build.rs", ".cargo/config*"]),
                *_files(sdk_root() / "rust", ["src/**/*.rs"]),
                *(f for crate in crates for f in _files(crate, ["src/**/*.rs", "Cargo.toml", "build.rs"]))]

    def recipe(self, project: Path, stack: int, debug: bool) -> dict[str, Any]:
        return {"stack_size": stack, "sdk_features": sdk_features(_manifest(project)), "codegen": list(RUST_CODEGEN)}

    def compile(self, project: Path, output: Path, stack: int, debug: bool) -> Compiled:
        rustc = find_rustc()
        manifest = _manifest(project)
        dependencies = cargo_dependencies(manifest)
        if dependencies or (project / "build.rs").is_file():
            return self._cargo(project, output, rustc, manifest, dependencies, stack, debug)
        return self._rustc(project, output, rustc, manifest, stack, debug)

    def _rustc(self, project: Path, output: Path, rustc: Rustc, manifest: Mapping[str, Any], stack: int,
               debug: bool) -> Compiled:
        """The fast path: two rustc calls, the SDK's rlib kept between builds; no cargo, no Cargo.lock."""
        edition = str((manifest.get("package") or {}).get("edition", "2021"))
        flags = ["--target", WASM_TARGET, *RUST_CODEGEN, "--error-format=json"]
        sdk = sdk_root() / "rust"
        features = sdk_features(manifest)
        # One rlib per compiler (a rustc refuses rlibs another version wrote), per feature set and per codegen;
        # debug builds share it, since the name section is made at the final link from the rlib's symbols.
        codegen = hashlib.sha256(" ".join(RUST_CODEGEN).encode()).hexdigest()[:8]
        deps = project / "build" / ".sdk" / re.sub(r"[^\w.-]", "_", "-".join([rustc.release, *features, codegen]))
        deps.mkdir(parents=True, exist_ok=True)
        rlib = deps / f"lib{SDK_CRATE}.rlib"
        sdk_sources = _files(sdk, ["src/**/*.rs"])
        warnings: list[str] = []
        # One build of the rlib at a time (builds of one project in parallel processes: `make unit`, two
        # `isolate dev`): rustc writes its objects beside the rlib under fixed names, and a reader must
        # not link a half-written rlib.
        with open(deps / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not rlib.exists() or max(p.stat().st_mtime for p in sdk_sources) > rlib.stat().st_mtime:
                cfgs = [arg for feature in features for arg in ("--cfg", f'feature="{feature}"')]
                result = _run("rustc", [rustc.path, *flags, *cfgs, "--edition", "2021", "--crate-type", "rlib",
                                        "--crate-name", SDK_CRATE, "-o", rlib, sdk / "src" / "lib.rs"],
                              render=_render_rustc)
                warnings += _rustc_json(result.stderr)[0]
        crate = _crate_name(project, manifest)
        # strip=symbols drops the name section too; a debug build keeps it (and only it: DWARF would
        # not change what a backtrace shows), so wasmtime names and demangles the frames.
        strip = "strip=debuginfo" if debug else "strip=symbols"
        result = _run("rustc", [rustc.path, *flags, "--edition", edition, "--crate-type", "cdylib", "--crate-name",
                                crate, "-C", strip, "-C", f"link-arg=-zstack-size={stack}", "-L", deps,
                                "--extern", f"{SDK_CRATE}={rlib}", "-o", output, project / "src" / "lib.rs"],
                          cwd=project, render=_render_rustc)
        found, other = _rustc_json(result.stderr)
        return rustc.compiler, (*warnings, *found, *other)

    def _cargo(self, project: Path, output: Path, rustc: Rustc, manifest: Mapping[str, Any],
               dependencies: Mapping[str, Any], stack: int, debug: bool) -> Compiled:
        """Dependencies need cargo: offline, since no build may reach a registry; path, vendored
        (`.cargo/config.toml` source replacement) and already-cached crates resolve."""
        names = ", ".join(dependencies) or "a build script"
        for name, spec in cargo_dependencies(manifest, sdk=True).items():
            if _dependency_kind(spec) == "path" and not (project / str(spec["path"]) / "Cargo.toml").is_file():
                raise BuildError(f"dependency `{name}` cannot be resolved: its path {spec['path']!r} in "
                                 f"{project / 'Cargo.toml'} holds no Cargo.toml"
                                 + (f" (the SDK is at {sdk_root() / 'rust'})" if name == SDK_CRATE else ""),
                                 dependency=name)
        crate_types = (manifest.get("lib") or {}).get("crate-type") or []
        if "cdylib" not in crate_types:
            raise BuildError(f'{project / "Cargo.toml"} must say crate-type = ["cdylib"] under [lib] to build a '
                             "wasm module with cargo")
        cargo = rustc.cargo()
        if cargo is None:
            raise BuildError(f"{project / 'Cargo.toml'} declares dependencies ({names}), which need cargo, and "
                             f"rustc {rustc.release} at {rustc.path} has no cargo beside it: install its toolchain's "
                             "cargo (Debian: apt-get install cargo) or set ISOLATE_CARGO", dependencies=names)
        env = {**os.environ, "RUSTC": rustc.path}
        if "profile" not in manifest:  # the fast path's settings, unless the project chose its own
            env.update(CARGO_PROFILE_RELEASE_OPT_LEVEL="3", CARGO_PROFILE_RELEASE_STRIP="symbols")
        if debug:  # names kept whatever the project's profile strips (see _rustc)
            env.update(CARGO_PROFILE_RELEASE_STRIP="debuginfo")
        # `cargo rustc --lib`: the stack size goes to the handler's link alone, not to every crate.
        # A target directory of its own for debug builds: sharing one, each switch would rebuild every crate.
        target = project / "build" / ("cargo-debug" if debug else "cargo")
        command = [cargo, "rustc", "--lib", "--offline", "--release", "--target", WASM_TARGET, "--message-format",
                   "json", "--target-dir", str(target), "--manifest-path",
                   str(project / "Cargo.toml"), "--", "-C", _BULK_MEMORY, "-C", f"link-arg=-zstack-size={stack}"]
        try:
            result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True)
        except OSError as exc:
            raise BuildError(f"cargo could not start: {exc}", command=command) from exc
        warnings: list[str] = []
        errors: list[str] = []
        wasm: Path | None = None
        for line in result.stdout.splitlines():
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if message.get("reason") == "compiler-message":
                rendered = str(message["message"].get("rendered") or "").strip()
                if rendered and not _SUMMARY.match(rendered):
                    (warnings if message["message"].get("level") == "warning" else errors).append(rendered)
            elif message.get("reason") == "compiler-artifact" and Path(message.get("manifest_path", "")) == (
                    project / "Cargo.toml"):
                wasm = next((Path(f) for f in message.get("filenames", []) if f.endswith(".wasm")), wasm)
        own = "\n".join(line for line in result.stderr.splitlines() if not _CARGO_PROGRESS.match(line))
        for block in _split(own, _CARGO_HEADER):
            (warnings if block.startswith("warning") else errors).append(block)
        if result.returncode != 0:
            raise self._cargo_error(project, dependencies, "\n\n".join(errors) or result.stderr.strip(), command)
        if wasm is None or not wasm.is_file():
            raise BuildError(f"cargo built no .wasm for {project.name}", command=command)
        shutil.copyfile(wasm, output)
        version = subprocess.run([cargo, "--version"], capture_output=True, text=True).stdout.strip()
        compiler = Compiler("rustc", rustc.path, rustc.release, driver=f"{version or 'cargo'} at {cargo}")
        return compiler, tuple(warnings)

    @staticmethod
    def _cargo_error(project: Path, dependencies: Mapping[str, Any], said: str, command: list[str]) -> BuildError:
        for pattern in _UNRESOLVED:
            match = pattern.search(said)
            if match:
                name = match.group(1)
                kind = _dependency_kind(dependencies.get(name, dependencies.get(name.replace("_", "-"))))
                return BuildError(
                    f"dependency `{name}` of {project.name} cannot be resolved: {_WHY[kind]}. Vendor it (`cargo "
                    f"vendor` where the registry is reachable, plus the [source] replacement it prints, in "
                    f"{project / '.cargo' / 'config.toml'}) or make it a path dependency.\n\ncargo said:\n{said}",
                    dependency=name, command=command)
        return BuildError(f"cargo failed:\n{said}", command=command)


def _render_rustc(stderr: str) -> str:
    warnings, other = _rustc_json(stderr)
    return "\n\n".join([*other, *warnings])


def _crate_name(project: Path, manifest: Mapping[str, Any]) -> str:
    name = (manifest.get("lib") or {}).get("name") or (manifest.get("package") or {}).get("name") or project.name
    return str(name).replace("-", "_")


# --- AssemblyScript ------------------------------------------------------------------------------

def _asc_in(base: Path) -> Path | None:
    asc = base / "node_modules" / "assemblyscript" / "bin" / "asc.js"
    return asc if asc.is_file() else None


def _npm_ci_into(sdk: Path, home: Path, npm: str) -> None:
    """`npm ci` of the SDK's package.json and package-lock.json into `home`, whole or not at all."""
    home.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".installing-", dir=home.parent))
    try:
        for name in ("package.json", "package-lock.json"):
            shutil.copyfile(sdk / name, staging / name)
        _run("npm ci", [npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=staging)
        try:
            os.replace(staging, home)  # whole or not at all; a concurrent first build may have won the race
        except OSError:
            pass
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def find_asc(project: Path) -> Path:
    """asc.js: the project's own, else the SDK's (`make toolchains`), else the pinned one in the cache,
    which `npm ci` installs there on first use (an installed wheel has no node_modules of its own)."""
    sdk = sdk_root() / "assemblyscript"
    found = _asc_in(project) or _asc_in(sdk)
    if found:
        return found
    lock = json.loads((sdk / "package-lock.json").read_text())
    pinned = lock["packages"]["node_modules/assemblyscript"]["version"]
    home = cache_dir() / f"assemblyscript-{pinned}"
    return _cached_npm_install(
        sdk, home, _asc_in, "assemblyscript compiler",
        f"the AssemblyScript compiler is not installed, and npm is missing to install it: install Node.js and npm "
        f"(Debian: apt-get install nodejs npm) and build again, which runs `npm ci` for assemblyscript {pinned} in "
        f"{home}; or run `npm install` in {project}")


def _cached_npm_install(sdk: Path, home: Path, probe: Callable[[Path], Path | None], what: str,
                        without_npm: str) -> Path:
    """What `probe` finds in `home`, a cache directory `npm ci` fills from `sdk`'s lock on first use."""
    found = probe(home)
    if found:
        return found
    npm = shutil.which("npm")
    if npm is None:
        raise BuildError(without_npm)
    _npm_ci_into(sdk, home, npm)
    found = probe(home)
    if found is None:
        raise BuildError(f"npm ci in {home} installed no {what}")
    return found


class AssemblyScript:
    language: ClassVar[str] = "assemblyscript"
    _header: ClassVar[re.Pattern[str]] = re.compile(r"(WARNING|ERROR|INFO|PEDANTIC) ")

    def detect(self, project: Path) -> bool:
        return (project / "assembly" / "index.ts").is_file()

    def sources(self, project: Path) -> list[Path]:
        return _files(project, ["assembly/**/*.ts", "package.json"]) + _files(
            sdk_root() / "assemblyscript", ["assembly/**/*.ts", "transform/*.js"])

    def recipe(self, project: Path, stack: int, debug: bool) -> dict[str, Any]:
        return {}  # AssemblyScript's stack is its own (the stub runtime keeps one page of memory)

    def compile(self, project: Path, output: Path, stack: int, debug: bool) -> Compiled:
        sdk = sdk_root() / "assemblyscript"
        node = shutil.which("node")
        if node is None:
            raise BuildError("node is not installed: install Node.js and npm (Debian: apt-get install nodejs npm)")
        if (project / "package.json").is_file():
            # One install per project at a time: a second build (a debug and a release one together)
            # would see the node_modules the first is still filling, skip the install, and not find the SDK.
            (project / "build").mkdir(exist_ok=True)
            with open(project / "build" / ".npm-install.lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                if not (project / "node_modules").is_dir():
                    npm = shutil.which("npm")
                    if npm is None:
                        raise BuildError("npm is not installed: install Node.js and npm (Debian: apt-get install "
                                         "nodejs npm)")
                    _run("npm install", [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"], cwd=project)
        asc = find_asc(project)
        # AssemblyScript imports `env.abort` unless told otherwise; the SDK's abort logs, then traps.
        # Its internal name depends on whether the SDK came in as a package or by relative path.
        if (project / "node_modules" / "isolate-sdk").exists():
            abort = "~lib/isolate-sdk/assembly/index/abort"
            package = project / "node_modules" / "isolate-sdk"
        else:
            abort = os.path.relpath(sdk / "assembly" / "index", project) + "/abort"
            package = sdk
        # The SDK's transform makes the stub runtime tell the host when memory.grow fails (memory_limit).
        transform = (package / "transform" / "out-of-memory.js").resolve()
        if not transform.is_file():  # an installed copy of the SDK from before the transform
            transform = sdk / "transform" / "out-of-memory.js"
        # --debug keeps the name section through the optimizer, so frames are named (`index/handle`).
        result = _run("asc", [node, asc, "assembly/index.ts", "--outFile", output, "--runtime", "stub", "--optimize",
                              *(["--debug"] if debug else []), "--use", f"abort={abort}", "--transform",
                              str(transform)], cwd=project)
        version = json.loads((asc.parent.parent / "package.json").read_text()).get("version", "?")
        return Compiler("asc", str(asc), version, driver=f"node at {node}"), _split(result.stderr, self._header)


# --- Components: Python and JavaScript (wasi:http/proxy) ---------------------------------------------

WASI_HTTP = "0.2.12"
"""The wasi 0.2.x WIT packages components are built against: the copy jco ships (lib/wit/builtin/), jco being
pinned by guest-sdk/javascript/package-lock.json. Neither toolchain ships the wasi:http WIT itself."""
JS_WASI = "0.2.10"
"""componentize-js 0.23's engine (StarlingMonkey) is built against wasi 0.2.10, and its fetch-event handler is the
export `wasi:http/incoming-handler@0.2.10#handle`: its world must name that version. jco 1.35 ships no complete
0.2.10, so the 0.2.12 packages are relabelled (the 0.2.x releases share one API; the packages hold no @since gates)."""
WORLD = "guest"
_WORLD_WIT = """package isolate:guest;

// wasi:http/proxy, and the environment, where the host puts the module's variables.
world guest {{
  include wasi:http/proxy@{version};
  import wasi:cli/environment@{version};
}}
"""
_WIT_PACKAGES = ("wasi-cli", "wasi-clocks", "wasi-filesystem", "wasi-http", "wasi-io", "wasi-random", "wasi-sockets")


def _pinned(lock: Path, package: str) -> str:
    return str(json.loads(lock.read_text())["packages"][f"node_modules/{package}"]["version"])


def _js_toolchain_in(base: Path) -> Path | None:
    ready = all((base / "node_modules" / "@bytecodealliance" / name / "package.json").is_file()
                for name in ("componentize-js", "jco"))
    return base if ready else None


def find_js_toolchain() -> Path:
    """The directory whose node_modules hold the pinned componentize-js and jco: the SDK's (`make toolchains`),
    else the cache's, which `npm ci` fills on first use (an installed wheel has no node_modules of its own)."""
    sdk = sdk_root() / "javascript"
    found = _js_toolchain_in(sdk)
    if found:
        return found
    lock = sdk / "package-lock.json"
    componentize_js, jco = (_pinned(lock, f"@bytecodealliance/{name}") for name in ("componentize-js", "jco"))
    pins = f"componentize-js {componentize_js} and jco {jco}"
    home = cache_dir() / f"javascript-{componentize_js}-{jco}"
    return _cached_npm_install(
        sdk, home, _js_toolchain_in, "componentize-js or jco",
        f"the component toolchain ({pins}, from npm) is not installed, and npm is missing to install it: install "
        f"Node.js and npm (Debian: apt-get install nodejs npm) and build again, which runs `npm ci` in {home}; or "
        f"run `make toolchains` in a checkout")


def wasi_wit(version: str, into: Path) -> Path:
    """Write into `into` the world `isolate:guest/guest` for wasi `version` (0.2.x), its wasi packages in deps/:
    jco's own WASI_HTTP copy, linked when the version is that one, else relabelled copies. Returns `into`."""
    builtin = find_js_toolchain() / "node_modules" / "@bytecodealliance" / "jco" / "lib" / "wit" / "builtin" / WASI_HTTP
    missing = [name for name in _WIT_PACKAGES if not (builtin / name / "package.wit").is_file()]
    if missing:
        raise BuildError(f"jco's wasi {WASI_HTTP} WIT is incomplete ({', '.join(missing)} missing under {builtin}): "
                         "reinstall the pinned jco (`make toolchains`)")
    (into / "world.wit").write_text(_WORLD_WIT.format(version=version))
    if version == WASI_HTTP:
        (into / "deps").symlink_to(builtin, target_is_directory=True)
        return into
    for name in _WIT_PACKAGES:
        text = (builtin / name / "package.wit").read_text()
        (into / "deps" / name).mkdir(parents=True)
        (into / "deps" / name / "package.wit").write_text(re.sub(rf"@{re.escape(WASI_HTTP)}\b", f"@{version}", text))
    return into


@cache
def _componentize_py_version(path: str) -> str:
    said = _run("componentize-py", [path, "--version"]).stdout.strip()
    return said.removeprefix("componentize-py").strip() or said


def find_componentize_py() -> Compiler:
    """componentize-py: ISOLATE_COMPONENTIZE_PY, else the one beside this Python (a venv's), else PATH's."""
    path = os.environ.get("ISOLATE_COMPONENTIZE_PY")
    if not path:
        beside = Path(sys.executable).parent / "componentize-py"
        path = str(beside) if beside.is_file() else shutil.which("componentize-py")
    if not path:
        raise BuildError("componentize-py is not installed: `pip install 'componentize-py>=0.25,<0.26'` "
                         "(or `make toolchains`)")
    return Compiler("componentize-py", path, _componentize_py_version(path))


def _render_componentize_py(stderr: str, path: Sequence[Path]) -> str:
    """componentize-py's failure without its launcher's Python traceback (it raises AssertionError with the
    message) or a Rust backtrace: what stays is the guest's own error, e.g. a SyntaxError with its caret.
    componentize-py names the Python path's directories /0/, /1/, ...: the real paths are put back."""
    text = stderr
    match = re.search(r"^AssertionError: ?", text, re.MULTILINE)
    if match:
        text = text[match.end():]
    text = text.split("\nStack backtrace:", 1)[0].strip() or stderr
    head, _, cause = text.partition("\n\nCaused by:")
    said_again = (re.sub(r" \([^()]*, line \d+\)$", "", line.strip()) in head for line in cause.splitlines())
    if cause and all(said_again):  # the same error, said again (a SyntaxError adds "(app.py, line 1)")
        text = head.strip()
    for index, directory in enumerate(path):
        text = text.replace(f'"/{index}/', f'"{directory}/').replace(f"(/{index}/", f"({directory}/")
    return text


class Python:
    """componentize-py: CPython and the app in one component, pre-initialised at build time (the app module
    is imported, and the interpreter's heap snapshotted, so a request starts in the handler)."""

    language: ClassVar[str] = "python"

    def detect(self, project: Path) -> bool:
        return (project / "app.py").is_file()

    def sources(self, project: Path) -> list[Path]:
        return _files(project, ["**/*.py"]) + _files(sdk_root() / "python", ["*.py"])

    def recipe(self, project: Path, stack: int, debug: bool) -> dict[str, Any]:
        return {"world": f"wasi:http/proxy@{WASI_HTTP}", "componentize_py": find_componentize_py().version}

    def compile(self, project: Path, output: Path, stack: int, debug: bool) -> Compiled:
        tool = find_componentize_py()
        # Without the backtraces RUST_BACKTRACE=1 would add to every error; the app's own modules and the SDK
        # are the Python path (componentize-py also adds the running venv's site-packages).
        env = {**os.environ, "RUST_BACKTRACE": "0", "RUST_LIB_BACKTRACE": "0"}
        path = [project, sdk_root() / "python"]
        with tempfile.TemporaryDirectory(prefix="isolate-wit-") as wit:
            result = _run("componentize-py", [tool.path, "-q", "-d", wasi_wit(WASI_HTTP, Path(wit)), "-w", WORLD,
                                              "componentize", "app", *(a for d in path for a in ("-p", d)),
                                              "-o", output], cwd=project, env=env,
                          render=lambda stderr: _render_componentize_py(stderr, path))
        return tool, tuple(line for line in result.stderr.splitlines() if line.strip())


class JavaScript:
    """componentize-js (SpiderMonkey in the component), pre-initialised by Wizer at build time: the engine
    started, the module parsed, compiled and its top level run, so a request runs only the handler."""

    language: ClassVar[str] = "javascript"

    def detect(self, project: Path) -> bool:
        return (project / "app.js").is_file()

    def sources(self, project: Path) -> list[Path]:
        return _files(project, ["**/*.js", "**/*.mjs", "package.json"]) + [
            sdk_root() / "javascript" / "componentize.mjs"]

    def recipe(self, project: Path, stack: int, debug: bool) -> dict[str, Any]:
        lock = sdk_root() / "javascript" / "package-lock.json"
        return {"world": f"wasi:http/proxy@{JS_WASI}",
                "componentize_js": _pinned(lock, "@bytecodealliance/componentize-js")}

    def compile(self, project: Path, output: Path, stack: int, debug: bool) -> Compiled:
        node = shutil.which("node")
        if node is None:
            raise BuildError("node is not installed: install Node.js and npm (Debian: apt-get install nodejs npm)")
        toolchain = find_js_toolchain()
        script = sdk_root() / "javascript" / "componentize.mjs"
        with tempfile.TemporaryDirectory(prefix="isolate-wit-") as wit:
            result = _run("componentize-js", [node, script, toolchain, "app.js", output, wasi_wit(JS_WASI, Path(wit)),
                                              WORLD], cwd=project)
        package = toolchain / "node_modules" / "@bytecodealliance" / "componentize-js" / "package.json"
        version = str(json.loads(package.read_text()).get("version", "?"))
        compiler = Compiler("componentize-js", str(package.parent), version, driver=f"node at {node}")
        return compiler, tuple(line for line in result.stderr.splitlines() if line.strip())


TOOLCHAINS: dict[str, Toolchain] = {"c": C(), "rust": Rust(), "assemblyscript": AssemblyScript(), "python": Python(),
                                    "javascript": JavaScript()}


def detect(project: Path) -> str:
    for name, toolchain in TOOLCHAINS.items():
        if toolchain.detect(project):
            return name
    raise BuildError(f"cannot tell the language of {project}: expected *.c, src/lib.rs, assembly/index.ts, app.py "
                     "or app.js (or pass --lang)")


def build(project: Path, language: str | None = None, *, force: bool = False,
          stack: int | str | None = None, debug: bool = False) -> BuildResult:
    """Build `project` into `project/build/<name>.wasm`, unless it is up to date.

    `stack`: bytes of stack in linear memory for C and Rust (an int or "256KiB"); else
    ISOLATE_STACK_SIZE, else 64 KiB. `debug`: keep function names (for `isolate dev`), into
    `project/build/debug/<name>.wasm`, beside the release output rather than over it.
    """
    project = Path(project).resolve()
    if not project.is_dir():
        raise BuildError(f"{project} is not a directory")
    language = language or detect(project)
    if language not in TOOLCHAINS:
        raise BuildError(f"unknown language {language!r}: choose one of {', '.join(LANGUAGES)}")
    toolchain = TOOLCHAINS[language]
    stack_bytes = stack_size(stack)
    output = project / "build" / ("debug" if debug else "") / f"{project.name}.wasm"
    output.parent.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    sources = toolchain.sources(project)
    # The recipe the output was built with sits beside it: other flags or another stack size rebuild.
    stamp = output.with_name(f".{output.name}.recipe")
    # "debug" only when set: release recipes, and so release outputs already built, stay as they were.
    recipe = json.dumps({"recipe": RECIPE, "language": language, **({"debug": True} if debug else {}),
                         **toolchain.recipe(project, stack_bytes, debug)}, sort_keys=True)
    fresh = (output.exists() and stamp.is_file() and stamp.read_text() == recipe
             and all(p.stat().st_mtime <= output.stat().st_mtime for p in sources))
    if fresh and not force:
        return BuildResult(project, language, output, output.stat().st_size, time.perf_counter() - started, True)
    # Built under its final file name, in a directory of its own (one per build, so two builds of a
    # project never share it): a linker writes that name into the name section, and wasmtime shows it
    # in every frame (`name.wasm!handler`).
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent)) / output.name
    try:
        compiler, warnings = toolchain.compile(project, tmp, stack_bytes, debug)
        os.replace(tmp, output)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)
    stamp.write_text(recipe)
    return BuildResult(project, language, output, output.stat().st_size, time.perf_counter() - started, False,
                       compiler, warnings)
