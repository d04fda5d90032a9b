"""What the edge and admin apps share: the live route and region tables (each swapped whole), readiness."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .errors import InvalidConfig, StorageError
from .registry import atomic_write
from .routing import RegionTable, RouteTable

ROUTES_FILE = "routes.json"
REGIONS_FILE = "regions.json"


class ServerState:
    """Holds the current tables; replacing one is one reference assignment, atomic for readers."""

    def __init__(self, data_dir: Path, local_region: str = "local") -> None:
        self._dir = Path(data_dir)
        self.local_region = local_region
        self.routes = RouteTable.build(self._read(ROUTES_FILE).get("routes", []))
        regions = self._read(REGIONS_FILE)
        self.regions = RegionTable.build(regions) if regions else RegionTable()
        self.ready = False

    def _read(self, name: str) -> dict[str, Any]:
        path = self._dir / name
        try:
            raw = json.loads(path.read_bytes())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot read {path}: {exc}") from None
        if not isinstance(raw, dict):
            raise StorageError(f"cannot read {path}: not a JSON object")
        return raw

    def _write(self, name: str, body: dict[str, Any]) -> None:
        """Persist, then swap: a crash in between leaves the old table in force on both sides."""
        path = self._dir / name
        try:
            atomic_write(path, json.dumps(body, indent=1).encode())
        except OSError as exc:
            raise StorageError(f"cannot write {path}: {exc}") from None

    def replace_routes(self, table: RouteTable) -> None:
        self._write(ROUTES_FILE, {"routes": table.to_list()})
        self.routes = table

    def check_regions(self, table: RegionTable) -> RegionTable:
        """A table this node can use: empty, or one that lists the node's own region."""
        if not table.empty and self.local_region not in table.regions:
            raise InvalidConfig(f"this node serves region {self.local_region!r}, which the region table does "
                                f"not define (it has {', '.join(table.regions)}); start it with --region",
                                region=self.local_region)
        return table

    def replace_regions(self, table: RegionTable) -> None:
        self.check_regions(table)
        self._write(REGIONS_FILE, table.to_dict())
        self.regions = table
