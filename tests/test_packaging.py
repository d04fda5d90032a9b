"""The wheel: built from a copy of the sources, installed outside the checkout, `isolate new` + `build` run from it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import HostFactory

from isolate import Request
from isolate.build import find_rustc
from isolate.errors import BuildError

ROOT = Path(__file__).resolve().parent.parent
DISTRIBUTION = "isolate-edge"


@dataclass(frozen=True)
class Installed:
    wheel: Path
    site: Path
    work: Path

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The installed `isolate` command, run by this interpreter from a directory outside the checkout."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ISOLATE_")}
        env.update(PYTHONPATH=str(self.site), ISOLATE_CACHE_DIR=str(self.work / ".cache"))
        return subprocess.run([sys.executable, str(self.site / "bin" / "isolate"), *args], capture_output=True,
                              text=True, timeout=300, cwd=self.work, env=env)


def pip(*args: str) -> None:
    # --no-index: nothing is downloaded; --no-build-isolation: this venv's setuptools builds (dev extra).
    result = subprocess.run([sys.executable, "-m", "pip", *args, "--no-index", "--quiet",
                             "--disable-pip-version-check"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    base = tmp_path_factory.mktemp("packaging")
    # A copy, so the build's own build/ and egg-info never touch the checkout (or a concurrent run there).
    source = base / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, source / name)
    ignore = shutil.ignore_patterns("__pycache__", "node_modules", "build", "target", "*.pyc")
    shutil.copytree(ROOT / "isolate", source / "isolate", ignore=ignore)
    shutil.copytree(ROOT / "guest-sdk", source / "guest-sdk", ignore=ignore)
    pip("wheel", "--no-deps", "--no-build-isolation", "-w", str(base / "dist"), str(source))
    (wheel,) = (base / "dist").glob("*.whl")
    pip("install", "--no-deps", "--target", str(base / "site"), str(wheel))
    work = base / "elsewhere"
    work.mkdir()
    return Installed(wheel, base / "site", work)


def test_wheel_name_and_contents(installed: Installed) -> None:
    assert installed.wheel.name.startswith("isolate_edge-")
    names = zipfile.ZipFile(installed.wheel).namelist()
    sdk = {n.removeprefix("isolate/_guest_sdk/") for n in names if n.startswith("isolate/_guest_sdk/")}
    assert {"c/isolate.c", "c/isolate.h", "rust/Cargo.toml", "rust/src/lib.rs", "rust/src/msgpack.rs",
            "assemblyscript/package.json", "assemblyscript/package-lock.json",
            "assemblyscript/assembly/index.ts", "assemblyscript/transform/out-of-memory.js", "ABI.md",
            "python/isolate_http.py", "javascript/package.json", "javascript/package-lock.json",
            "javascript/componentize.mjs"} <= sdk
    assert not [n for n in names if "node_modules" in n or "/build/" in n or n.endswith((".wasm", ".rlib"))]
    assert "isolate/py.typed" in names


def test_the_installed_copy_is_the_one_that_runs(installed: Installed) -> None:
    version = installed.run("--version")
    assert version.returncode == 0 and version.stdout.strip().endswith("0.1.0"), version.stderr
    where = subprocess.run([sys.executable, "-c", "import isolate, isolate.build as b; print(isolate.__file__); "
                            "print(b.sdk_root())"], capture_output=True, text=True, cwd=installed.work,
                           env={**os.environ, "PYTHONPATH": str(installed.site)})
    module, sdk = where.stdout.split()
    assert Path(module).is_relative_to(installed.site) and Path(sdk) == installed.site / "isolate" / "_guest_sdk"


@pytest.mark.parametrize("language", ["c", "rust"])
def test_new_and_build_from_the_installed_copy(installed: Installed, make_host: HostFactory, language: str) -> None:
    if language == "rust":
        try:
            find_rustc()
        except BuildError as exc:
            pytest.skip(str(exc))
    name = f"demo-{language}"
    created = installed.run("new", language, name)
    assert created.returncode == 0, created.stderr
    built = installed.run("build", name)
    assert built.returncode == 0, built.stderr
    output = installed.work / name / "build" / f"{name}.wasm"
    assert built.stdout.startswith(f"{output} ({language}, ") and " with " in built.stdout
    if language == "rust":  # the scaffold points cargo at the installed SDK, not the checkout's
        manifest = (installed.work / name / "Cargo.toml").read_text()
        assert str(installed.site / "isolate" / "_guest_sdk" / "rust") in manifest
    host = make_host()
    host.deploy(name, output.read_bytes())
    response = host.invoke(name, Request(path="/x"))
    assert response.status == 200 and response.body == f"hello from {name}\n/x\n".encode()
