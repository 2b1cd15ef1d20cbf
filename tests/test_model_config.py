"""config.json and the tokenizer read without transformers' config classes give what transformers'
own classes give, and anything outside plain Llama is left to transformers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoTokenizer

from app.engine import weights
from app.model import FrozenModel, ModelSpec
from app.model.config import LlamaJson, load_tokenizer, read_llama_config
from tests.tiny import save_tiny

FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "max_position_embeddings",
    "rms_norm_eps",
    "hidden_act",
    "mlp_bias",
    "tie_word_embeddings",
    "rope_parameters",
    "eos_token_id",
)


def _edit(folder: Path, **changes: object) -> None:
    path = folder / "config.json"
    raw = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            raw.pop(key, None)
        else:
            raw[key] = value
    path.write_text(json.dumps(raw))


@pytest.mark.parametrize(
    "changes",
    [
        {},  # as transformers 5 saves it: rope_parameters
        {"rope_parameters": None, "rope_theta": 12345.0, "head_dim": None},  # older: rope_theta
        {"rope_parameters": None, "tie_word_embeddings": True, "num_key_value_heads": None},
    ],
    ids=["v5", "rope-theta", "defaults"],
)
def test_plain_llama_reads_as_transformers_does(
    tiny: FrozenModel, tmp_path: Path, changes: dict[str, object]
) -> None:
    folder = save_tiny(tiny, tmp_path)
    _edit(folder, **changes)
    ours, theirs = read_llama_config(folder), AutoConfig.from_pretrained(str(folder))
    assert isinstance(ours, LlamaJson)
    for name in FIELDS:
        assert getattr(ours, name) == getattr(theirs, name), name
    assert ModelSpec.from_hf_config(ours, "m", ()) == ModelSpec.from_hf_config(theirs, "m", ())
    tables = [weights.rope_tables(c, 64, torch.float32, tiny.device) for c in (ours, theirs)]
    assert all(torch.equal(a, b) for a, b in zip(*tables, strict=True))


@pytest.mark.parametrize(
    "changes",
    [
        {"model_type": "qwen2"},
        {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 10000.0}},
        {"rope_parameters": None, "rope_scaling": {"type": "linear", "factor": 2.0}},
        {"hidden_size": "64"},
    ],
    ids=["other-family", "scaled-rope", "old-scaled-rope", "odd-field"],
)
def test_anything_else_is_left_to_transformers(
    tiny: FrozenModel, tmp_path: Path, changes: dict[str, object]
) -> None:
    folder = save_tiny(tiny, tmp_path)
    _edit(folder, **changes)
    assert read_llama_config(folder) is None
    (folder / "config.json").write_text("{not json")
    assert read_llama_config(folder) is None


def test_generic_tokenizer_loads_as_auto_tokenizer(tiny: FrozenModel, tmp_path: Path) -> None:
    folder = save_tiny(tiny, tmp_path)
    ours, theirs = load_tokenizer(folder), AutoTokenizer.from_pretrained(str(folder))
    assert type(ours) is type(theirs)
    text = "Review: a great film. What is the capital of France? 0123"
    assert ours(text)["input_ids"] == theirs(text)["input_ids"]
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": text}]
    assert ours.apply_chat_template(chat, tokenize=False, add_generation_prompt=True) == (
        theirs.apply_chat_template(chat, tokenize=False, add_generation_prompt=True)
    )
    assert (ours.eos_token_id, ours.pad_token_id, len(ours)) == (
        theirs.eos_token_id,
        theirs.pad_token_id,
        len(theirs),
    )
