"""Routing: the immutable route table that maps host + path + method to a module."""

from ..errors import RouteConflict
from ._table import Match, Route, RouteTable

__all__ = ["Match", "Route", "RouteConflict", "RouteTable"]
