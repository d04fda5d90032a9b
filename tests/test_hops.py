"""Node credentials: hop signatures (HMAC over a forwarded request's identity), the cluster secret
file, and where `isolate serve` takes its admin token from (never needing a command line)."""

from __future__ import annotations

import stat
import subprocess
import sys
import threading
from pathlib import Path

import httpx
import pytest
from live import ROOT, LiveServer

from isolate.http._auth import cluster_secret_path, load_or_create_cluster_secret, load_or_create_secret
from isolate.http._hops import MAX_HOPS, WINDOW, HopSigner, hops_of

FIELDS = (b"us", b"eu", b"POST", b"/echo/x?y=1&q=%41", b"req-123")


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_a_signature_verifies_with_the_same_secret_and_fields() -> None:
    clock = Clock()
    signer = HopSigner("s3cret", clock=clock)
    value = signer.sign(*FIELDS)
    assert value.startswith(b"t=1800000000;v1=") and len(value.split(b"v1=")[1]) == 64
    assert signer.verify(value, *FIELDS)
    assert HopSigner("s3cret", clock=clock).verify(value, *FIELDS)  # another node of the cluster


@pytest.mark.parametrize("index", range(len(FIELDS)))
def test_tampering_with_any_field_fails(index: int) -> None:
    signer = HopSigner("s3cret", clock=Clock())
    value = signer.sign(*FIELDS)
    changed = list(FIELDS)
    changed[index] = changed[index] + b"x"
    assert not signer.verify(value, *changed)


def test_fields_cannot_be_shifted_between_each_other() -> None:
    signer = HopSigner("s3cret", clock=Clock())
    value = signer.sign(b"us", b"eu", b"GET", b"/a", b"id")
    assert not signer.verify(value, b"use", b"u", b"GET", b"/a", b"id")  # same concatenation, other fields


def test_another_secret_or_a_tampered_signature_fails() -> None:
    clock = Clock()
    value = HopSigner("s3cret", clock=clock).sign(*FIELDS)
    assert not HopSigner("other", clock=clock).verify(value, *FIELDS)
    signer = HopSigner("s3cret", clock=clock)
    stamp, _, mac = value.partition(b";v1=")
    flipped = mac[:-1] + (b"0" if mac[-1:] != b"0" else b"1")
    assert not signer.verify(stamp + b";v1=" + flipped, *FIELDS)
    later = str(int(clock.now) + 1).encode()
    assert not signer.verify(b"t=" + later + b";v1=" + mac, *FIELDS)  # the timestamp is signed too
    for garbage in (b"", b"t=;v1=", mac, b"t=abc;v1=" + mac, b"v1=" + mac + b";t=1800000000",
                    b"t=" + b"9" * 40 + b";v1=" + mac):
        assert not signer.verify(garbage, *FIELDS)


def test_stale_and_future_timestamps_fail_outside_the_window() -> None:
    clock = Clock()
    signer = HopSigner("s3cret", clock=clock)
    value = signer.sign(*FIELDS)
    clock.now += WINDOW  # the edge of the window still counts
    assert signer.verify(value, *FIELDS)
    clock.now += 1
    assert not signer.verify(value, *FIELDS)
    clock.now -= 2 * WINDOW + 1  # the receiver's clock behind the sender's by the window
    assert signer.verify(value, *FIELDS)
    clock.now -= 1
    assert not signer.verify(value, *FIELDS)


def test_an_empty_secret_is_refused() -> None:
    with pytest.raises(ValueError):
        HopSigner("")


def test_hop_counts() -> None:
    assert [hops_of(v) for v in (b"0", b"1", b"3", b"999")] == [0, 1, 3, 999]
    assert [hops_of(v) for v in (b"", b"-1", b"1000", b"x", b"1.5", b" 2")] == [0, 0, 0, 0, 0, 0]
    assert MAX_HOPS >= 2  # a request forwarded once (the normal case) may be refused only by placement


def test_cluster_secret_is_created_once_private_and_kept(tmp_path: Path) -> None:
    data = tmp_path / "data"
    secret = load_or_create_cluster_secret(data)
    path = cluster_secret_path(data)
    assert path.name == "cluster-secret" and path.read_text() == secret + "\n"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(secret) >= 43  # 256 random bits, base64url
    assert load_or_create_cluster_secret(data) == secret
    assert load_or_create_cluster_secret(tmp_path / "other") != secret
    path.write_text("")  # an empty file is replaced, and made private again
    path.chmod(0o644)
    fresh = load_or_create_cluster_secret(data)
    assert fresh and fresh != secret and stat.S_IMODE(path.stat().st_mode) == 0o600


def test_processes_creating_the_secret_together_agree(tmp_path: Path) -> None:
    path = tmp_path / "cluster-secret"
    results: list[str] = []
    barrier = threading.Barrier(8)

    def create() -> None:
        barrier.wait()
        results.append(load_or_create_secret(path, "cluster secret"))

    threads = [threading.Thread(target=create) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 8 and len(set(results)) == 1 and path.read_text().strip() == results[0]
    assert [p.name for p in tmp_path.iterdir()] == ["cluster-secret"]  # no temporaries left behind


def test_serve_takes_the_admin_token_from_the_environment_or_a_file(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("token-from-a-file\n")
    for name, extra, env, token in (
        ("file", ["--admin-token-file", str(tmp_path / "token")], {}, "token-from-a-file"),
        ("env", [], {"ISOLATE_ADMIN_TOKEN": "token-from-the-env"}, "token-from-the-env"),
    ):
        with LiveServer(tmp_path / name, *extra, env=env) as server:
            for given, status in ((token, 200), ("not-" + token, 401)):
                answer = httpx.get(f"{server.admin_url}/v1/modules", headers={"authorization": f"Bearer {given}"})
                assert answer.status_code == status
            assert server.process is not None
            assert token.encode() not in Path(f"/proc/{server.process.pid}/cmdline").read_bytes()
    env = {"ISOLATE_ADMIN_TOKEN": "x", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    both = subprocess.run([sys.executable, "-m", "isolate.cli", "serve", "--admin-token-file", str(tmp_path / "token"),
                           "--data-dir", str(tmp_path / "both")], cwd=ROOT, capture_output=True, text=True, env=env,
                          timeout=60)
    assert both.returncode == 1 and "give the admin token once" in both.stderr
