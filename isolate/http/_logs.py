"""Log records leave the event loop: handlers write from a thread fed by a queue.

A guest can produce hundreds of log lines per request; formatting and writing them on the loop
would stall every other request behind a slow terminal or pipe. The loop only enqueues.
"""

from __future__ import annotations

import contextlib
import logging
import logging.handlers
import queue
from collections.abc import Iterator


@contextlib.contextmanager
def logging_off_loop() -> Iterator[None]:
    """Route the root logger's output through a queue and one writer thread, for the duration."""
    root = logging.getLogger()
    handlers = list(root.handlers)
    if not handlers or any(isinstance(h, logging.handlers.QueueHandler) for h in handlers):
        yield
        return
    records: queue.SimpleQueue[logging.LogRecord] = queue.SimpleQueue()
    listener = logging.handlers.QueueListener(records, *handlers, respect_handler_level=True)
    forwarder = logging.handlers.QueueHandler(records)
    for handler in handlers:
        root.removeHandler(handler)
    root.addHandler(forwarder)
    listener.start()
    try:
        yield
    finally:
        root.removeHandler(forwarder)
        listener.stop()  # writes out what is queued
        for handler in handlers:
            root.addHandler(handler)
