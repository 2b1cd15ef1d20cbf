"""What every registry backend shares: the served snapshot, and the interface the server uses.

Two backends implement `PromptRegistry`: the local folder (`store.Registry`) and S3-compatible
object storage (`s3.S3Registry`). Both keep the served entries in an `EntryTable`: the mapping is
replaced whole on every change (copy-on-write), so a reader never locks and sees either the old or
the new entry, never a half-updated one.
"""

from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Protocol

from app.registry.entry import PromptEntry, PromptFiles
from app.registry.errors import UnknownTask
from app.registry.peft_format import Limits


@dataclass(frozen=True)
class SkippedEntry:
    path: str
    reason: str


@dataclass(frozen=True)
class Written:
    """The outcome of a create-or-replace: the entry now served, and whether it is new."""

    entry: PromptEntry
    created: bool


class PromptRegistry(Protocol):
    """The registry as the server, the CLI and the metrics see it, whatever stores it."""

    limits: Limits

    @property
    def location(self) -> str: ...

    @property
    def skipped(self) -> tuple[SkippedEntry, ...]: ...

    @property
    def swaps(self) -> int: ...

    def get(self, name: str) -> PromptEntry: ...

    def entries(self) -> tuple[PromptEntry, ...]: ...

    def __len__(self) -> int: ...

    def __contains__(self, name: object) -> bool: ...

    def load_all(self) -> None: ...

    def sync(self) -> int: ...

    def write(self, name: str, files: PromptFiles) -> Written: ...

    def put(self, name: str, files: PromptFiles) -> PromptEntry: ...

    def delete(self, name: str) -> PromptEntry | None: ...


class EntryTable:
    """The served snapshot (task -> immutable entry) and the entries skipped as invalid."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._entries: MappingProxyType[str, PromptEntry] = MappingProxyType({})
        self._skipped: dict[str, SkippedEntry] = {}
        self._swaps = 0

    @property
    def skipped(self) -> tuple[SkippedEntry, ...]:
        """Entries that failed validation at the last look, with the reason."""
        return tuple(self._skipped[name] for name in sorted(self._skipped))

    @property
    def swaps(self) -> int:
        """Entries added, replaced or removed since start-up."""
        return self._swaps

    def get(self, name: str) -> PromptEntry:
        entry = self._entries.get(name)
        if entry is None:
            raise UnknownTask(name)
        return entry

    def entries(self) -> tuple[PromptEntry, ...]:
        snapshot = self._entries
        return tuple(snapshot[name] for name in sorted(snapshot))

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def _publish(self, changes: dict[str, PromptEntry | None]) -> None:
        merged = dict(self._entries)
        for name, entry in changes.items():
            if entry is None:
                merged.pop(name, None)
            else:
                merged[name] = entry
        self._entries = MappingProxyType(merged)
        self._swaps += len(changes)
