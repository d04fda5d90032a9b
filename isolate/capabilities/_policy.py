"""Who a guest may call: `allowed_hosts` entries, URL checks, and the guard against internal addresses."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from urllib.parse import SplitResult, quote, urlsplit

from ..errors import InvalidConfig

DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_URL = 8 * 1024
MAX_ALLOWED_HOSTS = 256
_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?|[a-z0-9_]")  # a DNS label (underscore: SRV-style names)
_ENTRY = re.compile(r"(?P<scheme>[a-z]+)://(?P<host>\[[0-9a-f:.]+\]|[^:/\[\]]+)(?::(?P<port>\*|[0-9]{1,5}))?/?")

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True, slots=True)
class AllowedHost:
    """One `allowed_hosts` entry: a scheme, a host pattern and a port (None: any port)."""

    scheme: str
    host: str  # a lower-case name, "*.name" (any subdomain of name), or an address literal without brackets
    port: int | None
    text: str

    @property
    def wildcard(self) -> bool:
        return self.host.startswith("*.")

    def matches(self, scheme: str, host: str, port: int) -> bool:
        if scheme != self.scheme or (self.port is not None and port != self.port):
            return False
        if self.wildcard:
            if _address(host) is not None:  # `*.0.0.1` names no subdomain of anything
                return False
            return host.endswith(self.host[1:]) and len(host) > len(self.host) - 1
        return host == self.host


def parse_allowed_host(text: object) -> AllowedHost:
    """`scheme://host[:port]` as the manifest, the CLI and the admin API take it; InvalidConfig if not."""
    if not isinstance(text, str):
        raise InvalidConfig(f"allowed_hosts entries are strings like \"https://api.example.com\", got {text!r}")
    match = _ENTRY.fullmatch(text.strip().lower())
    if match is None:
        raise InvalidConfig(f"allowed host {text!r} is not scheme://host[:port] (e.g. https://api.example.com, "
                            "http://127.0.0.1:9000, https://*.example.org)")
    scheme, host, port_text = match.group("scheme"), match.group("host"), match.group("port")
    if scheme not in DEFAULT_PORTS:
        raise InvalidConfig(f"allowed host {text!r}: the scheme must be http or https")
    if host.startswith("["):
        literal = _address(host[1:-1])
        if literal is None or literal.version != 6:
            raise InvalidConfig(f"allowed host {text!r}: {host} is not an IPv6 address")
        host = str(literal)
    elif _address(host) is not None:
        host = str(_address(host))
    else:
        name = host[2:] if host.startswith("*.") else host
        if not _is_name(name):
            raise InvalidConfig(f"allowed host {text!r}: {host!r} is not a host name, *.name or an IP address")
    if port_text == "*":
        port = None
    elif port_text is None:
        port = DEFAULT_PORTS[scheme]
    else:
        port = int(port_text)
        if not 0 < port < 65536:
            raise InvalidConfig(f"allowed host {text!r}: port {port} is not within 1-65535")
    return AllowedHost(scheme, host, port, text.strip())


def parse_allowed_hosts(entries: Iterable[object]) -> tuple[AllowedHost, ...]:
    if isinstance(entries, (str, bytes)) or not isinstance(entries, Iterable):
        raise InvalidConfig("allowed_hosts must be a list of strings")
    parsed = tuple(parse_allowed_host(entry) for entry in entries)
    if len(parsed) > MAX_ALLOWED_HOSTS:
        raise InvalidConfig(f"allowed_hosts has {len(parsed)} entries; at most {MAX_ALLOWED_HOSTS}")
    return parsed


def _is_name(name: str) -> bool:
    name = name.rstrip(".")
    return 0 < len(name) <= 253 and all(_LABEL.fullmatch(label) for label in name.split("."))


def _address(text: str) -> Address | None:
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Target:
    """A URL a guest asked for, split and normalised: what the allow-list and the connection use."""

    url: str
    scheme: str
    host: str  # lower-case name or address literal (no brackets)
    port: int
    target: str  # path and query, as sent in the request line
    authority: str  # the `host` header

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port


def parse_url(url: str) -> Target:
    """An absolute http(s) URL as a `Target`; ValueError naming what is wrong."""
    if len(url) > MAX_URL:
        raise ValueError(f"the URL is longer than {MAX_URL} bytes")
    if any(ord(c) <= 32 or ord(c) == 127 or c == "\\" for c in url):
        raise ValueError("the URL contains whitespace, a control character or a backslash")
    parts: SplitResult = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS:
        raise ValueError("the URL must be absolute, http:// or https://")
    if "@" in parts.netloc:
        raise ValueError("the URL must not carry user info")
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise ValueError("the URL has no host")
    try:
        port = parts.port if parts.port is not None else DEFAULT_PORTS[scheme]
    except ValueError:
        raise ValueError("the URL's port is not a number within 0-65535") from None
    literal = _address(host)
    if literal is not None:
        host = str(literal)
    elif not _is_name(host):
        try:  # an internationalised name: its ASCII form is what DNS and the allow-list see
            host = host.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise ValueError(f"the URL's host {host!r} is not a valid name") from None
        if not _is_name(host):
            raise ValueError(f"the URL's host {host!r} is not a valid name")
    if port == 0:
        raise ValueError("the URL's port is 0")
    shown = f"[{host}]" if literal is not None and literal.version == 6 else host
    authority = shown if port == DEFAULT_PORTS[scheme] else f"{shown}:{port}"
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    # Non-ASCII in the path or query is sent percent-encoded as UTF-8, as browsers do.
    target = "".join(c if c.isascii() else quote(c, safe="") for c in target)
    clean = f"{scheme}://{authority}{target}"
    return Target(clean, scheme, host, port, target, authority)


def allowed(entries: Sequence[AllowedHost], target: Target) -> bool:
    return any(entry.matches(*target.origin) for entry in entries)


def names_exactly(entries: Sequence[AllowedHost], target: Target) -> bool:
    """Whether an entry matching `target` names its host itself (not through `*.`): an operator who
    writes `http://127.0.0.1:9000` or `http://db.internal` means that internal address."""
    return any(not entry.wildcard and entry.matches(*target.origin) for entry in entries)


def is_internal(address: Address) -> bool:
    """Loopback, private, link-local, unique-local, shared, unspecified, multicast, reserved or
    metadata: anything not globally routable, including IPv4 addresses wrapped in IPv6 forms."""
    if isinstance(address, ipaddress.IPv6Address):
        if any(address in network for network in _INTERNAL_V6):
            return True
        embedded = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if embedded is None and any(address in network for network in _EMBEDS_V4):
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is None and int(address) >> 32 == 0 and int(address) > 1:  # IPv4-compatible ::a.b.c.d
            embedded = ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
        if embedded is not None and is_internal(embedded):
            return True
    return not address.is_global or address.is_multicast


# IPv6 ranges whose last 32 bits are an IPv4 address: NAT64 (RFC 6052) and IPv4-translated (RFC 2765).
_EMBEDS_V4 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("::ffff:0:0:0/96"))
# Not globally routable, though Python's is_global says otherwise: local-use NAT64 (RFC 8215) and the
# deprecated site-local range.
_INTERNAL_V6 = (ipaddress.IPv6Network("64:ff9b:1::/48"), ipaddress.IPv6Network("fec0::/10"))
