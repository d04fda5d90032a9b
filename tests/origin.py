"""A real HTTP/1.1 origin on loopback for outbound-call tests: slow, failing, redirecting, endless, huge."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit


class Origin:
    """`with Origin() as origin:` serves on 127.0.0.1:origin.port; `origin.seen` lists requests."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        """With `tls`, it serves HTTPS (its url then starts with https://)."""
        self.seen: list[dict[str, Any]] = []
        self.connections = 0
        self.release = threading.Event()  # /hold answers once this is set (or after 30 s)
        origin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            disable_nagle_algorithm = True  # headers and body are two writes: no 40 ms delayed-ACK stall

            def log_message(self, *args: Any) -> None:
                pass

            def setup(self) -> None:
                super().setup()
                origin.connections += 1

            def do_GET(self) -> None:
                self.handle_any()

            do_POST = do_PUT = do_DELETE = do_HEAD = do_GET

            def handle_any(self) -> None:
                url = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                origin.seen.append({"method": self.command, "path": url.path, "headers": dict(self.headers.items()),
                                    "body": body})
                route = getattr(self, "route_" + url.path.strip("/").split("/")[0].replace("-", "_"), None)
                if route is None:
                    self.answer(404, b"no such origin route")
                else:
                    route(query, body)

            def answer(self, status: int, body: bytes, **headers: str) -> None:
                self.send_response(status)
                self.send_header("content-length", str(len(body)))
                self.send_header("x-origin", "test-origin")
                for name, value in headers.items():
                    self.send_header(name.replace("_", "-"), value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def route_ok(self, query: dict[str, str], body: bytes) -> None:
                self.answer(200, b"hello from origin")

            def route_echo(self, query: dict[str, str], body: bytes) -> None:
                seen = {"method": self.command, "headers": {k.lower(): v for k, v in self.headers.items()},
                        "body": body.decode("latin-1")}
                self.answer(200, json.dumps(seen).encode(), content_type="application/json")

            def route_slow(self, query: dict[str, str], body: bytes) -> None:
                time.sleep(float(query.get("s", "1")))
                self.answer(200, b"slow answer")

            def route_hold(self, query: dict[str, str], body: bytes) -> None:
                origin.release.wait(30)
                self.answer(200, b"held answer")

            def route_status(self, query: dict[str, str], body: bytes) -> None:
                self.answer(int(query.get("code", "500")), b"status")

            def route_redirect(self, query: dict[str, str], body: bytes) -> None:
                self.answer(int(query.get("code", "302")), b"", location=query.get("to", "/ok"))

            def route_huge(self, query: dict[str, str], body: bytes) -> None:
                self.answer(200, b"x" * int(query.get("n", "1000")))

            def route_reset(self, query: dict[str, str], body: bytes) -> None:
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
                self.connection.close()
                self.close_connection = True

            def route_garbage(self, query: dict[str, str], body: bytes) -> None:
                self.wfile.write(b"NOT HTTP AT ALL\r\n\r\n")
                self.close_connection = True

            def route_endless(self, query: dict[str, str], body: bytes) -> None:
                """A chunked body that never ends (bounded here at 60 s, far past any test's deadline)."""
                self.send_response(200)
                self.send_header("transfer-encoding", "chunked")
                self.end_headers()
                delay = float(query.get("every", "0.01"))
                stop = time.monotonic() + 60
                try:
                    while time.monotonic() < stop:
                        self.wfile.write(b"10\r\n0123456789abcdef\r\n")
                        self.wfile.flush()
                        time.sleep(delay)
                except OSError:
                    pass
                self.close_connection = True

        self.server = _Server(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Origin:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.server.shutdown()
        self.server.server_close()

    def hits(self, path: str) -> int:
        return sum(1 for request in self.seen if request["path"] == path)


class _Server(ThreadingHTTPServer):
    request_queue_size = 512  # a hundred guests connect at once
    daemon_threads = True


def closed_port() -> int:
    """A loopback port with nothing listening on it (an origin that is down)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = int(sock.getsockname()[1])
    sock.close()
    return port


def certificates(directory: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A throwaway CA and a certificate it signed for `localhost`: (the origin's server context, a
    client context trusting only that CA). Made with the openssl command line."""
    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=isolate test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "origin.key", "-out", "origin.csr",
            "-subj", "/CN=localhost")
    (directory / "ext.cnf").write_text("subjectAltName=DNS:localhost\n")
    openssl("x509", "-req", "-in", "origin.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "origin.pem", "-days", "2", "-extfile", "ext.cnf")
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(directory / "origin.pem", directory / "origin.key")
    client = ssl.create_default_context(cafile=str(directory / "ca.pem"))
    return server, client
