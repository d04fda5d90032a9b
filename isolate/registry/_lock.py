"""The data-directory lock: one server per data directory, taken before anything there is written."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from types import TracebackType

from ..errors import StorageError

LOCK_FILE = "lock"


class DataDirLock:
    """An exclusive `flock` on `<data_dir>/lock`, held for the life of a server.

    flock belongs to the open file description, so worker processes that inherit the descriptor
    (`serve --workers`) share their supervisor's lock, while any other process, or another open of
    the file in this one, is refused at once. The kernel drops it when the last holder exits, so a
    killed server never leaves a stale lock behind; the pid written inside is only for the message.
    """

    def __init__(self, fd: int, path: Path) -> None:
        self.fd = fd
        self.path = path

    @classmethod
    def acquire(cls, data_dir: Path) -> DataDirLock:
        path = Path(data_dir) / LOCK_FILE
        try:
            Path(data_dir).mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            raise StorageError(f"cannot use data directory {data_dir}: {exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            who = f" (pid {holder})" if holder else ""
            raise StorageError(f"data directory {data_dir} is in use by another isolate server{who}; stop it "
                               "or give this one another --data-dir", data_dir=str(data_dir)) from None
        except OSError as exc:
            os.close(fd)
            raise StorageError(f"cannot lock data directory {data_dir}: {exc.strerror or exc}") from None
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except OSError:
            pass  # the pid is a courtesy for the next one refused; the lock itself is held
        return cls(fd, path)

    @classmethod
    def inherited(cls, fd: int, data_dir: Path) -> DataDirLock:
        """The supervisor's lock, passed down as descriptor `fd`: checked to be the very same lock."""
        path = Path(data_dir) / LOCK_FILE
        try:
            same = os.path.samestat(os.fstat(fd), os.stat(path))
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # succeeds only on the holder's description
        except OSError as exc:
            raise StorageError(f"worker started without its supervisor's lock of {data_dir}: {exc}") from None
        if not same:
            raise StorageError(f"worker's lock descriptor {fd} is not {path}")
        return cls(fd, path)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> DataDirLock:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None
