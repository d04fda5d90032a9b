"""`serve --cluster`: three real nodes on one real nats-server (JetStream), all on loopback.

One nats-server and three nodes serve the whole file (starting them is most of its time); the tests
that stop nats-server or a node bring them back before they end. Every check polls with a bounded
deadline: replication is asynchronous, and no test asserts a timing.
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from guests import IO_IMPORTS, RESPONSE_AT, data_string, module, response_bytes, returns, wasm
from live import LiveServer, free_port

from isolate.backends import NatsServer, find_nats_server

pytestmark = pytest.mark.skipif(find_nats_server() is None,
                                reason="nats-server is not installed (Debian package nats-server; make toolchains)")

T = TypeVar("T")
WAIT = 15.0  # seconds a change may take to reach every node before a test fails (in practice: milliseconds)


@dataclass
class Trio:
    nats: NatsServer
    nodes: list[LiveServer]


def eventually(check: Callable[[], T], timeout: float = WAIT, what: str = "") -> T:
    """`check()` once it returns something truthy without raising; the last failure after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            result = check()
            if result:
                return result
            failure: Any = AssertionError(f"{what or check}: still {result!r}")
        except (AssertionError, httpx.HTTPError) as exc:
            failure = exc
        if time.monotonic() > deadline:
            raise failure
        time.sleep(0.05)


@pytest.fixture(scope="module")
def trio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Trio]:
    root = tmp_path_factory.mktemp("cluster")
    nats = NatsServer(root / "jetstream", free_port())
    nats.start()
    nodes = []
    for name in ("a", "b", "c"):
        (root / name).mkdir()
        nodes.append(LiveServer(root / name / "data", "--cluster", nats.url, "--node-name", name,
                                env={"ISOLATE_ADMIN_TOKEN": "cluster-test-token"}))
    try:
        with ThreadPoolExecutor(3) as pool:
            list(pool.map(LiveServer.start, nodes))
        yield Trio(nats, nodes)
    finally:
        for node in nodes:
            if node.process is not None and node.process.poll() is None:
                node.stop()
        nats.stop()


@contextlib.contextmanager
def member(trio: Trio, data_dir: Path, name: str, **server: Any) -> Iterator[Any]:
    """A node of the cluster in this process (an `isolate.http.Apps`), for steps a test must hold back or break."""
    from isolate import Config
    from isolate.config import ServerConfig
    from isolate.http import build

    apps = build(Config(data_dir=data_dir), ServerConfig(port=free_port(), cluster=trio.nats.url, node_name=name,
                                                         admin_token="t", **server))
    try:
        yield apps
    finally:
        apps.close()


def admin(node: LiveServer) -> httpx.Client:
    return httpx.Client(base_url=node.admin_url, headers={"authorization": "Bearer cluster-test-token"}, timeout=30)


def body_of(node: LiveServer, path: str) -> tuple[int, str]:
    response = httpx.get(node.edge_url + path, timeout=10)
    return response.status_code, response.text


def answering(body: bytes, headers: list[list[str]] | None = None) -> bytes:
    return wasm(module(response=response_bytes(body=body, headers=headers)))


def on_every(nodes: list[LiveServer], path: str, expected: tuple[int, str]) -> None:
    for node in nodes:
        eventually(lambda node=node: body_of(node, path) == expected, what=f"{node.args[3]} {path} == {expected}")


def test_deploy_routes_rollback_and_delete_reach_every_node(trio: Trio) -> None:
    a, b, c = trio.nodes
    with admin(a) as api:
        assert api.put("/v1/modules/greet", content=answering(b"one")).status_code == 201
        assert api.post("/v1/routes", json={"routes": [{"path": "/greet", "module": "greet"}]}).status_code == 200
    on_every(trio.nodes, "/greet", (200, "one"))

    with admin(b) as api:  # any node takes changes
        deployed = api.put("/v1/modules/greet", content=answering(b"two"))
        assert deployed.status_code == 201 and deployed.json()["version"] == 2
    on_every(trio.nodes, "/greet", (200, "two"))

    with admin(c) as api:
        assert api.post("/v1/modules/greet/rollback", json={}).json()["active_version"] == 1
    on_every(trio.nodes, "/greet", (200, "one"))
    for node in trio.nodes:
        with admin(node) as api:
            info = eventually(lambda api=api: api.get("/v1/modules/greet").json())
            assert [v["version"] for v in info["versions"]] == [1, 2] and info["active_version"] == 1

    with admin(a) as api:
        assert api.delete("/v1/modules/greet").status_code == 200
    for node in trio.nodes:
        with admin(node) as api:
            eventually(lambda api=api: api.get("/v1/modules/greet").status_code == 404)
            eventually(lambda api=api: all(r["module"] != "greet" for r in api.get("/v1/routes").json()["routes"]))
        eventually(lambda node=node: body_of(node, "/greet")[0] == 404)

    with admin(c) as api:  # a name deployed again goes on numbering where it stopped, on every node
        assert api.put("/v1/modules/greet", content=answering(b"three")).json()["version"] == 3


def test_settings_secrets_and_regions_reach_every_node(trio: Trio) -> None:
    a, b, c = trio.nodes
    with admin(a) as api:
        assert api.put("/v1/modules/tuned", content=answering(b"tuned")).status_code == 201
    with admin(b) as api:
        patched = api.patch("/v1/modules/tuned", json={"variables": {"colour": "blue"}, "limits": {"timeout": "2s"},
                                                        "secrets": {"token": "s3cret"}})
        assert patched.status_code == 200, patched.text
        assert api.put("/v1/modules/tuned/secrets", json={"other": "x"}).status_code == 200
    with admin(c) as api:
        table = {"regions": [{"id": "local", "name": "Here", "nodes": []}]}
        assert api.put("/v1/regions", json=table).status_code == 200, api.put("/v1/regions", json=table).text

    def settled(node: LiveServer) -> bool:
        with admin(node) as api:
            info = api.get("/v1/modules/tuned").json()
            regions = api.get("/v1/regions").json()
        return (info.get("variables") == {"colour": "blue"} and info["limit_overrides"].get("timeout") == 2.0
                and info["secrets"] == ["other", "token"] and info["versions"][-1]["version"] == 1
                and [r["id"] for r in regions.get("regions", [])] == ["local"])

    for node in trio.nodes:
        eventually(lambda node=node: settled(node), what="settings, secrets and the region table")


def test_concurrent_deploys_of_one_name_get_one_version_order(trio: Trio) -> None:
    a, b, _ = trio.nodes
    rounds = 6
    barrier = threading.Barrier(2)

    def deploy_from(node: LiveServer, label: str) -> list[int]:
        versions = []
        with admin(node) as api:
            barrier.wait()
            for i in range(rounds):
                response = api.put("/v1/modules/race", content=answering(f"{label}{i}".encode()))
                assert response.status_code == 201, response.text
                versions.append(response.json()["version"])
        return versions

    with ThreadPoolExecutor(2) as pool:
        from_a, from_b = pool.map(deploy_from, [a, b], ["a", "b"])
    # Each deploy got its own number; together they are 1..12 with none lost or given twice.
    assert sorted(from_a + from_b) == list(range(1, 2 * rounds + 1))

    def record(node: LiveServer) -> tuple[Any, ...]:
        with admin(node) as api:
            info = api.get("/v1/modules/race").json()
        return info["active_version"], tuple((v["version"], v["digest"]) for v in info["versions"])

    expected = eventually(lambda: record(a) if len(record(a)[1]) == 2 * rounds else None)
    for node in trio.nodes:
        eventually(lambda node=node: record(node) == expected, what="one version history everywhere")


def test_concurrent_route_additions_are_all_kept(trio: Trio) -> None:
    a, b, _ = trio.nodes
    with admin(a) as api:
        assert api.put("/v1/modules/routed", content=answering(b"routed")).status_code == 201
    with admin(b) as api:
        eventually(lambda: api.get("/v1/modules/routed").status_code == 200)
    barrier = threading.Barrier(2)

    def add_from(node: LiveServer, label: str) -> None:
        with admin(node) as api:
            barrier.wait()
            for i in range(5):
                added = api.post("/v1/routes", json={"routes": [{"path": f"/r/{label}{i}", "module": "routed"}]})
                assert added.status_code == 200, added.text

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(add_from, [a, b], ["a", "b"]))
    wanted = {f"/r/{label}{i}" for label in "ab" for i in range(5)}

    def paths(node: LiveServer) -> set[str]:
        with admin(node) as api:
            return {r["path"] for r in api.get("/v1/routes").json()["routes"]}

    for node in trio.nodes:  # read-modify-write with compare-and-set: none of the ten is lost
        eventually(lambda node=node: wanted <= paths(node), what="every added route")


def test_a_purge_reaches_every_node(trio: Trio) -> None:
    a, b, c = trio.nodes
    with admin(a) as api:
        cached = answering(b"cached", headers=[["cache-control", "max-age=300"]])
        assert api.put("/v1/modules/cached", content=cached).status_code == 201
        assert api.post("/v1/routes", json={"routes": [{"path": "/cached", "module": "cached"}]}).status_code == 200
    on_every(trio.nodes, "/cached", (200, "cached"))

    def x_cache(node: LiveServer) -> str:
        return httpx.get(node.edge_url + "/cached", timeout=10).headers.get("x-cache", "")

    for node in trio.nodes:
        eventually(lambda node=node: x_cache(node) == "HIT", what="a cached answer")
    with admin(b) as api:
        assert api.post("/v1/cache/purge", json={"module": "cached"}).status_code == 200
    for node in trio.nodes:  # the first request after the purge runs the guest again
        eventually(lambda node=node: x_cache(node) == "MISS", what="the purge reached this node")


KV_SET_DATA = b"sharedk1value-from-a"  # store name (6 bytes), key (2), value (12), at address 200
KV_SET = """(call $kv_set (call $kv_open (i32.const 200) (i32.const 6))
                            (i32.const 206) (i32.const 2) (i32.const 208) (i32.const 12))"""
KV_GET = """(call $kv_get (call $kv_open (i32.const 200) (i32.const 6))
                            (i32.const 206) (i32.const 2) (i32.const 4096) (i32.const 64))"""


def kv_guest(call: str) -> bytes:
    """A guest answering the i32 result of `call` (4 bytes, little-endian), KV_SET_DATA at address 200."""
    body = response_bytes(body=b"\x00" * 4)
    at = RESPONSE_AT + len(body) - 4
    return wasm(module(f"(i32.store (i32.const {at}) {call}) {returns(body)}", response=body, imports=IO_IMPORTS,
                       extra=f'(data (i32.const 200) "{data_string(KV_SET_DATA)}")'))


def test_guest_key_value_stores_are_shared_by_every_node(trio: Trio) -> None:
    a, b, c = trio.nodes
    with admin(a) as api:
        for name, call in (("kvset", KV_SET), ("kvget", KV_GET)):
            deployed = api.put(f"/v1/modules/{name}", content=kv_guest(call), params=[("kv_store", "shared")])
            assert deployed.status_code == 201, deployed.text
        routes = [{"path": "/kv/set", "module": "kvset", "cache": False},
                  {"path": "/kv/get", "module": "kvget", "cache": False}]
        assert api.post("/v1/routes", json={"routes": routes}).status_code == 200

    def answer(node: LiveServer, path: str) -> bytes:
        return httpx.get(node.edge_url + path, timeout=10).content

    eventually(lambda: answer(b, "/kv/get") == b"\xff\xff\xff\xff")  # -1: not found, yet
    assert answer(a, "/kv/set") == b"\0\0\0\0"  # stored, through a
    for node in (b, c):  # read by guests on the other nodes: the value's length, 12
        eventually(lambda node=node: answer(node, "/kv/get") == b"\x0c\0\0\0")
    with admin(c) as api:  # and through the admin API of a third
        assert api.get("/v1/kv/shared/k1").content == b"value-from-a"
        assert api.put("/v1/kv/shared/k2", content=b"\x00\xff binary").status_code in (200, 204)
    with admin(a) as api:
        assert api.get("/v1/kv/shared/k2").content == b"\x00\xff binary"
        keys = api.get("/v1/kv/shared", params={"prefix": "k"}).json()
        assert keys["keys"] == ["k1", "k2"], keys


def test_nodes_serve_while_nats_is_down_and_catch_up_when_it_is_back(trio: Trio) -> None:
    a, b, c = trio.nodes
    with admin(a) as api:
        assert api.put("/v1/modules/steady", content=answering(b"before")).status_code == 201
        assert api.post("/v1/routes", json={"routes": [{"path": "/steady", "module": "steady"}]}).status_code == 200
    on_every(trio.nodes, "/steady", (200, "before"))

    trio.nats.kill()
    try:
        for node in trio.nodes:
            with admin(node) as api:
                ready = eventually(lambda api=api: api.get("/readyz").json()["status"] == "degraded" and
                                   api.get("/readyz"))
                assert ready.status_code == 200 and ready.json()["cluster"]["connected"] is False
                refused = api.put("/v1/modules/steady", content=answering(b"lost"))
                assert refused.status_code == 503, refused.text
                assert refused.json()["error"] == "cluster_unavailable"
                assert refused.headers["retry-after"] == "1"
            assert body_of(node, "/steady") == (200, "before")  # serving goes on
    finally:
        trio.nats.start()  # same port, same store

    for node in trio.nodes:
        with admin(node) as api:
            eventually(lambda api=api: api.get("/readyz").json()["status"] == "ready", what="caught up again")
    with admin(b) as api:
        assert api.put("/v1/modules/steady", content=answering(b"after")).status_code == 201
    on_every(trio.nodes, "/steady", (200, "after"))


def test_a_restarted_node_catches_up_before_it_is_ready(trio: Trio) -> None:
    a, b, c = trio.nodes
    with admin(a) as api:
        assert api.put("/v1/modules/late", content=answering(b"old")).status_code == 201
        assert api.put("/v1/modules/gone", content=answering(b"gone")).status_code == 201
        assert api.post("/v1/routes", json={"routes": [{"path": "/late", "module": "late"}]}).status_code == 200
    on_every(trio.nodes, "/late", (200, "old"))
    with admin(c) as api:
        eventually(lambda: api.get("/v1/modules/gone").status_code == 200)
    c.stop()
    with admin(a) as api:
        assert api.put("/v1/modules/late", content=answering(b"new")).status_code == 201
        assert api.post("/v1/routes", json={"routes": [{"path": "/late2", "module": "late"}]}).status_code == 200
        assert api.delete("/v1/modules/gone").status_code == 200
    c.start()  # returns once /readyz answers 200
    with admin(c) as api:
        assert api.get("/readyz").json()["status"] == "ready"
        assert api.get("/v1/modules/gone").status_code == 404
    # No polling here: what changed while it was down is in force as soon as it reports ready.
    assert body_of(c, "/late") == (200, "new")
    assert body_of(c, "/late2") == (200, "new")


def test_a_node_started_without_nats_serves_its_data_directory(tmp_path: Path) -> None:
    port = free_port()
    (tmp_path / "n").mkdir()
    node = LiveServer(tmp_path / "n" / "data", "--cluster", f"nats://127.0.0.1:{port}",
                      env={"ISOLATE_ADMIN_TOKEN": "cluster-test-token"})
    with node, admin(node) as api:
        status = api.get("/readyz")
        assert status.status_code == 200 and status.json()["status"] == "degraded"
        assert api.put("/v1/modules/x", content=answering(b"x")).json()["error"] == "cluster_unavailable"
        with NatsServer(tmp_path / "jetstream", port):  # NATS appears: the node joins without a restart
            eventually(lambda: api.get("/readyz").json()["status"] == "ready")
            assert api.put("/v1/modules/x", content=answering(b"x")).status_code == 201


def test_the_manifest_can_name_the_cluster(tmp_path: Path) -> None:
    from isolate.errors import ManifestError
    from isolate.manifest import load

    path = tmp_path / "isolate.toml"
    path.write_text('[cluster]\nurl = "nats://127.0.0.1:4222"\n')
    assert load(path).cluster == "nats://127.0.0.1:4222"
    path.write_text('[cluster]\nurl = "http://127.0.0.1:4222"\n')
    with pytest.raises(ManifestError, match="cluster"):
        load(path)
    path.write_text("")
    assert load(path).cluster == ""


def test_simulated_regions_run_as_one_cluster(tmp_path: Path) -> None:
    """`make regions` (serve --simulate-regions): three regions on a nats-server it starts and stops."""
    import random
    import signal
    import socket
    import subprocess
    import sys

    from live import ROOT

    def free_base() -> int:
        for _ in range(100):
            base = random.randrange(20000, 60000)
            socks = []
            try:
                for offset in (0, 1, 10, 11, 20, 21, 30):
                    sock = socket.socket()
                    socks.append(sock)
                    sock.bind(("127.0.0.1", base + offset))
                return base
            except OSError:
                continue
            finally:
                for sock in socks:
                    sock.close()
        raise RuntimeError("no free port range")

    (tmp_path / "hello.wat").write_text(module(response=response_bytes(body=b"everywhere")))
    (tmp_path / "isolate.toml").write_text(f'[modules.hello]\npath = "{tmp_path / "hello.wat"}"\n\n'
                                           '[[routes]]\npath = "/hello"\nmodule = "hello"\n')
    base = free_base()
    log_path = tmp_path / "simulate.log"
    env = {k: v for k, v in os.environ.items() if k != "ISOLATE_CLUSTER"}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "isolate.cli", "serve", "--manifest", str(tmp_path / "isolate.toml"),
             "--simulate-regions", "--data-dir", str(tmp_path / "data"), "--port", str(base),
             "--admin-port", str(base + 1)], stdout=log, stderr=log, cwd=ROOT, env=env)
    try:
        eventually(lambda: b"three regions are up" in log_path.read_bytes() or process.poll() is not None,
                   timeout=90)
        assert process.poll() is None, log_path.read_text()
        root = tmp_path / "data" / "regions"
        token = (root / "token").read_text().strip()
        nats_url = re.search(r"nats://127\.0\.0\.1:(\d+)", log_path.read_text())
        assert nats_url is not None, log_path.read_text()
        with httpx.Client(base_url=f"http://127.0.0.1:{base + 21}",  # ap's admin API
                          headers={"authorization": f"Bearer {token}"}, timeout=30) as api:
            hello = api.get("/v1/modules/hello").json()
            assert len(hello["versions"]) == 1  # the manifest deployed once, for all three
            deployed = api.put("/v1/modules/later", content=answering(b"from ap"))
            assert deployed.status_code == 201, deployed.text
            assert api.post("/v1/routes", json={"routes": [{"path": "/later", "module": "later"}]}).status_code == 200
        for offset in (0, 10, 20):  # us, eu and ap all serve it
            eventually(lambda offset=offset: httpx.get(f"http://127.0.0.1:{base + offset}/later",
                                                       headers={"x-isolate-region": ("us", "eu", "ap")[offset // 10]},
                                                       timeout=10).text == "from ap")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    with socket.socket() as probe:  # the nats-server stopped with the regions
        assert probe.connect_ex(("127.0.0.1", int(nats_url.group(1)))) != 0


def test_a_node_with_workers_relays_cluster_changes_to_every_worker(trio: Trio, tmp_path: Path) -> None:
    a = trio.nodes[0]
    with LiveServer(tmp_path / "data", "--cluster", trio.nats.url, "--node-name", "w", "--workers", "2",
                    env={"ISOLATE_ADMIN_TOKEN": "cluster-test-token"}) as node:
        with admin(a) as api:
            assert api.put("/v1/modules/relayed", content=answering(b"first")).status_code == 201
            api.post("/v1/routes", json={"routes": [{"path": "/relayed", "module": "relayed"}]}).raise_for_status()

        def every_worker(expected: str) -> bool:
            # fresh connections, so that SO_REUSEPORT hands them to both workers
            return all(body_of(node, "/relayed") == (200, expected) for _ in range(16))

        eventually(lambda: every_worker("first"), what="both workers serve the first version")
        with admin(a) as api:
            assert api.put("/v1/modules/relayed", content=answering(b"second")).status_code == 201
        eventually(lambda: every_worker("second"), what="both workers serve the second version")
        # One cluster member per node: the workers do not join the control plane themselves.
        caught_up = [line for line in node.log().splitlines() if "cluster: caught up with" in line]
        assert len(caught_up) == 1 and "[worker" not in caught_up[0]


def test_a_refused_deploy_writes_no_secret_and_a_partial_write_is_announced(trio: Trio, tmp_path: Path) -> None:
    from isolate.errors import ClusterUnavailable, IsolateError
    from isolate.manifest import load

    with member(trio, tmp_path / "data", "s") as apps:
        node, cluster = apps.node, apps.node.cluster
        assert cluster is not None
        node.deploy("sealed", answering(b"sealed"), secrets={"KEY": "old"})
        announced: list[tuple[str, str | None]] = []
        node.subscribe(lambda change: announced.append((change.kind, change.name)) or 0)
        with pytest.raises(IsolateError):
            node.deploy("sealed", b"\0asm\x01\0\0\0garbage", secrets={"KEY": "new"})
        assert dict(node.host.secrets.values("sealed")) == {"KEY": "old"}  # nothing written, here or in NATS
        with admin(trio.nodes[0]) as api:
            eventually(lambda: api.get("/v1/modules/sealed").json().get("secrets") == ["KEY"])

        # The secrets are written and applied here, then the record's write fails: still announced.
        real = cluster._cas  # type: ignore[attr-defined]

        def failing(key: str, compute: Any) -> bytes:
            if key.startswith("module."):
                raise ClusterUnavailable("injected")
            return real(key, compute)  # type: ignore[no-any-return]

        cluster._cas = failing  # type: ignore[attr-defined]
        announced.clear()
        with pytest.raises(ClusterUnavailable):
            node.deploy("sealed", answering(b"sealed2"), secrets={"KEY": "newer"})
        cluster._cas = real  # type: ignore[attr-defined]
        assert dict(node.host.secrets.values("sealed")) == {"KEY": "newer"}
        assert ("module", "sealed") in announced

        # A manifest applied again writes no route table when its routes are the table already.
        (tmp_path / "m.wat").write_text(module(response=response_bytes(body=b"m")))
        (tmp_path / "isolate.toml").write_text('[modules.mf]\npath = "m.wat"\n[[routes]]\npath = "/mf"\n'
                                               'module = "mf"\n')
        manifest = load(tmp_path / "isolate.toml")
        node.apply_manifest(manifest)
        writes: list[int] = []
        real_routes = cluster.update_routes
        cluster.update_routes = lambda compute: writes.append(1) or real_routes(compute)  # type: ignore[method-assign]
        result = node.apply_manifest(manifest)
        assert writes == [] and result.routes >= 1 and result.deployed == ()


def test_a_node_with_a_manifest_starts_without_nats_and_hides_the_url_credentials(tmp_path: Path) -> None:
    (tmp_path / "m.wat").write_text(module(response=response_bytes(body=b"kept")))
    (tmp_path / "isolate.toml").write_text('[modules.m]\npath = "m.wat"\n[[routes]]\npath = "/m"\nmodule = "m"\n')
    (tmp_path / "n").mkdir()
    manifest = ("--manifest", str(tmp_path / "isolate.toml"))
    with LiveServer(tmp_path / "n" / "data", *manifest):  # a data directory as a cluster node keeps one
        pass
    down = f"nats://alice:s3cr3t@127.0.0.1:{free_port()}"
    node = LiveServer(tmp_path / "n" / "data", "--cluster", down, *manifest,
                      env={"ISOLATE_ADMIN_TOKEN": "cluster-test-token"})
    with node, admin(node) as api:  # starts (the manifest's writes skipped) and serves its copy
        assert body_of(node, "/m") == (200, "kept")
        ready = httpx.get(node.admin_url + "/readyz", timeout=10).json()
        assert ready["status"] == "degraded" and ready["cluster"]["url"].startswith("nats://127.0.0.1:")
        refused = api.put("/v1/modules/m", content=answering(b"x")).json()
        assert refused["error"] == "cluster_unavailable" and "s3cr3t" not in str(refused)
        log = node.wait_for_log("not applied", "credentials on the command line")
        assert "s3cr3t" not in log


def test_an_entry_that_failed_to_apply_is_retried_and_reported_meanwhile(trio: Trio, tmp_path: Path) -> None:
    from isolate.errors import StorageError

    with member(trio, tmp_path / "data", "r") as apps:
        cluster = apps.node.cluster
        assert cluster is not None
        # Caught up first: the modules earlier tests left in the cluster are applied before receiving breaks.
        eventually(lambda: cluster.status()["synced"] is True, what="the new member caught up")
        real, broken = apps.host.receive, threading.Event()
        broken.set()

        def flaky(*args: Any) -> None:  # a disk hiccup, or the bytes not arriving in time, until it clears
            if broken.is_set():
                raise StorageError("transient")
            real(*args)

        apps.host.receive = flaky  # type: ignore[method-assign]
        with admin(trio.nodes[0]) as api:
            assert api.put("/v1/modules/flaky", content=answering(b"flaky")).status_code == 201
        status = eventually(lambda: cluster.status().get("pending") == ["module.flaky"] and cluster.status())
        assert status["synced"] is False and "module.flaky" in status["error"]
        broken.clear()  # retried without a new change nor a reconnection
        eventually(lambda: "flaky" in apps.host.module_names(), what="the failed entry applied on a retry")
        eventually(lambda: cluster.status()["synced"] is True and "pending" not in cluster.status())


def test_no_route_outlives_its_module_when_a_delete_and_a_route_write_cross(trio: Trio, tmp_path: Path) -> None:
    from isolate.errors import InvalidConfig

    with member(trio, tmp_path / "data", "x") as apps:
        node, cluster = apps.node, apps.node.cluster
        assert cluster is not None

        def routes_to(api: httpx.Client, name: str) -> list[str]:
            return [r["path"] for r in api.get("/v1/routes").json()["routes"] if r["module"] == name]

        # This node has not applied another node's delete yet: its route write reads the cluster's record.
        node.deploy("crossed", answering(b"crossed"))
        node.add_routes([{"path": "/crossed", "module": "crossed"}])
        gate = threading.Event()
        cluster._applier.submit(gate.wait)  # type: ignore[attr-defined]  # the watcher, a little behind
        try:
            with admin(trio.nodes[0]) as api:
                eventually(lambda: api.get("/v1/modules/crossed").status_code == 200)
                assert api.delete("/v1/modules/crossed").status_code == 200
            assert "crossed" in node.host.module_names()
            with pytest.raises(InvalidConfig, match="not deployed in the cluster"):
                node.add_routes([{"path": "/crossed2", "module": "crossed"}])
        finally:
            gate.set()
        eventually(lambda: "crossed" not in node.host.module_names())

        # Another node writes a route to a module between its delete's route update and its tombstone:
        # the delete takes that route out again, on every node.
        node.deploy("crossing", answering(b"crossing"))
        node.add_routes([{"path": "/crossing", "module": "crossing"}])
        with admin(trio.nodes[1]) as api:
            eventually(lambda: api.get("/v1/modules/crossing").status_code == 200)
            real = cluster._cas  # type: ignore[attr-defined]

            def interleaved(key: str, compute: Any) -> bytes:
                if key == "module.crossing":
                    added = api.post("/v1/routes", json={"routes": [{"path": "/crossing2", "module": "crossing"}]})
                    assert added.status_code == 200, added.text
                return real(key, compute)  # type: ignore[no-any-return]

            cluster._cas = interleaved  # type: ignore[attr-defined]
            try:
                node.delete("crossing")
            finally:
                cluster._cas = real  # type: ignore[attr-defined]
        assert not [r for r in node.state.routes.routes if r.module == "crossing"]
        for live in trio.nodes:
            with admin(live) as api:
                eventually(lambda api=api: api.get("/v1/modules/crossing").status_code == 404)
                eventually(lambda api=api: routes_to(api, "crossing") == [], what="no route to a deleted module")


def test_a_region_table_without_a_nodes_region_is_refused_there_and_reported(trio: Trio, tmp_path: Path) -> None:

    with member(trio, tmp_path / "data", "far", region="far") as apps:
        cluster = apps.node.cluster
        assert cluster is not None
        with admin(trio.nodes[0]) as api:
            before = api.get("/v1/regions").json()
            here = {"regions": [{"id": "local", "name": "Here", "nodes": []}]}
            assert api.put("/v1/regions", json=here).status_code == 200
            status = eventually(lambda: "table.regions" in cluster.status().get("refused", {}) and cluster.status())
            assert status["synced"] is False and "'far'" in status["error"] and "pending" not in status
            assert apps.node.state.regions.empty  # its table kept, not one it cannot serve under
            both = {"regions": [*here["regions"], {"id": "far", "name": "Far", "nodes": []}]}
            assert api.put("/v1/regions", json=both).status_code == 200
            eventually(lambda: cluster.status()["synced"] is True and "refused" not in cluster.status())
            assert sorted(apps.node.state.regions.regions) == ["far", "local"]
            restored = {key: value for key, value in before.items() if key not in ("local_region", "health")}
            assert api.put("/v1/regions", json=restored).status_code == 200


def test_a_change_through_a_node_the_deploy_has_not_reached_yet(trio: Trio, tmp_path: Path) -> None:
    """Deployed through one node, configured through another before its watcher applied the deploy:
    the cluster's record counts (it was a 404), and the bytes are fetched before the change applies."""
    from isolate.errors import StorageError

    with member(trio, tmp_path / "data", "late") as apps:
        node, cluster = apps.node, apps.node.cluster
        assert cluster is not None
        eventually(lambda: cluster.status()["synced"], what="the new node caught up")
        gate = threading.Event()
        cluster._applier.submit(gate.wait)  # type: ignore[attr-defined]  # the watcher, behind
        try:
            with admin(trio.nodes[0]) as api:
                assert api.put("/v1/modules/lagging", content=answering(b"late")).status_code == 201
            assert "lagging" not in node.host.module_names()
            info = node.configure("lagging", variables={"colour": "red"})
            assert dict(info.variables) == {"colour": "red"}
            assert node.host.invoke("lagging").body == b"late"
        finally:
            gate.set()
        with admin(trio.nodes[1]) as api:
            eventually(lambda: api.get("/v1/modules/lagging").json().get("variables") == {"colour": "red"},
                       what="the change made through the late node")

        # The change is committed once written: failing to apply it here (the bytes do not arrive)
        # answers it all the same, and the watcher applies it when it can.
        real, gate = apps.host.receive, threading.Event()

        def failing(*args: Any) -> None:
            raise StorageError("the bytes did not arrive")

        apps.host.receive = failing  # type: ignore[method-assign]
        cluster._applier.submit(gate.wait)  # type: ignore[attr-defined]
        try:
            with admin(trio.nodes[0]) as api:
                assert api.put("/v1/modules/lagging2", content=answering(b"later")).status_code == 201
            info = node.configure("lagging2", variables={"colour": "green"})
            assert dict(info.variables) == {"colour": "green"} and "lagging2" not in node.host.module_names()
        finally:
            apps.host.receive = real  # type: ignore[method-assign]
            gate.set()
        eventually(lambda: "lagging2" in node.host.module_names()
                   and dict(node.host.module("lagging2").variables) == {"colour": "green"},
                   what="the late node applying the change it wrote")
