"""Python and JavaScript guests: `isolate new` + `isolate build` make wasi:http components `wasmtime serve` runs."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from wasmtime_serve import Served, serving

from isolate.build import BuildError, build
from isolate.scaffold import scaffold

ROOT = Path(__file__).resolve().parent.parent
COMPONENT_HEADER = b"\0asm\x0d\x00\x01\x00"
"""A component's preamble: the wasm magic, then version 0x0d and layer 1 (a core module has 1 0 0 0)."""
LANGUAGES = {"python": "hello-py", "javascript": "hello-js"}
NAMES = {"python": "Python", "javascript": "JavaScript"}


@dataclass
class Built:
    demos: dict[str, Path]
    """language -> the component built from `isolate new LANGUAGE demo-...` as it is."""
    samples: dict[str, Path]
    """language -> samples/hello-py or hello-js's component."""
    seconds: dict[str, float]


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Every component this file runs, built once: two at a time (one per core), each build a process."""
    where = tmp_path_factory.mktemp("components")
    projects = {f"demo-{language}": scaffold(language, f"demo-{language[:2]}", where) for language in LANGUAGES}
    projects.update({sample: ROOT / "samples" / sample for sample in LANGUAGES.values()})
    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(projects, pool.map(build, projects.values()), strict=True))
    return Built({language: results[f"demo-{language}"].output for language in LANGUAGES},
                 {language: results[sample].output for language, sample in LANGUAGES.items()},
                 {name: result.seconds for name, result in results.items()})


@contextmanager
def serve(component: Path, where: Path, *options: str) -> Iterator[Served]:
    """`wasmtime serve` with WASI's command-line interfaces. Winch, wasmtime's baseline compiler, makes these
    ~15 MiB components ready in ~2 s where Cranelift takes ~20 s (no cache: every run is cold)."""
    with serving(component, where, "-S", "cli=y", "-C", "cache=n", "-C", "compiler=winch", *options) as served:
        yield served


@pytest.mark.parametrize("language", LANGUAGES)
def test_a_new_project_builds_into_a_component_wasmtime_serves(built: Built, language: str,
                                                                tmp_path: Path) -> None:
    component = built.demos[language]
    name = component.stem
    assert component == component.parent.parent / "build" / f"{name}.wasm"
    assert component.read_bytes()[:8] == COMPONENT_HEADER
    with serve(component, tmp_path) as served:
        response = httpx.get(f"{served.url}/x?y=1", timeout=30)
    assert response.status_code == 200
    assert response.text == f"hello from {name}\n/x?y=1\n"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


@pytest.mark.parametrize("language", LANGUAGES)
def test_an_up_to_date_component_is_not_rebuilt(built: Built, language: str) -> None:
    again = build(built.samples[language].parent.parent)
    assert again.cached and again.output == built.samples[language] and again.seconds < 2


@pytest.mark.parametrize("language", LANGUAGES)
def test_the_sample_greets_echoes_and_fails_on_request(built: Built, language: str, tmp_path: Path) -> None:
    component = built.samples[language]
    assert component.read_bytes()[:8] == COMPONENT_HEADER
    with serve(component, tmp_path, "--env", "greeting=Hi", "-W", "timeout=2s",
               "-W", f"max-memory-size={64 << 20}") as served, httpx.Client(base_url=served.url, timeout=30) as client:
        hello = client.get("/")
        assert (hello.status_code, hello.text) == (200, f"Hi from {NAMES[language]}!\n")
        echoed = client.post("/echo", content=b'{"a": [1, 2]}\x00\xff', headers={"content-type": "application/x-demo"})
        assert echoed.status_code == 200 and echoed.content == b'{"a": [1, 2]}\x00\xff'
        assert echoed.headers["content-type"] == "application/x-demo"
        assert client.get("/throw").status_code == 500
        started = time.monotonic()
        assert client.get("/loop").status_code == 500  # wasmtime serve's answer to its own timeout
        assert 1.5 < time.monotonic() - started < 20
        assert client.get("/oom").status_code == 500
        assert client.get("/").status_code == 200  # every request is a fresh instance
        stderr = served.stderr.read_text()
    assert f"boom from {language}" in stderr
    assert ("MemoryError" if language == "python" else "out of memory") in stderr


def test_a_python_syntax_error_is_a_build_error(tmp_path: Path) -> None:
    project = tmp_path / "broken-py"
    project.mkdir()
    (project / "app.py").write_text("def handle(request:\n    return None\n")
    with pytest.raises(BuildError) as caught:
        build(project)
    message = str(caught.value)
    assert message.startswith("componentize-py failed:")
    assert "SyntaxError" in message and f"File \"{project / 'app.py'}\", line 1" in message
    assert "Stack backtrace" not in message and "site-packages" not in message
    assert not (project / "build" / "broken-py.wasm").exists()


def test_a_javascript_syntax_error_is_a_build_error(tmp_path: Path) -> None:
    project = tmp_path / "broken-js"
    project.mkdir()
    (project / "app.js").write_text('addEventListener("fetch", (event) => {\n  event.respondWith(new Response("x") ;\n')
    with pytest.raises(BuildError) as caught:
        build(project)
    message = str(caught.value)
    assert message.startswith("componentize-js failed:")
    assert "app.js:2:" in message and "Expected" in message
    assert not (project / "build" / "broken-js.wasm").exists()


def test_languages_are_told_apart(tmp_path: Path) -> None:
    from isolate.build import detect

    for language in LANGUAGES:
        assert detect(scaffold(language, f"which-{language[:2]}", tmp_path)) == language

