"""Key-value stores for guests: the `KeyValue` interface and its embedded backend, SQLite in WAL mode.

A store is a name; modules are granted stores by name and every module granted one shares it. The
SQLite backend keeps all stores in one file in the data directory, with `synchronous=FULL`: a
`set` or `delete` returns only once its transaction is on disk, so an acknowledged write survives
`kill -9` and power loss. Each thread has its own connection (WAL lets readers run beside the one
writer); writers wait for each other at most until their deadline.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import msgpack

from ..config import GiB, MiB
from ..errors import InvalidConfig, InvalidRequest, StorageError, StoreFull

MAX_KEY = 1024
MAX_VALUE = 1 * MiB
PAGE_KEYS = 100
DEFAULT_STORE_SIZE = 1 * GiB
STORE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")

# kv_* results (ABI.md, "Key-value stores")
NOT_FOUND = -1
BAD_KEY = -2
TOO_LARGE = -3
NO_SUCH_STORE = -4
STORE_FULL = -5
STORAGE = -6
TOO_MANY_OPERATIONS = -7
ERRORS = {NOT_FOUND: "not_found", BAD_KEY: "bad_key", TOO_LARGE: "too_large", NO_SUCH_STORE: "no_such_store",
          STORE_FULL: "store_full", STORAGE: "storage", TOO_MANY_OPERATIONS: "too_many_operations"}


def check_store_name(name: object) -> str:
    if not isinstance(name, str) or not STORE_NAME.fullmatch(name):
        raise InvalidConfig(f"store name {name!r} must be 1-64 characters of a-z, 0-9, - and _, "
                            "starting with a letter or digit")
    return name


def check_key(key: bytes, *, prefix: bool = False) -> None:
    """InvalidRequest unless `key` is a key (or, with `prefix`, a prefix: may be empty)."""
    if (not key and not prefix) or len(key) > MAX_KEY:
        raise InvalidRequest(f"keys are 1-{MAX_KEY} bytes, got {len(key)}")


@dataclass(frozen=True, slots=True)
class Page:
    keys: list[bytes]
    cursor: bytes | None  # pass it back for the next page; None on the last


def _successor(prefix: bytes) -> bytes | None:
    """The smallest byte string after every string starting with `prefix` (None: no such bound)."""
    trimmed = prefix.rstrip(b"\xff")
    return trimmed[:-1] + bytes([trimmed[-1] + 1]) if trimmed else None


def encode_page(page: Page) -> bytes:
    """A page as `kv_list` hands it to the guest (ABI.md): {"keys": [bin...], "cursor": bin | nil}."""
    packed: bytes = msgpack.packb({"keys": page.keys, "cursor": page.cursor}, use_bin_type=True)
    return packed


class KeyValue(Protocol):
    """What a key-value backend offers; a later backend (a cluster's) implements the same.

    `deadline` is a time.perf_counter() value the call must not wait past (TimeoutError).
    Failures of the storage itself raise StorageError; a full store raises StoreFull.
    """

    def get(self, store: str, key: bytes, deadline: float | None = None) -> bytes | None: ...
    def set(self, store: str, key: bytes, value: bytes, deadline: float | None = None) -> None: ...
    def delete(self, store: str, key: bytes, deadline: float | None = None) -> bool: ...
    def exists(self, store: str, key: bytes, deadline: float | None = None) -> bool: ...
    def list(self, store: str, prefix: bytes, cursor: bytes = b"", limit: int = PAGE_KEYS,
             deadline: float | None = None) -> Page: ...
    def stores(self) -> dict[str, tuple[int, int]]: ...
    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (store TEXT NOT NULL, key BLOB NOT NULL, value BLOB NOT NULL,
                               PRIMARY KEY (store, key)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sizes (store TEXT PRIMARY KEY, keys INTEGER NOT NULL, bytes INTEGER NOT NULL);
"""
_WAIT = 5.0  # seconds a writer waits for another when the caller has no deadline (admin API)


class SqliteKeyValue:
    """Every store in one SQLite file (`kv.sqlite3` in the data directory), WAL, fsync per commit."""

    def __init__(self, path: Path, store_size: int = DEFAULT_STORE_SIZE) -> None:
        self.path = path
        self.store_size = store_size
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._ready = False

    def _db(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is not None:
            return conn
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=_WAIT, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA busy_timeout = 5000")
            with self._lock:
                if not self._ready:
                    # WAL: readers never wait for the writer. FULL: the WAL is fsync'd at every commit.
                    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                    if str(mode).lower() != "wal":
                        raise sqlite3.OperationalError(f"cannot switch to WAL (journal mode {mode})")
                    conn.executescript(_SCHEMA)
                    self._ready = True
                self._connections.append(conn)
            conn.execute("PRAGMA synchronous = FULL")
        except sqlite3.Error as exc:
            if conn is not None:
                conn.close()
            raise StorageError(f"cannot open the key-value database {self.path}: {exc}") from None
        self._local.conn = conn
        return conn

    def close(self) -> None:
        with self._lock:
            for conn in self._connections:
                try:
                    conn.close()
                except sqlite3.Error:
                    pass
            self._connections.clear()
        self._local = threading.local()

    def _run(self, work: Callable[[sqlite3.Connection], object], deadline: float | None, write: bool) -> object:
        conn = self._db()
        try:
            if write:
                wait = _WAIT if deadline is None else deadline - time.perf_counter()
                if wait <= 0:
                    raise TimeoutError("the request's deadline passed before the write")
                conn.execute(f"PRAGMA busy_timeout = {max(1, int(wait * 1000))}")
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = work(conn)
                    conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                return result
            return work(conn)
        except sqlite3.OperationalError as exc:
            if "locked" in str(exc) or "busy" in str(exc):
                if deadline is not None and time.perf_counter() >= deadline:
                    raise TimeoutError("the request's deadline passed waiting for the key-value store") from None
            raise StorageError(f"key-value store: {exc}") from None
        except sqlite3.Error as exc:
            raise StorageError(f"key-value store: {exc}") from None

    def get(self, store: str, key: bytes, deadline: float | None = None) -> bytes | None:
        def work(conn: sqlite3.Connection) -> bytes | None:
            row = conn.execute("SELECT value FROM kv WHERE store = ? AND key = ?", (store, key)).fetchone()
            return None if row is None else bytes(row[0])
        return self._run(work, deadline, False)  # type: ignore[return-value]

    def exists(self, store: str, key: bytes, deadline: float | None = None) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            return conn.execute("SELECT 1 FROM kv WHERE store = ? AND key = ?", (store, key)).fetchone() is not None
        return bool(self._run(work, deadline, False))

    def set(self, store: str, key: bytes, value: bytes, deadline: float | None = None) -> None:
        def work(conn: sqlite3.Connection) -> None:
            old = conn.execute("SELECT length(value) FROM kv WHERE store = ? AND key = ?", (store, key)).fetchone()
            sizes = conn.execute("SELECT keys, bytes FROM sizes WHERE store = ?", (store,)).fetchone() or (0, 0)
            grow = len(value) - (old[0] if old else -len(key))
            if grow > 0 and sizes[1] + grow > self.store_size:
                raise StoreFull(f"store {store!r} would exceed its {self.store_size} bytes")
            conn.execute("INSERT OR REPLACE INTO kv (store, key, value) VALUES (?, ?, ?)", (store, key, value))
            conn.execute("INSERT OR REPLACE INTO sizes (store, keys, bytes) VALUES (?, ?, ?)",
                         (store, sizes[0] + (0 if old else 1), sizes[1] + grow))
        self._run(work, deadline, True)

    def delete(self, store: str, key: bytes, deadline: float | None = None) -> bool:
        def work(conn: sqlite3.Connection) -> bool:
            old = conn.execute("SELECT length(value) FROM kv WHERE store = ? AND key = ?", (store, key)).fetchone()
            if old is None:
                return False
            conn.execute("DELETE FROM kv WHERE store = ? AND key = ?", (store, key))
            conn.execute("UPDATE sizes SET keys = keys - 1, bytes = bytes - ? WHERE store = ?",
                         (old[0] + len(key), store))
            return True
        return bool(self._run(work, deadline, True))

    def list(self, store: str, prefix: bytes, cursor: bytes = b"", limit: int = PAGE_KEYS,
             deadline: float | None = None) -> Page:
        def work(conn: sqlite3.Connection) -> Page:
            # Byte order is SQLite's BLOB order (memcmp): the keys with a prefix are one range of the
            # primary key, [prefix, successor), so a page reads at most `limit + 1` rows.
            upper = _successor(prefix)
            rows = conn.execute(
                "SELECT key FROM kv WHERE store = ? AND key >= ? AND key > ?"
                + (" AND key < ?" if upper is not None else "") + " ORDER BY key LIMIT ?",
                (store, prefix, cursor, *((upper,) if upper is not None else ()), limit + 1)).fetchall()
            keys = [bytes(row[0]) for row in rows[:limit]]
            return Page(keys, keys[-1] if len(rows) > limit else None)
        return self._run(work, deadline, False)  # type: ignore[return-value]

    def stores(self) -> dict[str, tuple[int, int]]:
        """Each store that has held data: (keys, bytes of keys and values)."""
        rows = self._run(lambda conn: conn.execute("SELECT store, keys, bytes FROM sizes ORDER BY store").fetchall(),
                         None, False)
        return {row[0]: (row[1], row[2]) for row in rows}  # type: ignore[attr-defined]


