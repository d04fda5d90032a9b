"""`isolate serve --simulate-regions`: three real nodes (us, eu, ap) on loopback, one region table.

Each node is its own `isolate serve` process with its own data directory, started with the same
manifest and a region table naming all three, so forwarding, health checks and failover run
exactly as between machines. They form one cluster on a nats-server started on loopback (when
installed; it stops with them), so a deploy at one region reaches all three. The nodes share one
admin token and one cluster secret (hop signatures), written into each node's data directory
(0600), never onto a command line. Client networks on loopback let one laptop play clients
anywhere: a request from 127.1.x.x counts as coming from eu, from 127.2.x.x as from ap
(`curl --interface`).
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
import httpx

from .config import DEFAULT_DATA_DIR
from .registry._lock import DataDirLock

if TYPE_CHECKING:
    from .backends import NatsServer

REGIONS: tuple[tuple[str, str, tuple[float, float]], ...] = (
    ("us", "US East (simulated)", (38.9, -77.4)),
    ("eu", "Frankfurt (simulated)", (50.1, 8.7)),
    ("ap", "Singapore (simulated)", (1.35, 103.8)),
)
NETWORKS = [["127.1.0.0/16", "eu"], ["127.2.0.0/16", "ap"], ["127.0.0.0/16", "us"]]
PORT_STEP = 10
# Options `simulate` sets itself for each node (with the number of values each takes).
_OWN_OPTIONS = {"--simulate-regions": 0, "--port": 1, "--admin-port": 1, "--data-dir": 1, "--region": 1,
                "--node-name": 1, "--regions": 1, "--admin-token": 1, "--admin-token-file": 1}


def table(host: str, port: int, placement: dict[str, list[str]]) -> dict[str, Any]:
    """The simulated region table: node i listens on port + 10*i."""
    return {
        "regions": [{"id": rid, "name": name, "coordinates": list(coords),
                     "nodes": [f"http://{host}:{port + PORT_STEP * i}"]}
                    for i, (rid, name, coords) in enumerate(REGIONS)],
        "networks": NETWORKS,
        "placement": {m: r for m, r in placement.items() if set(r) <= {rid for rid, _, _ in REGIONS}},
    }


def _passthrough(argv: Sequence[str]) -> list[str]:
    out: list[str] = []
    skip = 0
    for arg in argv:
        if skip:
            skip -= 1
            continue
        name = arg.split("=", 1)[0]
        if name in _OWN_OPTIONS:
            skip = 0 if "=" in arg else _OWN_OPTIONS[name]
            continue
        out.append(arg)
    return out


def simulate(argv: Sequence[str], manifest: str | None, data_dir: str | None, host: str, port: int,
             admin_port: int, admin_token: str | None = None) -> int:
    """Run three nodes until interrupted; returns the exit status.

    `admin_token` (else `<root>/token`, made once) and the cluster secret (ISOLATE_CLUSTER_SECRET,
    else `<root>/cluster-secret`, made once) are written into every node's data directory.
    """
    from .errors import IsolateError
    from .http import cluster_secret_path, load_or_create_secret, token_path, write_secret
    from .manifest import load

    placement: dict[str, list[str]] = {}
    if manifest:
        try:
            placement = load(Path(manifest)).placement
        except IsolateError as exc:
            click.echo(f"error: {exc.kind}: {exc.detail}", err=True)
            return 1
    root = Path(data_dir or os.environ.get("ISOLATE_DATA_DIR") or DEFAULT_DATA_DIR) / "regions"
    try:
        # Before anything here is written: a second `make regions` would rewrite the running nodes' files
        # and start a second nats-server on the same JetStream store. Held until this process exits.
        lock = DataDirLock.acquire(root)
    except IsolateError as exc:
        click.echo(f"error: {exc.kind}: {exc.detail.replace('isolate server', 'isolate serve --simulate-regions')}",
                   err=True)
        return 1
    table_path = root / "regions.json"
    table_path.write_text(json.dumps(table(host, port, placement), indent=1))
    try:
        token = admin_token or load_or_create_secret(root / "token", "admin token")
        secret = os.environ.get("ISOLATE_CLUSTER_SECRET") or load_or_create_secret(root / "cluster-secret",
                                                                                   "cluster secret")
        for region, _, _ in REGIONS:  # what each node reads at start, also when started again by hand
            (root / region).mkdir(exist_ok=True)
            write_secret(token_path(root / region), token, "admin token")
            write_secret(cluster_secret_path(root / region), secret, "cluster secret")
    except IsolateError as exc:
        click.echo(f"error: {exc.kind}: {exc.detail}", err=True)
        return 1
    common = _passthrough(argv)
    # The nodes read both from their data directories, as they will when started again by hand.
    env = {k: v for k, v in os.environ.items() if k not in ("ISOLATE_ADMIN_TOKEN", "ISOLATE_CLUSTER_SECRET")}
    try:
        cluster, nats = _cluster(root, port, common)
    except IsolateError as exc:
        click.echo(f"error: {exc.kind}: {exc.detail}", err=True)
        return 1
    nodes: list[tuple[str, int, int, subprocess.Popen[bytes]]] = []

    def launch(i: int, region: str) -> None:
        edge, admin = port + PORT_STEP * i, admin_port + PORT_STEP * i
        command = [sys.executable, "-m", "isolate.cli", "serve", *common, *cluster, "--region", region,
                   "--port", str(edge), "--admin-port", str(admin), "--data-dir", str(root / region),
                   "--regions", str(table_path), "--node-name", f"{region}@{host}:{edge}"]
        nodes.append((region, edge, admin, subprocess.Popen(command, env=env)))

    def stop(*_: Any) -> None:
        for node in nodes:
            process = node[3]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    try:
        for i, (region, _, _) in enumerate(REGIONS):
            launch(i, region)
            # In a cluster the first node applies the manifest; the others find it there once it is ready.
            if cluster and i == 0 and not _wait_ready(host, nodes):
                stop()
                return 1
        if not _wait_ready(host, nodes):
            stop()
            return 1
        if nats is not None:
            click.echo(f"\none cluster: nats-server on {nats.url} (JetStream data in {nats.store}); a deploy through "
                       "any region's admin API reaches all three")
        click.echo(f"\nthree regions are up (admin token in {root / 'token'}):")
        for region, edge, admin, process in nodes:
            click.echo(f"  {region}  edge http://{host}:{edge}  admin http://{host}:{admin}  pid {process.pid}")
        click.echo(f"try:  curl -si http://{host}:{port}/hello -H 'x-isolate-region: eu'\n"
                   f"      curl -si --interface 127.2.0.1 http://{host}:{port}/hello   # a client in ap\n"
                   f"      kill {nodes[1][3].pid}   # stop eu, and watch requests for eu fail over\n")
        reported: set[int] = set()
        while any(node[3].poll() is None for node in nodes):
            for region, _, _, process in nodes:
                if process.poll() is not None and process.pid not in reported:
                    reported.add(process.pid)
                    click.echo(f"\nthe {region} node (pid {process.pid}) exited with status {process.returncode}; "
                               f"start it again with:\n  {shlex.join(process.args)}\n")  # type: ignore[arg-type]
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        stop()
        for node in nodes:
            process = node[3]
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
        if nats is not None:
            nats.stop()  # with the regions it served
        lock.close()
    return 0


def _cluster(root: Path, port: int, common: Sequence[str]) -> tuple[list[str], NatsServer | None]:
    """The nodes' `--cluster` option and the nats-server started for them: none when one is given (option
    or ISOLATE_CLUSTER), or when nats-server is not installed (the regions then run as separate nodes)."""
    from .backends import NatsServer, find_nats_server

    if any(arg == "--cluster" or arg.startswith("--cluster=") for arg in common) or os.environ.get("ISOLATE_CLUSTER"):
        return [], None
    if find_nats_server() is None:
        click.echo("warning: nats-server is not installed (`make toolchains` installs it): the three regions run "
                   "as separate nodes, and a deploy reaches only the node it is sent to", err=True)
        return [], None
    nats = NatsServer(root / "jetstream", _port_or_any(port + 3 * PORT_STEP))
    nats.start()
    return ["--cluster", nats.url], nats


def _port_or_any(port: int) -> int:
    """`port` on loopback if it is free, else any free one."""
    import socket

    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(host: str, nodes: list[tuple[str, int, int, subprocess.Popen[bytes]]]) -> bool:
    deadline = time.monotonic() + 120  # the first start may build the samples
    pending = {region for region, *_ in nodes}
    while pending and time.monotonic() < deadline:
        for region, _, admin, process in nodes:
            if region not in pending:
                continue
            if process.poll() is not None:
                click.echo(f"error: the {region} node exited with status {process.returncode}", err=True)
                return False
            try:
                if httpx.get(f"http://{host}:{admin}/readyz", timeout=1).status_code == 200:
                    pending.discard(region)
            except httpx.HTTPError:
                pass
        time.sleep(0.2)
    return not pending
