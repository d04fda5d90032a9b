"""What guests may reach, in-process: allow-list entries, the internal-address guard, the host calls'
edge cases (buffers, grants, bad pointers), secrets storage and the manifest's grants."""

from __future__ import annotations

import ipaddress
import json
import struct
from pathlib import Path

import guests as g
import msgpack
import pytest
from origin import Origin, certificates

from isolate import Config, GuestError, Host, InvalidConfig
from isolate.capabilities import GuestIO, Outbound, SqliteKeyValue, parse_allowed_host
from isolate.capabilities._policy import is_internal, parse_url
from isolate.errors import ManifestError
from isolate.manifest import load


@pytest.mark.parametrize("text, scheme, host, port", [
    ("https://api.example.com", "https", "api.example.com", 443),
    ("http://127.0.0.1:9000", "http", "127.0.0.1", 9000),
    ("https://*.example.org", "https", "*.example.org", 443),
    ("http://[::1]:8080", "http", "::1", 8080),
    ("http://api.example.com:*", "http", "api.example.com", None),
    ("HTTPS://API.Example.COM/", "https", "api.example.com", 443),
])
def test_allowed_host_entries(text: str, scheme: str, host: str, port: int | None) -> None:
    entry = parse_allowed_host(text)
    assert (entry.scheme, entry.host, entry.port) == (scheme, host, port)


@pytest.mark.parametrize("text", ["api.example.com", "ftp://example.com", "https://", "https://exa mple.com",
                                  "https://user@example.com", "https://example.com:99999", "https://*",
                                  "https://a.*.example.com", "https://example.com/path", "http://[::1", 7])
def test_bad_allowed_host_entries(text: object) -> None:
    with pytest.raises(InvalidConfig):
        parse_allowed_host(text)


def test_wildcards_match_subdomains_only() -> None:
    assert not parse_allowed_host("http://*.0.0.1").matches("http", "127.0.0.1", 80)  # names, not addresses
    entry = parse_allowed_host("https://*.example.org")
    assert entry.matches("https", "a.example.org", 443) and entry.matches("https", "a.b.example.org", 443)
    assert not entry.matches("https", "example.org", 443)
    assert not entry.matches("https", "evilexample.org", 443)
    assert not entry.matches("http", "a.example.org", 80)
    assert not entry.matches("https", "a.example.org", 8443)


@pytest.mark.parametrize("address", [
    "127.0.0.1", "127.255.0.9", "10.1.2.3", "172.16.0.1", "172.31.255.255", "192.168.1.1", "169.254.169.254",
    "100.64.0.1", "0.0.0.0", "::1", "::", "fc00::1", "fd00:ec2::254", "fe80::1", "::ffff:127.0.0.1",
    "::ffff:10.0.0.1", "::ffff:169.254.169.254", "2002:7f00:1::", "64:ff9b::a9fe:a9fe", "::127.0.0.1",
    "224.0.0.1", "ff02::1", "::ffff:0:7f00:1", "::ffff:0:a00:1", "64:ff9b:1::7f00:1", "64:ff9b:1::808:808",
    "fec0::1",
])
def test_internal_addresses(address: str) -> None:
    assert is_internal(ipaddress.ip_address(address))


@pytest.mark.parametrize("address", ["93.184.216.34", "8.8.8.8", "2606:4700:4700::1111", "::ffff:8.8.8.8"])
def test_public_addresses(address: str) -> None:
    assert not is_internal(ipaddress.ip_address(address))


@pytest.mark.parametrize("url", ["http://user:pw@example.com/", "http://exa\\mple.com/", "http://example.com:0/",
                                 "//example.com/", "http://ex ample.com/", "file:///etc/passwd", "http://:80/"])
def test_bad_urls(url: str) -> None:
    with pytest.raises(ValueError):
        parse_url(url)


def test_url_normalisation() -> None:
    target = parse_url("HTTP://Example.COM:80/a?b=c#frag")
    assert (target.url, target.authority, target.target) == ("http://example.com/a?b=c", "example.com", "/a?b=c")
    assert parse_url("http://[::1]:8080").authority == "[::1]:8080"


# -- the guard, with a resolver standing in for DNS names that cannot resolve here ------------------

def io_for(outbound: Outbound, kv: SqliteKeyValue, allowed: list[str], **kwargs: object) -> GuestIO:
    import time

    settings: dict[str, object] = dict(
        outbound=outbound, kv=kv, allowed_hosts=[parse_allowed_host(a) for a in allowed], stores=["default"],
        outbound_requests=16, outbound_timeout=5.0, outbound_response_size=1 << 20, kv_operations=100,
        deadline=time.perf_counter() + 10, request_id="rid", traceparent=None, tracestate=None,
        stopping=lambda: False, note=lambda level, text: None)
    settings.update(kwargs)
    return GuestIO(**settings)  # type: ignore[arg-type]


def envelope(url: str, **extra: object) -> bytes:
    return bytes(msgpack.packb({"url": url, **extra}))


def test_names_resolving_to_internal_addresses_need_an_exact_entry(tmp_path: Path) -> None:
    with Origin() as origin:
        names = {"internal.example.test": ["127.0.0.1"], "mixed.example.test": ["93.184.216.34", "127.0.0.1"],
                 "mapped.example.test": ["::ffff:127.0.0.1"]}
        outbound = Outbound(resolve=lambda name, port: names[name])
        kv = SqliteKeyValue(tmp_path / "kv.sqlite3")
        wildcard = io_for(outbound, kv, [f"http://*.example.test:{origin.port}"])
        for name in names:
            assert wildcard.http_send(envelope(f"http://{name}:{origin.port}/ok")) == -3  # blocked_address
        assert origin.seen == []  # refused before any connection
        exact = io_for(outbound, kv, [f"http://internal.example.test:{origin.port}"])
        size = exact.http_send(envelope(f"http://internal.example.test:{origin.port}/echo"))
        assert size > 0
        answer = msgpack.unpackb(exact.http_take(size))
        assert json.loads(answer["body"])["headers"]["host"] == f"internal.example.test:{origin.port}"
        # A redirect is checked again: from an allowed origin to a name that resolves inside.
        hop = io_for(outbound, kv, [origin.url, f"http://*.example.test:{origin.port}"])
        target = f"http://internal.example.test:{origin.port}/ok"
        assert hop.http_send(envelope(f"{origin.url}/redirect?to={target}", redirects=1)) == -3
        outbound.close()


def test_hop_by_hop_and_host_set_headers_are_not_sent(tmp_path: Path) -> None:
    with Origin() as origin:
        outbound = Outbound()
        io = io_for(outbound, SqliteKeyValue(tmp_path / "kv.sqlite3"), [origin.url],
                    traceparent="00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        headers = [["connection", "close"], ["transfer-encoding", "chunked"], ["host", "evil.example"],
                   ["x-request-id", "forged"], ["upgrade", "h2c"], ["content-length", "999"], ["x-kept", "yes"]]
        size = io.http_send(envelope(f"{origin.url}/echo", headers=headers, method="PUT", body=b"abc"))
        seen = json.loads(msgpack.unpackb(io.http_take(size))["body"])
        assert seen["headers"]["x-kept"] == "yes" and seen["body"] == "abc"
        assert seen["headers"]["host"] == f"127.0.0.1:{origin.port}"
        assert seen["headers"]["x-request-id"] == "rid"
        assert seen["headers"]["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c")
        assert seen["headers"]["content-length"] == "3"
        assert not {"connection", "transfer-encoding", "upgrade"} & set(seen["headers"])
        outbound.close()


@pytest.mark.parametrize("bad", [
    b"\xc1", msgpack.packb([1, 2]), msgpack.packb({"url": 5}), msgpack.packb({"url": "http://a/", "method": "G T"}),
    msgpack.packb({"url": "http://a/", "headers": [["bad name", "v"]]}),
    msgpack.packb({"url": "http://a/", "headers": [["x", "a\r\nb"]]}),
    msgpack.packb({"url": "http://a/", "redirects": 11}), msgpack.packb({"url": "http://a/", "timeout_ms": -1}),
    msgpack.packb({"url": "http://a/", "body": 7}), msgpack.packb({"url": "http://a/", "method": "CONNECT"}),
])
def test_bad_request_envelopes(tmp_path: Path, bad: bytes) -> None:
    io = io_for(Outbound(), SqliteKeyValue(tmp_path / "kv.sqlite3"), ["http://a"])
    assert io.http_send(bad) == -1


def test_kv_values_larger_than_the_buffer_read_consistently(tmp_path: Path) -> None:
    kv = SqliteKeyValue(tmp_path / "kv.sqlite3")
    io = io_for(Outbound(), kv, [])
    store = io.kv_open(b"default")
    assert store == 0 and io.kv_open(b"other") == -4
    kv.set("default", b"k", b"first value")
    assert io.kv_get(store, b"k", 4) == b"first value"  # too big for 4 bytes: kept for the next call
    kv.set("default", b"k", b"changed meanwhile")
    assert io.kv_get(store, b"k", 64) == b"first value"  # the same read, whole
    assert io.kv_get(store, b"k", 64) == b"changed meanwhile"  # a new read
    assert io.kv_get(7, b"k", 64) == -4 and io.kv_get(-1, b"k", 64) == -4


# -- through the engine (inline WAT guests) --------------------------------------------------------

def result(host: Host, name: str) -> int:
    return int(struct.unpack("<i", host.invoke(name).body)[0])


def test_host_calls_check_guest_pointers(host: Host) -> None:
    host.deploy("wild", g.io_call("(call $http_send (i32.const 65530) (i32.const 100))"))
    with pytest.raises(GuestError) as info:
        host.invoke("wild")
    assert info.value.kind == "abi" and "outside guest memory" in info.value.detail
    host.deploy("wild-out", g.io_call("(call $kv_get (i32.const 0) (i32.const 200) (i32.const 1) (i32.const 65535)"
                                      " (i32.const 2))", b"k"), kv_stores=["default"])
    with pytest.raises(GuestError) as info:
        host.invoke("wild-out")
    assert info.value.kind == "abi"


def test_grants_are_needed(host: Host) -> None:
    host.deploy("open", g.io_call("(call $kv_open (i32.const 200) (i32.const 7))", b"default"))
    assert result(host, "open") == -4  # no store granted
    host.configure("open", kv_stores=["default"])
    assert result(host, "open") == 0
    host.deploy("take", g.io_call("(call $http_take (i32.const 300) (i32.const 10))"))
    assert result(host, "take") == -1  # nothing held


def test_a_small_buffer_keeps_the_answer(host: Host) -> None:
    with Origin() as origin:
        env = envelope(f"{origin.url}/ok")
        call = (f"(drop (call $http_send (i32.const {g.ENVELOPE_AT}) (i32.const {len(env)})))"
                "(drop (call $http_take (i32.const 300) (i32.const 4)))"  # too small: nothing copied, kept
                "(call $http_take (i32.const 300) (i32.const 4000))")
        wat = g.io_call(call).replace('(memory (export "memory") 1)', '(memory (export "memory") 2)')
        wat = wat.replace("\n)", f'\n(data (i32.const {g.ENVELOPE_AT}) "{g.data_string(env)}"))', 1)
        host.deploy("small", wat, allowed_hosts=[origin.url])
        assert result(host, "small") > 0


def test_secret_names_and_variables_do_not_clash(host: Host) -> None:
    host.deploy("m", g.HELLO, variables={"a": "1"})
    with pytest.raises(InvalidConfig):
        host.configure("m", secrets={"a": "x"})
    host.configure("m", secrets={"b": "x"})
    with pytest.raises(InvalidConfig):
        host.configure("m", variables={"b": "2"})
    assert host.module("m").secrets == ("b",)
    host.configure("m", secrets={"b": None})
    assert host.module("m").secrets == ()


def test_damaged_secrets_fail_the_module_not_the_host(tmp_path: Path) -> None:
    with Host(Config(data_dir=tmp_path)) as host:
        host.deploy("m", g.HELLO, secrets={"k": "v"})
    (tmp_path / "secrets" / "m.json").write_text("{broken")
    with Host(Config(data_dir=tmp_path)) as host:
        host.deploy("other", g.HELLO)
        assert host.invoke("other").status == 200
        with pytest.raises(Exception) as info:
            host.invoke("m")
        assert getattr(info.value, "kind", None) == "storage"
        host.configure("m", secrets={"k": "again"})
        assert host.invoke("m").status == 200


def test_manifest_grants(tmp_path: Path) -> None:
    (tmp_path / "hello.wat").write_text(g.HELLO)
    (tmp_path / "db").write_text("file-secret\n")
    manifest = tmp_path / "isolate.toml"
    manifest.write_text("""
[modules.m]
path = "hello.wat"
allowed_hosts = ["https://api.example.com", "https://*.example.org"]
key_value_stores = ["default"]
secrets = { api_key = { env = "TEST_API_KEY" }, db = { file = "db" } }
""")
    spec = load(manifest, {"TEST_API_KEY": "env-secret"}).modules[0]
    assert spec.allowed_hosts == ("https://api.example.com", "https://*.example.org")
    assert spec.kv_stores == ("default",) and spec.secrets == {"api_key": "env-secret", "db": "file-secret"}
    assert "env-secret" not in repr(spec)
    with pytest.raises(ManifestError, match=r"isolate.toml:6: modules.m.secrets: api_key: the environment variable"):
        load(manifest, {})
    for line, expected in [('allowed_hosts = ["ftp://x"]', "the scheme must be http or https"),
                           ('key_value_stores = ["Bad Name"]', "store name"),
                           ('secrets = { k = "plain" }', "give exactly one source")]:
        manifest.write_text(f'[modules.m]\npath = "hello.wat"\n{line}\n')
        with pytest.raises(ManifestError, match=expected) as info:
            load(manifest, {})
        assert "isolate.toml:3:" in str(info.value)


def test_abi_md_vectors() -> None:
    """The I/O envelopes of ABI.md, byte for byte: the host reads the request and writes the rest."""
    import re

    from isolate.capabilities import Page
    from isolate.capabilities._client import Answer
    from isolate.capabilities._kv import encode_page
    from isolate.capabilities._outbound import decode_call, encode_answer

    text = (Path(__file__).resolve().parent.parent / "guest-sdk" / "ABI.md").read_text()
    section = text[text.index("### Vectors for the I/O envelopes"):text.index("### Secrets")]
    request, answer, page, last = (bytes.fromhex(block) for block in re.findall(r"```\n(.*?)```", section, re.S))
    call = decode_call(request)
    assert (call.method, call.target.url, call.headers, call.body, call.redirects, call.timeout) == (
        "POST", "https://api.example.com/v1/items?page=2", [("content-type", b"application/json")], b'{"a":1}', 0,
        0.5)
    assert encode_answer(Answer(200, [(b"content-type", b"text/plain")], b"ok"), call.target.url) == answer
    assert encode_page(Page([b"todo:1", b"todo:2"], b"todo:2")) == page
    assert encode_page(Page([], None)) == last


def test_more_descriptors_than_select_handles(tmp_path: Path) -> None:
    """A busy server has descriptors above 1024: waiting on a socket must not use select()."""
    import resource
    import socket

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 2048:
        pytest.skip("the hard descriptor limit is below 2048")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 2048), hard))
    held = [socket.socket() for _ in range(1100)]
    try:
        with Origin() as origin:
            outbound = Outbound()
            io = io_for(outbound, SqliteKeyValue(tmp_path / "kv.sqlite3"), [origin.url])
            for _ in range(3):  # a new connection, then pooled ones checked for staleness
                size = io.http_send(envelope(f"{origin.url}/ok"))
                assert size > 0 and msgpack.unpackb(io.http_take(size))["body"] == b"hello from origin"
            outbound.close()
    finally:
        for sock in held:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_one_modules_slow_names_do_not_hold_up_anothers(tmp_path: Path) -> None:
    import threading
    import time

    release = threading.Event()

    def resolve(name: str, port: int) -> list[str]:
        if name.startswith("slow"):
            release.wait(10)  # a lookup that cannot be cancelled
        return ["127.0.0.1"]

    with Origin() as origin:
        outbound = Outbound(resolve=resolve)
        kv = SqliteKeyValue(tmp_path / "kv.sqlite3")
        try:
            names = [f"http://slow{i}.example.test:{origin.port}" for i in range(12)]
            attacker = io_for(outbound, kv, names, module="attacker", outbound_timeout=0.05)
            for name in names:
                assert attacker.http_send(envelope(f"{name}/ok")) in (-5, -6)  # its own lookups stall
            victim = io_for(outbound, kv, [f"http://fast.example.test:{origin.port}"], module="victim",
                            outbound_timeout=5.0)
            started = time.monotonic()
            size = victim.http_send(envelope(f"http://fast.example.test:{origin.port}/ok"))
            assert size > 0 and time.monotonic() - started < 4  # not queued behind the attacker's lookups
        finally:
            release.set()
            outbound.close()


def test_non_ascii_urls_are_percent_encoded(tmp_path: Path) -> None:
    with Origin() as origin:
        io = io_for(Outbound(), SqliteKeyValue(tmp_path / "kv.sqlite3"), [origin.url])
        size = io.http_send(envelope(f"{origin.url}/echo/caf\u00e9?q=\u00fc"))
        assert size > 0
        assert origin.seen[-1]["path"] == "/echo/caf%C3%A9"


def test_a_head_answer_is_not_judged_by_its_length(tmp_path: Path) -> None:
    with Origin() as origin:
        io = io_for(Outbound(), SqliteKeyValue(tmp_path / "kv.sqlite3"), [origin.url], outbound_response_size=1000)
        size = io.http_send(envelope(f"{origin.url}/huge?n=100000", method="HEAD"))
        assert size > 0
        answer = msgpack.unpackb(io.http_take(size))
        assert answer["status"] == 200 and answer["body"] == b""
        assert io.http_send(envelope(f"{origin.url}/huge?n=100000")) == -7


def test_refusals_log_the_origin_not_the_query(tmp_path: Path) -> None:
    notes: list[str] = []
    with Origin() as origin:
        io = io_for(Outbound(), SqliteKeyValue(tmp_path / "kv.sqlite3"), [origin.url], outbound_requests=0,
                    note=lambda level, text: notes.append(text))
        assert io.http_send(envelope(f"{origin.url}/ok?api_key=hunter2")) == -4
    assert notes and "hunter2" not in notes[0] and origin.url in notes[0]


def test_a_page_too_big_for_the_buffer_is_not_copied(host: Host) -> None:
    host.kv.set("default", b"key-one", b"v")
    call = ("(call $kv_list (call $kv_open (i32.const 200) (i32.const 7)) (i32.const 0) (i32.const 0)"
            " (i32.const 0) (i32.const 0) (i32.const 400) (i32.const 4))")
    sentinel = "(i32.store (i32.const 400) (i32.const 0x41414141))"
    # The page needs more than the 4 bytes offered: its length comes back and the buffer is untouched.
    host.deploy("length", g.io_call(f"(block (result i32) {sentinel} {call})", b"default"), kv_stores=["default"])
    assert result(host, "length") > 4
    wat = g.io_call(f"(block (result i32) {sentinel} (drop {call}) (i32.load (i32.const 400)))", b"default")
    host.deploy("lister2", wat, kv_stores=["default"])
    assert result(host, "lister2") == 0x41414141


def test_https_origins_are_verified_and_named(tmp_path: Path) -> None:
    """TLS: the certificate must be valid for the name in the URL, sent as SNI though the connection
    goes to the checked address. A CA of the test's own stands in for the public roots."""
    server_tls, client_tls = certificates(tmp_path)
    with Origin(server_tls) as origin:
        url = f"https://localhost:{origin.port}"
        trusting = Outbound(tls=client_tls)
        io = io_for(trusting, SqliteKeyValue(tmp_path / "kv.sqlite3"), [url])
        size = io.http_send(envelope(f"{url}/echo"))
        assert size > 0
        answer = msgpack.unpackb(io.http_take(size))
        assert answer["status"] == 200 and json.loads(answer["body"])["headers"]["host"] == f"localhost:{origin.port}"
        by_address = io_for(trusting, SqliteKeyValue(tmp_path / "kv.sqlite3"), [origin.url])
        assert by_address.http_send(envelope(f"{origin.url}/ok")) == -5  # the certificate names localhost only
        system = io_for(Outbound(), SqliteKeyValue(tmp_path / "kv.sqlite3"), [url])
        assert system.http_send(envelope(f"{url}/ok")) == -5  # not a trusted root
        trusting.close()


def test_many_guest_threads_write_one_store(host: Host) -> None:
    """Guests on many threads at once: every acknowledged write is there and the size accounting holds."""
    from concurrent.futures import ThreadPoolExecutor

    body = g.response_bytes(body=b"\x00" * 4)
    at = g.RESPONSE_AT + len(body) - 4

    def writer(i: int) -> str:
        """A guest writing key wNN = wNN (its own name, at 200) and answering kv_set's result."""
        name = f"w{i:02d}"
        call = (f"(i32.store (i32.const {at}) (call $kv_set (call $kv_open (i32.const 300) (i32.const 7))"
                f" (i32.const 200) (i32.const 3) (i32.const 200) (i32.const 3)))")
        wat = g.module(f"{call} {g.returns(body)}", response=body, imports=g.IO_IMPORTS,
                       extra=f'(data (i32.const 200) "{name}") (data (i32.const 300) "default")')
        return wat

    for i in range(16):
        host.deploy(f"w{i:02d}", writer(i), kv_stores=["default"], limits={"timeout": 5.0})

    def run(i: int) -> list[int]:
        return [int(struct.unpack("<i", host.invoke(f"w{i % 16:02d}").body)[0]) for _ in range(20)]

    with ThreadPoolExecutor(12) as pool:  # the test host pools 16 isolates
        results = [code for codes in pool.map(run, range(48)) for code in codes]
    assert results == [0] * 960
    for i in range(16):
        assert host.kv.get("default", f"w{i:02d}".encode()) == f"w{i:02d}".encode()
    assert host.kv.stores()["default"] == (16, 16 * 6)  # 16 keys of 3 bytes with 3-byte values
