"""Writing one version and flipping a task's pointer to it, safely against concurrent writers."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from app.registry.entry import PromptEntry, PromptFiles
from app.registry.errors import StoreUnavailable, WriteConflict
from app.registry.location import S3Location
from app.registry.peft_format import CONFIG_FILE, TASK_FILE, TENSOR_FILE
from app.registry.s3_bucket import (
    Bucket,
    ConditionalWritesUnsupported,
    ObjectMissing,
    PreconditionFailed,
)
from app.registry.s3_layout import (
    MAX_POINTER_BYTES,
    Pointer,
    object_key,
    parse_pointer,
    pointer_key,
)

log = logging.getLogger("softserve.registry")

# A test seam: called with a step's name between the steps of a write ("objects-written",
# "pointer-written"), so a test can kill the writer there.
Step = Callable[[str], None]


@dataclass(frozen=True)
class ReadForWrite:
    """A task's pointer as a writer found it: the ETag its flip is conditional on."""

    etag: str | None  # None: no pointer yet
    version: int  # the last version handed out (0: none)
    live: bool  # a pointer that is not a tombstone (so a write replaces rather than creates)


class Flipper:
    def __init__(self, bucket: Bucket, where: S3Location, grace_s: float) -> None:
        self.bucket = bucket
        self.where = where
        self.grace_s = grace_s
        self.conditional = True  # False once the server refused If-Match / If-None-Match

    def write_version(
        self, name: str, vid: str, files: PromptFiles, entry: PromptEntry, step: Step
    ) -> Pointer:
        """Write the version's objects (under a fresh id nobody reads yet); return its pointer."""
        named = {CONFIG_FILE: files.adapter_config, TENSOR_FILE: files.adapter_model}
        if files.task is not None:
            named[TASK_FILE] = files.task
        written: list[str] = []
        try:
            for file, data in named.items():
                key = object_key(self.where, name, vid, file)
                self.bucket.put(key, data)
                written.append(key)
        except StoreUnavailable:
            self._discard(written)
            raise
        step("objects-written")
        return Pointer(entry.version, vid, entry.sha256, tuple(sorted(named)), entry.created)

    def _discard(self, keys: list[str]) -> None:
        """Remove objects no pointer ever named (a lost race, a failed write): nobody reads them."""
        try:
            if keys:
                self.bucket.delete(keys)
        except StoreUnavailable as exc:  # the collector removes them later
            log.warning("could not remove %d objects of an abandoned write: %s", len(keys), exc)

    def _names(self, name: str, vid: str | None) -> bool:
        """Whether the task's pointer names `vid` now (a retried flip may have landed already)."""
        try:
            got = self.bucket.get(pointer_key(self.where, name), MAX_POINTER_BYTES)
            return parse_pointer(got.data).version_id == vid
        except Exception:
            return False

    def flip(
        self, name: str, pointer: Pointer, expected: str | None, step: Step, started: float
    ) -> str:
        """Point the task at `pointer` if its pointer still has ETag `expected` (None: absent).
        Returns the new pointer's ETag; raises WriteConflict after removing this write's objects.
        `started` (monotonic) is when the version's first object went out."""
        key = pointer_key(self.where, name)
        if time.monotonic() - started > self.grace_s / 2:
            # The collector may take objects this old for an abandoned write: never flip to them.
            self._discard(self._keys_of(name, pointer))
            raise StoreUnavailable(
                f"writing {name} took over {self.grace_s / 2:.0f} s; not applied"
            )
        try:
            etag = self._put_pointer(key, pointer.encode(), expected)
        except PreconditionFailed:
            if pointer.version_id is not None and self._names(name, pointer.version_id):
                etag = self.bucket.head(key)  # our own retried request had landed
            else:
                self._discard(self._keys_of(name, pointer))
                raise WriteConflict(name, "its pointer changed after this write read it") from None
        step("pointer-written")
        return etag

    def _keys_of(self, name: str, pointer: Pointer) -> list[str]:
        if pointer.version_id is None:
            return []
        return [object_key(self.where, name, pointer.version_id, f) for f in pointer.files]

    def _put_pointer(self, key: str, data: bytes, expected: str | None) -> str:
        if self.conditional:
            try:
                return self.bucket.put(key, data, if_match=expected, if_none_match=expected is None)
            except ConditionalWritesUnsupported:
                log.warning(
                    "s3://%s does not support conditional writes: falling back to comparing "
                    "the pointer's ETag just before writing it (a narrow race remains)",
                    self.bucket.name,
                )
                self.conditional = False
        try:
            now: str | None = self.bucket.head(key)
        except ObjectMissing:
            now = None
        if now != expected:
            raise PreconditionFailed(str(now))
        return self.bucket.put(key, data)
