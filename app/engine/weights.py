"""The lean model's weights: built from the weights by their HF names (a loaded model's state dict,
or the folder's safetensors files read directly, which spares building the HF model at start-up),
q/k/v and gate/up fused, every shape checked against the config; optionally int8.

Contract: `build` raises `LeanUnsupported` for a model outside the Llama family (the engine then
uses the HF forward) and `ValueError` for weights that do not fit the config.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import torch

from app.engine.lean import Layer, LeanModel, LeanUnsupported, Linear

SUPPORTED_TYPES = frozenset({"llama", "mistral", "qwen2"})


def check_supported(config: Any) -> None:
    kind = getattr(config, "model_type", "")
    if kind not in SUPPORTED_TYPES:
        raise LeanUnsupported(f"model type {kind!r} (lean forward: {sorted(SUPPORTED_TYPES)})")
    if getattr(config, "hidden_act", "silu") != "silu" or getattr(config, "mlp_bias", False):
        raise LeanUnsupported("only SiLU-gated MLPs without bias")
    rope = getattr(config, "rope_parameters", None) or {}
    # These rescale the rotary frequencies by the sequence's length: no fixed table.
    if any(k in str(rope.get("rope_type", "default")) for k in ("dynamic", "longrope")):
        raise LeanUnsupported(f"rotary scaling {rope.get('rope_type')!r}")
    window = getattr(config, "sliding_window", None)
    windowed = getattr(config, "use_sliding_window", True)
    if window is not None and windowed and int(window) < int(config.max_position_embeddings):
        raise LeanUnsupported("sliding-window attention")


def rope_tables(
    config: Any, max_positions: int, dtype: torch.dtype, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [S, hd] as the HF rotary module computes them (float32, then cast)."""
    rope = getattr(config, "rope_parameters", None) or {}
    kind = rope.get("rope_type", "default")
    if kind == "default":
        dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
        steps = torch.arange(0, dim, 2, dtype=torch.float) / dim
        inv_freq, scaling = 1.0 / (rope["rope_theta"] ** steps), 1.0
    else:  # llama3, linear, yarn, ...: transformers' own functions
        from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

        inv_freq, scaling = ROPE_INIT_FUNCTIONS[kind](config)
    positions = torch.arange(max_positions, device=device).float()
    freqs = positions[:, None] * inv_freq.to(device=device, dtype=torch.float)  # [S, hd/2]
    angles = torch.cat((freqs, freqs), dim=-1)  # [S, hd]
    return (angles.cos() * scaling).to(dtype), (angles.sin() * scaling).to(dtype)


def _linear(tensors: Mapping[str, torch.Tensor], names: list[str], dtype: torch.dtype) -> Linear:
    """Fuse the projections `names` (HF module paths) into one, in `dtype`."""
    weights = [tensors[f"{n}.weight"] for n in names]
    weight = torch.cat(weights).to(dtype)  # [out, in]
    biases = [tensors.get(f"{n}.bias") for n in names]
    bias = None
    if any(b is not None for b in biases):
        bias = torch.cat(
            [
                b if b is not None else torch.zeros(len(w), device=w.device)
                for b, w in zip(biases, weights, strict=True)
            ]
        ).to(dtype)
    return Linear(weight=weight.contiguous(), bias=bias)


def _int8(linear: Linear, keep_full: bool) -> Linear:
    """Symmetric per-output-channel int8: w ~= qweight * scale, |qweight| <= 127."""
    assert linear.weight is not None
    full = linear.weight.float()
    scales = full.abs().amax(dim=1).clamp(min=1e-8) / 127.0  # [out]
    qweight = torch.round(full / scales[:, None]).clamp(-127, 127).to(torch.int8)
    return Linear(
        weight=linear.weight if keep_full else None,
        bias=linear.bias,
        qweight=qweight.contiguous(),
        scales=scales.to(linear.weight.dtype),
    )


def require_int8_dtype(dtype: torch.dtype) -> None:
    """int8 weights run with bfloat16 activations only (int8 x fp32 is ~30x slower here)."""
    if dtype != torch.bfloat16:
        raise LeanUnsupported("int8 weights need bfloat16 activations (--dtype bfloat16)")


def quantize_int8(lean: LeanModel, int8_max_tokens: int = 1 << 30) -> LeanModel:
    """The same model with int8 linears, used for steps of at most `int8_max_tokens` tokens (the
    bf16 weights are kept for larger steps, unless every step uses int8)."""
    require_int8_dtype(lean.dtype)
    keep = int8_max_tokens < (1 << 30)
    layers = tuple(
        replace(
            layer,
            qkv=_int8(layer.qkv, keep),
            o=_int8(layer.o, keep),
            gate_up=_int8(layer.gate_up, keep),
            down=_int8(layer.down, keep),
        )
        for layer in lean.layers
    )
    return replace(
        lean, layers=layers, lm_head=_int8(lean.lm_head, keep), int8_max_tokens=int8_max_tokens
    )


def _expected_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    num_heads = int(config.num_attention_heads)
    num_kv_heads = int(getattr(config, "num_key_value_heads", None) or num_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // num_heads)
    d, inner, vocab = int(config.hidden_size), int(config.intermediate_size), int(config.vocab_size)
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (vocab, d),
        "model.norm.weight": (d,),
        "lm_head.weight": (vocab, d),
    }
    for i in range(int(config.num_hidden_layers)):
        at = f"model.layers.{i}"
        shapes |= {
            f"{at}.input_layernorm.weight": (d,),
            f"{at}.post_attention_layernorm.weight": (d,),
            f"{at}.self_attn.q_proj.weight": (num_heads * head_dim, d),
            f"{at}.self_attn.k_proj.weight": (num_kv_heads * head_dim, d),
            f"{at}.self_attn.v_proj.weight": (num_kv_heads * head_dim, d),
            f"{at}.self_attn.o_proj.weight": (d, num_heads * head_dim),
            f"{at}.mlp.gate_proj.weight": (inner, d),
            f"{at}.mlp.up_proj.weight": (inner, d),
            f"{at}.mlp.down_proj.weight": (d, inner),
        }
    return shapes


def build(
    config: Any,
    tensors: Mapping[str, torch.Tensor],
    *,
    dtype: torch.dtype,
    max_positions: int,
) -> LeanModel:
    """The model from its weights by their HF names (a state dict, or the safetensors files as
    saved), q/k/v and gate/up fused, every shape checked against `config`. For int8 weights,
    pass the result to `quantize_int8`."""
    check_supported(config)
    if "lm_head.weight" not in tensors and getattr(config, "tie_word_embeddings", False):
        tensors = {**tensors, "lm_head.weight": tensors["model.embed_tokens.weight"]}
    for name, shape in _expected_shapes(config).items():
        if name not in tensors:
            raise ValueError(f"the model's weights have no {name}")
        if tuple(tensors[name].shape) != shape:
            raise ValueError(f"{name} has shape {tuple(tensors[name].shape)}, expected {shape}")
    layers = []
    for i in range(int(config.num_hidden_layers)):
        at = f"model.layers.{i}"
        attn, mlp = f"{at}.self_attn", f"{at}.mlp"
        layers.append(
            Layer(
                attn_norm=tensors[f"{at}.input_layernorm.weight"].to(dtype),
                qkv=_linear(tensors, [f"{attn}.q_proj", f"{attn}.k_proj", f"{attn}.v_proj"], dtype),
                o=_linear(tensors, [f"{attn}.o_proj"], dtype),
                mlp_norm=tensors[f"{at}.post_attention_layernorm.weight"].to(dtype),
                gate_up=_linear(tensors, [f"{mlp}.gate_proj", f"{mlp}.up_proj"], dtype),
                down=_linear(tensors, [f"{mlp}.down_proj"], dtype),
            )
        )
    num_heads = int(config.num_attention_heads)
    embed = tensors["model.embed_tokens.weight"]
    cos, sin = rope_tables(config, max_positions, dtype, embed.device)
    return LeanModel(
        embed=embed.to(dtype),
        layers=tuple(layers),
        norm=tensors["model.norm.weight"].to(dtype),
        lm_head=_linear(tensors, ["lm_head"], dtype),
        cos=cos,
        sin=sin,
        eps=float(getattr(config, "rms_norm_eps", 1e-6)),
        num_heads=num_heads,
        num_kv_heads=int(getattr(config, "num_key_value_heads", None) or num_heads),
        head_dim=int(getattr(config, "head_dim", None) or config.hidden_size // num_heads),
        dtype=dtype,
        int8_max_tokens=-1,
    )
