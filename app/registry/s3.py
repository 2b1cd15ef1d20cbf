"""The registry in S3-compatible object storage, shared by replicas on any number of hosts.

See `s3_layout` for the objects. What each operation guarantees:
- A write validates everything before the first object goes out, writes the version's objects
  under a fresh id, then flips the task's pointer with a conditional write (If-Match on the ETag
  it read, or If-None-Match for a new task). Two writers racing on one task: the flip of one
  fails with 412, that one removes its own objects and reports `WriteConflict` (409).
- A replica polls with one listing of the pointers and reads only pointers whose ETag changed,
  then the version they name; everything read is validated as strictly as an upload. An invalid
  pointer or version is listed in `skipped` and the last good version keeps serving.
- Superseded and abandoned versions are deleted by `collect` once both they and their task's
  pointer are older than the grace period (on the server's clock), so never while a replica
  that read the old pointer may still be loading them.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from app.model.spec import ModelSpec
from app.registry import s3_gc
from app.registry.base import EntryTable, SkippedEntry, Written
from app.registry.entry import PromptEntry, PromptFiles, build_entry
from app.registry.errors import InvalidPrompt, StoreUnavailable, UnknownTask
from app.registry.location import S3Location, S3Options
from app.registry.names import validate_task_name
from app.registry.peft_format import Limits
from app.registry.s3_bucket import Bucket, Listed, ObjectMissing
from app.registry.s3_layout import (
    MAX_POINTER_BYTES,
    Pointer,
    parse_pointer,
    parse_version_of,
    pointer_key,
    pointer_prefix,
    version_id,
)
from app.registry.s3_read import read_version
from app.registry.s3_write import Flipper, ReadForWrite, Step

log = logging.getLogger("softserve.registry")


@dataclass(frozen=True)
class PollStats:
    """The cost of the last poll (change detection and loading; collection not included)."""

    calls: int
    seconds: float
    changed: int


@dataclass(frozen=True)
class _Outcome:
    name: str
    etag: str
    pointer: Pointer | None = None  # None with no reason: the pointer is gone
    entry: PromptEntry | None = None
    reason: str | None = None  # set: invalid, skipped
    named: str | None = None  # the version id the pointer names, even when that version is bad


class S3Registry(EntryTable):
    def __init__(
        self,
        where: S3Location,
        spec: ModelSpec,
        limits: Limits | None = None,
        options: S3Options | None = None,
    ) -> None:
        super().__init__(limits or Limits())
        self.where = where
        self.spec = spec
        self.options = options or S3Options()
        self.bucket = Bucket(where, self.options)
        self._flipper = Flipper(self.bucket, where, self.options.gc_grace_s)
        self._lock = threading.RLock()
        self._seen: dict[str, str] = {}  # task -> pointer ETag last acted on
        self._named: dict[str, str] = {}  # task -> version id its pointer names
        self._serving: dict[str, str] = {}  # task -> version id of the entry served
        self._listed: dict[str, Listed] = {}  # the last listing of the pointers
        self._last_collect = float("-inf")
        self._failing = False
        self.last_poll = PollStats(0, 0.0, 0)
        self.step: Step = lambda _: None  # test seam: called between the steps of a write

    @property
    def location(self) -> str:
        return str(self.where)

    def _path(self, name: str) -> str:
        return f"s3://{self.where.bucket}/{pointer_key(self.where, name)}"

    # -- reading ----------------------------------------------------------------------------

    def _fetch(self, name: str, etag: str) -> _Outcome:
        """Read and validate one task's pointer and the version it names. Raises only
        StoreUnavailable (transient: retried at the next poll)."""
        try:
            validate_task_name(name)
            got = self.bucket.get(pointer_key(self.where, name), MAX_POINTER_BYTES)
        except ObjectMissing:
            return _Outcome(name, etag)
        except InvalidPrompt as exc:
            return _Outcome(name, etag, reason=str(exc))
        try:
            pointer = parse_pointer(got.data)
        except InvalidPrompt as exc:
            return _Outcome(name, got.etag, reason=str(exc))
        if pointer.deleted:
            return _Outcome(name, got.etag, pointer)
        if self._serving.get(name) == pointer.version_id and name in self._entries:
            return _Outcome(name, got.etag, pointer, self._entries[name], named=pointer.version_id)
        try:
            entry = read_version(self.bucket, self.where, name, pointer, self.spec, self.limits)
        except InvalidPrompt as exc:
            return _Outcome(name, got.etag, reason=str(exc), named=pointer.version_id)
        return _Outcome(name, got.etag, pointer, entry, named=pointer.version_id)

    def _fetch_all(self, todo: list[tuple[str, str]]) -> list[_Outcome]:
        def one(item: tuple[str, str]) -> _Outcome | None:
            try:
                return self._fetch(*item)
            except StoreUnavailable as exc:
                log.warning("registry: cannot read %s now (%s); retrying", self._path(item[0]), exc)
                return None

        if len(todo) <= 1:
            results = [one(item) for item in todo]
        else:  # start-up with thousands of tasks: the requests overlap, the CPU work is small
            with ThreadPoolExecutor(min(16, len(todo)), "softserve-s3-load") as pool:
                results = list(pool.map(one, todo))
        return [r for r in results if r is not None]

    def _apply(self, out: _Outcome) -> dict[str, PromptEntry | None]:
        """Record one fetched task; return the change to publish (if any)."""
        name = out.name
        self._seen[name] = out.etag
        if out.named is not None:
            self._named[name] = out.named
        if out.reason is not None:  # the last good version (if any) keeps serving
            if name not in self._skipped or self._skipped[name].reason != out.reason:
                log.warning("skipping prompt %s: %s", self._path(name), out.reason)
            self._skipped[name] = SkippedEntry(path=self._path(name), reason=out.reason)
            return {}
        self._skipped.pop(name, None)
        if out.entry is None:  # deleted (a tombstone) or the pointer is gone
            self._named.pop(name, None)
            self._serving.pop(name, None)
            return {name: None} if name in self._entries else {}
        if self._serving.get(name) == out.named and self._entries.get(name) is out.entry:
            return {}
        assert out.named is not None
        self._serving[name] = out.named
        return {name: out.entry}

    def _poll(self) -> int:
        start, calls = time.perf_counter(), self.bucket.calls
        prefix = pointer_prefix(self.where)
        listing = self.bucket.list(prefix)
        self._listed = {o.key[len(prefix) :]: o for o in listing.objects}
        changes: dict[str, PromptEntry | None] = {}
        for name in set(self._seen) - set(self._listed):  # a pointer removed by hand
            changes.update(self._apply(_Outcome(name, "")))
            self._seen.pop(name)
        todo = [(n, o.etag) for n, o in sorted(self._listed.items()) if self._seen.get(n) != o.etag]
        for outcome in self._fetch_all(todo):
            changes.update(self._apply(outcome))
        if changes:
            self._publish(changes)
            log.info(
                "registry sync: %s",
                ", ".join(
                    f"{n} {'updated' if e else 'removed'}" for n, e in sorted(changes.items())
                ),
            )
        self.last_poll = PollStats(
            self.bucket.calls - calls, time.perf_counter() - start, len(changes)
        )
        return len(changes)

    def load_all(self) -> None:
        """Start-up: check the bucket, load every task, collect leftovers. Raises
        StoreUnavailable when the bucket cannot be read: a replica must not start empty."""
        with self._lock:
            self.bucket.check()
            self._poll()
            self._collect()
        log.info(
            "registry: %d prompts loaded from %s, %d skipped",
            len(self),
            self.location,
            len(self._skipped),
        )

    def sync(self) -> int:
        """One poll; every `gc_grace_s / 2` also a collection. Returns the entries changed."""
        with self._lock:
            try:
                changed = self._poll()
                if time.monotonic() - self._last_collect >= max(self.options.gc_grace_s / 2, 1.0):
                    self._collect()
            except StoreUnavailable as exc:
                if not self._failing:  # one line per outage, not one per poll
                    log.warning("registry poll failed: %s; serving what is loaded", exc)
                self._failing = True
                return 0
            if self._failing:
                log.info("registry poll works again")
            self._failing = False
            return changed

    def collect(self) -> int:
        """Poll, then delete the versions no pointer names and no replica may be loading.
        Returns the number of objects removed."""
        with self._lock:
            self._poll()
            return self._collect()

    def _collect(self) -> int:
        # Only right after a poll: deciding on an old view of the pointers could delete a
        # version that was flipped to since.
        self._last_collect = time.monotonic()
        keep = s3_gc.Keep(
            named={**self._named},
            serving={**self._serving},
            pointers={n: o for n, o in self._listed.items() if self._seen.get(n) == o.etag},
            unsettled={n for n, o in self._listed.items() if self._seen.get(n) != o.etag},
        )
        return s3_gc.collect(self.bucket, self.where, keep, self.options.gc_grace_s)

    # -- writes -----------------------------------------------------------------------------

    def _read_for_write(self, name: str) -> ReadForWrite:
        """The pointer as it is now in the bucket (not this replica's possibly older view). An
        invalid pointer counts as present: a write replaces it, a delete removes it."""
        key = pointer_key(self.where, name)
        try:
            got = self.bucket.get(key, MAX_POINTER_BYTES)
        except ObjectMissing:
            return ReadForWrite(etag=None, version=0, live=False)
        except InvalidPrompt:  # an oversized object where a pointer belongs
            return ReadForWrite(etag=self.bucket.head(key), version=0, live=True)
        try:
            pointer = parse_pointer(got.data)
        except InvalidPrompt:
            return ReadForWrite(got.etag, parse_version_of(got.data), live=True)
        return ReadForWrite(got.etag, pointer.version, live=not pointer.deleted)

    def write(self, name: str, files: PromptFiles) -> Written:
        """Validate completely, write the version, flip the pointer. Servable on return; raises
        WriteConflict when another writer flipped the pointer first."""
        validate_task_name(name)
        with self._lock:
            before = self._read_for_write(name)
            version = before.version + 1
            entry = build_entry(
                name,
                files,
                spec=self.spec,
                limits=self.limits,
                version=version,
                created=time.time(),
            )
            vid = version_id(version, uuid.uuid4().hex)
            started = time.monotonic()
            pointer = self._flipper.write_version(name, vid, files, entry, self.step)
            etag = self._flipper.flip(name, pointer, before.etag, self.step, started)
            self._seen[name] = etag
            self._named[name] = self._serving[name] = vid
            self._skipped.pop(name, None)
            self._publish({name: entry})
            return Written(entry, created=not before.live)

    def put(self, name: str, files: PromptFiles) -> PromptEntry:
        return self.write(name, files).entry

    def delete(self, name: str) -> PromptEntry | None:
        """Write a tombstone pointer (conditionally, like a write). Running requests keep the
        version they hold; the version's objects are collected after the grace period."""
        validate_task_name(name)
        with self._lock:
            before = self._read_for_write(name)
            old = self._entries.get(name)
            if not before.live:
                if old is not None:  # gone from the bucket, not yet noticed here
                    self._apply(_Outcome(name, before.etag or ""))
                    self._publish({name: None})
                raise UnknownTask(name)
            tomb = Pointer(max(before.version, 1), version_id=None, created=time.time())
            self._seen[name] = self._flipper.flip(
                name, tomb, before.etag, self.step, time.monotonic()
            )
            self._named.pop(name, None)
            self._serving.pop(name, None)
            self._skipped.pop(name, None)
            self._publish({name: None})
            return old
