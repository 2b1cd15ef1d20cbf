"""The prompt registry: PEFT-format soft prompts on disk, validated, immutable and versioned."""

from app.model.kinds import PromptKind
from app.registry.entry import PromptEntry, PromptFiles, build_entry
from app.registry.errors import InvalidPrompt, InvalidTaskName, UnknownTask
from app.registry.names import validate_task_name
from app.registry.peft_format import Limits
from app.registry.store import Registry, RegistryWatcher, SkippedEntry
from app.registry.task_meta import SamplingDefaults, TaskMeta

__all__ = [
    "InvalidPrompt",
    "InvalidTaskName",
    "Limits",
    "PromptEntry",
    "PromptFiles",
    "PromptKind",
    "Registry",
    "RegistryWatcher",
    "SamplingDefaults",
    "SkippedEntry",
    "TaskMeta",
    "UnknownTask",
    "build_entry",
    "validate_task_name",
]
