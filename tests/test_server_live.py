"""Real servers on loopback: the two listeners, restarts, the manifest, parallel guests, raw HTTP limits."""

from __future__ import annotations

import re
import socket
import threading
from pathlib import Path

import guests as g
import httpx
import pytest
from live import LiveServer, core_manifest


def test_upload_route_call_rollback_and_restart(tmp_path: Path) -> None:
    with LiveServer(tmp_path / "data") as server, server.admin() as admin, server.edge() as edge:
        token_file = server.data_dir / "admin-token"
        assert token_file.stat().st_mode & 0o777 == 0o600
        for body in (b"one", b"two"):
            response = admin.put("/v1/modules/site", content=g.wasm(g.module(response=g.response_bytes(body=body))))
            assert response.status_code == 201
        assert admin.put("/v1/routes", json={"routes": [{"path": "/site/...", "module": "site"}]}).status_code == 200
        assert edge.get("/site/any/thing").text == "two"
        assert admin.post("/v1/modules/site/rollback").json()["active_version"] == 1
        assert edge.get("/site").text == "one"
        assert httpx.get(f"{server.admin_url}/v1/modules").status_code == 401

        server.restart()
        assert edge.get("/site").text == "one"  # modules, active version and routes all survived
        assert admin.get("/v1/routes").json()["routes"][0]["module"] == "site"
        assert server.stop() == 0


def test_cpu_bound_guest_does_not_stall_other_requests(tmp_path: Path) -> None:
    with LiveServer(tmp_path / "data") as server, server.admin() as admin:
        admin.put("/v1/modules/spin", content=g.wasm(g.module(g.LOOP)), params={"timeout": "3s"})
        admin.put("/v1/modules/hello", content=g.wasm(g.HELLO))
        admin.put("/v1/routes", json={"routes": [{"path": "/spin", "module": "spin", "cache": False},
                                                 {"path": "/hello", "module": "hello"}]})
        results: list[int] = []

        def spin() -> None:
            with server.edge() as client:
                results.append(client.get("/spin").status_code)

        spinners = [threading.Thread(target=spin) for _ in range(2)]
        for t in spinners:
            t.start()
        with server.edge() as edge:
            for _ in range(30):
                assert edge.get("/hello").text == "hello"
        # every hello answered while both CPU-bound guests were still running
        assert all(t.is_alive() for t in spinners)
        for t in spinners:
            t.join()
        assert results == [504, 504]


def test_overload_replies_503(tmp_path: Path) -> None:
    with LiveServer(tmp_path / "data", "--threads", "1", "--queue-limit", "0") as server, server.admin() as admin:
        admin.put("/v1/modules/spin", content=g.wasm(g.module(g.LOOP)), params={"timeout": "2s"})
        # Off the response cache: it would make the second GET wait for the first (coalescing).
        admin.put("/v1/routes", json={"routes": [{"path": "/spin", "module": "spin", "cache": False}]})
        statuses: list[int] = []
        started = threading.Event()

        def spin() -> None:
            with server.edge() as client:
                started.set()
                statuses.append(client.get("/spin").status_code)

        first = threading.Thread(target=spin)
        first.start()
        started.wait()
        with server.edge() as edge:
            for _ in range(200):  # until the first request occupies the only worker
                response = edge.get("/spin")
                if response.status_code == 503:
                    break
            assert response.status_code == 503
            assert response.json()["error"] == "overloaded" and response.headers["retry-after"] == "1"
        first.join()
        assert statuses == [504]


def raw_http(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            chunks.append(chunk)
            head, sep, body = b"".join(chunks).partition(b"\r\n\r\n")
            length = re.search(rb"(?im)^content-length: *(\d+)", head)
            if sep and length and len(body) >= int(length.group(1)):
                break  # one whole answer (the connection may stay open for keep-alive)
        return b"".join(chunks)


def test_body_limit_without_content_length_and_url_limit(tmp_path: Path) -> None:
    with LiveServer(tmp_path / "data", "--max-body-size", "1KiB") as server, server.admin() as admin:
        admin.put("/v1/modules/echo", content=g.wasm(g.ECHO))
        admin.put("/v1/routes", json={"routes": [{"path": "/...", "module": "echo"}]})
        # chunked upload: no Content-Length to check up front, the limit applies while reading
        chunk = b"a" * 600
        request = (b"POST /x HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                   + b"%x\r\n%s\r\n" % (len(chunk), chunk) * 2 + b"0\r\n\r\n")
        reply = raw_http(server.port, request)
        assert reply.startswith(b"HTTP/1.1 413") and b"payload_too_large" in reply
        # a declared length over the limit is refused before the body is sent
        reply = raw_http(server.port, b"POST /x HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000\r\n\r\n")
        assert reply.startswith(b"HTTP/1.1 413")
        with server.edge() as edge:
            assert edge.get("/" + "a" * 17000).status_code == 414
            assert edge.post("/x", content=b"ok").status_code == 200  # still serving


def test_manifest_of_make_serve(tmp_path: Path) -> None:
    manifest = core_manifest(tmp_path / "isolate.toml")  # tests/test_samples.py serves the component samples
    with LiveServer(tmp_path / "data", "--manifest", str(manifest)) as server, server.edge() as edge:
        response = edge.get("/hello")
        assert response.status_code == 200
        assert response.text == "Hello, world! (from C, region local, client in local)\n"
        assert edge.get("/wat").text == "hello from isolate\n"
        versions = [m["active_version"] for m in server.admin().get("/v1/modules").json()["modules"]]
        server.restart()  # the same manifest again deploys nothing new
        assert [m["active_version"] for m in server.admin().get("/v1/modules").json()["modules"]] == versions


def test_bad_manifest_fails_with_line_and_reason(tmp_path: Path) -> None:
    manifest = tmp_path / "isolate.toml"
    manifest.write_text('[modules.hello]\npath = "x.wasm"\nlimits = { memory = "lots" }\n')
    server = LiveServer(tmp_path / "data", "--manifest", str(manifest))
    with pytest.raises(RuntimeError) as info:
        server.start()
    assert f"{manifest}:3: modules.hello.limits: memory: not a size: 'lots'" in str(info.value)


def test_listener_port_in_use_fails_clearly(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        server = LiveServer(tmp_path / "data")
        server.port = blocker.getsockname()[1]
        with pytest.raises(RuntimeError, match="cannot listen"):
            server.start()


@pytest.mark.parametrize(("text", "line", "reason"), [
    ('[modules.hello]\npath = "hello.wat"\n\n[[route]]\npath = "/x"\nmodule = "hello"\n', 4, "unknown table(s) route"),
    ('# a comment\n[modules.hello]\n\npath = "missing.wasm"\n', 4, "modules.hello.path: no such file or directory"),
])
def test_manifest_mistakes_name_their_line(tmp_path: Path, text: str, line: int, reason: str) -> None:
    from isolate.errors import ManifestError
    from isolate.manifest import load

    (tmp_path / "hello.wat").write_text("(module)")
    manifest = tmp_path / "isolate.toml"
    manifest.write_text(text)
    with pytest.raises(ManifestError) as info:
        load(manifest)
    assert info.value.detail.startswith(f"{manifest}:{line}: ") and reason in info.value.detail
