"""Open the registry backend for a location (see `app.location`)."""

from __future__ import annotations

from pathlib import Path

from app.location import S3Location, S3Options, parse_location
from app.model.spec import ModelSpec
from app.registry.base import PromptRegistry
from app.registry.peft_format import Limits

__all__ = ["S3Location", "S3Options", "open_registry", "parse_location"]


def open_registry(
    location: Path | S3Location,
    spec: ModelSpec,
    limits: Limits | None = None,
    options: S3Options | None = None,
) -> PromptRegistry:
    """The backend for `location`; nothing is read until `load_all` (or a write)."""
    if isinstance(location, S3Location):
        from app.registry.s3 import S3Registry  # boto3 is imported only for a bucket

        return S3Registry(location, spec, limits, options or S3Options())
    from app.registry.store import Registry

    return Registry(location, spec, limits)
