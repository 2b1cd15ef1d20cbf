"""The registry's layout in a bucket, and its pointer objects. Pure: no network here.

```
PREFIX/versions/<task>/<version-id>/adapter_config.json        immutable once written
PREFIX/versions/<task>/<version-id>/adapter_model.safetensors
PREFIX/versions/<task>/<version-id>/task.json                  optional
PREFIX/current/<task>                                          the pointer: written last
```
A version's objects are written first under a fresh id (`<version, 8 digits>-<16 hex>`, so two
writers never share one); the pointer, a small JSON object naming the id, the tensor's sha256 and
the files, is written last and makes it current. A reader follows pointers only, so it never sees
a half-written version. Deleting a task writes a tombstone pointer (it keeps the version counter,
so a re-added task never reuses a version number). All pointers sit under one prefix so a single
listing (one call per 1,000 tasks) tells a replica which tasks changed.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from app.registry.errors import InvalidPrompt
from app.registry.location import S3Location
from app.registry.peft_format import CONFIG_FILE, TASK_FILE, TENSOR_FILE

POINTERS = "current"
VERSIONS = "versions"
POINTER_FILE = "pointer"  # how a pointer is named in error messages
MAX_POINTER_BYTES = 4096
FORMAT = 1
ALLOWED_FILES = (CONFIG_FILE, TENSOR_FILE, TASK_FILE)
_VERSION_ID = re.compile(r"[0-9]{8,12}-[0-9a-f]{16}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Pointer:
    version: int
    version_id: str | None  # None: a tombstone (the task was deleted)
    sha256: str | None = None  # of adapter_model.safetensors
    files: tuple[str, ...] = ()
    created: float = 0.0

    @property
    def deleted(self) -> bool:
        return self.version_id is None

    def encode(self) -> bytes:
        body: dict[str, Any] = {"format": FORMAT, "version": self.version, "created": self.created}
        if self.deleted:
            body["deleted"] = True
        else:
            body.update(id=self.version_id, sha256=self.sha256, files=list(self.files))
        return json.dumps(body, sort_keys=True).encode()


def version_id(version: int, token: str) -> str:
    return f"{version:08d}-{token[:16]}"


def pointer_key(where: S3Location, task: str) -> str:
    return where.key(POINTERS, task)


def pointer_prefix(where: S3Location) -> str:
    return where.key(POINTERS) + "/"


def versions_prefix(where: S3Location) -> str:
    return where.key(VERSIONS) + "/"


def object_key(where: S3Location, task: str, vid: str, file: str) -> str:
    return where.key(VERSIONS, task, vid, file)


def split_version_key(where: S3Location, key: str) -> tuple[str, str] | None:
    """`PREFIX/versions/<task>/<id>/<file>` -> (task, id); anything else -> None."""
    rest = key[len(versions_prefix(where)) :] if key.startswith(versions_prefix(where)) else ""
    parts = rest.split("/")
    return (parts[0], parts[1]) if len(parts) == 3 and all(parts) else None


def _bad(reason: str) -> InvalidPrompt:
    return InvalidPrompt(reason, file=POINTER_FILE)


def _check_files(raw: Any) -> tuple[str, ...]:
    if not (isinstance(raw, list) and all(isinstance(f, str) for f in raw)):
        raise _bad("files must be a list of file names")
    for name in raw:
        if name.endswith(".bin"):
            raise InvalidPrompt(
                "only adapter_model.safetensors is read; pickle (.bin) files are never loaded",
                file=name,
            )
        if name not in ALLOWED_FILES:
            raise _bad(f"unexpected file {name[:80]!r} (allowed: {list(ALLOWED_FILES)})")
    for required in (CONFIG_FILE, TENSOR_FILE):
        if required not in raw:
            raise InvalidPrompt("missing", file=required)
    return tuple(sorted(set(raw)))


def parse_pointer(data: bytes) -> Pointer:
    """Strictly: a pointer is written by someone with bucket access, not necessarily by us."""
    if len(data) > MAX_POINTER_BYTES:
        raise _bad(f"object is {len(data)} bytes, over the {MAX_POINTER_BYTES}-byte limit")
    try:
        raw = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _bad(f"not valid UTF-8 JSON ({exc})") from None
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise _bad(f"not a Softserve pointer (expected a JSON object with format {FORMAT})")
    version, created = raw.get("version"), raw.get("created", 0.0)
    if isinstance(version, bool) or not isinstance(version, int) or not 1 <= version < 10**12:
        raise _bad(f"version must be a positive integer, got {version!r}")
    if isinstance(created, bool) or not isinstance(created, int | float):
        raise _bad(f"created must be a number, got {created!r}")
    if raw.get("deleted") is True:
        return Pointer(version=version, version_id=None, created=float(created))
    vid, sha = raw.get("id"), raw.get("sha256")
    if not isinstance(vid, str) or _VERSION_ID.fullmatch(vid) is None:
        raise _bad(f"id must look like 00000001-0123456789abcdef, got {str(vid)[:80]!r}")
    if int(vid.split("-")[0]) != version:
        raise _bad(f"id {vid} does not belong to version {version}")
    if not isinstance(sha, str) or _SHA256.fullmatch(sha) is None:
        raise _bad("sha256 must be 64 lowercase hex digits")
    files = _check_files(raw.get("files"))
    return Pointer(version, vid, sha, files, float(created))


def parse_version_of(data: bytes) -> int:
    """The version counter of a pointer that may be invalid otherwise (0 when unreadable), so
    a write that replaces a broken pointer still moves the counter forward."""
    try:
        raw = json.loads(data.decode("utf-8")) if len(data) <= MAX_POINTER_BYTES else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        return 0
    version = raw.get("version") if isinstance(raw, dict) else None
    if isinstance(version, bool) or not isinstance(version, int):
        return 0
    return version if 0 < version < 10**12 else 0
