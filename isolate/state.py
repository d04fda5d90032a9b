"""What the edge and admin apps share: the live route and region tables (each swapped whole), readiness."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from .errors import InvalidConfig, IsolateError, RouteConflict, StorageError
from .registry import atomic_write, loads_json
from .routing import RegionTable, Route, RouteTable

log = logging.getLogger("isolate.server")

ROUTES_FILE = "routes.json"
REGIONS_FILE = "regions.json"


class ServerState:
    """Holds the current tables; replacing one is one reference assignment, atomic for readers."""

    def __init__(self, data_dir: Path, local_region: str = "local") -> None:
        self._dir = Path(data_dir)
        self.local_region = local_region
        self.routes = self._load_routes(self._read(ROUTES_FILE).get("routes", []))
        self.regions = self._load_regions()
        self.ready = False

    def reload(self) -> None:
        """Read both tables from disk again (another process of this node replaced one)."""
        self.routes = self._load_routes(self._read(ROUTES_FILE).get("routes", []))
        self.regions = self._load_regions()

    def _load_regions(self) -> RegionTable:
        regions = self._read(REGIONS_FILE)
        try:
            return RegionTable.build(regions) if regions else RegionTable()
        except IsolateError as exc:
            # A stored table this version no longer accepts must not keep the node from starting.
            self._keep_copy(REGIONS_FILE)
            log.error("stored region table %s is invalid and is not used (%s); a copy is kept as %s.bak",
                      self._dir / REGIONS_FILE, exc.detail, REGIONS_FILE)
            return RegionTable()

    def _load_routes(self, raw: Any) -> RouteTable:
        """The stored table; routes it can no longer accept are left out, each logged (file kept as .bak)."""
        try:
            return RouteTable.build(raw)
        except IsolateError:
            pass
        self._keep_copy(ROUTES_FILE)
        if not isinstance(raw, list):
            log.error("stored route table %s holds no list of routes (%s); starting with none",
                      self._dir / ROUTES_FILE, type(raw).__name__)
        kept: list[Route] = []
        for index, entry in enumerate(raw if isinstance(raw, list) else []):
            try:
                kept.append(Route.from_dict(entry))
            except IsolateError as exc:
                log.error("stored route %d is invalid and is left out: %s", index, exc.detail)
        while True:
            try:
                return RouteTable.build(kept)
            except RouteConflict as exc:
                later = kept.pop(exc.extra["routes"][1])
                log.error("stored route %s%s -> %s is left out: %s", later.host, later.path, later.module, exc.detail)

    def _keep_copy(self, name: str) -> None:
        try:
            shutil.copyfile(self._dir / name, self._dir / f"{name}.bak")
        except OSError as exc:
            log.error("cannot keep a copy of %s: %s", self._dir / name, exc)

    def _read(self, name: str) -> dict[str, Any]:
        path = self._dir / name
        try:
            raw = loads_json(path.read_bytes())
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
            # Indented for people while small; compact when big (50k routes: a third of the time).
            small = len(body.get("routes", ())) < 1000
            atomic_write(path, json.dumps(body, indent=1 if small else None).encode())
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
