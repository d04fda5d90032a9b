"""Loads the component host-function bridge (engine/_components.c) with this process's wasmtime C API."""

from __future__ import annotations

from typing import Any

from . import _raw


def _load() -> tuple[Any, str | None]:
    """The initialised extension and None, or None and why it is unavailable."""
    try:
        from . import _components  # type: ignore[attr-defined]
    except ImportError as exc:  # installed without a C compiler
        return None, f"isolate.engine._components is not built: {exc}"
    try:
        _components.init({name: _raw.address(name) for name in _components.names()})
    except (AttributeError, AssertionError) as exc:  # a libwasmtime without one of the functions
        return None, f"the wasmtime C API lacks a function the bridge needs: {exc}"
    return _components, None


BRIDGE: Any
"""The `_components` extension, initialised (see its docstrings for the API), or None."""
UNAVAILABLE: str | None
"""Why BRIDGE is None (None when it is available)."""
BRIDGE, UNAVAILABLE = _load()
