"""The prompts folder on disk, shared safely by several server processes.

- Writers hold an exclusive `flock` on `<root>/.lock`; scans hold a shared one, so a scan never
  sees a write half done and two replicas never interleave writes.
- A PUT writes a hidden staging folder (never loaded: hidden names are not entries), fsyncs it,
  then renames it into place. Replacing moves the old folder aside as `.replaced-<task>-<id>` first.
- A crash can stop a writer between any two steps; `recover` (run under the lock at start-up and
  before each write) finishes the job: staging leftovers are deleted, and an old version moved
  aside whose replacement never arrived is put back. So a half entry is never loadable, and the
  old version still loads after a crash.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from app.registry.entry import PromptFiles
from app.registry.peft_format import CONFIG_FILE, TASK_FILE, TENSOR_FILE

log = logging.getLogger("softserve.registry")

STAGING = ".staging-"
REPLACED = ".replaced-"
DELETED = ".deleted-"
LOCK_FILE = ".lock"


@contextmanager
def locked(root: Path, exclusive: bool) -> Iterator[None]:
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "xb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _task_of(hidden: str, marker: str) -> str:
    """`.replaced-<task>-<32 hex>` -> `<task>`."""
    return hidden[len(marker) : -33]


def recover(root: Path) -> None:
    """Finish or undo whatever a crashed writer left. Call with the exclusive lock held."""
    if not root.is_dir():
        return
    for path in sorted(root.iterdir()):
        name = path.name
        if name.startswith((STAGING, DELETED)):
            log.warning("removing leftover %s from an interrupted write", path)
            shutil.rmtree(path, ignore_errors=True)
        elif name.startswith(REPLACED):
            target = root / _task_of(name, REPLACED)
            if target.exists():
                shutil.rmtree(path, ignore_errors=True)
            else:
                log.warning("restoring %s: its replacement never arrived", target)
                os.rename(path, target)
    _fsync_dir(root)


# A test seam: called between the steps of a write, so a test can kill the writer there.
Step = Callable[[str], None]


def _no_step(_: str) -> None:
    return None


def write_entry(root: Path, task: str, files: PromptFiles, step: Step = _no_step) -> None:
    """Atomically create or replace `root/task`. The caller validated `files` and holds the lock."""
    token = uuid.uuid4().hex
    staging = root / f"{STAGING}{task}-{token}"
    staging.mkdir()
    step("staging-created")
    _write_file(staging / CONFIG_FILE, files.adapter_config)
    _write_file(staging / TENSOR_FILE, files.adapter_model)
    if files.task is not None:
        _write_file(staging / TASK_FILE, files.task)
    _fsync_dir(staging)
    step("staging-written")
    target = root / task
    aside = root / f"{REPLACED}{task}-{token}"
    if target.exists() or target.is_symlink():
        os.rename(target, aside)
        step("old-moved-aside")
    os.rename(staging, target)
    _fsync_dir(root)
    step("new-in-place")
    if aside.exists():
        shutil.rmtree(aside)
    step("done")


def remove_entry(root: Path, task: str, step: Step = _no_step) -> None:
    """Atomically remove `root/task` (rename aside, then delete). The caller holds the lock."""
    doomed = root / f"{DELETED}{task}-{uuid.uuid4().hex}"
    os.rename(root / task, doomed)
    _fsync_dir(root)
    step("moved-aside")
    shutil.rmtree(doomed)


@dataclass(frozen=True)
class FolderSignature:
    """Cheap change detection for a task folder: (name, size, mtime, inode) of its files."""

    parts: tuple[tuple[str, int, int, int], ...]


def signature(folder: Path) -> FolderSignature | None:
    parts = []
    for name in (CONFIG_FILE, TENSOR_FILE, TASK_FILE):
        try:
            st = os.stat(folder / name, follow_symlinks=False)
        except FileNotFoundError:
            continue
        except OSError:
            return None
        parts.append((name, st.st_size, st.st_mtime_ns, st.st_ino))
    return FolderSignature(tuple(parts))


def task_folders(root: Path) -> dict[str, Path]:
    """Visible task folders by name (hidden names are in-flight or leftover writes)."""
    if not root.is_dir():
        return {}
    return {
        p.name: p
        for p in root.iterdir()
        if not p.name.startswith(".") and (p.is_dir() or p.is_symlink())
    }
