"""The prompt registry: task name -> immutable PromptEntry, loaded from a PEFT-layout folder.

Readers never lock: the mapping is replaced whole (copy-on-write), so a reader sees either the
old or the new entry, never a half-updated one.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from app.model.spec import ModelSpec
from app.registry.entry import PromptEntry, PromptFiles, build_entry
from app.registry.errors import InvalidPrompt, UnknownTask
from app.registry.names import validate_task_name
from app.registry.peft_format import CONFIG_FILE, TASK_FILE, TENSOR_FILE, Limits

log = logging.getLogger("softserve.registry")


@dataclass(frozen=True)
class SkippedEntry:
    path: str
    reason: str


def _read_file(path: Path, limit: int) -> bytes:
    """Read a regular file, refusing symlinks and anything over `limit` bytes."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as exc:
        if path.is_symlink():
            raise InvalidPrompt("symlinks are not allowed", file=path.name) from None
        raise InvalidPrompt(f"cannot read ({exc.strerror})", file=path.name) from None
    with os.fdopen(fd, "rb") as f:
        info = os.fstat(f.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise InvalidPrompt("not a regular file", file=path.name)
        if info.st_size > limit:
            raise InvalidPrompt(
                f"file is {info.st_size} bytes, over the {limit}-byte limit", file=path.name
            )
        return f.read(limit + 1)


def read_prompt_folder(folder: Path, limits: Limits) -> PromptFiles:
    if folder.is_symlink():
        raise InvalidPrompt("the task folder is a symlink; symlinks are not allowed")
    names = {p.name for p in folder.iterdir()}
    for name in sorted(names):
        if (folder / name).is_symlink():
            raise InvalidPrompt("symlinks are not allowed", file=name)
    if TENSOR_FILE not in names:
        if "adapter_model.bin" in names:
            raise InvalidPrompt(
                "only adapter_model.safetensors is read; pickle (.bin) files are never loaded",
                file="adapter_model.bin",
            )
        raise InvalidPrompt("missing", file=TENSOR_FILE)
    if CONFIG_FILE not in names:
        raise InvalidPrompt("missing", file=CONFIG_FILE)
    return PromptFiles(
        adapter_config=_read_file(folder / CONFIG_FILE, limits.max_config_bytes),
        adapter_model=_read_file(folder / TENSOR_FILE, limits.max_tensor_bytes),
        task=_read_file(folder / TASK_FILE, limits.max_config_bytes)
        if TASK_FILE in names
        else None,
    )


class Registry:
    def __init__(self, root: Path, spec: ModelSpec, limits: Limits | None = None) -> None:
        self.root = root
        self.spec = spec
        self.limits = limits or Limits()
        self._entries: MappingProxyType[str, PromptEntry] = MappingProxyType({})
        self._skipped: tuple[SkippedEntry, ...] = ()
        self._write_lock = threading.Lock()

    @property
    def skipped(self) -> tuple[SkippedEntry, ...]:
        """Folders found at the last scan that failed validation, with the reason."""
        return self._skipped

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

    def load_entry(self, folder: Path, version: int) -> PromptEntry:
        files = read_prompt_folder(folder, self.limits)
        created = (folder / TENSOR_FILE).stat().st_mtime
        return build_entry(
            folder.name, files, spec=self.spec, limits=self.limits, version=version, created=created
        )

    def load_all(self) -> None:
        """Scan the folder. Invalid entries are skipped with a log line; start-up never fails."""
        loaded: dict[str, PromptEntry] = {}
        skipped: list[SkippedEntry] = []
        self.root.mkdir(parents=True, exist_ok=True)
        for folder in sorted(self.root.iterdir()):
            # Hidden names are staging folders of in-flight writes, never entries.
            if folder.name.startswith(".") or not (folder.is_dir() or folder.is_symlink()):
                continue
            try:
                validate_task_name(folder.name)
                loaded[folder.name] = self.load_entry(folder, version=1)
            except InvalidPrompt as exc:
                skipped.append(SkippedEntry(path=str(folder), reason=str(exc)))
                log.warning("skipping prompt %s: %s", folder, exc)
        with self._write_lock:
            self._entries = MappingProxyType(loaded)
            self._skipped = tuple(skipped)
        log.info(
            "registry: %d prompts loaded from %s, %d skipped", len(loaded), self.root, len(skipped)
        )
