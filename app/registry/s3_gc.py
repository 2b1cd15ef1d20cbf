"""Collecting versions nobody serves: superseded ones, and leftovers of interrupted writes.

A version may be deleted only when no replica can still need it:
- no pointer names it (as far as this replica knows *for certain*: a task whose pointer changed
  since it was last read is left alone until it has been read);
- its newest object is older than the grace period, so a write still in progress (objects out,
  pointer not yet flipped) is never collected from under its writer;
- its task's pointer is older than the grace period too, so a replica that read the previous
  pointer just before the flip has had the whole grace period to load the version it named.
Ages are measured on the server's clock (object times against the listing's Date header), so
the replicas' own clocks do not matter.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from app.registry.location import S3Location
from app.registry.s3_bucket import Bucket, Listed
from app.registry.s3_layout import split_version_key, versions_prefix

log = logging.getLogger("softserve.registry")


@dataclass(frozen=True)
class Keep:
    """What the replica knows: which versions are named and served, and the pointers."""

    named: dict[str, str]  # task -> version id its (last read) pointer names
    serving: dict[str, str]  # task -> version id of the entry served here
    pointers: dict[str, Listed]  # task -> its pointer, for tasks whose pointer was read as listed
    unsettled: set[str] = field(default_factory=set)  # pointer changed since read: hands off


@dataclass
class _Version:
    keys: list[str]
    newest: datetime


def _versions(objects: tuple[Listed, ...], where: S3Location) -> dict[tuple[str, str], _Version]:
    found: dict[tuple[str, str], _Version] = {}
    for obj in objects:
        owner = split_version_key(where, obj.key)
        if owner is None:
            continue  # not in our layout: never ours to delete
        version = found.setdefault(owner, _Version([], obj.modified))
        version.keys.append(obj.key)
        version.newest = max(version.newest, obj.modified)
    return found


def doomed(
    objects: tuple[Listed, ...], now: datetime, where: S3Location, keep: Keep, grace_s: float
) -> list[str]:
    """The keys to delete (pure, so the rule can be tested on its own)."""
    keys: list[str] = []
    for (task, vid), version in sorted(_versions(objects, where).items()):
        if task in keep.unsettled or vid in (keep.named.get(task), keep.serving.get(task)):
            continue
        if (now - version.newest).total_seconds() < grace_s:
            continue
        pointer = keep.pointers.get(task)
        if pointer is not None and (now - pointer.modified).total_seconds() < grace_s:
            continue
        keys.extend(version.keys)
    return keys


def collect(bucket: Bucket, where: S3Location, keep: Keep, grace_s: float) -> int:
    listing = bucket.list(versions_prefix(where))
    keys = doomed(listing.objects, listing.server_time, where, keep, grace_s)
    if keys:
        bucket.delete(keys)
        log.info("registry: collected %d objects of superseded or abandoned versions", len(keys))
    return len(keys)
