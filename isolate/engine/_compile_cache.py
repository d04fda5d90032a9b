"""A compiled-code cache shared by data directories: sealed artifacts by wasm digest and engine fingerprint."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path

import wasmtime
import wasmtime.component as wc

from . import _native

_log = logging.getLogger("isolate.engine")


class CompileCache:
    """`<root>/<engine fingerprint>/<sha256 of the wasm>.cwasm`, each beside a `.json` seal holding the
    artifact's own sha256.

    Compiling a component with an interpreter inside costs ~10 s of a core; every data directory (every
    node on a machine, every `isolate dev` rebuild of an unchanged dependency) would pay it again. The
    cache is a speed-up only: an entry that is missing, damaged, sealed for other bytes or refused by
    the engine is a miss and is rewritten, and a cache that cannot be written never fails a deploy.
    Deserializing is running native code, so the directory must be as trusted as the data directory:
    the seal catches damage, not forgery.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.hits = 0
        self.misses = 0
        """Lookups answered from the cache, and the others (counted without a lock: statistics only)."""

    def _paths(self, digest: str, fingerprint: str) -> tuple[Path, Path]:
        directory = self.root / fingerprint
        return directory / f"{digest}.cwasm", directory / f"{digest}.json"

    def load(self, engine: wasmtime.Engine, digest: str, fingerprint: str,
             component: bool) -> wasmtime.Module | wc.Component | None:
        """The cached code for `digest` on this engine, or None (a miss) if there is no usable entry."""
        code = self._load(engine, digest, fingerprint, component)
        if code is None:
            self.misses += 1
        else:
            self.hits += 1
        return code

    def _load(self, engine: wasmtime.Engine, digest: str, fingerprint: str,
              component: bool) -> wasmtime.Module | wc.Component | None:
        path, seal_path = self._paths(digest, fingerprint)
        try:
            seal = json.loads(seal_path.read_bytes())
            artifact = path.read_bytes()
        except (OSError, ValueError, RecursionError):  # missing, unreadable, or a seal that is not JSON
            return None
        # The bytes deserialized are the bytes hashed: a file replaced in between cannot slip through.
        if not isinstance(seal, dict) or seal.get("wasm_sha256") != digest \
                or seal.get("fingerprint") != fingerprint \
                or seal.get("artifact_sha256") != hashlib.sha256(artifact).hexdigest():
            return None
        try:
            code = wc.Component.deserialize(engine, artifact) if component \
                else wasmtime.Module.deserialize(engine, artifact)
        except wasmtime.WasmtimeError as exc:  # written by another wasmtime build or engine configuration
            _log.debug("compile cache entry %s refused by the engine: %s", path, exc)
            return None
        try:  # a hit touches the seal: entries unused for long can be pruned by age (find -mtime)
            os.utime(seal_path)
        except OSError:
            pass
        return code

    def store(self, digest: str, fingerprint: str, code: wasmtime.Module | wc.Component) -> None:
        """Write `code`'s artifact, then the seal that vouches for it; failures only log."""
        path, seal_path = self._paths(digest, fingerprint)
        try:
            artifact = bytes(code.serialize())
        except wasmtime.WasmtimeError as exc:
            _log.warning("compile cache: cannot serialize %s: %s", digest, exc)
            return
        finally:
            _native.trim_heap()
        seal = {"wasm_sha256": digest, "fingerprint": fingerprint,
                "artifact_sha256": hashlib.sha256(artifact).hexdigest()}
        try:
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            _write_atomically(path, artifact)
            _write_atomically(seal_path, json.dumps(seal).encode())
        except OSError as exc:
            _log.warning("compile cache %s not written: %s", self.root, exc)


def _write_atomically(path: Path, data: bytes) -> None:
    """Readers (other processes too) see the old file or the whole new one, never a partial write. No
    fsync: a file torn by a crash fails its seal and is a miss, which a cache can afford."""
    fd, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
