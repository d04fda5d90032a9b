"""What guests may reach beyond their isolate, each with its grant and limits: outbound HTTP,
key-value stores and secrets. The engine's host functions call `GuestIO`; I/O never runs on the loop."""

from ._kv import KeyValue, Page, SqliteKeyValue, check_key, check_store_name
from ._outbound import Outbound
from ._policy import AllowedHost, parse_allowed_host, parse_allowed_hosts
from ._secrets import SecretStore, check_secret
from ._session import GuestIO

__all__ = [
    "AllowedHost",
    "GuestIO",
    "KeyValue",
    "Outbound",
    "Page",
    "SecretStore",
    "SqliteKeyValue",
    "check_key",
    "check_secret",
    "check_store_name",
    "parse_allowed_host",
    "parse_allowed_hosts",
]
