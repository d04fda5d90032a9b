"""Three real nodes on loopback (regions us, eu, ap): resolution, placement, forwarding, failover, loops."""

from __future__ import annotations

import json
import secrets
import signal
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from live import ROOT, LiveServer

from isolate.build import build
from isolate.http._hops import MAX_HOPS, HopSigner

REGIONS = ("us", "eu", "ap")
CLUSTER_SECRET = secrets.token_urlsafe(32)
COORDINATES = {"us": [38.9, -77.4], "eu": [50.1, 8.7], "ap": [1.35, 103.8]}
MANIFEST = f'''
[modules.hello]
path = "{ROOT / "samples" / "hello"}"

[modules.pinned]
path = "{ROOT / "samples" / "hello"}"
variables = {{ greeting = "Hallo" }}
regions = ["eu"]

[modules.echo]
path = "{ROOT / "samples" / "echo"}"

[[routes]]
path = "/hello"
module = "hello"

[[routes]]
path = "/pinned"
module = "pinned"

[[routes]]
path = "/echo/..."
module = "echo"
'''


def region_table(nodes: dict[str, LiveServer], **changes: Any) -> dict[str, Any]:
    table: dict[str, Any] = {
        "regions": [{"id": r, "name": r.upper(), "coordinates": COORDINATES[r], "nodes": [nodes[r].edge_url]}
                    for r in REGIONS],
        "networks": [["127.1.0.0/16", "eu"], ["127.2.0.0/16", "ap"]],
    }
    table.update(changes)
    return table


@pytest.fixture(scope="module")
def nodes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, LiveServer]]:
    for sample in ("hello", "echo"):
        build(ROOT / "samples" / sample)
    root = tmp_path_factory.mktemp("regions")
    (root / "isolate.toml").write_text(MANIFEST)
    # One cluster: the nodes sign their hops with one secret (from the environment, as in production).
    env = {"ISOLATE_CLUSTER_SECRET": CLUSTER_SECRET}
    servers = {r: LiveServer(root / r, env=env) for r in REGIONS}
    (root / "regions.json").write_text(json.dumps(region_table(servers)))
    for region, server in servers.items():
        server.args = ["--manifest", str(root / "isolate.toml"), "--regions", str(root / "regions.json"),
                       "--region", region, "--node-name", region]
    try:
        for server in servers.values():
            server.start()
        for server in servers.values():  # the first checks ran while later nodes were still starting
            eventually(partial(all_healthy, server))
        yield servers
    finally:
        for server in servers.values():
            if server.process is not None and server.process.poll() is None:
                server.stop()


def get(node: LiveServer, path: str, *, source: str | None = None, **kwargs: Any) -> httpx.Response:
    transport = httpx.HTTPTransport(local_address=source) if source else None
    with httpx.Client(base_url=node.edge_url, timeout=30, transport=transport) as client:
        return client.get(path, **kwargs)


def eventually(check: Callable[[], bool], seconds: float = 15) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def all_healthy(node: LiveServer) -> bool:
    with node.admin() as admin:
        health = admin.get("/v1/regions").json()["health"]
    return len(health) == 2 and all(state["healthy"] for state in health.values())


def put_table(node: LiveServer, table: dict[str, Any]) -> None:
    with node.admin() as admin:
        response = admin.put("/v1/regions", json=table)
        assert response.status_code == 200, response.text


def test_region_by_header(nodes: dict[str, LiveServer]) -> None:
    us = nodes["us"]
    local = get(us, "/hello")
    assert local.headers["x-isolate-region"] == "us" and "client in us" in local.text
    for region in ("eu", "ap"):
        response = get(us, "/hello", headers={"x-isolate-region": region})
        assert response.status_code == 200
        assert response.text == f"Hello, world! (from C, region {region}, client in {region})\n"
        assert response.headers["x-isolate-region"] == region
        timing = response.headers["server-timing"]
        assert timing.startswith("forward;dur=") and f'desc="{region}"' in timing
        assert all(f"{name};dur=" in timing for name in ("routing", "queue", "instantiate", "guest"))
    unknown = get(us, "/hello", headers={"x-isolate-region": "mars"})
    assert unknown.status_code == 400 and unknown.json()["error"] == "unknown_region"
    assert "us, eu, ap" in unknown.json()["detail"]


def test_region_by_client_network(nodes: dict[str, LiveServer]) -> None:
    from_ap = get(nodes["us"], "/hello", source="127.2.0.1")
    assert from_ap.headers["x-isolate-region"] == "ap" and "client in ap" in from_ap.text
    from_eu = get(nodes["ap"], "/hello", source="127.1.0.9")
    assert from_eu.headers["x-isolate-region"] == "eu"
    # no network matches 127.0.0.1: the node's own region
    assert get(nodes["ap"], "/hello").headers["x-isolate-region"] == "ap"
    # the header wins over the address
    assert get(nodes["us"], "/hello", source="127.2.0.1", headers={"x-isolate-region": "us"}).text.endswith(
        "region us, client in us)\n")


def test_pinned_module_runs_only_in_eu(nodes: dict[str, LiveServer]) -> None:
    for asked in ("us", "ap"):
        response = get(nodes[asked], "/pinned")
        assert response.status_code == 200 and response.headers["x-isolate-region"] == "eu"
        assert response.text == f"Hallo, world! (from C, region eu, client in {asked})\n"


def test_forwarding_keeps_method_headers_body_and_request_id(nodes: dict[str, LiveServer]) -> None:
    payload = b"0123456789abcdef" * 12800  # 200 KiB (the echo sample wants text), sent in chunks

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(payload), 16384):
            yield payload[i:i + 16384]

    with httpx.Client(base_url=nodes["us"].edge_url, timeout=30) as client:
        response = client.post("/echo/x?y=1&q=%41", content=chunks(), headers={
            "x-isolate-region": "eu", "x-request-id": "req-123", "x-custom": "kept", "content-type": "a/b",
            "connection": "keep-alive, x-hop", "x-hop": "dropped"})
    assert response.status_code == 200, response.text
    assert response.headers["x-request-id"] == "req-123" and response.headers["x-isolate-region"] == "eu"
    echoed = response.json()
    assert echoed["method"] == "POST" and echoed["path"] == "/echo/x" and echoed["query"] == "y=1&q=%41"
    assert echoed["request_id"] == "req-123"
    headers = dict(echoed["headers"])
    assert headers["x-custom"] == "kept" and headers["x-isolate-forwarded-by"] == "us"
    assert "x-hop" not in headers  # named in Connection: hop-by-hop
    assert "x-isolate-hop" not in headers and "x-isolate-hops" not in headers  # the signature is not the guest's
    assert headers["x-isolate-client-region"] == "eu" and headers["x-forwarded-for"] == "127.0.0.1"
    assert echoed["body"] == payload.decode()
    assert "request_id=req-123" in nodes["eu"].wait_for_log("request_id=req-123")


def test_forwarded_bodies_obey_the_body_limit(nodes: dict[str, LiveServer]) -> None:
    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while streaming
        for _ in range(11):
            yield b"x" * (1024 * 1024)

    with httpx.Client(base_url=nodes["us"].edge_url, timeout=60) as client:
        declared = client.post("/echo/x", content=b"x" * (11 * 1024 * 1024), headers={"x-isolate-region": "eu"})
        assert declared.status_code == 413 and declared.json()["error"] == "payload_too_large"
        streamed = client.post("/echo/x", content=chunks(), headers={"x-isolate-region": "eu"})
        assert streamed.status_code == 413 and streamed.json()["error"] == "payload_too_large"
        assert client.get("/hello", headers={"x-isolate-region": "eu"}).status_code == 200  # still serving


def test_failover_when_eu_dies_and_recovery(nodes: dict[str, LiveServer]) -> None:
    us, eu = nodes["us"], nodes["eu"]
    assert eu.process is not None
    eu.process.send_signal(signal.SIGKILL)
    eu.process.wait()
    try:
        # The first request already fails over: the refused connection marks eu down at once.
        response = get(us, "/hello", headers={"x-isolate-region": "eu"})
        assert response.status_code == 200 and response.headers["x-isolate-region"] == "us"
        assert "client in eu" in response.text  # the guest still learns where the client is
        # from ap, eu's clients go to eu's nearest live region too (us), once ap's checks see eu down
        eventually(lambda: get(nodes["ap"], "/hello", headers={"x-isolate-region": "eu"})
                   .headers["x-isolate-region"] == "us")
        # residency: the pinned module may not fail over
        pinned = get(us, "/pinned")
        assert pinned.status_code == 503 and pinned.headers["retry-after"] == "1"
        body = pinned.json()
        assert body["error"] == "region_unavailable" and body["allowed_regions"] == ["eu"]
        assert "may run only in eu" in body["detail"] and body["regions"][0]["healthy"] == 0
        with us.admin() as admin:
            health = admin.get("/v1/regions").json()["health"]
        assert health[eu.edge_url]["healthy"] is False
    finally:
        eu.start()
    eventually(lambda: get(us, "/pinned").status_code == 200)
    assert get(us, "/hello", headers={"x-isolate-region": "eu"}).headers["x-isolate-region"] == "eu"


def test_no_forwarding_loop_with_a_bad_table(nodes: dict[str, LiveServer]) -> None:
    us, eu = nodes["us"], nodes["eu"]
    good = region_table(nodes)
    # us sends the pinned module to eu; eu's table (wrongly) pins it to us.
    put_table(eu, {**good, "placement": {"pinned": ["us"]}})
    try:
        started = time.monotonic()
        response = get(us, "/pinned")
        assert response.status_code == 508 and response.json()["error"] == "forwarding_loop"
        assert response.json()["forwarded_by"] == "us" and time.monotonic() - started < 5
        # A client's forged header is ignored: eu forwards to us as its table says, and us refuses.
        spoofed = get(eu, "/pinned", headers={"x-isolate-forwarded-by": "someone"})
        assert spoofed.status_code == 508 and spoofed.json()["forwarded_by"] == "eu"
    finally:
        put_table(eu, {**good, "placement": {"pinned": ["eu"]}})
    assert get(us, "/pinned").status_code == 200


def test_a_node_listed_in_the_wrong_region_is_not_used(nodes: dict[str, LiveServer]) -> None:
    us = nodes["us"]
    good = region_table(nodes)
    wrong = json.loads(json.dumps(good))
    wrong["regions"][1]["nodes"] = [nodes["ap"].edge_url]  # "eu" points at the ap node
    wrong["regions"][2]["nodes"] = []
    wrong["placement"] = {"pinned": ["eu"]}
    put_table(us, wrong)
    try:
        def eu_is_down() -> bool:
            with us.admin() as admin:
                state = admin.get("/v1/regions").json()["health"].get(nodes["ap"].edge_url)
            return state is not None and not state["healthy"] and "serves region 'ap'" in state["error"]

        eventually(eu_is_down)
        response = get(us, "/hello", headers={"x-isolate-region": "eu"})
        assert response.headers["x-isolate-region"] == "us"  # not the ap node posing as eu
    finally:
        put_table(us, {**good, "placement": {"pinned": ["eu"]}})


def test_region_table_api_validates_whole_and_persists(nodes: dict[str, LiveServer], tmp_path: Path) -> None:
    ap = nodes["ap"]
    with ap.admin() as admin:
        before = admin.get("/v1/regions").json()
        assert before["local_region"] == "ap" and [r["id"] for r in before["regions"]] == list(REGIONS)
        assert before["placement"] == {"pinned": ["eu"]}
        bad = admin.put("/v1/regions", json={"regions": [{"id": "us"}, {"id": "eu"}]})
        assert bad.status_code == 400 and "serves region 'ap'" in bad.json()["detail"]
        bad = admin.put("/v1/regions", json={**region_table(nodes), "placement": {"x": ["mars"]}})
        assert bad.status_code == 400 and bad.json()["error"] == "invalid_config"
        assert admin.get("/v1/regions").json()["regions"] == before["regions"]  # unchanged
    ap.restart()
    with ap.admin() as admin:
        assert admin.get("/v1/regions").json()["placement"] == {"pinned": ["eu"]}


def test_forged_hop_headers_are_ignored(nodes: dict[str, LiveServer]) -> None:
    us = nodes["us"]
    eventually(partial(all_healthy, us))  # an earlier test restarted ap
    forged = {"x-isolate-forwarded-by": "eu", "x-isolate-client-region": "ap"}
    # Not a hop: the pinned module is still forwarded to eu (a trusted hop would be refused with 508).
    pinned = get(us, "/pinned", headers=forged)
    assert pinned.status_code == 200 and pinned.headers["x-isolate-region"] == "eu"
    assert pinned.text == "Hallo, world! (from C, region eu, client in us)\n"
    # The claimed client region does not pick the region: the address (an ap network) does.
    from_ap = get(us, "/hello", source="127.2.0.1", headers={**forged, "x-isolate-client-region": "eu"})
    assert from_ap.text == "Hello, world! (from C, region ap, client in ap)\n"
    # The guest does not see them.
    echoed = get(us, "/echo/x", headers={**forged, "x-isolate-hop": "t=1;v1=00", "x-isolate-hops": "1"}).json()
    assert not [k for k, _ in echoed["headers"] if k.startswith("x-isolate-")]


def test_only_a_fresh_signature_with_the_cluster_secret_makes_a_hop(nodes: dict[str, LiveServer]) -> None:
    us = nodes["us"]
    eventually(partial(all_healthy, us))

    def hop(signer: HopSigner, *, path: str = "/hello", signed_path: str | None = None, client_region: str = "eu",
            forwarded_by: str = "ap") -> httpx.Response:
        signature = signer.sign(forwarded_by.encode(), client_region.encode(), b"GET", (signed_path or path).encode(),
                                b"rid-hop")
        return get(us, path, source="127.2.0.1", headers={
            "x-request-id": "rid-hop", "x-isolate-forwarded-by": "ap", "x-isolate-client-region": "eu",
            "x-isolate-hop": signature.decode()})

    # Signed with the cluster's secret: a hop from ap, run here for a client in eu (not forwarded to ap).
    assert hop(HopSigner(CLUSTER_SECRET)).text == "Hello, world! (from C, region us, client in eu)\n"
    trusted = hop(HopSigner(CLUSTER_SECRET), path="/echo/x").json()
    assert ["x-isolate-client-region", "eu"] in trusted["headers"]
    assert ["x-isolate-forwarded-by", "ap"] in trusted["headers"]
    refused = [
        hop(HopSigner("another cluster's secret")),
        hop(HopSigner(CLUSTER_SECRET, clock=lambda: time.time() - 3600)),  # stale (or replayed late)
        hop(HopSigner(CLUSTER_SECRET, clock=lambda: time.time() + 3600)),  # from the future
        hop(HopSigner(CLUSTER_SECRET), client_region="ap"),  # signed for another client region
        hop(HopSigner(CLUSTER_SECRET), signed_path="/hello?x=1"),  # signed for another target
        hop(HopSigner(CLUSTER_SECRET), forwarded_by="eu"),  # signed for another node
    ]
    for response in refused:  # each a client's request from ap: run in ap
        assert response.text == "Hello, world! (from C, region ap, client in ap)\n", response.text


def test_nodes_with_different_secrets_do_not_trust_each_other_and_never_loop(tmp_path: Path) -> None:
    build(ROOT / "samples" / "echo")
    (tmp_path / "isolate.toml").write_text(f'''
[modules.echo]
path = "{ROOT / "samples" / "echo"}"

[modules.looping]
path = "{ROOT / "samples" / "echo"}"

[[routes]]
path = "/echo/..."
module = "echo"

[[routes]]
path = "/loop/..."
module = "looping"
''')
    servers = {r: LiveServer(tmp_path / r, env={"ISOLATE_CLUSTER_SECRET": secrets.token_urlsafe(32)})
               for r in ("us", "eu")}
    regions = [{"id": r, "nodes": [servers[r].edge_url]} for r in ("us", "eu")]
    # The tables disagree: each sends `looping` to the other.
    for region, other in (("us", "eu"), ("eu", "us")):
        (tmp_path / f"{region}.json").write_text(json.dumps({"regions": regions, "placement": {"looping": [other]}}))
        servers[region].args = ["--manifest", str(tmp_path / "isolate.toml"), "--regions",
                                str(tmp_path / f"{region}.json"), "--region", region, "--node-name", region]
    try:
        for server in servers.values():
            server.start()

        def healthy(node: LiveServer) -> bool:
            with node.admin() as admin:
                health = admin.get("/v1/regions").json()["health"]
            return len(health) == 1 and all(state["healthy"] for state in health.values())

        for server in servers.values():
            eventually(partial(healthy, server))
        us = servers["us"]
        # Forwarding still works, but eu treats the request as a client's: no forwarded-by for its guest.
        forwarded = get(us, "/echo/x", headers={"x-isolate-region": "eu"})
        assert forwarded.status_code == 200 and forwarded.headers["x-isolate-region"] == "eu"
        assert not [k for k, _ in forwarded.json()["headers"] if k.startswith("x-isolate-") and k != "x-isolate-region"]
        # us -> eu -> us -> eu: the fourth node refuses to forward again.
        looped = get(us, "/loop/x")
        assert looped.status_code == 508, looped.text
        assert looped.json()["error"] == "forwarding_loop" and looped.json()["hops"] == MAX_HOPS
        assert "cluster secret" in looped.json()["detail"]
        # A client cannot make a loop longer by lowering the count; raising it only fails its own request.
        assert get(us, "/loop/x", headers={"x-isolate-hops": "0"}).status_code == 508
        early = get(us, "/loop/x", headers={"x-isolate-hops": str(MAX_HOPS)})
        assert early.status_code == 508 and early.json()["hops"] == MAX_HOPS
        assert early.headers["x-isolate-region"] == "us"  # refused by the first node
    finally:
        for server in servers.values():
            if server.process is not None and server.process.poll() is None:
                server.stop()
