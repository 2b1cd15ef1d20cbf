"""The lean model's weights read straight from a model folder's safetensors files equal those
pulled out of the built HF model, and serving that way never builds the HF model."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Qwen2Config, Qwen2ForCausalLM

from app.dtype import DType
from app.engine import Engine, GenerationRequest, SamplingParams, weights
from app.engine.lean import LeanModel, Linear
from app.engine.runner import LeanRunner
from app.model import FrozenModel, load_base_model
from app.model.loader import freeze
from app.registry import Registry
from tests.conftest import KINDS, MakeAdapter, run_to_completion, tokens_of
from tests.tiny import save_tiny, tiny_tokenizer


def _tensors(model: LeanModel) -> list[torch.Tensor]:
    out = [model.embed, model.norm, model.cos, model.sin]
    linears: list[Linear] = [model.lm_head]
    for layer in model.layers:
        out += [layer.attn_norm, layer.mlp_norm]
        linears += [layer.qkv, layer.o, layer.gate_up, layer.down]
    for linear in linears:
        assert linear.weight is not None
        out += [linear.weight] + ([linear.bias] if linear.bias is not None else [])
    return out


def _same(a: LeanModel, b: LeanModel) -> None:
    pairs = list(zip(_tensors(a), _tensors(b), strict=True))
    assert all(x.dtype == y.dtype and torch.equal(x, y) for x, y in pairs)


def _qwen2_tied(seed: int = 0) -> FrozenModel:
    """Qwen2-style: q/k/v biases, lm_head tied to the embeddings (absent from the saved file)."""
    tokenizer = tiny_tokenizer()
    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
    )
    model = Qwen2ForCausalLM(config).to(torch.float32)
    return freeze(model, tokenizer, "tiny-qwen2", torch.device("cpu"))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_rope_tables_match_the_models_rotary_module(tiny: FrozenModel, dtype: torch.dtype) -> None:
    cos, sin = weights.rope_tables(tiny.config, 300, dtype, tiny.device)
    probe = torch.zeros(1, dtype=dtype)
    ref_cos, ref_sin = tiny.model.model.rotary_emb(probe, torch.arange(300)[None])
    assert torch.equal(cos, ref_cos[0]) and torch.equal(sin, ref_sin[0])


@pytest.mark.parametrize("which", ["llama", "qwen2-tied", "llama-sharded"])
@pytest.mark.parametrize("dtype", [DType.FLOAT32, DType.BFLOAT16], ids=["fp32", "bf16"])
def test_files_give_the_same_weights_as_the_built_model(
    tiny: FrozenModel, tmp_path: Path, which: str, dtype: DType
) -> None:
    base = _qwen2_tied() if which == "qwen2-tied" else tiny
    if which == "llama-sharded":
        base.model.save_pretrained(str(tmp_path), max_shard_size="100KB")
        base.tokenizer.save_pretrained(str(tmp_path))
        assert (tmp_path / "model.safetensors.index.json").is_file()
    else:
        save_tiny(base, tmp_path)
    loaded = load_base_model(str(tmp_path), dtype=dtype, cache_dir=tmp_path / "cache")
    from_files = weights.build(
        loaded.config, loaded.weights.tensors(), dtype=dtype.torch, max_positions=256
    )
    assert not loaded.weights.built  # read from the files alone
    from_model = weights.build(
        loaded.config, loaded.model.state_dict(), dtype=dtype.torch, max_positions=256
    )
    _same(from_files, from_model)


@pytest.mark.parametrize("kind", KINDS)
def test_serving_never_builds_the_hf_model(
    tiny: FrozenModel, make_adapter: MakeAdapter, tmp_path: Path, kind: str
) -> None:
    """Not for the bare model, nor for any kind of soft prompt (the lean forward computes
    prompt-tuning prefixes itself), and the tokens are those of the model built in memory."""
    loaded = load_base_model(str(save_tiny(tiny, tmp_path / "model")), cache_dir=tmp_path / "c")
    assert replace(loaded.spec, model_id=tiny.spec.model_id) == tiny.spec
    make_adapter(tmp_path / "prompts", "task", kind)
    registry = Registry(tmp_path / "prompts", tiny.spec)
    registry.load_all()
    soft = registry.get("task").soft_prompt
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    ids = tuple(tiny.tokenizer("What is the capital of France?")["input_ids"])
    outs = [
        tokens_of(
            run_to_completion(Engine(base), GenerationRequest(str(i), ids, params, sp))[str(i)]
        )
        for base in (loaded, tiny)
        for i, sp in enumerate((None, soft))
    ]
    assert isinstance(Engine(loaded).runner, LeanRunner)
    assert outs[:2] == outs[2:]
    assert not loaded.weights.built
    assert torch.equal(loaded.model.lm_head.weight, tiny.model.lm_head.weight)  # built on use
    assert loaded.weights.built


def test_weights_that_do_not_fit_the_config_are_refused(tiny: FrozenModel, tmp_path: Path) -> None:
    folder = save_tiny(tiny, tmp_path)
    good = load_file(str(folder / "model.safetensors"))
    missing = {k: v for k, v in good.items() if k != "model.norm.weight"}
    misshapen = {**good, "model.layers.1.mlp.up_proj.weight": torch.zeros(3, 64)}
    for broken, message in [
        (missing, "have no model.norm.weight"),
        (misshapen, r"up_proj.weight has shape \(3, 64\), expected \(128, 64\)"),
    ]:
        save_file(broken, str(folder / "model.safetensors"), metadata={"format": "pt"})
        loaded = load_base_model(str(folder), cache_dir=tmp_path / "cache")
        with pytest.raises(ValueError, match=message):
            weights.build(
                loaded.config, loaded.weights.tensors(), dtype=torch.float32, max_positions=8
            )


def test_generation_config_eos_is_read(tiny: FrozenModel, tmp_path: Path) -> None:
    folder = save_tiny(tiny, tmp_path)
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": [0, 5]}))
    loaded = load_base_model(str(folder), cache_dir=tmp_path / "cache")
    assert {0, 5, tiny.tokenizer.eos_token_id} <= set(loaded.spec.eos_token_ids)
