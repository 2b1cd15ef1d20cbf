"""Where the registry lives: a local folder, or `s3://BUCKET/PREFIX` in S3-compatible storage.
Torch-free (like `app.dtype`), so `app.settings` can parse the location without the torch import."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

# S3's own bucket rule (lowercase, digits, '.', '-'; 3-63 characters), and a prefix of plain
# path segments: no empty, '.' or '..' segment, so a key can never be read two ways.
_BUCKET = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # no leading or trailing '/'; may be empty

    @classmethod
    def parse(cls, url: str) -> S3Location:
        if not url.startswith("s3://"):
            raise ValueError(f"not an s3:// URL: {url!r}")
        bucket, _, prefix = url[len("s3://") :].partition("/")
        if _BUCKET.fullmatch(bucket) is None:
            raise ValueError(
                f"invalid bucket name {bucket!r}: 3-63 lowercase letters, digits, '.' or '-'"
            )
        prefix = prefix.strip("/")
        for segment in prefix.split("/") if prefix else ():
            if _SEGMENT.fullmatch(segment) is None or set(segment) == {"."}:
                raise ValueError(
                    f"invalid prefix segment {segment!r} in {url!r}: letters, digits, '.', '_', '-'"
                )
        return cls(bucket=bucket, prefix=prefix)

    def key(self, *parts: str) -> str:
        return "/".join([self.prefix, *parts] if self.prefix else parts)

    def __str__(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}" if self.prefix else f"s3://{self.bucket}"


@dataclass(frozen=True)
class S3Options:
    """How to reach the bucket. Credentials and region come from the standard AWS variables
    (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION ...), read by boto3 itself."""

    endpoint_url: str | None = None  # any S3-compatible server; None: AWS
    gc_grace_s: float = 60.0  # superseded versions are deleted this long after the flip
    timeout_s: float = 10.0


def parse_location(value: str | Path | S3Location) -> Path | S3Location:
    if isinstance(value, S3Location | Path):
        return value
    return S3Location.parse(value) if value.startswith("s3://") else Path(value)
