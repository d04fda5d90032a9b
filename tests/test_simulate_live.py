"""`isolate serve --simulate-regions`: one command, three real nodes that forward to each other."""

from __future__ import annotations

import os
import random
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import httpx
from live import ROOT, core_manifest

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
        [sys.executable, "-m", "isolate.cli", "serve", "--manifest", str(core_manifest(tmp_path / "isolate.toml")),
         "--simulate-regions",
         "--data-dir", str(tmp_path / "data"), "--port", str(base), "--admin-port", str(base + 1)],
        stdout=log, stderr=log, cwd=ROOT)
    try:
        deadline = time.monotonic() + 90
        while b"three regions are up" not in (tmp_path / "simulate.log").read_bytes():
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "simulate.log").read_text()
            time.sleep(0.2)
        root = tmp_path / "data" / "regions"
        token = (root / "token").read_text().strip()
        secret = (root / "cluster-secret").read_text().strip()
        assert len(token) >= 43 and len(secret) >= 43 and token != secret
        for region in ("us", "eu", "ap"):  # every node got both, privately, in its data directory
            for name, value in (("admin-token", token), ("cluster-secret", secret)):
                assert (root / region / name).read_text().strip() == value
                assert stat.S_IMODE((root / region / name).stat().st_mode) == 0o600
        pids = [int(p) for p in re.findall(r"pid (\d+)", (tmp_path / "simulate.log").read_text())]
        assert len(pids) == 3
        for pid in pids:  # nothing secret on a command line (`ps` shows it to every user)
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            assert b"--regions" in cmdline and token.encode() not in cmdline and secret.encode() not in cmdline
            assert b"--admin-token" not in cmdline
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
            # one cluster secret: eu trusts the hop from us (its guest sees who forwarded it)
            echoed = edge.get("/echo/x", headers={"x-isolate-region": "eu"}).json()
            assert ["x-isolate-forwarded-by", f"us@127.0.0.1:{base}"] in echoed["headers"]
        with httpx.Client(base_url=f"http://127.0.0.1:{base + 21}", timeout=30,
                          headers={"authorization": f"Bearer {token}"}) as ap_admin:
            table = ap_admin.get("/v1/regions").json()
        assert table["local_region"] == "ap" and table["placement"] == {"hello-eu": ["eu"]}
        assert [r["nodes"] for r in table["regions"]] == [[f"http://127.0.0.1:{base + 10 * i}"] for i in range(3)]
        # A second simulation on the same directory stops before it writes anything there.
        written = [root / "regions.json", root / "token", root / "cluster-secret",
                   *(root / region / name for region in ("us", "eu", "ap")
                     for name in ("admin-token", "cluster-secret"))]
        before = {path: path.stat().st_mtime_ns for path in written}
        second = subprocess.run(
            [sys.executable, "-m", "isolate.cli", "serve", "--manifest", str(core_manifest(tmp_path / "isolate.toml")),
             "--simulate-regions", "--data-dir", str(tmp_path / "data"), "--port", str(free_base()),
             "--admin-port", str(free_base())], capture_output=True, text=True, timeout=60, cwd=ROOT)
        assert second.returncode == 1 and "is in use by another isolate serve --simulate-regions" in second.stderr
        assert {path: path.stat().st_mtime_ns for path in written} == before
        # A node that exits is reported with the command that starts it again: nothing secret in it.
        ap_pid = pids[2]
        os.kill(ap_pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while f"(pid {ap_pid}) exited" not in (tmp_path / "simulate.log").read_text():
            assert time.monotonic() < deadline
            time.sleep(0.2)
        hint = (tmp_path / "simulate.log").read_text().split(f"(pid {ap_pid}) exited", 1)[1]
        assert "start it again with" in hint and token not in hint and secret not in hint
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
