"""What the host acknowledged survives restarts, corruption of compiled code, and crashes mid-deploy."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import guests as g
import pytest
from conftest import HostFactory

from isolate import Limits, StorageError


def body(text: str) -> bytes:
    return g.wasm(g.module(response=g.response_bytes(body=text.encode())))


def artifacts(data_dir: Path) -> list[Path]:
    return sorted(data_dir.glob("compiled/*/*.cwasm"))


def test_restart_serves_everything_acknowledged(make_host: HostFactory, tmp_path: Path) -> None:
    first = make_host()
    first.deploy("a", body("a1"))
    first.deploy("a", body("a2"))
    first.deploy("b", body("b1"), limits={"timeout": 2.0}, variables={"k": "v"})
    first.rollback("a")
    before = first.modules()
    first.close()

    second = make_host()
    assert second.modules() == before
    # modules load lazily on first use, from the precompiled artifacts (no recompilation)
    assert second.statistics().module_cache.size == 0
    assert second.invoke("a").body == b"a1"
    assert second.invoke("b").body == b"b1"
    stats = second.statistics()
    assert stats.module_cache.misses == 2 and stats.artifact_recompiles == 0
    assert second.module("b").limits.timeout == 2.0 and second.module("b").variables == {"k": "v"}


def test_flipped_byte_in_artifact_is_detected_and_recompiled(make_host: HostFactory, tmp_path: Path) -> None:
    first = make_host()
    first.deploy("m", body("intact"))
    first.close()
    [artifact] = artifacts(tmp_path / "data")
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0x01
    artifact.write_bytes(bytes(data))

    second = make_host()
    assert second.invoke("m").body == b"intact"
    assert second.statistics().artifact_recompiles == 1
    assert artifact.read_bytes() != bytes(data)  # resealed with fresh code
    second.close()

    third = make_host()
    assert third.invoke("m").body == b"intact"
    assert third.statistics().artifact_recompiles == 0


def test_missing_seal_is_not_trusted(make_host: HostFactory, tmp_path: Path) -> None:
    first = make_host()
    first.deploy("m", body("x"))
    first.close()
    for seal in (tmp_path / "data").glob("compiled/*/*.json"):
        seal.unlink()
    second = make_host()
    assert second.invoke("m").body == b"x"
    assert second.statistics().artifact_recompiles == 1


def test_changed_engine_fingerprint_recompiles(make_host: HostFactory, tmp_path: Path) -> None:
    first = make_host()
    first.deploy("m", body("x"))
    first.close()
    second = make_host(limits=Limits(stack=1 << 20))  # different engine settings
    assert second.statistics().engine_fingerprint != first.statistics().engine_fingerprint
    assert second.invoke("m").body == b"x"
    assert second.statistics().artifact_recompiles == 1
    assert len(artifacts(tmp_path / "data")) == 2  # one per fingerprint


def test_corrupt_wasm_and_artifact_is_a_storage_error(make_host: HostFactory, tmp_path: Path) -> None:
    first = make_host()
    first.deploy("m", body("x"))
    first.deploy("other", body("y"))
    first.close()
    digest = first.module("m").active.digest
    (tmp_path / "data" / "wasm" / f"{digest}.wasm").write_bytes(b"garbage")
    for seal in (tmp_path / "data").glob(f"compiled/*/{digest}.json"):
        seal.unlink()
    second = make_host()
    with pytest.raises(StorageError, match="corrupt"):
        second.invoke("m")
    assert second.invoke("other").body == b"y"


CRASHING_DEPLOY = textwrap.dedent(
    """
    import os, sys
    from isolate import Config, Host
    from isolate.registry import ModuleStore

    def crash(self, record):
        os._exit(17)  # the process dies after the blob and artifact, before the metadata

    ModuleStore._commit = crash
    host = Host(Config(data_dir=sys.argv[1], pool_instances=4))
    host.deploy("site", open(sys.argv[2], "rb").read())
    """
)


def test_deploy_interrupted_before_metadata_keeps_old_version(make_host: HostFactory, tmp_path: Path) -> None:
    first = make_host()
    first.deploy("site", body("old"))
    first.close()
    new = tmp_path / "new.wasm"
    new.write_bytes(body("new"))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    result = subprocess.run(
        [sys.executable, "-c", CRASHING_DEPLOY, str(tmp_path / "data"), str(new)], env=env, timeout=120
    )
    assert result.returncode == 17
    assert len(list((tmp_path / "data" / "wasm").glob("*.wasm"))) == 2  # the new blob was written

    second = make_host()
    assert second.invoke("site").body == b"old"
    assert [v.version for v in second.module("site").versions] == [1]
    assert second.deploy("site", new.read_bytes()).version == 2
    assert second.invoke("site").body == b"new"


def test_leftover_temporary_files_are_removed(make_host: HostFactory, tmp_path: Path) -> None:
    first = make_host()
    first.deploy("m", body("x"))
    first.close()
    stray = tmp_path / "data" / "modules" / ".m.json.tmp-123-456"
    stray.write_bytes(b"{half")
    second = make_host()
    assert not stray.exists()
    assert second.invoke("m").body == b"x"


def test_unreadable_metadata_is_reported_not_fatal(make_host: HostFactory, tmp_path: Path) -> None:
    first = make_host()
    first.deploy("good", body("x"))
    first.close()
    (tmp_path / "data" / "modules" / "broken.json").write_text("{not json")
    second = make_host()
    assert [m.name for m in second.modules()] == ["good"]
    assert second._store.skipped and "broken.json" in second._store.skipped[0]
