"""Module secrets: values kept apart from module records, in files only the server's user can read.

Layout: `secrets/<module>.json` (mode 0600, directory 0700) under the data directory, replaced
atomically. Values leave this object only towards the guest (merged into its variables); every
other reader (admin API, CLI, logs, metrics) gets names.
"""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Mapping
from pathlib import Path

from ..errors import InvalidConfig, StorageError
from ..registry._files import atomic_write, fsync_dir, loads_json

MAX_SECRET_NAME = 256
MAX_SECRETS_SIZE = 64 * 1024  # characters of names and values together: they travel with every request


class SecretStore:
    def __init__(self, data_dir: Path) -> None:
        self._dir = data_dir / "secrets"
        self._values: dict[str, dict[str, str]] = {}
        self._damaged: dict[str, str] = {}
        self._lock = threading.Lock()
        if self._dir.is_dir():
            for path in sorted(self._dir.glob("*.json")):
                self._load(path)

    def _load(self, path: Path) -> None:
        name = path.stem
        try:
            body = loads_json(path.read_bytes())
            if not isinstance(body, dict) or not all(isinstance(k, str) and isinstance(v, str)
                                                     for k, v in body.items()):
                raise ValueError("not a map of strings")
            self._values[name] = body
        except (OSError, ValueError) as exc:
            # Kept as damaged: the module's requests fail with `storage` until its secrets are set again.
            self._damaged[name] = f"{path}: {exc}"

    def reload(self, module: str) -> None:
        """Read `module`'s secrets from disk again (another process of this node changed them). The old
        values stay until the new ones are read: requests read them without a lock."""
        path = self._dir / f"{module}.json"
        with self._lock:
            if not path.exists():
                self._values.pop(module, None)
                self._damaged.pop(module, None)
                return
            self._damaged.pop(module, None)
            self._load(path)
            if module in self._damaged:
                self._values.pop(module, None)  # damaged now: `values` reports that, not the old secrets

    def names(self, module: str) -> list[str]:
        return sorted(self._values.get(module, {}))

    def values(self, module: str) -> Mapping[str, str]:
        """The module's secrets, for its guest only. StorageError if its file is damaged."""
        damaged = self._damaged.get(module)
        if damaged is not None:
            raise StorageError(f"the secrets of module {module!r} cannot be read ({damaged.split(': ', 1)[-1]}); "
                               "set them again", module=module)
        return self._values.get(module, {})

    def update(self, module: str, changes: Mapping[str, str | None]) -> list[str]:
        """Set the secrets named in `changes` (None removes one); returns the module's secret names."""
        if not isinstance(changes, Mapping):
            raise InvalidConfig("secrets must map names to values (or null to remove one)")
        with self._lock:
            current = dict(self._values.get(module, {})) if module not in self._damaged else {}
            for name, value in changes.items():
                check_secret(name, value)
                if value is None:
                    current.pop(name, None)
                else:
                    current[name] = value
            if sum(len(k) + len(v) for k, v in current.items()) > MAX_SECRETS_SIZE:
                raise InvalidConfig(f"secrets exceed {MAX_SECRETS_SIZE} bytes in all (they travel with every request)")
            self._write(module, current)
            return sorted(current)

    def replace(self, module: str, values: Mapping[str, str]) -> None:
        """Make `values` all of `module`'s secrets (a cluster's copy, checked there when it was set)."""
        with self._lock:
            self._write(module, dict(values))

    def delete(self, module: str) -> None:
        with self._lock:
            path = self._dir / f"{module}.json"
            try:
                if path.exists():
                    path.unlink()
                    fsync_dir(self._dir)
            except OSError as exc:
                raise StorageError(f"cannot delete the secrets of module {module!r}: {exc}") from None
            self._values.pop(module, None)
            self._damaged.pop(module, None)

    def _write(self, module: str, values: dict[str, str]) -> None:
        try:
            self._dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self._dir, 0o700)
            if values:
                atomic_write(self._dir / f"{module}.json", json.dumps(values, sort_keys=True).encode(), mode=0o600)
            elif (self._dir / f"{module}.json").exists():
                (self._dir / f"{module}.json").unlink()
                fsync_dir(self._dir)
        except OSError as exc:
            raise StorageError(f"cannot write the secrets of module {module!r}: {exc}") from None
        self._damaged.pop(module, None)
        if values:
            self._values[module] = values
        else:
            self._values.pop(module, None)


def check_secret(name: object, value: object) -> None:
    if not isinstance(name, str) or not name or len(name) > MAX_SECRET_NAME or any(
            ord(c) < 32 or ord(c) == 127 for c in name):
        raise InvalidConfig(f"secret names are 1-{MAX_SECRET_NAME} characters without control characters")
    if value is not None and not isinstance(value, str):
        raise InvalidConfig(f"secret {name!r} must be a string (or null to remove it)")
    try:
        (name + (value or "")).encode()
    except UnicodeEncodeError:
        raise InvalidConfig(f"secret {name!r} is not valid Unicode text") from None
