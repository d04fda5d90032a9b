"""The region table: validation, client networks (longest prefix, v4 and v6), failover order, placement."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from isolate.errors import InvalidConfig, RegionForbidden, RegionUnavailable, UnknownRegion
from isolate.manifest import ManifestError, load
from isolate.routing import RegionTable, parse_networks_csv

US = {"id": "us", "name": "Virginia", "coordinates": [38.9, -77.4], "nodes": ["http://10.0.0.1:8787"]}
EU = {"id": "eu", "name": "Frankfurt", "coordinates": [50.1, 8.7], "nodes": ["http://10.0.1.1:8787/"]}
AP = {"id": "ap", "name": "Singapore", "coordinates": [1.35, 103.8], "nodes": ["http://10.0.2.1:8787"]}
BR = {"id": "br", "name": "São Paulo", "coordinates": [-23.5, -46.6], "nodes": []}


def table(**extra: Any) -> RegionTable:
    return RegionTable.build({"regions": [US, EU, AP, BR], **extra})


def test_failover_order_is_nearest_first_unless_explicit() -> None:
    t = table()
    # great-circle distances: us-eu 6,500 km, us-br 7,600, eu-br 9,800, eu-ap 10,300, us-ap 15,600
    assert t.order["us"] == ("us", "eu", "br", "ap")
    assert t.order["eu"] == ("eu", "us", "br", "ap")
    assert t.order["ap"] == ("ap", "eu", "us", "br")
    explicit = RegionTable.build({"regions": [US, {**EU, "failover": ["ap"]}, AP]})
    assert explicit.order["eu"] == ("eu", "ap")  # us is never used for eu's clients
    plain = RegionTable.build({"regions": [{"id": "b"}, {"id": "a"}, {"id": "c"}]})
    assert plain.order["a"] == ("a", "b", "c")  # no coordinates: table order


def test_networks_longest_prefix_v4_and_v6() -> None:
    t = table(networks=[["10.0.0.0/8", "us"], ["10.1.0.0/16", "eu"], ["10.1.2.0/24", "ap"],
                        {"cidr": "2001:db8::/32", "region": "eu"}, ["2001:db8:1::/48", "ap"], ["0.0.0.0/0", "br"]])
    assert t.region_of("10.9.9.9") == "us"
    assert t.region_of("10.1.9.9") == "eu"
    assert t.region_of("10.1.2.3") == "ap"
    assert t.region_of("192.0.2.1") == "br"  # the default route
    assert t.region_of("2001:db8:2::1") == "eu"
    assert t.region_of("2001:db8:1::1") == "ap"
    assert t.region_of("::ffff:10.1.2.3") == "ap"  # v4-mapped v6 is matched as v4
    assert t.region_of("2001:db9::1") is None
    assert t.region_of("not an address") is None
    assert t.networks[1] == ("10.1.0.0/16", "eu")


def test_networks_csv() -> None:
    rows = parse_networks_csv("cidr,region\n# comment\n\n10.0.0.0/8, us\n2001:db8::/32,eu\n")
    assert rows == [["10.0.0.0/8", "us"], ["2001:db8::/32", "eu"]]
    with pytest.raises(InvalidConfig, match="nets.csv:2: expected"):
        parse_networks_csv("10.0.0.0/8,us\n10.0.0.0/8\n", "nets.csv")
    with pytest.raises(InvalidConfig, match="nets.csv:1: .*does not appear to be"):
        parse_networks_csv("10.0.0.300/8,us\n", "nets.csv")


@pytest.mark.parametrize(("raw", "match"), [
    ({"regions": [US, US]}, "defined twice"),
    ({"regions": [{"id": "US"}]}, "region id must match"),
    ({"regions": [{"id": "us", "nodes": ["ftp://x"]}]}, "base URL"),
    ({"regions": [{"id": "us", "nodes": ["http://x:99999"]}]}, "bad port"),
    ({"regions": [{"id": "us", "nodes": "http://x"}]}, "list of URLs"),
    ({"regions": [{"id": "us", "coordinates": [91, 0]}]}, "coordinates"),
    ({"regions": [{"id": "us", "failover": ["eu"]}]}, "unknown region 'eu'"),
    ({"regions": [{"id": "us", "extra": 1}]}, "unknown key"),
    ({"regions": [US, {**EU, "nodes": US["nodes"]}]}, "listed in both"),
    ({"regions": [US], "networks": [["10.0.0.0/8", "eu"]]}, "unknown region 'eu'"),
    ({"regions": [US], "networks": [["10.0.0/8x", "us"]]}, "network"),
    ({"regions": [US], "placement": {"billing": ["eu"]}}, "unknown region 'eu'"),
    ({"regions": [US], "placement": {"billing": []}}, "at least one region"),
    ({"regions": [US], "placement": {"../x": ["us"]}}, "invalid module name"),
    ({"regions": [US], "color": "red"}, "unknown key"),
])
def test_invalid_tables_are_rejected_whole(raw: dict[str, Any], match: str) -> None:
    with pytest.raises(Exception, match=match):
        RegionTable.build(raw)


def healthy_except(*down: str) -> Any:
    t = table()
    return lambda region: () if region in down else t.regions[region].nodes


def test_decide_local_remote_and_failover() -> None:
    t = table()
    assert t.decide("m", "us", "us", healthy_except()).local
    remote = t.decide("m", "eu", "us", healthy_except())
    assert (remote.region, remote.local, remote.nodes) == ("eu", False, ("http://10.0.1.1:8787",))
    assert t.decide("m", "eu", "ap", healthy_except("eu")).region == "us"  # eu down: nearest is us
    assert t.decide("m", "eu", "us", healthy_except("eu")).local  # ... which is this node
    assert t.decide("m", "br", "eu", healthy_except()).region == "us"  # br has no nodes at all


def test_placement_pins_and_explains() -> None:
    t = table(placement={"billing": ["eu"]})
    assert t.decide("billing", "us", "us", healthy_except()).region == "eu"  # pinned: forwarded
    assert t.decide("billing", "eu", "eu", healthy_except()).local
    with pytest.raises(RegionUnavailable) as info:
        t.decide("billing", "us", "us", healthy_except("eu"))
    assert info.value.status == 503 and info.value.extra["allowed_regions"] == ["eu"]
    assert info.value.extra["regions"] == [{"region": "eu", "nodes": ["http://10.0.1.1:8787"], "healthy": 0}]
    assert "may run only in eu" in info.value.detail
    strict = RegionTable.build({"regions": [US, EU, {**AP, "failover": ["us"]}], "placement": {"billing": ["eu"]}})
    with pytest.raises(RegionForbidden) as forbidden:
        strict.decide("billing", "ap", "ap", healthy_except())  # ap's clients may not go to eu
    assert forbidden.value.status == 451 and forbidden.value.extra["failover_order"] == ["ap", "us"]


def test_unknown_region_header() -> None:
    with pytest.raises(UnknownRegion, match="unknown region 'mars'; this table has: us, eu, ap, br"):
        table().check("mars")


def test_round_trip() -> None:
    t = table(networks=[["10.0.0.0/8", "us"]], placement={"billing": ["eu", "us"]})
    again = RegionTable.build(t.to_dict())
    assert again.to_dict() == t.to_dict() and again.order == t.order
    assert t.to_dict()["regions"][1]["nodes"] == ["http://10.0.1.1:8787"]  # trailing slash dropped


def test_manifest_regions_networks_and_placement(tmp_path: Path) -> None:
    (tmp_path / "nets.csv").write_text("cidr,region\n10.1.0.0/16,eu\n")
    (tmp_path / "m.wat").write_text("(module)")
    (tmp_path / "isolate.toml").write_text('''
[regions.us]
name = "Virginia"
coordinates = [38.9, -77.4]
nodes = ["http://127.0.0.1:9001"]

[regions.eu]
nodes = ["http://127.0.0.1:9002"]
failover = ["us"]

[networks]
file = "nets.csv"
"10.2.0.0/16" = "us"

[modules.billing]
path = "m.wat"
regions = ["eu"]
''')
    manifest = load(tmp_path / "isolate.toml")
    assert manifest.regions is not None and manifest.placement == {"billing": ["eu"]}
    assert manifest.regions.region_of("10.1.0.1") == "eu" and manifest.regions.region_of("10.2.0.1") == "us"
    assert manifest.regions.placement == {"billing": frozenset({"eu"})}
    assert manifest.regions.order["eu"] == ("eu", "us")


@pytest.mark.parametrize(("text", "match"), [
    ('[regions.us]\nnodes = ["nope"]\n', "isolate.toml:1: regions.us: region us: a node is the base URL"),
    ('[regions.us]\n[networks]\n"10.0.0.0/8" = "eu"\n', "unknown region 'eu'"),
    ('[regions.us]\n[networks]\nfile = "missing.csv"\n', "cannot read"),
    ('[networks]\n"10.0.0.0/8" = "eu"\n', "needs a region table"),
    ('[modules.m]\npath = "m.wat"\nregions = ["EU"]\n', "isolate.toml:3: modules.m.regions: region id must match"),
])
def test_manifest_region_errors_are_located(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "isolate.toml").write_text(text)
    with pytest.raises(ManifestError, match=match):
        load(tmp_path / "isolate.toml")
