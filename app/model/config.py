"""A model folder's config.json and tokenizer read without transformers' config classes: in
transformers 5 importing any of them pulls in its whole modeling stack (torch._dynamo,
torch.distributed, sympy: ~1.2 s of a ~4 s start-up). Only plain Llama models take this path;
anything else (other families, rope scaling, another tokenizer class) gets transformers' own.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# The tokenizer classes that are transformers' generic fast tokenizer, nothing model-specific.
GENERIC_TOKENIZERS = frozenset({"TokenizersBackend", "PreTrainedTokenizerFast"})


@dataclass(frozen=True)
class LlamaJson:
    """The fields of a Llama config.json that Softserve reads, with LlamaConfig's defaults
    (attribute names as transformers' config, so either can be passed where a config goes)."""

    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int
    rms_norm_eps: float
    hidden_act: str
    mlp_bias: bool
    tie_word_embeddings: bool
    rope_parameters: dict[str, Any] = field(hash=False)
    eos_token_id: int | list[int] | None
    model_type: str = "llama"


def read_llama_config(folder: Path) -> LlamaJson | None:
    """The folder's config as `LlamaJson`, or None where transformers' class must read it."""
    path = folder / "config.json"
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    required = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")
    if not isinstance(raw, dict) or raw.get("model_type") != "llama":
        return None
    # As saved by transformers 5 (rope_parameters) or before (rope_theta); anything scaled is
    # left to transformers, which standardises the many spellings of rope scaling.
    rope = raw.get("rope_parameters") or {"rope_theta": raw.get("rope_theta", 10000.0)}
    if raw.get("rope_scaling") or not isinstance(rope, dict):
        return None
    if rope.get("rope_type", "default") != "default" or set(rope) - {"rope_type", "rope_theta"}:
        return None
    if any(not isinstance(raw.get(k), int) for k in (*required, "vocab_size")):
        return None
    heads = raw["num_attention_heads"]
    return LlamaJson(
        hidden_size=raw["hidden_size"],
        intermediate_size=raw["intermediate_size"],
        num_hidden_layers=raw["num_hidden_layers"],
        num_attention_heads=heads,
        num_key_value_heads=raw.get("num_key_value_heads") or heads,
        head_dim=raw.get("head_dim") or raw["hidden_size"] // heads,
        vocab_size=raw["vocab_size"],
        max_position_embeddings=raw.get("max_position_embeddings", 2048),
        rms_norm_eps=float(raw.get("rms_norm_eps", 1e-6)),
        hidden_act=raw.get("hidden_act", "silu"),
        mlp_bias=bool(raw.get("mlp_bias", False)),
        tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
        rope_parameters={"rope_type": "default", "rope_theta": float(rope["rope_theta"])},
        eos_token_id=raw.get("eos_token_id"),
    )


def load_tokenizer(folder: Path) -> Any:
    """The folder's tokenizer: the generic fast class directly when that is what it names,
    else whatever AutoTokenizer picks."""
    try:
        named = json.loads((folder / "tokenizer_config.json").read_text()).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        named = None
    if named in GENERIC_TOKENIZERS and (folder / "tokenizer.json").is_file():
        from transformers.tokenization_utils_tokenizers import TokenizersBackend

        return TokenizersBackend.from_pretrained(str(folder))
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(folder))
