"""Task names: the only user-chosen string that becomes a path, so it is checked strictly."""

from __future__ import annotations

import re

from app.registry.errors import InvalidTaskName

TASK_NAME_PATTERN = r"^[a-z0-9][a-z0-9._-]{0,63}$"
_TASK_NAME = re.compile(TASK_NAME_PATTERN)


def validate_task_name(name: str) -> str:
    # fullmatch, not match: `$` would accept a trailing newline.
    if not isinstance(name, str) or _TASK_NAME.fullmatch(name) is None:
        shown = name if isinstance(name, str) and len(name) <= 80 else f"{str(name)[:80]}..."
        raise InvalidTaskName(
            f"invalid task name {shown!r}: must match {TASK_NAME_PATTERN} "
            "(lowercase letters, digits, '.', '_', '-'; at most 64 characters)"
        )
    if ".." in name:
        raise InvalidTaskName(f"invalid task name {name!r}: '..' is not allowed")
    return name
