"""`PromptKind`: the one name for a soft prompt's kind, shared by the registry (PEFT's
`peft_type`), training (`--kind`), the API (`kind` fields) and the engine. Torch-free."""

from __future__ import annotations

from enum import StrEnum


class PromptKind(StrEnum):
    # Values are PEFT's `peft_type`: what adapter_config.json and the API say.
    PROMPT_TUNING = "PROMPT_TUNING"
    P_TUNING = "P_TUNING"
    PREFIX_TUNING = "PREFIX_TUNING"

    @property
    def key_values(self) -> bool:
        """The table holds per-layer K/V [P, layers * 2 * kv_dim] (prefix tuning), not virtual-token
        embeddings [P, hidden] (prompt tuning; a P-tuning file already holds the encoder's output).
        The engine derives its whole treatment of a soft prompt from this."""
        return self is PromptKind.PREFIX_TUNING

    @property
    def cli_name(self) -> str:
        """The short name `softserve train --kind` takes (and task.json's training info records)."""
        return _CLI_NAMES[self]

    @classmethod
    def parse(cls, name: str) -> PromptKind:
        """A `--kind` value ('prompt', 'p-tuning', 'prefix') or a peft_type."""
        for kind, cli in _CLI_NAMES.items():
            if name in (cli, kind.value):
                return kind
        raise ValueError(f"unknown prompt kind {name!r}: use prompt, p-tuning or prefix")


_CLI_NAMES = {
    PromptKind.PROMPT_TUNING: "prompt",
    PromptKind.P_TUNING: "p-tuning",
    PromptKind.PREFIX_TUNING: "prefix",
}
