"""The prompt registry: PEFT-format soft prompts in a folder or a bucket, validated, immutable
and versioned."""

from app.model.kinds import PromptKind
from app.registry.base import PromptRegistry, SkippedEntry, Written
from app.registry.entry import PromptEntry, PromptFiles, build_entry
from app.registry.errors import (
    InvalidPrompt,
    InvalidTaskName,
    StoreUnavailable,
    UnknownTask,
    WriteConflict,
)
from app.registry.location import S3Location, S3Options, open_registry, parse_location
from app.registry.names import validate_task_name
from app.registry.peft_format import Limits
from app.registry.store import Registry, RegistryWatcher
from app.registry.task_meta import SamplingDefaults, TaskMeta

__all__ = [
    "InvalidPrompt",
    "InvalidTaskName",
    "Limits",
    "PromptEntry",
    "PromptFiles",
    "PromptKind",
    "PromptRegistry",
    "Registry",
    "RegistryWatcher",
    "S3Location",
    "S3Options",
    "SamplingDefaults",
    "SkippedEntry",
    "StoreUnavailable",
    "TaskMeta",
    "UnknownTask",
    "WriteConflict",
    "Written",
    "build_entry",
    "open_registry",
    "parse_location",
    "validate_task_name",
]
