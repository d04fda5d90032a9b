"""`isolate serve --simulate-regions`: three real nodes (us, eu, ap) on loopback, one region table.

Each node is its own `isolate serve` process with its own data directory, started with the same
manifest and a region table naming all three, so forwarding, health checks and failover run
exactly as between machines. Client networks on loopback let one laptop play clients anywhere:
a request from 127.1.x.x counts as coming from eu, from 127.2.x.x as from ap (`curl --interface`).
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
from typing import Any

import click
import httpx

from .config import DEFAULT_DATA_DIR

REGIONS: tuple[tuple[str, str, tuple[float, float]], ...] = (
    ("us", "US East (simulated)", (38.9, -77.4)),
    ("eu", "Frankfurt (simulated)", (50.1, 8.7)),
    ("ap", "Singapore (simulated)", (1.35, 103.8)),
)
NETWORKS = [["127.1.0.0/16", "eu"], ["127.2.0.0/16", "ap"], ["127.0.0.0/16", "us"]]
PORT_STEP = 10
# Options `simulate` sets itself for each node (with the number of values each takes).
_OWN_OPTIONS = {"--simulate-regions": 0, "--port": 1, "--admin-port": 1, "--data-dir": 1, "--region": 1,
                "--node-name": 1, "--regions": 1, "--admin-token": 1}


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
             admin_port: int) -> int:
    """Run three nodes until interrupted; returns the exit status."""
    from .errors import IsolateError
    from .manifest import load

    placement: dict[str, list[str]] = {}
    if manifest:
        try:
            placement = load(Path(manifest)).placement
        except IsolateError as exc:
            click.echo(f"error: {exc.kind}: {exc.detail}", err=True)
            return 1
    root = Path(data_dir or os.environ.get("ISOLATE_DATA_DIR") or DEFAULT_DATA_DIR) / "regions"
    root.mkdir(parents=True, exist_ok=True)
    table_path = root / "regions.json"
    table_path.write_text(json.dumps(table(host, port, placement), indent=1))
    token = os.environ.get("ISOLATE_ADMIN_TOKEN") or _token(root)
    common = _passthrough(argv)
    nodes: list[tuple[str, int, int, subprocess.Popen[bytes]]] = []
    for i, (region, _, _) in enumerate(REGIONS):
        edge, admin = port + PORT_STEP * i, admin_port + PORT_STEP * i
        command = [sys.executable, "-m", "isolate.cli", "serve", *common, "--region", region, "--port", str(edge),
                   "--admin-port", str(admin), "--data-dir", str(root / region), "--regions", str(table_path),
                   "--node-name", f"{region}@{host}:{edge}", "--admin-token", token]
        nodes.append((region, edge, admin, subprocess.Popen(command)))

    def stop(*_: Any) -> None:
        for node in nodes:
            process = node[3]
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    try:
        if not _wait_ready(host, nodes):
            stop()
            return 1
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
    return 0


def _token(root: Path) -> str:
    """One admin token for all three nodes, kept beside their data directories."""
    import secrets

    path = root / "token"
    if not path.exists():
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(32))
    return path.read_text().strip()


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
