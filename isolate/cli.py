"""The `isolate` command: `serve` (and `dev`, rebuilding on save) runs the host; other commands talk to it
through the admin API, except `invoke` (one request in-process) and `token` (read from the data directory)."""

from __future__ import annotations

import dataclasses
import json
import logging
import sys
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

import click
import httpx

from . import Config, Host, IsolateError, Request
from .build import LANGUAGES
from .config import DEFAULT_ADMIN_PORT, DEFAULT_REGION, ServerConfig, parse_duration, parse_size, parse_workers
from .dev import DEFAULT_DATA_DIR as DEV_DATA_DIR
from .errors import ClusterUnavailable, InvalidConfig
from .http import load_or_create_token, token_path
from .http._logs import log_formatter, logfmt_line
from .http._tail import DEFAULT_LINES, RING_SIZE
from .http._workers import SUPERVISOR_POOL
from .registry import loads_json, validate_name
from .registry._lock import DataDirLock
from .routing import HTTP_METHODS, RegionTable, RouteTable

_CONTROL = {c: f"\\x{c:02x}" for c in (*range(9), *range(11, 32), 127)}


def _clean(text: str) -> str:
    """Guest output is never written raw to a terminal: control characters are escaped."""
    return text.translate(_CONTROL)


def _fail(message: str) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(1)


def _config(data_dir: str | None, **overrides: Any) -> Config:
    try:
        return Config.from_env(data_dir=Path(data_dir) if data_dir else None, **overrides)
    except IsolateError as exc:
        _fail(f"{exc.kind}: {exc.detail}")


compile_cache_option = click.option(
    "--compile-cache", metavar="DIR", default=None,
    help="Share compiled code with other data directories through DIR: a module compiled once is loaded from "
         "there [env ISOLATE_COMPILE_CACHE; default: off]. Its code is run: keep it as private as a data directory.")

data_dir_option = click.option(
    "--data-dir", envvar="ISOLATE_DATA_DIR", default=None,
    help="Data directory [env ISOLATE_DATA_DIR; default .isolate].",
)
admin_url_option = click.option(
    "--admin-url", envvar="ISOLATE_ADMIN_URL", default=f"http://127.0.0.1:{DEFAULT_ADMIN_PORT}", show_default=True,
    help="Admin API of the running server [env ISOLATE_ADMIN_URL].",
)
admin_token_option = click.option(
    "--admin-token", envvar="ISOLATE_ADMIN_TOKEN", default=None,
    help="Admin bearer token [env ISOLATE_ADMIN_TOKEN; default: read from the data directory]. Prefer the "
         "environment: a command line is visible to every user (ps).",
)


def _admin_token(token: str | None, token_file: str | None) -> str | None:
    """`serve`'s admin token: --admin-token (or ISOLATE_ADMIN_TOKEN), else --admin-token-file's first line."""
    if token_file is None:
        return token
    if token is not None:
        _fail("give the admin token once: --admin-token (or ISOLATE_ADMIN_TOKEN) or --admin-token-file")
    try:
        value = Path(token_file).read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        _fail(f"cannot read the admin token file {token_file}: {getattr(exc, 'strerror', None) or exc}")
    if not value:
        _fail(f"the admin token file {token_file} is empty")
    return value


def _cluster_secret() -> str | None:
    """ISOLATE_CLUSTER_SECRET, the one place it is read (never a flag: a command line is public)."""
    import os

    return os.environ.get("ISOLATE_CLUSTER_SECRET") or None


def _warn_cluster_credentials(cluster: str) -> None:
    """Warn when `--cluster` came from the command line (which `ps` shows) carrying a password or token."""
    if not cluster:
        return
    from .backends import show_url

    context = click.get_current_context(silent=True)
    source = context.get_parameter_source("cluster") if context is not None else None
    if source is click.core.ParameterSource.COMMANDLINE and show_url(cluster) != cluster:
        logging.getLogger("isolate.server").warning(
            "--cluster carries credentials on the command line, where any local user can read them (ps): "
            "set ISOLATE_CLUSTER in the environment instead")


def _module_path(name: str, suffix: str = "") -> str:
    """The admin URL of a module; names are checked here, since a URL would normalise `../`."""
    try:
        validate_name(name)
    except IsolateError as exc:
        _fail(f"{exc.kind}: {exc.detail}")
    return f"/v1/modules/{quote(name, safe='')}{suffix}"


class Admin:
    """A small client of the admin API that turns every failure into one line and exit 1."""

    def __init__(self, url: str, token: str | None, data_dir: str | None) -> None:
        if token is None:
            path = token_path(_config(data_dir).data_dir)
            try:
                token = path.read_text().strip()
            except OSError:
                _fail(f"no admin token at {path}: start `isolate serve` once, or pass --admin-token")
        self.url = url.rstrip("/")
        self.client = httpx.Client(base_url=self.url, headers={"authorization": f"Bearer {token}"}, timeout=120)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        """The JSON answer of a request."""
        return _json_of(self.raw(method, path, **kwargs))

    def raw(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """The answer of a request whose body is not JSON when it succeeds (a key-value value)."""
        try:
            response = self.client.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            _fail(f"cannot reach the admin API at {self.url} ({exc}); is `isolate serve` running?")
        if response.is_error:
            _json_of(response)  # fails with the diagnostic
        return response


def _json_of(response: httpx.Response) -> Any:
    """An admin API answer as JSON; an error answer is printed as one line and exits 1."""
    try:
        body = response.json()
    except ValueError:
        body = {"error": "http_error", "detail": response.text[:200]}
    if response.is_error:
        _fail(f"{body.get('error', response.status_code)}: {body.get('detail', '')}")
    return body


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="isolate-edge")
def main() -> None:
    """isolate: an edge runtime that runs every request in a fresh WebAssembly isolate.

    Start the host with `isolate serve`, deploy with `isolate deploy NAME FILE --route /path`, then
    send requests to the edge listener (default http://127.0.0.1:8787).
    """


@main.command()
@data_dir_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Edge listener address.")
@click.option("--port", default=8787, show_default=True, type=int, help="Edge listener port.")
@click.option("--admin-host", default="127.0.0.1", show_default=True, help="Admin listener address.")
@click.option("--admin-port", default=DEFAULT_ADMIN_PORT, show_default=True, type=int, help="Admin listener port.")
@admin_token_option
@click.option("--admin-token-file", type=click.Path(exists=True, dir_okay=False),
              help="Read the admin bearer token from this file (instead of --admin-token).")
@click.option("--manifest", type=click.Path(exists=True, dir_okay=False), help="isolate.toml to deploy at start-up.")
@click.option("--max-body-size", default="10MiB", show_default=True, help="Largest request body (413 beyond).")
@click.option("--max-url-length", default="16KiB", show_default=True, help="Longest request target (414 beyond).")
@click.option("--max-header-size", default="128KiB", show_default=True,
              help="Largest request header fields, all together (431 beyond).")
@click.option("--head-timeout", default="10s", show_default=True,
              help="Time a connection has for a whole request head (408 if part came, else closed).")
@click.option("--max-connections", type=click.IntRange(min=1), default=None,
              help="Open edge connections; more get 503 [default: 10000, lowered to fit the open-file limit].")
@click.option("--admin-max-connections", type=click.IntRange(min=1), default=64,
              show_default=True, help="Open admin connections, counted apart from the edge's.")
@click.option("--workers", default="1", show_default=True,
              help="Server processes sharing the edge port; `auto`: one per core.")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="Threads running guests off the event loop, per worker [default: 4 x cores, at most 32].")
@click.option("--io-threads", type=int, default=None,
              help="Threads for guests that wait on I/O (outbound HTTP, key-value) [default 256].")
@click.option("--queue-limit", type=int, default=64, show_default=True, help="Guests waiting before 503.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]), help="Host log level.")
@click.option("--no-access-log", is_flag=True, help="Do not log one line per request.")
@click.option("--log-format", envvar="ISOLATE_LOG_FORMAT", default="logfmt", show_default=True,
              type=click.Choice(["logfmt", "json"]), help="Log lines as logfmt or one JSON object each "
                                                           "[env ISOLATE_LOG_FORMAT].")
@click.option("--region", default=DEFAULT_REGION, show_default=True, help="The region this node serves.")
@click.option("--node-name", default="", help="This node's name in forwarded requests [default: hostname:port].")
@click.option("--no-cache", is_flag=True, help="Turn the edge response cache off.")
@click.option("--dev", is_flag=True, envvar="ISOLATE_DEV",
              help="Dev mode: a guest failure's answer also carries the guest's own message and a backtrace "
                   "[env ISOLATE_DEV].")
@click.option("--cache-size", default="64MiB", show_default=True, help="Bytes of responses the edge cache keeps.")
@click.option("--module-cache-size", type=int, default=None,
              help="Pre-linked modules kept hot [env ISOLATE_MODULE_CACHE_SIZE; default 1024].")
@compile_cache_option
@click.option("--regions", "regions_file", type=click.Path(exists=True, dir_okay=False),
              help="Region table JSON (as GET /v1/regions prints it); replaces the manifest's.")
@click.option("--simulate-regions", is_flag=True,
              help="Start three local nodes (us, eu, ap) on consecutive ports, with a region table joining them.")
@click.option("--cluster", envvar="ISOLATE_CLUSTER", default="", metavar="nats://HOST:PORT",
              help="Join the cluster on this NATS JetStream: modules, tables, key-value stores and purges shared "
                   "with every node on it [env ISOLATE_CLUSTER; or the manifest's [cluster] url]. A URL "
                   "with credentials belongs in ISOLATE_CLUSTER: a command line is public.")
def serve(data_dir: str | None, host: str, port: int, admin_host: str, admin_port: int, admin_token: str | None,
          admin_token_file: str | None,
          manifest: str | None, max_body_size: str, max_url_length: str, max_header_size: str, head_timeout: str,
          max_connections: int | None, admin_max_connections: int, workers: str, threads: int | None,
          io_threads: int | None,
          queue_limit: int,
          log_level: str, no_access_log: bool, log_format: str, region: str, node_name: str, no_cache: bool,
          cache_size: str,
          module_cache_size: int | None, compile_cache: str | None, regions_file: str | None,
          simulate_regions: bool, cluster: str, dev: bool) -> None:
    """Run the edge and admin listeners until interrupted."""
    from . import manifest as manifests
    from .http import build, run

    node = "" if region == DEFAULT_REGION else f"[{region}] "  # tells simulated nodes' lines apart
    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(log_formatter(log_format, node, {"region": region} if node else None))
    logging.basicConfig(level=log_level.upper(), handlers=[stderr])
    admin_token = _admin_token(admin_token, admin_token_file)
    _warn_cluster_credentials(cluster)
    if simulate_regions:
        from .simulate import simulate

        sys.exit(simulate(sys.argv[2:], manifest, data_dir, host, port, admin_port, admin_token))
    config = _config(data_dir, module_cache_size=module_cache_size, compile_cache=compile_cache)
    try:
        server = ServerConfig(
            host=host, port=port, admin_host=admin_host, admin_port=admin_port, admin_token=admin_token,
            cluster_secret=_cluster_secret(), cluster=cluster,
            max_body_size=parse_size(max_body_size), queue_limit=queue_limit, access_log=not no_access_log,
            log_format=log_format,
            threads=threads or ServerConfig().threads, workers=parse_workers(workers),
            io_threads=io_threads or ServerConfig().io_threads,
            region=region, node_name=node_name, cache=not no_cache,
            cache_bytes=parse_size(cache_size), max_url_length=parse_size(max_url_length),
            max_header_size=parse_size(max_header_size), head_timeout=parse_duration(head_timeout),
            max_connections=max_connections, admin_max_connections=admin_max_connections,
            dev=dev,
        )
        loaded = manifests.load(Path(manifest)) if manifest else None
        if loaded is not None and loaded.cluster and not server.cluster:
            server = dataclasses.replace(server, cluster=loaded.cluster)
        region_table = _region_table_file(Path(regions_file)) if regions_file else None
        # Before anything is written there: a second server on this directory stops here.
        lock = DataDirLock.acquire(config.data_dir)
    except IsolateError as exc:
        _fail(f"{exc.kind}: {exc.detail}")
    try:
        # A supervisor of workers compiles but runs no guest: its engines need next to no slots.
        apps = build(dataclasses.replace(config, pool_instances=SUPERVISOR_POOL) if server.workers > 1 else config,
                     server)
    except IsolateError as exc:
        lock.close()
        _fail(f"{exc.kind}: {exc.detail}")
    if loaded is not None or region_table is not None:
        try:
            if loaded is not None:
                result = apps.node.apply_manifest(loaded, region_table)
                logging.getLogger("isolate.server").info(
                    "manifest %s: deployed %s; %d routes", manifest, ", ".join(result.deployed) or "nothing new",
                    result.routes)
            elif region_table is not None:
                apps.node.set_regions(apps.state.check_regions(region_table))
        except ClusterUnavailable as exc:  # lost between the check and the writes: serve what this node has
            logging.getLogger("isolate.server").warning(
                "%s not applied: %s", manifest or regions_file, exc.detail)
        except IsolateError as exc:
            apps.close()
            where = f"{regions_file}: " if loaded is None else ""
            _fail(f"{exc.kind}: {where}{exc.detail}")
    try:
        if server.workers > 1:
            from .http._workers import serve_workers

            serve_workers(apps, config, server, lock)
        else:
            run(apps, server)
    except IsolateError as exc:
        _fail(f"{exc.kind}: {exc.detail}")
    finally:
        lock.close()


@main.command()
@click.argument("paths", nargs=-1, type=click.Path(exists=True))
@click.option("--data-dir", envvar="ISOLATE_DEV_DATA_DIR", default=str(DEV_DATA_DIR), show_default=True,
              help="Data directory of the dev server [env ISOLATE_DEV_DATA_DIR]; not `isolate serve`'s.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Edge listener address.")
@click.option("--port", default=8787, show_default=True, type=int, help="Edge listener port.")
@click.option("--admin-host", default="127.0.0.1", show_default=True, help="Admin listener address.")
@click.option("--admin-port", default=DEFAULT_ADMIN_PORT, show_default=True, type=int, help="Admin listener port.")
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"], case_sensitive=False))
@click.option("--log-format", default="logfmt", show_default=True, type=click.Choice(["logfmt", "json"]))
@click.option("--no-cache", is_flag=True, help="Turn the edge response cache off.")
@compile_cache_option
def dev(paths: tuple[str, ...], data_dir: str, host: str, port: int, admin_host: str, admin_port: int,
        log_level: str, log_format: str, no_cache: bool, compile_cache: str | None) -> None:
    """Serve PATHs (project directories or manifests; default ./isolate.toml, else this directory),
    rebuilding and redeploying on every save.

    A project directory is deployed under its name on every path (/...). Builds keep function names;
    a build that fails is printed here, and its module's requests answer 503 `build_broken` with the
    compiler's message until it builds again.
    """
    import threading

    from .dev import DevLoop
    from .http import build as build_apps
    from .http import run

    stderr = logging.StreamHandler(sys.stderr)
    stderr.setFormatter(log_formatter(log_format, "", None))
    logging.basicConfig(level=log_level.upper(), handlers=[stderr])
    targets = [Path(p) for p in paths] or [Path("isolate.toml") if Path("isolate.toml").is_file() else Path(".")]
    config = _config(data_dir, compile_cache=compile_cache)
    try:
        server = ServerConfig(host=host, port=port, admin_host=admin_host, admin_port=admin_port, dev=True,
                              cache=not no_cache, log_format=log_format)
        lock = DataDirLock.acquire(config.data_dir)
    except IsolateError as exc:
        _fail(f"{exc.kind}: {exc.detail}")
    try:
        apps = build_apps(config, server)
    except IsolateError as exc:
        lock.close()
        _fail(f"{exc.kind}: {exc.detail}")
    try:
        loop = DevLoop(apps.node, targets)
        loop.start()  # a build that fails is reported and waits for a fix; the server starts all the same
    except IsolateError as exc:
        apps.close()
        lock.close()
        _fail(f"{exc.kind}: {exc.detail}")
    stop = threading.Event()
    watcher = threading.Thread(target=loop.watch, args=(stop,), name="isolate-dev-watch", daemon=True)
    watcher.start()

    def stop_watching() -> None:
        # Before the apps close (run calls it then): a round in progress must not deploy to a closed host.
        # No timeout: a round ends (builds are bounded), then the watcher sees `stop` within POLL_MS.
        stop.set()
        watcher.join()

    try:
        run(apps, server, before_close=stop_watching)
    except IsolateError as exc:
        _fail(f"{exc.kind}: {exc.detail}")
    finally:
        stop_watching()  # done already unless run failed early; the lock outlives the watcher in any case
        lock.close()


def _region_table_file(path: Path) -> RegionTable:
    try:
        raw = loads_json(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise InvalidConfig(f"cannot read region table {path}: {exc}") from None
    if isinstance(raw, dict):
        raw = {k: v for k, v in raw.items() if k not in ("local_region", "health")}
    try:
        return RegionTable.build(raw)
    except IsolateError as exc:
        raise InvalidConfig(f"{path}: {exc.detail}") from None


@main.command()
@data_dir_option
@admin_url_option
@admin_token_option
@click.argument("name")
@click.argument("file", type=click.Path(exists=True))
@click.option("--route", "routes", multiple=True, metavar="[METHODS ][HOST]/PATH",
              help="Route to this module, e.g. /hello, /users/:id, /static/..., api.example.com/v1/..., "
                   "'GET,HEAD /users/:id' (only those methods).")
@click.option("--memory", help="Memory limit, e.g. 64MiB.")
@click.option("--timeout", help="Time limit, e.g. 200ms.")
@click.option("--response-size", help="Response size limit, e.g. 1MiB.")
@click.option("--stack", help="Wasm stack limit, e.g. 1MiB.")
@click.option("--limit", "other_limits", multiple=True, metavar="NAME=VALUE",
              help="Any other limit, e.g. outbound_requests=4, outbound_timeout=2s, kv_operations=100.")
@click.option("--var", "variables", multiple=True, metavar="KEY=VALUE", help="A variable for the guest.")
@click.option("--allow-host", "allowed_hosts", multiple=True, metavar="SCHEME://HOST[:PORT]",
              help="An origin the guest may call, e.g. https://api.example.com, https://*.example.org, "
                   "http://127.0.0.1:9000 (repeat; replaces the module's list).")
@click.option("--kv-store", "kv_stores", multiple=True, metavar="NAME",
              help="A key-value store the guest may open (repeat; replaces the module's list).")
@click.option("--secret", "secrets", multiple=True, metavar="NAME=VALUE|NAME@env:VAR|NAME@file:PATH",
              help="A secret the guest reads like a variable; never shown again (prefer @env: or @file:, "
                   "which keep the value off the command line).")
def deploy(data_dir: str | None, admin_url: str, admin_token: str | None, name: str, file: str,
           routes: tuple[str, ...], memory: str | None, timeout: str | None, response_size: str | None,
           stack: str | None, other_limits: tuple[str, ...], variables: tuple[str, ...],
           allowed_hosts: tuple[str, ...], kv_stores: tuple[str, ...], secrets: tuple[str, ...]) -> None:
    """Upload FILE (.wasm, .wat text, or a guest source directory, built first) as a new version of NAME."""
    from .capabilities import parse_allowed_host
    from .config import parse_limits
    from .manifest import read_module

    params: list[tuple[str, str]] = []
    new_routes = [_route_spec(spec, name) for spec in routes]
    try:
        for key, value, parse in (("memory", memory, parse_size), ("timeout", timeout, parse_duration),
                                  ("response_size", response_size, parse_size), ("stack", stack, parse_size)):
            if value is not None:
                params.append((key, str(parse(value))))
        for pair in other_limits:
            limit, eq, value = pair.partition("=")
            if not eq:
                _fail(f"--limit {pair!r}: expected NAME=VALUE")
            params.extend((k, str(v)) for k, v in parse_limits({limit.strip(): value.strip()}).items())
        for entry in allowed_hosts:
            parse_allowed_host(entry)  # a bad entry fails here, before anything is uploaded
            params.append(("allow_host", entry))
        params.extend(("kv_store", store) for store in kv_stores)
        secret_values = dict(_secret(spec) for spec in secrets)
        wasm = read_module(Path(file))
    except IsolateError as exc:
        _fail(f"{exc.kind}: {exc.detail}")
    for pair in variables:
        if "=" not in pair:
            _fail(f"--var {pair!r}: expected KEY=VALUE")
        params.append(("var", pair))
    module_path = _module_path(name)
    admin = Admin(admin_url, admin_token, data_dir)
    if new_routes:
        # Routes are checked against the current table before anything is deployed, so a bad route
        # does not leave a new version behind (the server checks again when they are added).
        current = admin.call("GET", "/v1/routes")["routes"]
        try:
            RouteTable.build([*current, *new_routes])
        except IsolateError as exc:
            _fail(f"{exc.kind}: {exc.detail} (nothing was deployed)")
    if secret_values:
        # First, so the new version's first request already has them (names only are echoed).
        admin.call("PUT", _module_path(name, "/secrets"), json=secret_values)
        click.echo(f"secrets set: {', '.join(sorted(secret_values))}")
    info = admin.call("PUT", module_path, content=wasm, params=params)
    click.echo(f"deployed {info['name']} v{info['version']} sha256:{info['digest'][:12]} {info['size']} bytes "
               f"(compiled in {info['compile_ms']:.1f} ms)")
    if new_routes:
        body = admin.call("POST", "/v1/routes", json={"routes": new_routes})
        click.echo(f"routed {', '.join(routes)} → {name}")
        for warning in body.get("warnings", []):
            click.echo(f"warning: {warning}", err=True)


def _secret(spec: str) -> tuple[str, str]:
    """`NAME=VALUE`, `NAME@env:VAR` or `NAME@file:PATH` as (name, value); the value is never echoed."""
    import os

    equals, at = spec.find("="), spec.find("@")
    if equals > 0 and (at < 0 or equals < at):
        return spec[:equals], spec[equals + 1:]
    name, _, source = spec.partition("@")
    kind, _, where = source.partition(":")
    if not name or kind not in ("env", "file") or not where:
        # The argument may hold the value itself, mistyped: it is never echoed.
        raise InvalidConfig("a --secret argument is malformed: expected NAME=VALUE, NAME@env:VAR or NAME@file:PATH")
    if kind == "env":
        if where not in os.environ:
            raise InvalidConfig(f"--secret {name}: the environment variable {where} is not set")
        return name, os.environ[where]
    try:
        return name, Path(where).read_text().rstrip("\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidConfig(f"--secret {name}: cannot read {where}: {getattr(exc, 'strerror', None) or exc}") from None


def _route_spec(spec: str, module: str) -> dict[str, Any]:
    """A route from `[METHODS ][HOST]/PATH`, e.g. `/hello`, `GET,HEAD api.example.com/users/:id`."""
    methods, _, target = spec.strip().rpartition(" ")
    host, slash, path = target.partition("/")
    if not slash:
        _fail(f"--route {spec!r}: expected [METHODS ][HOST]/PATH, e.g. /hello or 'GET,HEAD /users/:id'")
    route: dict[str, Any] = {"host": host or "*", "path": slash + path, "module": module}
    if methods.strip():
        route["methods"] = [m.strip().upper() for m in methods.replace(" ", ",").split(",") if m.strip()]
    return route


@main.command()
@data_dir_option
@admin_url_option
@admin_token_option
def modules(data_dir: str | None, admin_url: str, admin_token: str | None) -> None:
    """List deployed modules of the running server."""
    listed = Admin(admin_url, admin_token, data_dir).call("GET", "/v1/modules")["modules"]
    if not listed:
        click.echo("no modules (deploy one with `isolate deploy NAME FILE`)")
    for info in listed:
        active = next(v for v in info["versions"] if v["version"] == info["active_version"])
        grants = "".join(f"\t{label}: {', '.join(info.get(key) or [])}" for key, label in
                         (("allowed_hosts", "hosts"), ("key_value_stores", "kv"), ("secrets", "secrets"))
                         if info.get(key))
        kind = "\tcomponent" if active.get("kind") == "component" else ""
        click.echo(f"{info['name']}\tv{info['active_version']}/{len(info['versions'])}\t{active['size']} bytes\t"
                   f"sha256:{active['digest'][:12]}{kind}{grants}")


@main.command()
@data_dir_option
@admin_url_option
@admin_token_option
def routes(data_dir: str | None, admin_url: str, admin_token: str | None) -> None:
    """List the route table of the running server."""
    table = Admin(admin_url, admin_token, data_dir).call("GET", "/v1/routes")["routes"]
    if not table:
        click.echo("no routes (add one with `isolate deploy NAME FILE --route /path` or a manifest)")
        return
    rows = [(f"{r['host']}{r['path']}", ",".join(r.get("methods", [])) or "*", r["module"],
             "no" if r.get("cache") is False else "yes", r.get("origin", "api")) for r in table]
    header = ("ROUTE", "METHODS", "MODULE", "CACHE", "FROM")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip())


@main.command()
@data_dir_option
@admin_url_option
@admin_token_option
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def stats(data_dir: str | None, admin_url: str, admin_token: str | None, as_json: bool) -> None:
    """Show the running server's invocations, failures and cache statistics."""
    body = Admin(admin_url, admin_token, data_dir).call("GET", "/v1/stats")
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    click.echo(f"region {body['region']}: {body['modules']} modules, {body['invocations']} invocations, "
               f"{sum(body['failures'].values())} failures")
    for kind, count in sorted(body["failures"].items()):
        click.echo(f"  failed {kind}: {count}")
    mc = body["module_cache"]
    click.echo(f"module cache    {mc['size']}/{mc['capacity']} modules, {mc['hits']} hits, {mc['misses']} misses, "
               f"{mc['evictions']} evictions")
    rc = body["response_cache"]
    if rc is None:
        click.echo("response cache  off")
    else:
        click.echo(f"response cache  {rc['entries']} entries, {rc['bytes']} bytes, {rc['hits']} hits "
                   f"({rc['coalesced']} coalesced), {rc['misses']} misses, {rc['bypasses']} bypasses, "
                   f"{rc['evictions']} evictions, {rc['purged']} purged")
    gc = body["guest_cache"]
    click.echo(f"guest cache     {gc['entries']} entries, {gc['bytes']} bytes, {gc['hits']} hits, "
               f"{gc['misses']} misses, {gc['evictions']} evictions")
    for row in body["forwarded"]:
        click.echo(f"forwarded to {row['region']}: {row['count']} × {row['status']}")


@main.command()
@data_dir_option
@admin_url_option
@admin_token_option
@click.option("--since", help="Only the hours from the one holding this time on (unix time or ISO 8601); "
              "default: everything since metering began.")
@click.option("--json", "as_json", is_flag=True, help="Print the raw JSON.")
def usage(data_dir: str | None, admin_url: str, admin_token: str | None, since: str | None, as_json: bool) -> None:
    """Show what each module used: invocations, CPU and wall time, memory × time, I/O, stored bytes."""
    body = Admin(admin_url, admin_token, data_dir).call("GET", "/v1/usage",
                                                        params={"since": since} if since else None)
    if as_json:
        click.echo(json.dumps(body, indent=2))
        return
    click.echo(f"usage from {body['from']} to {body['until']}" if body["from"] else
               f"usage since metering began, to {body['until']}")
    header = ("MODULE", "CALLS", "CPU MS", "WALL MS", "MIB·S", "OUT REQS", "OUT BYTES", "KV OPS", "STORED")
    rows = [(m["module"] + ("" if m["deployed"] else " (deleted)"), str(m["invocations"]), f"{m['cpu_ms']:.1f}",
             f"{m['wall_ms']:.1f}", f"{m['memory_mib_s']:.3f}", str(m["outbound_requests"]),
             str(m["outbound_bytes"]), str(m["kv_operations"]), str(m["stored_bytes"])) for m in body["modules"]]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        click.echo("  ".join(cell.ljust(width) if i == 0 else cell.rjust(width)
                             for i, (cell, width) in enumerate(zip(row, widths, strict=True))).rstrip())


@main.command()
@data_dir_option
@admin_url_option
@admin_token_option
@click.option("--set", "table_file", type=click.Path(exists=True, dir_okay=False),
              help="Replace the region table with this JSON file (as GET /v1/regions prints it).")
def regions(data_dir: str | None, admin_url: str, admin_token: str | None, table_file: str | None) -> None:
    """Show the region table and node health of the running server (or replace the table)."""
    admin = Admin(admin_url, admin_token, data_dir)
    if table_file:
        try:
            table = loads_json(Path(table_file).read_bytes())
        except (OSError, ValueError) as exc:
            _fail(f"cannot read {table_file}: {exc}")
        body = admin.call("PUT", "/v1/regions", json=table)
    else:
        body = admin.call("GET", "/v1/regions")
    click.echo(f"this node: region {body['local_region']}")
    health = body["health"]
    for region in body["regions"]:
        marker = "*" if region["id"] == body["local_region"] else " "
        click.echo(f"{marker} {region['id']:<8} {region['name']}")
        for node in region["nodes"]:
            state = health.get(node)
            if region["id"] == body["local_region"]:
                text = "this region"
            elif state is None:
                text = "not checked yet"
            else:
                text = "healthy" if state["healthy"] else f"DOWN ({state['error']})"
            click.echo(f"    {node}  {text}")
    for module, allowed in body["placement"].items():
        click.echo(f"placement: {module} only in {', '.join(allowed)}")
    if body["networks"]:
        click.echo(f"{len(body['networks'])} client networks")


@main.command()
@data_dir_option
@admin_url_option
@admin_token_option
@click.option("--module", help="Purge every cached response of this module.")
@click.option("--route", help="Purge every cached response of this route path pattern, e.g. /users/:id.")
@click.option("--url", help="Purge one URL: path and query, e.g. /users/7?full=1.")
@click.option("--all", "everything", is_flag=True, help="Purge everything.")
def purge(data_dir: str | None, admin_url: str, admin_token: str | None, module: str | None, route: str | None,
          url: str | None, everything: bool) -> None:
    """Purge the running server's response cache."""
    chosen = {k: v for k, v in (("module", module), ("route", route), ("url", url), ("all", everything or None))
              if v}
    if len(chosen) != 1:
        _fail("give exactly one of --module, --route, --url, --all")
    body = Admin(admin_url, admin_token, data_dir).call("POST", "/v1/cache/purge", json=chosen)
    click.echo(f"purged {body['purged']} responses")


@main.command()
@data_dir_option
@admin_url_option
@admin_token_option
@click.argument("name")
@click.argument("version", type=int, required=False)
def rollback(data_dir: str | None, admin_url: str, admin_token: str | None, name: str, version: int | None) -> None:
    """Make VERSION (default: the previous one) the active version of NAME."""
    body = {"version": version} if version is not None else {}
    info = Admin(admin_url, admin_token, data_dir).call("POST", _module_path(name, "/rollback"), json=body)
    click.echo(f"{info['name']} now serves v{info['active_version']}")


@main.command()
@data_dir_option
@admin_url_option
@admin_token_option
@click.argument("name")
def delete(data_dir: str | None, admin_url: str, admin_token: str | None, name: str) -> None:
    """Delete module NAME and all its versions."""
    Admin(admin_url, admin_token, data_dir).call("DELETE", _module_path(name))
    click.echo(f"deleted {name}")


@main.command()
@data_dir_option
@admin_url_option
@admin_token_option
@click.option("--module", "-m", help="Only this module's lines.")
@click.option("--follow", "-f", is_flag=True, help="Keep printing lines as they come, until interrupted.")
@click.option("--lines", "-n", type=click.IntRange(0, RING_SIZE), default=DEFAULT_LINES, show_default=True,
              help="Recent lines to print first.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object a line, as `serve --log-format json`.")
def logs(data_dir: str | None, admin_url: str, admin_token: str | None, module: str | None, follow: bool,
         lines: int, as_json: bool) -> None:
    """Print the server's recent access and guest lines (with request ids); --follow streams them."""
    admin = Admin(admin_url, admin_token, data_dir)
    params: dict[str, str | int] = {"lines": lines, **({"module": module} if module else {}),
                                    **({"follow": 1} if follow else {})}
    # A follower waits as long as no line comes: no read timeout then, only to connect.
    timeout = httpx.Timeout(10.0, read=None) if follow else httpx.Timeout(60.0)
    try:
        with admin.client.stream("GET", "/v1/logs", params=params, timeout=timeout) as response:
            if response.is_error:
                response.read()
                _json_of(response)  # fails with the diagnostic
            for line in response.iter_lines():
                if line:
                    click.echo(line if as_json else logfmt_line(json.loads(line)))
    except httpx.TransportError as exc:
        _fail(f"lost the admin API at {admin.url} ({exc}); is `isolate serve` running?")
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:  # `isolate logs -f | head`: the reader has had enough
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush


@main.group()
def kv() -> None:
    """Read and write the key-value stores guests use (keys are percent-encoded in listings)."""


def _kv_path(store: str, key: str | None = None) -> str:
    path = f"/v1/kv/{quote(store, safe='')}"
    return path if key is None else f"{path}/{quote(key, safe='')}"


@kv.command("get")
@data_dir_option
@admin_url_option
@admin_token_option
@click.argument("store")
@click.argument("key")
def kv_get(data_dir: str | None, admin_url: str, admin_token: str | None, store: str, key: str) -> None:
    """Print the value of KEY in STORE (bytes as they are)."""
    response = Admin(admin_url, admin_token, data_dir).raw("GET", _kv_path(store, key))
    sys.stdout.buffer.write(response.content)
    sys.stdout.buffer.flush()


@kv.command("set")
@data_dir_option
@admin_url_option
@admin_token_option
@click.argument("store")
@click.argument("key")
@click.argument("value", required=False)
@click.option("--file", "value_file", type=click.File("rb"), help="Read the value from a file (- for stdin).")
def kv_set(data_dir: str | None, admin_url: str, admin_token: str | None, store: str, key: str,
           value: str | None, value_file: Any) -> None:
    """Set KEY in STORE to VALUE (or the contents of --file); durable once this returns."""
    if (value is None) == (value_file is None):
        _fail("give the value as an argument or with --file (not both)")
    data = value.encode() if value is not None else value_file.read()
    body = Admin(admin_url, admin_token, data_dir).call("PUT", _kv_path(store, key), content=data)
    click.echo(f"set {store}/{body['key']} ({body['bytes']} bytes)")


@kv.command("delete")
@data_dir_option
@admin_url_option
@admin_token_option
@click.argument("store")
@click.argument("key")
def kv_delete(data_dir: str | None, admin_url: str, admin_token: str | None, store: str, key: str) -> None:
    """Delete KEY from STORE."""
    body = Admin(admin_url, admin_token, data_dir).call("DELETE", _kv_path(store, key))
    click.echo(f"deleted {store}/{body['key']}" if body["deleted"] else f"{store}/{body['key']} was not there")


@kv.command("list")
@data_dir_option
@admin_url_option
@admin_token_option
@click.argument("store", required=False)
@click.option("--prefix", default="", help="Only keys starting with this.")
def kv_list(data_dir: str | None, admin_url: str, admin_token: str | None, store: str | None, prefix: str) -> None:
    """List the keys of STORE (all pages), or the stores and their sizes."""
    admin = Admin(admin_url, admin_token, data_dir)
    if store is None:
        stores = admin.call("GET", "/v1/kv")["stores"]
        if not stores:
            click.echo("no key-value data yet")
        for entry in stores:
            click.echo(f"{entry['name']}\t{entry['keys']} keys\t{entry['bytes']} bytes")
        return
    cursor: str | None = ""
    while cursor is not None:
        # A listed key is percent-encoded for a URL path; `safe="%"` keeps its escapes and encodes & = +.
        page = admin.call("GET", f"{_kv_path(store)}?prefix={quote(prefix, safe='')}&cursor={quote(cursor, safe='%')}"
                                 "&limit=1000")
        for key in page["keys"]:
            click.echo(_clean(key))
        cursor = page["cursor"]


@main.command()
@data_dir_option
def token(data_dir: str | None) -> None:
    """Print the admin bearer token (generated into the data directory on first use)."""
    click.echo(load_or_create_token(_config(data_dir).data_dir))


@main.command("build")
@click.argument("path", type=click.Path(exists=True, file_okay=False))
@click.option("--lang", type=click.Choice(LANGUAGES), help="Skip language detection.")
@click.option("--force", is_flag=True, help="Rebuild even if the output is up to date.")
@click.option("--stack-size", metavar="SIZE",
              help="Stack in linear memory for C and Rust (default 32KiB, or ISOLATE_STACK_SIZE).")
def build_command(path: str, lang: str | None, force: bool, stack_size: str | None) -> None:
    """Build the guest in PATH into PATH/build/NAME.wasm (C, Rust or AssemblyScript: an ABI v1 module;
    Python or JavaScript: a wasi:http component)."""
    from .build import build

    try:
        result = build(Path(path), lang, force=force, stack=stack_size)
    except IsolateError as exc:
        _fail(f"{exc.kind}: {exc.detail}")
    state = "up to date" if result.cached else f"built in {result.seconds:.2f} s"
    if result.compiler is not None:
        state += f" with {result.compiler}"
    click.echo(f"{result.output} ({result.language}, {result.size} bytes, {state})")
    for warning in result.warnings:  # after the result line, so scripts reading stdout are not disturbed
        click.echo(warning, err=True)


@main.command("new")
@click.argument("lang", type=click.Choice(LANGUAGES))
@click.argument("name")
@click.option("--dir", "parent", default=".", type=click.Path(file_okay=False), help="Where to create it.")
def new_command(lang: str, name: str, parent: str) -> None:
    """Create a handler project NAME in LANG that builds and runs as it is."""
    from .scaffold import scaffold

    try:
        project = scaffold(lang, name, Path(parent))
    except IsolateError as exc:
        _fail(f"{exc.kind}: {exc.detail}")
    click.echo(f"created {project}; next: isolate build {project}")


@main.command("bench")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--iterations", default=20_000, show_default=True, help="Timed iterations per measure.")
@click.option("--body-size", "body_sizes", multiple=True, default=["100", "64KiB"], show_default=True,
              help="Request body sizes to invoke with (repeatable).")
@click.option("--path", default="/", show_default=True, help="Request path the guest sees.")
@click.option("--http", "over_http", is_flag=True,
              help="Over HTTP instead: a private server under bounded load, beside the reference hello guest.")
@click.option("--duration", default=5.0, show_default=True, help="--http: seconds of load per module (≤ 60).")
@click.option("--connections", default=32, show_default=True, help="--http: concurrent connections (≤ 256).")
@click.option("--client", type=click.Choice(["auto", "wrk", "builtin"]), default="auto", show_default=True,
              help="--http: the load generator (auto: wrk when installed).")
@click.option("--limit", "limit_pairs", multiple=True, metavar="NAME=VALUE", help="--http: a limit for the module.")
def bench_command(file: str, iterations: int, body_sizes: tuple[str, ...], path: str, over_http: bool,
                  duration: float, connections: int, client: str, limit_pairs: tuple[str, ...]) -> None:
    """Measure FILE in-process (isolate creation and full invocations, medians and p99), or with
    --http on a private server: req/s, p50, p99 and the server-timing breakdown."""
    from .benchmark import micro
    from .manifest import read_module

    if over_http:
        _bench_http(file, path, duration, connections, client, limit_pairs)
        return
    try:
        sizes = tuple(parse_size(size) for size in body_sizes)
        results = micro(read_module(Path(file)), iterations=iterations, body_sizes=sizes, path=path)
    except IsolateError as exc:
        _fail(f"{exc.kind}: {exc.detail}")
    click.echo(f"{'measure':<22}{'median µs':>12}{'p99 µs':>12}{'min µs':>12}{'iterations':>12}")
    for name, timing in results.items():
        click.echo(f"{name:<22}{timing.median_us:>12.2f}{timing.p99_us:>12.2f}{timing.min_us:>12.2f}"
                   f"{timing.iterations:>12}")


def _bench_http(file: str, path: str, duration: float, connections: int, client: str,
                limit_pairs: tuple[str, ...]) -> None:
    from . import http_bench
    from .manifest import read_module

    try:
        limits = dict(pair.split("=", 1) for pair in limit_pairs if "=" in pair)
        report = http_bench.run(read_module(Path(file)), path=path, duration=duration, connections=connections,
                                client=client, limits=limits)
    except IsolateError as exc:
        _fail(f"{exc.kind}: {exc.detail}")
    except RuntimeError as exc:
        _fail(str(exc))
    click.echo(f"{report.client}, {report.connections} connections, {report.duration_s:g} s per module; "
               "response cache off, a fresh isolate per request")
    click.echo(f"{'module':<12}{'status':>7}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}  "
               "server-timing medians (ms)")
    for name, f in report.figures.items():
        timing = ", ".join(f"{k} {v:g}" for k, v in f.timing_ms.items())
        label = "reference" if name == "reference" else Path(file).name
        click.echo(f"{label[:12]:<12}{f.status:>7}{f.requests_per_s:>10.0f}{f.p50_ms:>9.2f}{f.p99_ms:>9.2f}"
                   f"{f.errors:>8}  {timing}")


@main.command()
@data_dir_option
@click.argument("name")
@click.option("--method", default="GET", show_default=True)
@click.option("--path", default="/", show_default=True, help="Path and query, e.g. /users/7?x=1.")
@click.option("--body", default="", help="Request body (text).")
@click.option("--header", "headers", multiple=True, metavar="NAME:VALUE")
def invoke(data_dir: str | None, name: str, method: str, path: str, body: str, headers: tuple[str, ...]) -> None:
    """Run one request through NAME in-process (no server); print the response and guest logs.

    Route parameters are taken from the stored route table when one of NAME's routes matches PATH."""
    pairs = [tuple(part.strip() for part in h.split(":", 1)) for h in headers if ":" in h]
    path_only, _, query = path.partition("?")
    if not path_only.startswith("/"):
        _fail(f"--path {path!r}: a path starts with '/'")
    if method.upper() not in HTTP_METHODS:
        _fail(f"--method {method!r}: not one of {', '.join(sorted(HTTP_METHODS))}")
    config = _config(data_dir)
    if not (config.data_dir / "modules").is_dir():
        _fail(f"not_found: no data directory with modules at {config.data_dir} (see --data-dir)")
    try:
        # Route parameters come from the stored route table, as the server would match them.
        from .state import ServerState

        match = ServerState(config.data_dir).routes.match("", path_only, method.upper())
    except IsolateError:
        match = None
    params = dict(match.params) if match is not None and match.route.module == name else {}
    request = Request(method=method.upper(), path=path_only, query=query, body=body.encode(),
                      headers=[(k.lower(), v) for k, v in pairs], params=params)
    try:
        from .usage import Usage

        # No usage directory: a serve may own this data directory, and its current hour's file.
        with Host(config, usage=Usage(None)) as host:
            response = host.invoke(name, request)
    except IsolateError as exc:
        for record in getattr(exc, "logs", ()):
            click.echo(f"[{record.stream} {record.level}] {_clean(record.message).rstrip()}", err=True)
        _fail(f"{exc.kind}: {exc.detail}")
    for record in response.logs:
        click.echo(f"[{record.stream} {record.level}] {_clean(record.message).rstrip()}", err=True)
    click.echo(f"HTTP {response.status}")
    for key, value in response.headers:
        click.echo(f"{key}: {value}")
    click.echo()
    click.echo(_clean(response.body.decode("utf-8", "replace")))
    info = response.info
    click.echo(f"instantiate {info['instantiate_us']:.1f} µs, run {info['run_us']:.1f} µs, "
               f"memory {info['memory_bytes']} bytes", err=True)


if __name__ == "__main__":
    main()
