"""Routing: the route table (host + path + method -> module) and the region table (client -> region)."""

from ..errors import RouteConflict
from ._regions import REGION_PATTERN, Decision, Region, RegionTable, parse_networks_csv, validate_region
from ._table import HTTP_METHODS, Match, Route, RouteTable

__all__ = ["HTTP_METHODS", "REGION_PATTERN", "Decision", "Match", "Region", "RegionTable", "Route", "RouteConflict",
           "RouteTable", "parse_networks_csv", "validate_region"]
