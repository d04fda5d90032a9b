"""Durable file primitives: atomic replace with fsync of file and directory, and content digests."""

from __future__ import annotations

import gc
import hashlib
import json
import os
import threading
from pathlib import Path
from typing import Any

TEMP_MARKER = ".tmp-"


def loads_json(data: bytes | str) -> Any:
    """`json.loads`, where input nested too deeply is a ValueError like any other bad JSON.

    The decoder recurses per level; at the interpreter's limit it raises RecursionError, and a
    garbage collection landing at that depth would run finalizers (wasmtime objects among them)
    with no stack left, which fail and leak. Collection waits until the stack is shallow again.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("nested too deeply") from None
    finally:
        if enabled:
            gc.enable()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace `path` with `data` so that a crash leaves either the old or the new file, whole."""
    tmp = path.with_name(f".{path.name}{TEMP_MARKER}{os.getpid()}-{threading.get_ident()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        tmp.unlink(missing_ok=True)
        raise
    os.close(fd)
    os.replace(tmp, path)
    fsync_dir(path.parent)


def remove_temporaries(directory: Path) -> int:
    """Delete temp files a crashed writer left behind; returns how many."""
    removed = 0
    for leftover in directory.glob(f".*{TEMP_MARKER}*"):
        if _writer_alive(leftover.name):
            continue  # another process of this node (a worker, its supervisor) is writing it now
        leftover.unlink(missing_ok=True)
        removed += 1
    return removed


def _writer_alive(name: str) -> bool:
    """Whether the process that named this temp file (…<TEMP_MARKER><pid>-<thread>) still runs."""
    pid = name.rsplit(TEMP_MARKER, 1)[-1].split("-", 1)[0]
    if not pid.isdigit() or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except OSError:
        return True  # it exists, owned by someone else
    return True
