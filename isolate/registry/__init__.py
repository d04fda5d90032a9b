"""Content-addressed store of modules: `.wasm` blobs, precompiled artifacts, versions, names."""

from ._files import atomic_write, loads_json, sha256
from ._names import NAME_PATTERN, validate_name
from ._store import ModuleRecord, ModuleStore, VersionRecord

__all__ = ["NAME_PATTERN", "ModuleRecord", "ModuleStore", "VersionRecord", "atomic_write", "loads_json", "sha256",
           "validate_name"]
