"""The `isolate` command line: deploy, list, roll back, delete and invoke modules in a data directory."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import click

from . import Config, Host, IsolateError, Request
from .engine import wat_to_wasm

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _host(data_dir: str | None) -> Host:
    return Host(Config.from_env(data_dir=Path(data_dir) if data_dir else None))


def _clean(text: str) -> str:
    """Guest output is never written raw to a terminal: control characters are escaped."""
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


def _fail(exc: IsolateError) -> None:
    click.echo(f"error: {exc.kind}: {exc.detail}", err=True)
    sys.exit(1)


def _read_module(path: str) -> bytes:
    """Read a `.wasm` file, or compile a `.wat` text module first."""
    data = Path(path).read_bytes()
    if path.endswith(".wat"):
        try:
            return wat_to_wasm(data.decode())
        except IsolateError as exc:
            raise click.ClickException(f"{path}: {exc.detail}") from None
    return data


data_dir_option = click.option(
    "--data-dir", envvar="ISOLATE_DATA_DIR", default=None, help="Data directory (default: ./.isolate)."
)


@click.group()
@click.version_option(package_name="isolate")
def main() -> None:
    """isolate: run WebAssembly request handlers in fresh, limited isolates."""


@main.command()
@data_dir_option
@click.argument("name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--memory", type=int, help="Memory limit in bytes.")
@click.option("--timeout", type=float, help="Time limit in seconds.")
@click.option("--response-size", type=int, help="Response size limit in bytes.")
@click.option("--var", "variables", multiple=True, metavar="KEY=VALUE", help="A variable for the guest.")
def deploy(
    data_dir: str | None,
    name: str,
    file: str,
    memory: int | None,
    timeout: float | None,
    response_size: int | None,
    variables: tuple[str, ...],
) -> None:
    """Deploy FILE (.wasm, or .wat text) as a new version of module NAME."""
    limits = {k: v for k, v in (("memory", memory), ("timeout", timeout), ("response_size", response_size)) if v}
    pairs = dict(v.split("=", 1) for v in variables if "=" in v)
    if len(pairs) != len(variables):
        raise click.BadParameter("variables are KEY=VALUE", param_hint="--var")
    wasm = _read_module(file)
    try:
        with _host(data_dir) as host:
            info = host.deploy(name, wasm, limits=limits or None, variables=pairs or None)
    except IsolateError as exc:
        _fail(exc)
    click.echo(f"deployed {info.name} v{info.version} sha256:{info.digest[:12]} {info.size} bytes "
               f"(compiled in {info.compile_ms:.1f} ms)")


@main.command()
@data_dir_option
def modules(data_dir: str | None) -> None:
    """List deployed modules and their active versions."""
    with _host(data_dir) as host:
        for info in host.modules():
            active = info.active
            click.echo(f"{info.name}\tv{info.active_version}/{len(info.versions)}\t{active.size} bytes\t"
                       f"sha256:{active.digest[:12]}")


@main.command()
@data_dir_option
@click.argument("name")
@click.argument("version", type=int, required=False)
def rollback(data_dir: str | None, name: str, version: int | None) -> None:
    """Make VERSION (default: the previous one) the active version of NAME."""
    try:
        with _host(data_dir) as host:
            info = host.rollback(name, version)
    except IsolateError as exc:
        _fail(exc)
    click.echo(f"{info.name} now serves v{info.active_version}")


@main.command()
@data_dir_option
@click.argument("name")
def delete(data_dir: str | None, name: str) -> None:
    """Delete module NAME and all its versions."""
    try:
        with _host(data_dir) as host:
            host.delete(name)
    except IsolateError as exc:
        _fail(exc)
    click.echo(f"deleted {name}")


@main.command()
@data_dir_option
@click.argument("name")
@click.option("--method", default="GET")
@click.option("--path", default="/")
@click.option("--body", default="", help="Request body (text).")
@click.option("--header", "headers", multiple=True, metavar="NAME:VALUE")
def invoke(data_dir: str | None, name: str, method: str, path: str, body: str, headers: tuple[str, ...]) -> None:
    """Run one request through NAME in-process; print the response and the guest's logs."""
    pairs = [tuple(part.strip() for part in h.split(":", 1)) for h in headers if ":" in h]
    path_only, _, query = path.partition("?")
    request = Request(method=method.upper(), path=path_only, query=query, body=body.encode(),
                      headers=[(k.lower(), v) for k, v in pairs])
    try:
        with _host(data_dir) as host:
            response = host.invoke(name, request)
    except IsolateError as exc:
        for record in getattr(exc, "logs", ()):
            click.echo(f"[{record.stream} {record.level}] {_clean(record.message).rstrip()}", err=True)
        click.echo(json.dumps(exc.to_dict()), err=True)
        sys.exit(1)
    _print_response(response)


def _print_response(response: Any) -> None:
    for record in response.logs:
        click.echo(f"[{record.stream} {record.level}] {_clean(record.message).rstrip()}", err=True)
    click.echo(f"HTTP {response.status}")
    for key, value in response.headers:
        click.echo(f"{key}: {value}")
    click.echo()
    click.echo(_clean(response.body.decode("utf-8", "replace")))


@main.command()
@data_dir_option
def demo(data_dir: str | None) -> None:
    """Deploy samples/hello-wat and run a request through it (what `make serve` does for now)."""
    sample = Path(__file__).resolve().parent.parent / "samples" / "hello-wat" / "hello.wat"
    try:
        with _host(data_dir) as host:
            info = host.deploy("hello", _read_module(str(sample)))
            click.echo(f"deployed hello v{info.version} into {host.config.data_dir}")
            response = host.invoke("hello", Request(path="/"))
    except IsolateError as exc:
        _fail(exc)
    _print_response(response)
    click.echo(f"instantiate {response.info['instantiate_us']:.1f} µs, "
               f"total {response.info['total_us']:.1f} µs (first request; see bench/ for medians)")


if __name__ == "__main__":
    main()
