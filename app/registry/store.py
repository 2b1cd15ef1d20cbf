"""The prompt registry: task name -> immutable PromptEntry, backed by a PEFT-layout folder.

Readers never lock: the mapping is replaced whole (copy-on-write, see `base.EntryTable`), so a
reader sees either the old or the new entry, never a half-updated one. Writes go through `disk`
(atomic, crash-safe, serialized across processes); `sync` picks up what other processes (or
people) changed.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from pathlib import Path
from typing import Protocol

from app.model.spec import ModelSpec
from app.registry import disk
from app.registry.base import EntryTable, SkippedEntry, Written
from app.registry.entry import PromptEntry, PromptFiles, build_entry
from app.registry.errors import InvalidPrompt, UnknownTask
from app.registry.names import validate_task_name
from app.registry.peft_format import CONFIG_FILE, TASK_FILE, TENSOR_FILE, Limits

log = logging.getLogger("softserve.registry")


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


class Registry(EntryTable):
    def __init__(self, root: Path, spec: ModelSpec, limits: Limits | None = None) -> None:
        super().__init__(limits or Limits())
        self.root = root
        self.spec = spec
        self._seen: dict[str, disk.FolderSignature | None] = {}  # what each entry was loaded from
        self._pending: dict[str, disk.FolderSignature | None] = {}  # changed, waiting to settle
        self._versions: dict[str, int] = {}  # last version handed out, kept across deletes
        self._lock = threading.RLock()
        self.step: disk.Step = lambda _: None  # test seam: see disk.write_entry

    @property
    def location(self) -> str:
        return str(self.root)

    # -- loading ----------------------------------------------------------------------------

    def _next_version(self, name: str) -> int:
        self._versions[name] = self._versions.get(name, 0) + 1
        return self._versions[name]

    def _build(self, name: str, files: PromptFiles, created: float) -> PromptEntry:
        """Validate completely into the task's next version (nothing is published here)."""
        version = self._versions.get(name, 0) + 1
        return build_entry(
            name, files, spec=self.spec, limits=self.limits, version=version, created=created
        )

    def _load_folder(self, name: str, folder: Path) -> PromptEntry | None:
        try:
            validate_task_name(name)
            files = read_prompt_folder(folder, self.limits)
            entry = self._build(name, files, created=(folder / TENSOR_FILE).stat().st_mtime)
        except (InvalidPrompt, OSError) as exc:
            if name not in self._skipped or self._skipped[name].reason != str(exc):
                log.warning("skipping prompt %s: %s", folder, exc)
            self._skipped[name] = SkippedEntry(path=str(folder), reason=str(exc))
            return None
        self._skipped.pop(name, None)
        self._versions[name] = entry.version
        return entry

    def load_all(self) -> None:
        """Start-up scan: finish any interrupted write, then load every folder. Invalid entries
        are skipped with a log line; start-up never fails because of one."""
        with self._lock, disk.locked(self.root, exclusive=True):
            disk.recover(self.root)
            self._skipped.clear()
            changes: dict[str, PromptEntry | None] = {name: None for name in self._entries}
            self._seen.clear()
            for name, folder in sorted(disk.task_folders(self.root).items()):
                self._seen[name] = disk.signature(folder)
                entry = self._load_folder(name, folder)
                changes[name] = entry
            self._publish(changes)
        log.info(
            "registry: %d prompts loaded from %s, %d skipped",
            len(self),
            self.root,
            len(self._skipped),
        )

    def sync(self) -> int:
        """Pick up changes made by other processes or by hand. A new or changed folder is loaded
        once its signature is the same on two polls in a row (a folder still being copied is not
        loaded half-written). Returns the number of entries changed."""
        with self._lock, disk.locked(self.root, exclusive=False):
            folders = disk.task_folders(self.root)
            changes: dict[str, PromptEntry | None] = {}
            for name in set(self._seen) - set(folders):
                del self._seen[name]
                self._pending.pop(name, None)
                self._skipped.pop(name, None)
                if name in self._entries:
                    changes[name] = None
            for name, folder in folders.items():
                sig = disk.signature(folder)
                if name in self._seen and self._seen[name] == sig:
                    self._pending.pop(name, None)
                    continue
                if name not in self._pending or self._pending[name] != sig:
                    self._pending[name] = sig  # changed: wait one poll for it to settle
                    continue
                del self._pending[name]
                self._seen[name] = sig
                entry = self._load_folder(name, folder)
                if entry is not None:  # an invalid edit keeps the last good version serving
                    changes[name] = entry
            if changes:
                self._publish(changes)
                log.info(
                    "registry sync: %s",
                    ", ".join(
                        f"{n} {'updated' if e else 'removed'}" for n, e in sorted(changes.items())
                    ),
                )
            return len(changes)

    # -- writes -----------------------------------------------------------------------------

    def put(self, name: str, files: PromptFiles) -> PromptEntry:
        return self.write(name, files).entry

    def write(self, name: str, files: PromptFiles) -> Written:
        """Validate completely, then persist atomically and publish. Servable on return."""
        validate_task_name(name)
        with self._lock:
            created = name not in self._entries
            entry = self._build(name, files, created=time.time())
            with disk.locked(self.root, exclusive=True):
                disk.recover(self.root)
                disk.write_entry(self.root, name, files, self.step)
                self._seen[name] = disk.signature(self.root / name)
            self._pending.pop(name, None)
            self._skipped.pop(name, None)
            self._versions[name] = entry.version
            self._publish({name: entry})
        return Written(entry, created)

    def delete(self, name: str) -> PromptEntry | None:
        """Remove the folder and the entry. Running requests keep the version they hold."""
        validate_task_name(name)
        with self._lock:
            with disk.locked(self.root, exclusive=True):
                disk.recover(self.root)
                if not (self.root / name).exists() and name not in self._entries:
                    raise UnknownTask(name)
                if (self.root / name).exists():
                    disk.remove_entry(self.root, name, self.step)
            self._seen.pop(name, None)
            self._pending.pop(name, None)
            self._skipped.pop(name, None)
            old = self._entries.get(name)
            self._publish({name: None})
            return old


class Syncable(Protocol):
    def sync(self) -> int: ...


class RegistryWatcher:
    """Polls the store so replicas sharing it converge within about two poll intervals."""

    def __init__(self, registry: Syncable, interval_s: float = 0.5) -> None:
        self.registry = registry
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._run, name="softserve-registry-watch", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.registry.sync()
            except Exception:  # a transient store error must not kill the watcher
                log.exception("registry sync failed")
