"""PEFT prompt-learning modules around the frozen base model, for training and for evaluation.

Training uses PEFT's own modules (so `save_pretrained` writes PEFT's format); evaluation wraps a
registry entry's table in the same modules in inference mode, so both score through one forward.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import torch
from app.model.kinds import PromptKind
from app.model.loader import FrozenModel
from app.model.soft_prompt import SoftPrompt
from peft import (
    PeftModel,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    get_peft_model,
)
from peft.config import PeftConfig


class InitKind(StrEnum):
    TEXT = "text"  # the embeddings (prompt) or key/values (prefix) of a text
    RANDOM = "random"
    VOCAB = "vocab"  # embeddings of random vocabulary tokens (prompt only)
    FROM = "from"  # the table of a saved soft prompt of the same kind: training goes on from it
    TEACHER = "teacher"  # the distillation teacher's context, compressed (prefix; compress.py)


_INITS = {
    PromptKind.PROMPT_TUNING: (InitKind.TEXT, InitKind.RANDOM, InitKind.VOCAB, InitKind.FROM),
    PromptKind.P_TUNING: (InitKind.RANDOM,),  # the encoder MLP reshapes whatever it starts from
    PromptKind.PREFIX_TUNING: (InitKind.TEXT, InitKind.RANDOM, InitKind.FROM, InitKind.TEACHER),
}


@dataclass(frozen=True)
class PromptInit:
    kind: InitKind
    text: str | None = None  # TEXT: the text; FROM: the saved prompt's folder
    # FROM / TEACHER: the table [P, width] to start from, once read or compressed (a tensor:
    # kept out of == and repr)
    table: torch.Tensor | None = field(default=None, compare=False, repr=False)

    @classmethod
    def parse(cls, value: str) -> PromptInit:
        """'text:Classify the sentiment', 'random', 'vocab', 'from:prompts/my-task' or 'teacher'."""
        name, sep, text = value.partition(":")
        try:
            kind = InitKind(name)
        except ValueError:
            raise ValueError(
                f'--init {value!r}: expected text:"...", random, vocab, from:FOLDER or teacher'
            ) from None
        if (kind in (InitKind.TEXT, InitKind.FROM)) != bool(sep and text):
            raise ValueError(
                f'--init {value!r}: text and from take a value, as text:"..." or from:FOLDER'
            )
        return cls(kind=kind, text=text or None)

    def check(self, kind: PromptKind) -> None:
        if self.kind not in _INITS[kind]:
            allowed = ", ".join(i.value for i in _INITS[kind])
            raise ValueError(
                f"--init {self.kind.value} does not apply to --kind {kind.cli_name}: use {allowed}"
            )


def _config(
    base: FrozenModel, kind: PromptKind, virtual_tokens: int, inference: bool
) -> PeftConfig:
    spec = base.spec
    common: dict[str, Any] = {
        "task_type": "CAUSAL_LM",
        "num_virtual_tokens": virtual_tokens,
        "inference_mode": inference,
    }
    if kind is PromptKind.PROMPT_TUNING:
        return PromptTuningConfig(**common)
    if kind is PromptKind.P_TUNING:
        return PromptEncoderConfig(encoder_hidden_size=spec.hidden_size, **common)
    # Without the MLP projection the trained table is the prefix itself; a text init gives
    # real key/values to start from, which is what makes prefix tuning stable without the MLP.
    return PrefixTuningConfig(
        num_layers=spec.num_layers,
        token_dim=spec.kv_dim,
        num_attention_heads=spec.num_kv_heads,
        prefix_projection=False,
        **common,
    )


def _text_ids(base: FrozenModel, text: str, virtual_tokens: int) -> torch.Tensor:
    ids = base.tokenizer(text, add_special_tokens=False)["input_ids"]
    if not ids:
        raise ValueError('--init text:"..." needs a non-empty text')
    repeats = -(-virtual_tokens // len(ids))
    return torch.tensor((ids * repeats)[:virtual_tokens], device=base.device)  # [P]


@torch.no_grad()
def key_values_table(base: FrozenModel, ids: torch.Tensor) -> torch.Tensor:
    """Key/values of `ids` (at positions 0..P-1) laid out as PEFT's prefix table:
    [P, L*2*kv_heads*head_dim]. A text init starts from these; a teacher's context is one."""
    model: Any = base.model
    cache = model(input_ids=ids[None], use_cache=True).past_key_values
    layers = [torch.stack((layer.keys[0], layer.values[0])) for layer in cache.layers]
    table = torch.stack(layers)  # [L, 2, kv_heads, P, head_dim]
    return table.permute(3, 0, 1, 2, 4).reshape(ids.shape[0], -1)


def _table(model: PeftModel) -> torch.Tensor:
    """The trainable [P, width] table of the PEFT prompt encoder."""
    encoder: Any = model.prompt_encoder["default"]
    table: torch.Tensor = encoder.embedding.weight
    return table


def _initialise(model: PeftModel, base: FrozenModel, kind: PromptKind, init: PromptInit) -> None:
    table = _table(model)
    embed: Any = base.model.get_input_embeddings()
    with torch.no_grad():
        if init.kind is InitKind.VOCAB:
            words: torch.Tensor = embed.weight
            picks = torch.randint(0, int(words.shape[0]), (int(table.shape[0]),))
            table.copy_(words[picks.to(words.device)])
        elif init.kind in (InitKind.FROM, InitKind.TEACHER):
            if init.table is None or init.table.shape != table.shape:
                got = None if init.table is None else tuple(init.table.shape)
                name = f"from:{init.text}" if init.kind is InitKind.FROM else "teacher"
                raise ValueError(
                    f"--init {name}: its table is {got}, this prompt needs "
                    f"{tuple(table.shape)} (same kind and --virtual-tokens)"
                )
            table.copy_(init.table.to(table.dtype))
        elif init.kind is InitKind.TEXT and init.text is not None:
            ids = _text_ids(base, init.text, int(table.shape[0]))
            if kind is PromptKind.PREFIX_TUNING:
                table.copy_(key_values_table(base, ids))
            else:
                table.copy_(embed(ids))


def _wrap(base: FrozenModel, config: PeftConfig) -> PeftModel:
    model = get_peft_model(base.model, config)
    # Saved configs name the base by its Softserve id, not by a local cache path.
    model.peft_config["default"].base_model_name_or_path = base.spec.model_id
    model.prompt_encoder.to(base.device)
    return model


def trainable_model(
    base: FrozenModel, kind: PromptKind, virtual_tokens: int, init: PromptInit
) -> PeftModel:
    init.check(kind)
    model = _wrap(base, _config(base, kind, virtual_tokens, inference=False))
    _initialise(model, base, kind, init)
    return model


def inference_model(base: FrozenModel, soft_prompt: SoftPrompt | None) -> PeftModel | Any:
    """The base model with `soft_prompt` in front (PEFT inference mode), or the bare model."""
    if soft_prompt is None:
        return base.model
    table = soft_prompt.table
    # A P-tuning table already holds the encoder's output: it is served as prompt tuning.
    kind = PromptKind.PREFIX_TUNING if soft_prompt.kind.key_values else PromptKind.PROMPT_TUNING
    model = _wrap(base, _config(base, kind, table.shape[0], inference=True))
    with torch.no_grad():
        _table(model).copy_(table)
    return model


def prepends_embeddings(model: Any) -> int:
    """How many positions the model puts in front of the input ids (0 for prefix/bare)."""
    if not isinstance(model, PeftModel):
        return 0
    config = model.active_peft_config
    return 0 if config.peft_type == "PREFIX_TUNING" else int(config.num_virtual_tokens)
