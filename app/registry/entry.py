"""One registry entry: an immutable, versioned, validated soft prompt."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from app.model.kinds import PromptKind
from app.model.soft_prompt import SoftPrompt
from app.model.spec import ModelSpec
from app.registry.names import validate_task_name
from app.registry.peft_format import (
    Limits,
    parse_adapter_config,
    read_prompt_table,
)
from app.registry.task_meta import TaskMeta, parse_task_meta


@dataclass(frozen=True)
class PromptFiles:
    """The raw bytes of one entry, as found on disk or uploaded."""

    adapter_config: bytes
    adapter_model: bytes
    task: bytes | None = None


@dataclass(frozen=True, eq=False)
class PromptEntry:
    name: str
    version: int
    kind: PromptKind
    sha256: str  # of adapter_model.safetensors
    created: float  # unix seconds
    meta: TaskMeta
    soft_prompt: SoftPrompt

    @property
    def num_virtual_tokens(self) -> int:
        return self.soft_prompt.num_virtual_tokens

    @property
    def nbytes(self) -> int:
        return self.soft_prompt.table.numel() * self.soft_prompt.table.element_size()


def build_entry(
    name: str,
    files: PromptFiles,
    *,
    spec: ModelSpec,
    limits: Limits,
    version: int,
    created: float,
) -> PromptEntry:
    """Validate everything; raise InvalidPrompt (naming the file) on the first problem."""
    validate_task_name(name)
    config = parse_adapter_config(files.adapter_config, spec, limits)
    table = read_prompt_table(files.adapter_model, config, spec, limits)
    meta = parse_task_meta(files.task)
    digest = hashlib.sha256(files.adapter_model).hexdigest()
    soft_prompt = SoftPrompt(key=f"{name}@{version}:{digest[:16]}", kind=config.kind, table=table)
    return PromptEntry(
        name=name,
        version=version,
        kind=config.kind,
        sha256=digest,
        created=created,
        meta=meta,
        soft_prompt=soft_prompt,
    )
