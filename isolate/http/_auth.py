"""Node credentials kept in the data directory (admin token, cluster secret) and the admin bearer check."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path
from typing import Any

from ..errors import StorageError, Unauthorized
from ..registry import atomic_write

TOKEN_FILE = "admin-token"
CLUSTER_SECRET_FILE = "cluster-secret"


def token_path(data_dir: Path) -> Path:
    return Path(data_dir) / TOKEN_FILE


def cluster_secret_path(data_dir: Path) -> Path:
    return Path(data_dir) / CLUSTER_SECRET_FILE


def load_or_create_token(data_dir: Path) -> str:
    """The admin token stored in `data_dir`, created with 256 random bits on first use."""
    return load_or_create_secret(token_path(data_dir), "admin token")


def load_or_create_cluster_secret(data_dir: Path) -> str:
    """The cluster secret stored in `data_dir` (hop signatures), created with 256 random bits on first use."""
    return load_or_create_secret(cluster_secret_path(data_dir), "cluster secret")


def load_or_create_secret(path: Path, what: str) -> str:
    """The secret in `path`, else a new one of 256 random bits written there (mode 0600).

    Creation is exclusive (a hard link of a finished temp file), so processes starting together on
    one data directory all end up with the first one written.
    """
    for _ in range(3):
        try:
            value = path.read_text().strip()
            if value:
                return value
        except FileNotFoundError:
            pass
        except (OSError, UnicodeDecodeError) as exc:
            raise StorageError(f"cannot read the {what} {path}: {exc}") from None
        value = secrets.token_urlsafe(32)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.exists():
                if path.read_text().strip():
                    continue  # written by another process since this one looked: read theirs
                write_secret(path, value, what)  # there but empty: replace it
                return value
            tmp = path.with_name(f".{path.name}.new-{os.getpid()}-{secrets.token_hex(4)}")
            write_secret(tmp, value, what)
            try:
                os.link(tmp, path)
                return value
            except FileExistsError:
                continue  # another process wrote it first: read theirs
            finally:
                tmp.unlink(missing_ok=True)
        except OSError as exc:
            raise StorageError(f"cannot write the {what} {path}: {exc}") from None
    raise StorageError(f"cannot read the {what} {path}: it stays empty")


def write_secret(path: Path, value: str, what: str = "secret") -> None:
    """Replace `path` with `value`, readable by this user only (0600, also if it existed looser)."""
    try:
        atomic_write(path, value.encode() + b"\n", mode=0o600)
        os.chmod(path, 0o600)
    except OSError as exc:
        raise StorageError(f"cannot write the {what} {path}: {exc}") from None


class BearerAuth:
    """ASGI middleware: every path under `/v1` needs `Authorization: Bearer <token>`, else `Unauthorized`."""

    def __init__(self, app: Any, token: str, protected_prefix: str = "/v1") -> None:
        self.app = app
        self._expected = f"Bearer {token}".encode()
        self._prefix = protected_prefix

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["path"].startswith(self._prefix):
            given = next((v for k, v in scope["headers"] if k == b"authorization"), b"")
            if not hmac.compare_digest(given, self._expected):
                raise Unauthorized("missing or invalid bearer token; see `isolate token`")
        await self.app(scope, receive, send)
