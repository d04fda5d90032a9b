"""The region table: regions and their nodes, failover order, client networks and module placement.

Like the route table it is built and validated whole, then immutable; a server swaps it by reference.

    {"regions": [{"id": "eu", "name": "Frankfurt", "coordinates": [50.1, 8.7],
                  "nodes": ["http://127.0.0.1:8801"], "failover": ["us", "ap"]}, ...],
     "networks": [["10.1.0.0/16", "eu"], ["2001:db8::/32", "us"]],
     "placement": {"billing": ["eu"]}}

Failover order of a region: its `failover` list when given (regions left out of it are never used
for its clients), else every other region, nearest first when both have coordinates, then in table
order. Client networks: the longest matching prefix wins, IPv4 and IPv6 alike.
"""

from __future__ import annotations

import csv
import io
import ipaddress
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from ..errors import InvalidConfig, RegionForbidden, RegionUnavailable, UnknownRegion
from ..registry import validate_name

REGION_PATTERN = r"[a-z0-9][a-z0-9-]{0,31}"
_REGION = re.compile(REGION_PATTERN)
_EARTH_RADIUS_KM = 6371.0
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def validate_region(region: Any, where: str = "region id") -> str:
    if not isinstance(region, str) or not _REGION.fullmatch(region):
        raise InvalidConfig(f"{where} must match {REGION_PATTERN}: {region!r}")
    return region


def _node_url(url: Any, region: str) -> str:
    try:
        parts = urlsplit(url) if isinstance(url, str) else None
    except ValueError:  # e.g. an unclosed IPv6 bracket
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise InvalidConfig(f"region {region}: a node is the base URL of an edge listener, "
                            f"such as http://10.0.0.5:8787; got {url!r}")
    try:
        parts.port  # noqa: B018 - raises ValueError for a bad port
    except ValueError:
        raise InvalidConfig(f"region {region}: bad port in node URL {url!r}") from None
    return str(url).rstrip("/")


@dataclass(frozen=True, slots=True)
class Region:
    id: str
    name: str = ""
    nodes: tuple[str, ...] = ()
    coordinates: tuple[float, float] | None = None  # latitude, longitude in degrees
    failover: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"id": self.id, "name": self.name, "nodes": list(self.nodes)}
        if self.coordinates is not None:
            body["coordinates"] = list(self.coordinates)
        if self.failover is not None:
            body["failover"] = list(self.failover)
        return body

    @classmethod
    def from_dict(cls, raw: Any) -> Region:
        if not isinstance(raw, Mapping):
            raise InvalidConfig(f"a region must be an object, got {type(raw).__name__}")
        unknown = set(raw) - {"id", "name", "nodes", "coordinates", "failover"}
        region = validate_region(raw.get("id"))
        if unknown:
            raise InvalidConfig(f"region {region}: unknown key(s) {', '.join(sorted(unknown))}; "
                                "use id, name, nodes, coordinates, failover")
        name = raw.get("name", "")
        if not isinstance(name, str):
            raise InvalidConfig(f"region {region}: name must be a string")
        nodes = raw.get("nodes", [])
        if isinstance(nodes, str) or not isinstance(nodes, Sequence):
            raise InvalidConfig(f"region {region}: nodes must be a list of URLs")
        coordinates = raw.get("coordinates")
        if coordinates is not None:
            if (isinstance(coordinates, str) or not isinstance(coordinates, Sequence) or len(coordinates) != 2
                    or not all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in coordinates)
                    or not (-90 <= coordinates[0] <= 90 and -180 <= coordinates[1] <= 180)):
                raise InvalidConfig(f"region {region}: coordinates must be [latitude, longitude] in degrees")
            coordinates = (float(coordinates[0]), float(coordinates[1]))
        failover = raw.get("failover")
        if failover is not None:
            if isinstance(failover, str) or not isinstance(failover, Sequence):
                raise InvalidConfig(f"region {region}: failover must be a list of region ids")
            failover = tuple(validate_region(r, f"region {region}: failover entry") for r in failover)
        return cls(region, name, tuple(_node_url(n, region) for n in nodes), coordinates, failover)


@dataclass(frozen=True, slots=True)
class Decision:
    """Where one request runs: locally, or forwarded to `region` (whose healthy nodes are `nodes`)."""

    region: str
    local: bool
    nodes: tuple[str, ...] = ()


@dataclass(frozen=True)
class RegionTable:
    regions: Mapping[str, Region] = field(default_factory=dict)
    networks: tuple[tuple[str, str], ...] = ()  # (cidr, region) as given
    placement: Mapping[str, frozenset[str]] = field(default_factory=dict)
    # derived
    order: Mapping[str, tuple[str, ...]] = field(init=False)  # region -> itself, then failover order
    _prefixes: tuple[tuple[int, int, dict[int, str]], ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "order", {r: (r, *self._failover(r)) for r in self.regions})
        # Longest prefix first: per (version, prefix length) one dict from network address to region.
        by_length: dict[tuple[int, int], dict[int, str]] = {}
        for cidr, region in self.networks:
            network = ipaddress.ip_network(cidr)
            by_length.setdefault((network.version, network.prefixlen), {})[int(network.network_address)] = region
        object.__setattr__(self, "_prefixes", tuple(
            (version, length, table) for (version, length), table in sorted(by_length.items(), key=lambda i: -i[0][1])))

    @property
    def empty(self) -> bool:
        return not self.regions

    def _failover(self, region: str) -> tuple[str, ...]:
        explicit = self.regions[region].failover
        if explicit is not None:
            return tuple(r for r in explicit if r != region)
        others = [r for r in self.regions if r != region]
        here = self.regions[region].coordinates
        if here is None:
            return tuple(others)
        located = [r for r in others if self.regions[r].coordinates is not None]
        located.sort(key=lambda r: _distance(here, self.regions[r].coordinates))  # type: ignore[arg-type]
        return (*located, *(r for r in others if self.regions[r].coordinates is None))

    # -- building -------------------------------------------------------------------------------

    @classmethod
    def build(cls, raw: Mapping[str, Any]) -> RegionTable:
        """Validate a whole table (the JSON form above); every reference must name a known region."""
        if not isinstance(raw, Mapping):
            raise InvalidConfig("a region table must be an object with regions, networks, placement")
        unknown = set(raw) - {"regions", "networks", "placement"}
        if unknown:
            raise InvalidConfig(f"unknown key(s) {', '.join(sorted(unknown))}; use regions, networks, placement")
        raw_regions = raw.get("regions", [])
        if isinstance(raw_regions, (str, Mapping)) or not isinstance(raw_regions, Sequence):
            raise InvalidConfig("regions must be a list of region objects")
        regions: dict[str, Region] = {}
        for item in raw_regions:
            region = Region.from_dict(item)
            if region.id in regions:
                raise InvalidConfig(f"region {region.id} is defined twice")
            regions[region.id] = region
        owner: dict[str, str] = {}
        for region in regions.values():
            for node in region.nodes:
                if node in owner:
                    raise InvalidConfig(f"node {node} is listed in both region {owner[node]} and {region.id}")
                owner[node] = region.id
            for other in region.failover or ():
                if other not in regions:
                    raise InvalidConfig(f"region {region.id}: failover names unknown region {other!r}")
        networks = tuple(_network(entry, regions) for entry in _sequence(raw.get("networks", []), "networks"))
        placement_raw = raw.get("placement", {})
        if not isinstance(placement_raw, Mapping):
            raise InvalidConfig("placement must map module names to lists of region ids")
        placement: dict[str, frozenset[str]] = {}
        for module, allowed in placement_raw.items():
            validate_name(module)
            allowed = _sequence(allowed, f"placement.{module}")
            if not allowed:
                raise InvalidConfig(f"placement.{module}: list at least one region (or leave the module out)")
            for region in allowed:
                if region not in regions:
                    raise InvalidConfig(f"placement.{module}: unknown region {region!r}")
            placement[module] = frozenset(allowed)
        return cls(regions, networks, placement)

    def to_dict(self) -> dict[str, Any]:
        return {
            "regions": [region.to_dict() for region in self.regions.values()],
            "networks": [list(entry) for entry in self.networks],
            "placement": {module: sorted(allowed) for module, allowed in self.placement.items()},
        }

    # -- per request ----------------------------------------------------------------------------

    def region_of(self, address: str) -> str | None:
        """The region of a client address by longest matching network prefix, or None."""
        if not self._prefixes:
            return None
        try:
            ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return None
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        value, version, bits = int(ip), ip.version, ip.max_prefixlen
        for net_version, length, table in self._prefixes:
            if net_version == version:
                region = table.get(value >> (bits - length) << (bits - length))
                if region is not None:
                    return region
        return None

    def check(self, region: str) -> str:
        if region not in self.regions:
            known = ", ".join(self.regions) or "none"
            raise UnknownRegion(f"unknown region {region!r}; this table has: {known}", region=region)
        return region

    def decide(self, module: str, client_region: str, local: str,
               healthy: Callable[[str], tuple[str, ...]]) -> Decision:
        """Where `module` runs for a client in `client_region`, from a node in region `local`.

        The client's region first, then its failover order; a region is used if the module's
        placement allows it and it is the local region or has a healthy node.
        """
        allowed = self.placement.get(module)
        tried: list[dict[str, Any]] = []
        for region in self.order.get(client_region, (client_region,)):
            if allowed is not None and region not in allowed:
                continue
            if region == local:
                return Decision(region, True)
            nodes = healthy(region)
            if nodes:
                return Decision(region, False, nodes)
            tried.append({"region": region, "nodes": list(self.regions[region].nodes) if region in self.regions
                          else [], "healthy": 0})
        chain = list(self.order.get(client_region, (client_region,)))
        if not tried:
            raise RegionForbidden(
                f"module {module!r} may run only in {_names(allowed)}, and requests from region "
                f"{client_region!r} may go only to {_names(chain)}",
                module=module, client_region=client_region, allowed_regions=sorted(allowed or ()),
                failover_order=chain,
            )
        where = f"may run only in {_names(allowed)}" if allowed is not None else f"may run in {_names(chain)}"
        raise RegionUnavailable(
            f"module {module!r} {where}, and no node there is healthy",
            module=module, client_region=client_region, allowed_regions=sorted(allowed or chain), regions=tried,
        )


def _names(regions: Iterable[str] | None) -> str:
    return ", ".join(sorted(regions or ())) or "no region"


def _sequence(value: Any, where: str) -> Sequence[Any]:
    if isinstance(value, (str, Mapping)) or not isinstance(value, Sequence):
        raise InvalidConfig(f"{where} must be a list")
    return value


def _network(entry: Any, regions: Mapping[str, Region]) -> tuple[str, str]:
    if isinstance(entry, Mapping):
        entry = (entry.get("cidr"), entry.get("region"))
    if isinstance(entry, str) or not isinstance(entry, Sequence) or len(entry) != 2:
        raise InvalidConfig(f"a network is [cidr, region]: {entry!r}")
    cidr, region = entry
    try:
        network = ipaddress.ip_network(str(cidr).strip(), strict=False)
    except ValueError as exc:
        raise InvalidConfig(f"network {cidr!r}: {exc}") from None
    if region not in regions:
        raise InvalidConfig(f"network {cidr}: unknown region {region!r}")
    return str(network), region


def parse_networks_csv(text: str, source: str = "networks") -> list[list[str]]:
    """`cidr,region` lines (a header line, blank lines and `#` comments are skipped)."""
    rows: list[list[str]] = []
    for number, row in enumerate(csv.reader(io.StringIO(text)), 1):
        cells = [cell.strip() for cell in row]
        if not cells or not cells[0] or cells[0].startswith("#"):
            continue
        if number == 1 and cells[0].lower() in ("cidr", "network", "prefix"):
            continue
        if len(cells) != 2:
            raise InvalidConfig(f"{source}:{number}: expected `cidr,region`, got {','.join(row)!r}", line=number)
        try:
            ipaddress.ip_network(cells[0], strict=False)
        except ValueError as exc:
            raise InvalidConfig(f"{source}:{number}: {exc}", line=number) from None
        rows.append(cells)
    return rows


def _distance(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance in km (haversine)."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * _EARTH_RADIUS_KM * math.asin(math.sqrt(h))

