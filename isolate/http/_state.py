"""What the edge and admin apps share: the live route table (swapped whole) and readiness."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import StorageError
from ..registry import atomic_write
from ..routing import RouteTable

ROUTES_FILE = "routes.json"


class ServerState:
    """Holds the current `RouteTable`; replacing it is one reference assignment, atomic for readers."""

    def __init__(self, data_dir: Path) -> None:
        self._path = Path(data_dir) / ROUTES_FILE
        self.routes = self._load()
        self.ready = False

    def _load(self) -> RouteTable:
        try:
            raw = json.loads(self._path.read_bytes())
        except FileNotFoundError:
            return RouteTable.build([])
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot read {self._path}: {exc}") from None
        return RouteTable.build(raw.get("routes", []))

    def replace_routes(self, table: RouteTable) -> None:
        """Persist, then swap: a crash in between leaves the old table in force on both sides."""
        body = json.dumps({"routes": table.to_list()}, indent=1).encode()
        try:
            atomic_write(self._path, body)
        except OSError as exc:
            raise StorageError(f"cannot write {self._path}: {exc}") from None
        self.routes = table
