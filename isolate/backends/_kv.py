"""Guest key-value stores in JetStream KV (`serve --cluster`): the `KeyValue` interface, shared by every node.

Each store is a KV bucket `isolate_kv_<store>`, created on first use with the node's store size as
its byte limit. Keys are arbitrary bytes, stored hex-encoded: every byte string becomes a valid KV
key, and hex keeps byte order and prefixes, so a listing sorted by hex key is the byte order the
embedded backend gives and a byte prefix is a hex prefix. A listing reads the store's key names
(JetStream has no range scan over part of a token), so it costs one pass over the store's keys.
Every call waits at most until the caller's deadline (TimeoutError), else `DEFAULT_WAIT` seconds.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

import nats.js.errors

from ..capabilities import Page
from ..capabilities._kv import PAGE_KEYS
from ..errors import ClusterUnavailable, StorageError, StoreFull
from ._nats import Connection

BUCKET_PREFIX = "isolate_kv_"
DEFAULT_WAIT = 5.0
T = TypeVar("T")


class JetStreamKeyValue:
    """Every store a JetStream KV bucket on `connection` (closed with this object if it `owns` it)."""

    def __init__(self, connection: Connection, store_size: int, *, owns: bool = False) -> None:
        self._connection = connection
        self._owns = owns
        self.store_size = store_size
        self._buckets: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _call(self, work: Coroutine[Any, Any, T], deadline: float | None) -> T:
        wait = DEFAULT_WAIT if deadline is None else deadline - time.perf_counter()
        if wait <= 0:
            work.close()
            raise TimeoutError("the request's deadline passed before the key-value call")
        try:
            return self._connection.call(work, wait)
        except ClusterUnavailable as exc:
            if deadline is not None and time.perf_counter() >= deadline:
                raise TimeoutError("the request's deadline passed waiting for the key-value store") from None
            raise StorageError(f"key-value store: {exc.detail}") from None
        except nats.js.errors.APIError as exc:
            if "maximum bytes" in str(exc).lower() or getattr(exc, "err_code", None) in (10028, 10047):
                raise StoreFull(f"the store would exceed its {self.store_size} bytes") from None
            raise StorageError(f"key-value store: {exc}") from None
        except nats.errors.Error as exc:
            raise StorageError(f"key-value store: {type(exc).__name__} {exc}") from None

    async def _bucket(self, store: str) -> Any:
        bucket = self._buckets.get(store)
        if bucket is None:
            js = self._connection.js
            if js is None:
                raise ClusterUnavailable("not connected to NATS")
            name = BUCKET_PREFIX + store
            try:
                bucket = await js.key_value(name)
            except nats.js.errors.BucketNotFoundError:
                try:
                    bucket = await js.create_key_value(bucket=name, history=1, max_bytes=self.store_size)
                except nats.js.errors.APIError:  # another node created it meanwhile
                    bucket = await js.key_value(name)
            self._buckets[store] = bucket
        return bucket

    def get(self, store: str, key: bytes, deadline: float | None = None) -> bytes | None:
        async def work() -> bytes | None:
            bucket = await self._bucket(store)
            try:
                entry = await bucket.get(key.hex())
            except nats.js.errors.KeyNotFoundError:  # a deleted key too
                return None
            return bytes(entry.value or b"")

        return self._call(work(), deadline)

    def exists(self, store: str, key: bytes, deadline: float | None = None) -> bool:
        return self.get(store, key, deadline) is not None

    def set(self, store: str, key: bytes, value: bytes, deadline: float | None = None) -> None:
        async def work() -> None:
            bucket = await self._bucket(store)
            await bucket.put(key.hex(), value)

        self._call(work(), deadline)

    def delete(self, store: str, key: bytes, deadline: float | None = None) -> bool:
        async def work() -> bool:
            bucket = await self._bucket(store)
            try:
                await bucket.get(key.hex())
            except nats.js.errors.KeyNotFoundError:
                return False
            await bucket.delete(key.hex())
            return True

        return self._call(work(), deadline)

    def list(self, store: str, prefix: bytes, cursor: bytes = b"", limit: int = PAGE_KEYS,
             deadline: float | None = None) -> Page:
        async def work() -> list[str]:
            bucket = await self._bucket(store)
            try:
                names: list[str] = await bucket.keys()
            except nats.js.errors.NoKeysError:
                return []
            return names

        start, after = prefix.hex(), cursor.hex()
        hexes = sorted(k for k in self._call(work(), deadline) if k.startswith(start) and k > after)
        keys = [bytes.fromhex(k) for k in hexes[:limit]]
        return Page(keys, keys[-1] if len(hexes) > limit else None)

    def stores(self) -> dict[str, tuple[int, int]]:
        """Each store that has a bucket: (entries, bytes JetStream holds for it)."""
        async def work() -> dict[str, tuple[int, int]]:
            js = self._connection.js
            if js is None:
                raise ClusterUnavailable("not connected to NATS")
            out = {}
            for info in await js.streams_info():
                name = info.config.name or ""
                if name.startswith("KV_" + BUCKET_PREFIX):
                    out[name[len("KV_" + BUCKET_PREFIX):]] = (int(info.state.messages), int(info.state.bytes))
            return out

        return dict(sorted(self._call(work(), None).items()))

    def close(self) -> None:
        if self._owns:
            self._connection.close()
