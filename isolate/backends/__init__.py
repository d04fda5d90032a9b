"""Where a node's state lives beyond its data directory: NATS JetStream for `serve --cluster`."""

from __future__ import annotations

from typing import Any

from ..host import Host
from ..node import Node
from ._cluster import Cluster
from ._kv import JetStreamKeyValue
from ._nats import Connection, show_url
from ._natsd import NatsServer, find_nats_server

__all__ = ["Cluster", "JetStreamKeyValue", "NatsServer", "cluster_status", "find_nats_server", "join_cluster",
           "leave_cluster", "show_url", "use_cluster_key_value"]

def join_cluster(node: Node, url: str, name: str, wait: float = 10.0) -> Cluster:
    """Make `node` a member of the cluster at `url` (nats://HOST:PORT): its control changes go through
    JetStream, every other node's are applied here, guest key-value stores move to JetStream KV and
    purges are broadcast. Waits up to `wait` seconds to catch up with the cluster; if NATS does not
    answer by then the node serves what its data directory has (degraded) and catches up once it does."""
    cluster = Cluster(node, url, name)
    previous = node.host.kv
    node.host.kv = JetStreamKeyValue(cluster.connection, node.host.config.kv_store_size)
    previous.close()
    node.attach(cluster)
    cluster.start(wait)
    return cluster


def leave_cluster(node: Node) -> None:
    """Close `node`'s cluster connection, if it has one (the node keeps serving its data directory)."""
    if isinstance(node.cluster, Cluster):
        node.cluster.close()


def cluster_status(node: Node) -> dict[str, Any] | None:
    """For /readyz: the cluster's URL and whether this node is connected and caught up (None: no cluster)."""
    return node.cluster.status() if isinstance(node.cluster, Cluster) else None


def use_cluster_key_value(host: Host, url: str, name: str) -> None:
    """Give `host` the cluster's guest key-value stores on a connection of its own, closed with the host:
    for a process that serves guests but is not the node's control plane (a worker of `serve --workers`)."""
    connection = Connection(url, name)
    connection.start()
    previous = host.kv
    host.kv = JetStreamKeyValue(connection, host.config.kv_store_size, owns=True)
    previous.close()
