"""A narrow, typed view of one bucket over boto3: list, bounded get, (conditional) put, delete.

Every S3 error becomes one of a few exceptions the registry acts on, and every call is counted,
so a poll's cost can be measured (and bounded) from outside.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from app.registry.errors import InvalidPrompt, StoreUnavailable
from app.registry.location import S3Location, S3Options

_MISSING = {"NoSuchKey", "404", "NotFound"}
# 412 is S3's answer to a failed If-Match / If-None-Match; 409 ConditionalRequestConflict is
# what it answers when another conditional write to the key is in flight at the same moment.
_PRECONDITION = {"PreconditionFailed", "412", "ConditionalRequestConflict"}
_UNSUPPORTED = {"NotImplemented", "501"}


class ObjectMissing(Exception):
    pass


class PreconditionFailed(Exception):
    pass


class ConditionalWritesUnsupported(Exception):
    pass


@dataclass(frozen=True)
class Listed:
    key: str
    etag: str
    size: int
    modified: datetime


@dataclass(frozen=True)
class Listing:
    objects: tuple[Listed, ...]
    server_time: datetime  # the server's clock (its Date header): object ages are measured on it
    calls: int


@dataclass(frozen=True)
class Fetched:
    data: bytes
    etag: str


def _code(exc: ClientError) -> str:
    error = exc.response.get("Error", {})
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return str(error.get("Code") or status)


def _server_time(response: dict[str, Any]) -> datetime:
    date = response.get("ResponseMetadata", {}).get("HTTPHeaders", {}).get("date")
    try:
        return parsedate_to_datetime(date) if date else datetime.now(UTC)
    except (TypeError, ValueError):
        return datetime.now(UTC)


class Bucket:
    def __init__(self, where: S3Location, options: S3Options) -> None:
        self.where = where
        self.name = where.bucket
        config = Config(
            connect_timeout=options.timeout_s,
            read_timeout=options.timeout_s,
            retries={"max_attempts": 3, "mode": "standard"},
            max_pool_connections=32,  # start-up loads many tasks in parallel
            # Most S3-compatible servers want path-style URLs and no default CRC checksums.
            s3={"addressing_style": "path"} if options.endpoint_url else {},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        )
        # A session of its own: boto3's default session is module state shared by everything.
        session = boto3.session.Session()
        self._client: Any = session.client("s3", endpoint_url=options.endpoint_url, config=config)
        self._count_lock = threading.Lock()
        self._calls = 0

    @property
    def calls(self) -> int:
        """API calls made so far (each listing page counts)."""
        return self._calls

    def _call(self, operation: str, **kwargs: Any) -> Any:
        with self._count_lock:
            self._calls += 1
        try:
            return getattr(self._client, operation)(Bucket=self.name, **kwargs)
        except ClientError as exc:
            code = _code(exc)
            if code in _MISSING:
                raise ObjectMissing(kwargs.get("Key", "")) from None
            if code in _PRECONDITION:
                raise PreconditionFailed(code) from None
            if code in _UNSUPPORTED:
                raise ConditionalWritesUnsupported(code) from None
            raise StoreUnavailable(f"s3://{self.name}: {operation} failed: {exc}") from None
        except BotoCoreError as exc:
            raise StoreUnavailable(f"s3://{self.name}: {operation} failed: {exc}") from None

    def check(self) -> None:
        """Fail with a clear message when the bucket is missing or unreachable."""
        try:
            self._call("head_bucket")
        except ObjectMissing:
            raise StoreUnavailable(f"bucket s3://{self.name} does not exist") from None

    def list(self, prefix: str) -> Listing:
        objects: list[Listed] = []
        kwargs: dict[str, Any] = {"Prefix": prefix, "MaxKeys": 1000}
        calls = 0
        while True:
            page = self._call("list_objects_v2", **kwargs)
            calls += 1
            objects.extend(
                Listed(o["Key"], o["ETag"], int(o["Size"]), o["LastModified"])
                for o in page.get("Contents", ())
            )
            if not page.get("IsTruncated"):
                return Listing(tuple(objects), _server_time(page), calls)
            kwargs["ContinuationToken"] = page["NextContinuationToken"]

    def get(self, key: str, limit: int) -> Fetched:
        """Read at most `limit` bytes; a larger object is refused before its body is read."""
        response = self._call("get_object", Key=key)
        body = response["Body"]
        try:
            size = int(response.get("ContentLength", 0))
            file = key.rsplit("/", 1)[-1]
            if size > limit:
                raise InvalidPrompt(
                    f"object is {size} bytes, over the {limit}-byte limit", file=file
                )
            data = body.read(limit + 1)
            if len(data) > limit:
                raise InvalidPrompt(f"object is over the {limit}-byte limit", file=file)
        except (BotoCoreError, OSError) as exc:
            raise StoreUnavailable(f"s3://{self.name}: reading {key} failed: {exc}") from None
        finally:
            body.close()
        return Fetched(data, str(response["ETag"]))

    def head(self, key: str) -> str:
        return str(self._call("head_object", Key=key)["ETag"])

    def put(
        self, key: str, data: bytes, *, if_match: str | None = None, if_none_match: bool = False
    ) -> str:
        """Write one object; with a condition, S3 applies it atomically or answers 412."""
        kwargs: dict[str, Any] = {"Key": key, "Body": data}
        if if_match is not None:
            kwargs["IfMatch"] = if_match
        elif if_none_match:
            kwargs["IfNoneMatch"] = "*"
        return str(self._call("put_object", **kwargs)["ETag"])

    def delete(self, keys: Sequence[str]) -> None:
        for start in range(0, len(keys), 1000):  # DeleteObjects takes 1,000 keys a call
            batch = [{"Key": k} for k in keys[start : start + 1000]]
            self._call("delete_objects", Delete={"Objects": batch, "Quiet": True})
