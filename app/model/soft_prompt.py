"""The one vocabulary the registry and the engine share about a soft prompt.

The registry produces these (from PEFT folders); the engine consumes them (as KV prefixes).
Neither needs to know about the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from app.model.kinds import PromptKind


@dataclass(frozen=True, eq=False)
class SoftPrompt:
    """An immutable soft prompt. `key` names one version of one task: KV prefixes are cached by it."""

    key: str
    kind: PromptKind  # the engine needs only `kind.key_values`
    table: torch.Tensor = field(
        repr=False
    )  # [P, hidden] or [P, layers * 2 * kv_dim]; never mutated

    @property
    def num_virtual_tokens(self) -> int:
        return int(self.table.shape[0])
