"""`isolate serve --simulate-regions`: one command, three real nodes that forward to each other."""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
from live import ROOT

from isolate.build import build


def free_base() -> int:
    """A port p with p, p+1, p+10, p+11, p+20, p+21 all free (the simulated nodes' listeners)."""
    for _ in range(100):
        base = random.randrange(20000, 60000)
        try:
            socks = []
            for offset in (0, 1, 10, 11, 20, 21):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", base + offset))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


def test_three_nodes_from_one_command(tmp_path: Path) -> None:
    for sample in ("hello", "echo", "router", "transform", "crash"):
        build(ROOT / "samples" / sample)
    base = free_base()
    log = open(tmp_path / "simulate.log", "wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "isolate.cli", "serve", "--manifest", str(ROOT / "isolate.toml"), "--simulate-regions",
         "--data-dir", str(tmp_path / "data"), "--port", str(base), "--admin-port", str(base + 1)],
        stdout=log, stderr=log, cwd=ROOT)
    try:
        deadline = time.monotonic() + 90
        while b"three regions are up" not in (tmp_path / "simulate.log").read_bytes():
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "simulate.log").read_text()
            time.sleep(0.2)
        token = (tmp_path / "data" / "regions" / "token").read_text().strip()
        with httpx.Client(base_url=f"http://127.0.0.1:{base}", timeout=30) as edge:
            def region_of(**kwargs: object) -> str:
                return edge.get("/hello", **kwargs).headers["x-isolate-region"]  # type: ignore[arg-type]

            assert region_of() == "us"
            deadline = time.monotonic() + 15  # until us has seen eu and ap healthy
            while region_of(headers={"x-isolate-region": "ap"}) != "ap" or \
                    region_of(headers={"x-isolate-region": "eu"}) != "eu":
                assert time.monotonic() < deadline
                time.sleep(0.2)
            pinned = edge.get("/eu/hello")
            assert pinned.headers["x-isolate-region"] == "eu" and pinned.text.startswith("Hallo, world!")
        with httpx.Client(base_url=f"http://127.0.0.1:{base + 21}", timeout=30,
                          headers={"authorization": f"Bearer {token}"}) as ap_admin:
            table = ap_admin.get("/v1/regions").json()
        assert table["local_region"] == "ap" and table["placement"] == {"hello-eu": ["eu"]}
        assert [r["nodes"] for r in table["regions"]] == [[f"http://127.0.0.1:{base + 10 * i}"] for i in range(3)]
    finally:
        process.send_signal(signal.SIGINT)
        try:
            assert process.wait(timeout=30) == 0
        except subprocess.TimeoutExpired:
            process.kill()
            raise
    for offset in (0, 10, 20):  # every node stopped with the parent
        with socket.socket() as s:
            assert s.connect_ex(("127.0.0.1", base + offset)) != 0
