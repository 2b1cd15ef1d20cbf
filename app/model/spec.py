"""Shape facts about the base model, shared by the registry (validation) and the engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ModelSpec:
    model_id: str
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_context: int
    eos_token_ids: tuple[int, ...]

    @property
    def kv_dim(self) -> int:
        """Width of one layer's K (or V) for one token: what PEFT's prefix tuning stores per half."""
        return self.num_kv_heads * self.head_dim

    @property
    def prefix_width(self) -> int:
        """Columns of a PREFIX_TUNING table: K and V for every layer."""
        return self.num_layers * 2 * self.kv_dim

    @classmethod
    def from_hf_config(
        cls, config: Any, model_id: str, eos_token_ids: tuple[int, ...]
    ) -> ModelSpec:
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        num_heads = int(text.num_attention_heads)
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // num_heads
        return cls(
            model_id=model_id,
            hidden_size=int(text.hidden_size),
            num_layers=int(text.num_hidden_layers),
            num_heads=num_heads,
            num_kv_heads=int(getattr(text, "num_key_value_heads", None) or num_heads),
            head_dim=int(head_dim),
            vocab_size=int(text.vocab_size),
            max_context=int(getattr(text, "max_position_embeddings", 2048)),
            eos_token_ids=eos_token_ids,
        )
