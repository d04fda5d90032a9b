"""`isolate new LANG NAME`: a handler project per SDK language that builds and runs as it is."""

from __future__ import annotations

import os
from pathlib import Path

from .build import LANGUAGES, sdk_root
from .errors import BuildError
from .registry import validate_name

_C = '''/* {name}: an isolate handler in C. Build: isolate build {name} */
#include "isolate.h"

isolate_response *isolate_on_request(const isolate_request *req) {{
    isolate_response *res = isolate_response_new(200);
    isolate_response_header(res, "content-type", "text/plain; charset=utf-8");
    isolate_response_body_str(res, "hello from {name}\\n");
    isolate_response_append(res, req->path.ptr, req->path.len);
    isolate_response_append(res, "\\n", 1);
    return res;
}}
'''

_RUST_LIB = '''//! {name}: an isolate handler in Rust. Build: isolate build {name}
use isolate_sdk::{{Error, Request, Response}};

fn handle(req: Request) -> Result<Response, Error> {{
    Ok(Response::text(format!("hello from {name}\\n{{}}\\n", req.path)))
}}

isolate_sdk::handler!(handle);
'''

RUST_CARGO = '''[package]
name = "{crate}"
version = "0.1.0"
edition = "2021"

[lib]
crate-type = ["cdylib"]

# Other dependencies make `isolate build` run `cargo rustc --offline`: path crates, and registry
# crates that are vendored (`cargo vendor`) or already in cargo's cache, resolve.
[dependencies]
isolate_sdk = {{ path = "{sdk}" }}
'''

_AS_INDEX = '''// {name}: an isolate handler in AssemblyScript. Build: isolate build {name}
import {{ Request, Response, serve }} from "isolate-sdk/assembly";
export {{ isolate_abi_v1, isolate_alloc }} from "isolate-sdk/assembly";

export function isolate_handle(ptr: usize, len: usize): u64 {{
  return serve(ptr, len, handle);
}}

function handle(req: Request): Response {{
  return Response.text("hello from {name}\\n" + req.path + "\\n");
}}
'''

_AS_PACKAGE = '''{{
  "name": "{name}",
  "version": "0.1.0",
  "private": true,
  "type": "module",
  "dependencies": {{
    "isolate-sdk": "file:{sdk}"
  }},
  "devDependencies": {{
    "assemblyscript": "0.28.20"
  }}
}}
'''

_PYTHON = '''"""{name}: an isolate handler in Python, a wasi:http/proxy component. Build: isolate build {name}"""

from isolate_http import Request, Response, serve


def handle(request: Request) -> Response:
    return Response(200, {{"content-type": "text/plain; charset=utf-8"}}, f"hello from {name}\\n{{request.path}}\\n")


# componentize-py exports the class of this name as wasi:http/incoming-handler.
IncomingHandler = serve(handle)
'''

_JAVASCRIPT = '''// {name}: an isolate handler in JavaScript, a wasi:http/proxy component. Build: isolate build {name}
addEventListener("fetch", (event) => event.respondWith(handle(event.request)));

async function handle(request) {{
  const url = new URL(request.url);
  return new Response(`hello from {name}\\n${{url.pathname}}${{url.search}}\\n`, {{
    headers: {{ "content-type": "text/plain; charset=utf-8" }},
  }});
}}
'''

_COMPONENT_NOTE = '''
A standard `wasi:http/proxy` component: it also runs under `wasmtime serve -S cli=y build/{name}.wasm`.
'''

_README = '''# {name}

An isolate handler ({language}). Build, deploy and call it:

```sh
isolate build {name}
isolate deploy {name} {name}/build/{name}.wasm --route /{name}/...
curl http://127.0.0.1:8787/{name}/hi
```
'''


def scaffold(language: str, name: str, parent: Path = Path(".")) -> Path:
    """Create `parent/name` with a handler for `language`; refuses to overwrite."""
    if language not in LANGUAGES:
        raise BuildError(f"unknown language {language!r}: choose one of {', '.join(LANGUAGES)}")
    validate_name(name)
    project = Path(parent) / name
    if project.exists():
        raise BuildError(f"{project} already exists")
    sdk = sdk_root()
    files: dict[str, str]
    if language == "c":
        files = {f"{name}.c": _C.format(name=name)}
    elif language == "rust":
        files = {"src/lib.rs": _RUST_LIB.format(name=name),
                 "Cargo.toml": RUST_CARGO.format(crate=name.replace("-", "_"), sdk=sdk / "rust")}
    elif language == "python":
        files = {"app.py": _PYTHON.format(name=name)}
    elif language == "javascript":
        files = {"app.js": _JAVASCRIPT.format(name=name)}
    else:
        relative = os.path.relpath(sdk / "assemblyscript", project.resolve())
        files = {"assembly/index.ts": _AS_INDEX.format(name=name),
                 "package.json": _AS_PACKAGE.format(name=name, sdk=relative)}
    files["README.md"] = _README.format(name=name, language=language)
    if language in ("python", "javascript"):
        files["README.md"] += _COMPONENT_NOTE.format(name=name)
    files[".gitignore"] = "build/\nnode_modules/\n" + ("__pycache__/\n" if language == "python" else "")
    for relative_path, text in files.items():
        path = project / relative_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return project
