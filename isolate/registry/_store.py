"""The embedded module store: content-addressed `.wasm` and precompiled artifacts plus per-name
metadata (versions, active version, settings) in a local data directory.

Layout under the data directory:

    wasm/<sha256>.wasm                       the uploaded bytes, named by their digest
    compiled/<fingerprint>/<sha256>.cwasm    precompiled code for one engine fingerprint
    compiled/<fingerprint>/<sha256>.json     {"wasm_sha256", "artifact_sha256"}: written by this host
    modules/<name>.json                      versions, active version, limits, variables, grants
    modules/<name>.deleted                   {"next_version"} of a deleted name: versions are never reused

A deploy writes the blob, then the artifact, then the metadata; only the metadata's atomic rename
makes a version visible, so a crash at any point leaves the previous version serving.
"""

from __future__ import annotations

import json
import math
import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..errors import NotFound, StorageError
from ._files import atomic_write, fsync_dir, loads_json, remove_temporaries, sha256, sha256_file
from ._names import validate_name

_FORMAT = 1


@dataclass(frozen=True, slots=True)
class VersionRecord:
    version: int
    digest: str
    size: int
    created: float
    compile_ms: float
    kind: str = "module"  # "module" (ABI v1) or "component" (wasi:http)


@dataclass(frozen=True, slots=True)
class ModuleRecord:
    name: str
    active: int
    next_version: int
    versions: tuple[VersionRecord, ...]
    limits: Mapping[str, Any] = field(default_factory=dict)  # overrides of the host defaults
    variables: Mapping[str, str] = field(default_factory=dict)
    allowed_hosts: tuple[str, ...] = ()  # outbound HTTP grants, as written (parsed by the host)
    kv_stores: tuple[str, ...] = ()  # key-value stores the module may open

    def version(self, number: int | None = None) -> VersionRecord:
        wanted = self.active if number is None else number
        for record in self.versions:
            if record.version == wanted:
                return record
        raise NotFound(f"module {self.name!r} has no version {wanted}", module=self.name, version=wanted)

    def to_json(self) -> bytes:
        body = {
            "format": _FORMAT,
            "name": self.name,
            "active": self.active,
            "next_version": self.next_version,
            "versions": [
                {"version": v.version, "digest": v.digest, "size": v.size, "created": v.created,
                 "compile_ms": v.compile_ms, **({"kind": v.kind} if v.kind != "module" else {})}
                for v in self.versions
            ],
            "limits": dict(self.limits),
            "variables": dict(self.variables),
        }
        if self.allowed_hosts:
            body["allowed_hosts"] = list(self.allowed_hosts)
        if self.kv_stores:
            body["key_value_stores"] = list(self.kv_stores)
        return json.dumps(body, indent=1, sort_keys=True).encode()

    @classmethod
    def from_json(cls, data: bytes) -> ModuleRecord:
        """A record from its file, every field checked: a damaged file is a ValueError, never a crash."""
        body = _load_json(data)
        if not isinstance(body, dict) or body.get("format") != _FORMAT:
            raise ValueError("not module metadata of format 1")
        versions = body.get("versions")
        if not isinstance(versions, list) or not versions:
            raise ValueError("versions must be a non-empty list")
        records = tuple(_version(v) for v in versions)
        numbers = [v.version for v in records]
        if len(set(numbers)) != len(numbers):
            raise ValueError("a version number appears twice")
        active: Any = body.get("active")
        next_version: Any = body.get("next_version")
        if active not in numbers:
            raise ValueError(f"active version {active!r} is not one of the versions")
        if not _is_count(next_version) or next_version <= max(numbers):
            raise ValueError(f"next_version {next_version!r} must be a whole number above every version")
        limits = body.get("limits", {})
        if not isinstance(limits, dict):
            # Kept, so the module's requests fail naming it (and PATCH can fix it) instead of vanishing.
            limits = {"<stored limits>": limits}
        variables = body.get("variables", {})
        if not isinstance(variables, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                      for k, v in variables.items()):
            raise ValueError("variables must map strings to strings")
        name = body.get("name")
        if not isinstance(name, str):
            raise ValueError("name must be a string")
        grants = {}
        for key in ("allowed_hosts", "key_value_stores"):
            value = body.get(key, [])
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise ValueError(f"{key} must be a list of strings")
            grants[key] = tuple(value)
        return cls(name=name, active=int(active), next_version=int(next_version), versions=records, limits=limits,
                   variables=variables, allowed_hosts=grants["allowed_hosts"], kv_stores=grants["key_value_stores"])


_MAX_VERSION = 1 << 53  # whole numbers JSON and Python agree on
_DIGEST = re.compile(r"[0-9a-f]{64}")


def _is_count(value: Any) -> bool:
    return type(value) is int and 1 <= value <= _MAX_VERSION


def _load_json(data: bytes) -> Any:
    return loads_json(data)


def _version(raw: Any) -> VersionRecord:
    # "kind" is written for components only: a module's record reads the same to older versions
    if not isinstance(raw, dict) or set(raw) - {"kind"} != {"version", "digest", "size", "created", "compile_ms"}:
        raise ValueError("each version must have version, digest, size, created and compile_ms (and maybe kind)")
    kind = raw.get("kind", "module")
    if kind not in ("module", "component"):
        raise ValueError(f"bad kind {kind!r} in version {raw['version']}")
    if not _is_count(raw["version"]) or not isinstance(raw["digest"], str) or not _DIGEST.fullmatch(raw["digest"]):
        raise ValueError(f"bad version entry {raw.get('version')!r}")
    if type(raw["size"]) is not int or raw["size"] < 0:
        raise ValueError(f"bad size in version {raw['version']}")
    for key in ("created", "compile_ms"):
        if type(raw[key]) not in (int, float) or not math.isfinite(raw[key]):
            raise ValueError(f"bad {key} in version {raw['version']}")
    return VersionRecord(raw["version"], raw["digest"], raw["size"], float(raw["created"]), float(raw["compile_ms"]),
                         kind)


def _carry(new: tuple[str, ...] | None, old: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(new) if new is not None else old


def with_version(old: ModuleRecord | None, first: int, name: str, digest: str, size: int, compile_ms: float,
                 limits: Mapping[str, Any] | None, variables: Mapping[str, str] | None, kind: str = "module",
                 **grants: tuple[str, ...] | None) -> ModuleRecord:
    """`old` (None: not deployed, numbering from `first`) with a new active version appended; settings
    given replace the module's, None keeps them. A pure function: the store and a cluster share it."""
    number = old.next_version if old else first
    version = VersionRecord(number, digest, size, round(time.time(), 3), round(compile_ms, 3), kind)
    return ModuleRecord(
        name=name,
        active=number,
        next_version=number + 1,
        versions=(old.versions if old else ()) + (version,),
        limits=dict(limits) if limits is not None else dict(old.limits if old else {}),
        variables=dict(variables) if variables is not None else dict(old.variables if old else {}),
        allowed_hosts=_carry(grants.get("allowed_hosts"), old.allowed_hosts if old else ()),
        kv_stores=_carry(grants.get("kv_stores"), old.kv_stores if old else ()),
    )


class ModuleStore:
    """Files on disk plus an in-memory index of every module's metadata, loaded at start-up."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._wasm_dir = root / "wasm"
        self._compiled_root = root / "compiled"
        self._modules_dir = root / "modules"
        self._lock = threading.RLock()
        try:
            for directory in (self._wasm_dir, self._compiled_root, self._modules_dir):
                directory.mkdir(parents=True, exist_ok=True)
                remove_temporaries(directory)
            for directory in self._compiled_root.iterdir():
                if directory.is_dir():
                    remove_temporaries(directory)
        except OSError as exc:
            raise StorageError(f"cannot use data directory {root}: {exc}") from None
        self._records: dict[str, ModuleRecord] = {}
        self._retired: dict[str, int] = {}  # deleted name -> the next version number it may use
        # Names whose metadata cannot be read: they answer `storage` and refuse deploys (a deploy would
        # start the numbering again and reuse versions) until the file is fixed or removed by hand.
        self.damaged: dict[str, str] = {}
        self.skipped: list[str] = []  # metadata files that could not be read at start-up
        for path in sorted(self._modules_dir.glob("*.deleted")):
            try:
                body = _load_json(path.read_bytes())
                number: Any = body.get("next_version") if isinstance(body, dict) else None
                if not _is_count(number):
                    raise ValueError(f"next_version {number!r} is not a whole number from 1 to 2**53")
                self._retired[path.stem] = int(number)
            except (OSError, ValueError) as exc:
                self._damage(path, exc)
        for path in sorted(self._modules_dir.glob("*.json")):
            try:
                record = ModuleRecord.from_json(path.read_bytes())
                if record.name != path.stem:
                    raise ValueError(f"file holds module {record.name!r}")
                self._records[record.name] = record
            except (OSError, ValueError) as exc:
                self._damage(path, exc)

    def reload(self, name: str) -> ModuleRecord | None:
        """Read `name`'s metadata from disk again (another process of this node changed it); its record,
        or None if it is not deployed.

        Requests read `_records` without a lock, so the old record stays in place until the new one
        is read, and goes only once the file is known to be gone: a reload never shows a deployed
        module as missing, not even for a moment."""
        validate_name(name)
        retired = self._modules_dir / f"{name}.deleted"
        path = self._modules_dir / f"{name}.json"
        with self._lock:
            try:
                if retired.exists():
                    body = _load_json(retired.read_bytes())
                    number: Any = body.get("next_version") if isinstance(body, dict) else None
                    if _is_count(number):
                        self._retired[name] = int(number)
                record = ModuleRecord.from_json(path.read_bytes())
                if record.name != name:
                    raise ValueError(f"file holds module {record.name!r}")
            except FileNotFoundError:
                self._records.pop(name, None)
                self.damaged.pop(name, None)
                return None
            except (OSError, ValueError) as exc:
                self._records.pop(name, None)
                self._damage(path, exc)
                return None
            self._records[name] = record
            self.damaged.pop(name, None)
            return record

    def _damage(self, path: Path, exc: Exception) -> None:
        self.skipped.append(f"{path.name}: {exc}")
        self.damaged[path.stem] = f"{path} cannot be read ({exc})"

    # -- metadata -----------------------------------------------------------------------------

    def names(self) -> list[str]:
        return sorted(self._records)

    def names_on_disk(self) -> list[str]:
        """The names whose metadata is in the data directory now (another process may have added some)."""
        try:
            return sorted(path.stem for path in self._modules_dir.glob("*.json"))
        except OSError:
            return []

    def records(self) -> list[ModuleRecord]:
        return [self._records[name] for name in sorted(self._records)]

    def get(self, name: str) -> ModuleRecord:
        record = self._records.get(name)
        if record is None:
            self._check_damage(name)
            raise NotFound(f"no module named {name!r}", module=name)
        return record

    def _check_damage(self, name: str) -> None:
        if name in self.damaged:
            raise StorageError(f"module {name!r}: {self.damaged[name]}; fix or remove that file", module=name)

    def find(self, name: str) -> ModuleRecord | None:
        return self._records.get(name)

    def add_version(
        self,
        name: str,
        digest: str,
        size: int,
        compile_ms: float,
        limits: Mapping[str, Any] | None,
        variables: Mapping[str, str] | None,
        kind: str = "module",
        **grants: tuple[str, ...] | None,
    ) -> ModuleRecord:
        """Append a version and make it active; settings given replace the module's, None keeps them.

        `grants`: allowed_hosts and kv_stores, with the same rule."""
        validate_name(name)
        with self._lock:
            old = self._records.get(name)
            if old is None:
                self._check_damage(name)
            record = with_version(old, self._retired.get(name, 1), name, digest, size, compile_ms, limits, variables,
                                  kind, **grants)
            return self._commit(record)

    def update(self, name: str, **changes: Any) -> ModuleRecord:
        """Replace fields of a module's record (active version, limits, variables) durably."""
        with self._lock:
            return self._commit(replace(self.get(name), **changes))

    def delete(self, name: str) -> ModuleRecord:
        """Forget a name; its next version number is kept (written first) so a redeploy never reuses one."""
        with self._lock:
            record = self.get(name)
            path = self._modules_dir / f"{name}.json"
            try:
                atomic_write(self._modules_dir / f"{name}.deleted",
                             json.dumps({"next_version": record.next_version}).encode())
                path.unlink()
                fsync_dir(self._modules_dir)
            except OSError as exc:
                raise StorageError(f"cannot delete module {name!r}: {exc}") from None
            del self._records[name]
            self._retired[name] = record.next_version
            return record

    # -- a cluster's records, taken as they are ------------------------------------------------

    def adopt(self, record: ModuleRecord) -> ModuleRecord:
        """Make `record` (a cluster's, already numbered) this name's record as it is, durably."""
        validate_name(record.name)
        with self._lock:
            self.damaged.pop(record.name, None)
            return self._commit(record)

    def forget(self, name: str, next_version: int) -> None:
        """Delete a name as a cluster did: not deployed here, its numbering to go on from `next_version`."""
        validate_name(name)
        with self._lock:
            try:
                atomic_write(self._modules_dir / f"{name}.deleted", json.dumps({"next_version": next_version}).encode())
                (self._modules_dir / f"{name}.json").unlink(missing_ok=True)
                fsync_dir(self._modules_dir)
            except OSError as exc:
                raise StorageError(f"cannot delete module {name!r}: {exc}") from None
            self._records.pop(name, None)
            self.damaged.pop(name, None)
            self._retired[name] = next_version

    def first_version(self, name: str) -> int:
        """The number a first deploy of `name` gets here (deleted names never reuse a version)."""
        return self._retired.get(name, 1)

    def has_wasm(self, digest: str) -> bool:
        path = self._wasm_dir / f"{digest}.wasm"
        try:
            return path.exists() and sha256_file(path) == digest
        except OSError:
            return False

    def _commit(self, record: ModuleRecord) -> ModuleRecord:
        """The commit point of every change: the metadata file's atomic rename."""
        try:
            atomic_write(self._modules_dir / f"{record.name}.json", record.to_json())
        except OSError as exc:
            raise StorageError(f"cannot write metadata of module {record.name!r}: {exc}") from None
        self._records[record.name] = record
        return record

    # -- blobs --------------------------------------------------------------------------------

    def put_wasm(self, digest: str, wasm: bytes) -> None:
        path = self._wasm_dir / f"{digest}.wasm"
        try:
            if path.exists() and path.stat().st_size == len(wasm) and sha256_file(path) == digest:
                return
            atomic_write(path, wasm)
        except OSError as exc:
            raise StorageError(f"cannot store module bytes: {exc}") from None

    def read_wasm(self, digest: str) -> bytes:
        path = self._wasm_dir / f"{digest}.wasm"
        try:
            wasm = path.read_bytes()
        except OSError as exc:
            raise StorageError(f"stored module {digest[:12]} is missing: {exc}") from None
        if sha256(wasm) != digest:
            raise StorageError(f"stored module {digest[:12]} is corrupt (digest mismatch)", digest=digest)
        return wasm

    def put_artifact(self, digest: str, fingerprint: str, artifact: bytes) -> Path:
        """Write precompiled code and, after it, the record of its digest that vouches for it."""
        directory = self._compiled_root / fingerprint
        path = directory / f"{digest}.cwasm"
        seal = {"wasm_sha256": digest, "artifact_sha256": sha256(artifact), "fingerprint": fingerprint}
        try:
            directory.mkdir(exist_ok=True)
            atomic_write(path, artifact)
            atomic_write(directory / f"{digest}.json", json.dumps(seal).encode())
        except OSError as exc:
            raise StorageError(f"cannot store compiled module: {exc}") from None
        return path

    def has_artifact(self, digest: str, fingerprint: str) -> bool:
        """Whether an artifact for `digest` was sealed for this engine (a stat: `verified_artifact` checks it)."""
        return (self._compiled_root / fingerprint / f"{digest}.json").exists()

    def verified_artifact(self, digest: str, fingerprint: str) -> Path | None:
        """The artifact for `digest` if this host wrote it for this engine and it is intact, else None."""
        directory = self._compiled_root / fingerprint
        path = directory / f"{digest}.cwasm"
        try:
            seal = _load_json((directory / f"{digest}.json").read_bytes())
            if seal.get("wasm_sha256") != digest or seal.get("fingerprint") != fingerprint:
                return None
            if sha256_file(path) != seal.get("artifact_sha256"):
                return None
        except (OSError, ValueError, AttributeError):
            return None  # recompiled from the .wasm (whose digest is checked) and sealed again
        return path
