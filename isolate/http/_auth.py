"""The admin bearer token: generated once into the data directory (mode 0600), checked in constant time."""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path
from typing import Any

from ..errors import StorageError, Unauthorized
from ..registry import atomic_write

TOKEN_FILE = "admin-token"


def token_path(data_dir: Path) -> Path:
    return Path(data_dir) / TOKEN_FILE


def load_or_create_token(data_dir: Path) -> str:
    """The token stored in `data_dir`, created with 256 random bits on first use."""
    path = token_path(data_dir)
    try:
        token = path.read_text().strip()
        if token:
            return token
    except FileNotFoundError:
        pass
    except (OSError, UnicodeDecodeError) as exc:
        raise StorageError(f"cannot read the admin token {path}: {exc}") from None
    token = secrets.token_urlsafe(32)
    try:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        atomic_write(path, token.encode() + b"\n", mode=0o600)
        os.chmod(path, 0o600)  # in case the file existed empty with looser permissions
    except OSError as exc:
        raise StorageError(f"cannot write the admin token {path}: {exc}") from None
    return token


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
