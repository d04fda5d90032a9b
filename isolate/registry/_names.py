"""Module names: one documented pattern, so a name is always a safe single file name and URL segment."""

from __future__ import annotations

import re

from ..errors import InvalidName

NAME_PATTERN = r"[a-z0-9][a-z0-9_-]{0,62}"
"""Lowercase letters, digits, `-` and `_`, starting with a letter or digit, at most 63 characters.

This rules out path separators, `.` and `..`, NUL and control characters, and names that differ only
in case (which would collide on case-insensitive file systems)."""
_NAME = re.compile(NAME_PATTERN)


def validate_name(name: object) -> str:
    if not isinstance(name, str) or not _NAME.fullmatch(name):
        raise InvalidName(
            f"invalid module name {name!r}: names match {NAME_PATTERN} "
            "(lowercase letters, digits, '-' and '_'; at most 63 characters)",
            pattern=NAME_PATTERN,
        )
    return name
