"""A lean forward for the Llama family (Llama, SmolLM2, Mistral, Qwen2-style q/k/v biases), in the
gpt-fast style: the weights pulled out of the HF model once into fused, typed records, and one
`forward` over a flat list of tokens from many rows, reading and writing a preallocated slot KV
cache in place.

Contract: for float32 weights the logits equal the HF model's within 1e-4 (same operations in the
same order: RMSNorm in float32, rotary tables from the model's own rotary module, softmax attention
over exactly the row's own columns). A row's result never depends on the other rows: linear layers
treat every token alone, and attention reads only the row's own slot.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from app.engine.slots import SlotCache

SUPPORTED_TYPES = frozenset({"llama", "mistral", "qwen2"})


class LeanUnsupported(RuntimeError):
    """The model is outside the Llama family this forward implements: the engine falls back."""


@dataclass(frozen=True, eq=False)
class Linear:
    """One projection. `weight` [out, in] in the compute dtype; with int8, `qweight` [out, in]
    int8 and `scales` [out] (per output channel) are used when the step's token count is at most
    `int8_max_tokens` (int8 GEMV wins at small batches, bf16 GEMM at large ones)."""

    weight: torch.Tensor | None
    bias: torch.Tensor | None
    qweight: torch.Tensor | None = None
    scales: torch.Tensor | None = None

    def __call__(self, x: torch.Tensor, int8: bool) -> torch.Tensor:  # [N, in] -> [N, out]
        if int8 and self.qweight is not None:
            assert self.scales is not None
            y = torch.ops.aten._weight_int8pack_mm(x, self.qweight, self.scales)
            return y if self.bias is None else y + self.bias
        assert self.weight is not None
        return F.linear(x, self.weight, self.bias)


@dataclass(frozen=True, eq=False)
class Layer:
    attn_norm: torch.Tensor  # [D]
    qkv: Linear  # D -> (Hq + 2 Hkv) * hd
    o: Linear  # Hq * hd -> D
    mlp_norm: torch.Tensor  # [D]
    gate_up: Linear  # D -> 2 * I
    down: Linear  # I -> D


@dataclass(frozen=True, eq=False)
class LeanModel:
    embed: torch.Tensor  # [V, D]
    layers: tuple[Layer, ...]
    norm: torch.Tensor  # [D]
    lm_head: Linear  # D -> V
    cos: torch.Tensor  # [S_max, hd] in the compute dtype
    sin: torch.Tensor  # [S_max, hd]
    eps: float
    num_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: torch.dtype
    int8_max_tokens: int  # use the int8 weights for steps of at most this many tokens


@dataclass(frozen=True)
class Segment:
    """Tokens of one row in one step: a decode token (len 1) or a chunk of its prompt.
    They take positions start .. start+len-1, which are also their columns in the row's slot."""

    slot: int
    tokens: tuple[int, ...]
    start: int
    emit: bool  # the row samples from the last token's logits this step
    score: bool = False  # also return the logits of every token (prompt log-probabilities)


def check_supported(model: PreTrainedModel) -> None:
    config = model.config
    kind = getattr(config, "model_type", "")
    if kind not in SUPPORTED_TYPES:
        raise LeanUnsupported(f"model type {kind!r} (lean forward: {sorted(SUPPORTED_TYPES)})")
    if getattr(config, "hidden_act", "silu") != "silu" or getattr(config, "mlp_bias", False):
        raise LeanUnsupported("only SiLU-gated MLPs without bias")
    rope = getattr(config, "rope_parameters", None) or {}
    if "dynamic" in str(rope.get("rope_type", "default")):
        raise LeanUnsupported("dynamic rotary scaling")
    window = getattr(config, "sliding_window", None)
    windowed = getattr(config, "use_sliding_window", True)
    if window is not None and windowed and int(window) < int(config.max_position_embeddings):
        raise LeanUnsupported("sliding-window attention")


def _linear(modules: list[torch.nn.Linear], dtype: torch.dtype) -> Linear:
    weight = torch.cat([m.weight.detach() for m in modules]).to(dtype)  # [out, in]
    biases = [m.bias for m in modules]
    bias = None
    if any(b is not None for b in biases):
        bias = torch.cat(
            [
                b.detach() if b is not None else torch.zeros(m.out_features, device=weight.device)
                for b, m in zip(biases, modules, strict=True)
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


def build(
    model: PreTrainedModel,
    *,
    dtype: torch.dtype,
    max_positions: int,
) -> LeanModel:
    """Pull the weights out of a loaded HF model of the Llama family (q/k/v and gate/up fused).
    For int8 weights, pass the result to `quantize_int8`."""
    check_supported(model)
    config = model.config
    inner = model.model
    layers = []
    for block in inner.layers:
        attn, mlp = block.self_attn, block.mlp
        layers.append(
            Layer(
                attn_norm=block.input_layernorm.weight.detach().to(dtype),
                qkv=_linear([attn.q_proj, attn.k_proj, attn.v_proj], dtype),
                o=_linear([attn.o_proj], dtype),
                mlp_norm=block.post_attention_layernorm.weight.detach().to(dtype),
                gate_up=_linear([mlp.gate_proj, mlp.up_proj], dtype),
                down=_linear([mlp.down_proj], dtype),
            )
        )
    num_heads = int(config.num_attention_heads)
    head_dim = int(getattr(config, "head_dim", None) or config.hidden_size // num_heads)
    # The model's own rotary module makes the tables, so every rope variant it knows matches.
    device = inner.embed_tokens.weight.device
    positions = torch.arange(max_positions, device=device)[None]  # [1, S]
    probe = torch.zeros(1, dtype=dtype, device=device)
    cos, sin = inner.rotary_emb(probe, positions)  # [1, S, hd] each
    lean = LeanModel(
        embed=inner.embed_tokens.weight.detach().to(dtype),
        layers=tuple(layers),
        norm=inner.norm.weight.detach().to(dtype),
        lm_head=_linear([model.lm_head], dtype),
        cos=cos[0].to(dtype),
        sin=sin[0].to(dtype),
        eps=float(getattr(config, "rms_norm_eps", 1e-6)),
        num_heads=num_heads,
        num_kv_heads=int(getattr(config, "num_key_value_heads", None) or num_heads),
        head_dim=head_dim,
        dtype=dtype,
        int8_max_tokens=-1,
    )
    return lean


# -- the forward ----------------------------------------------------------------------------


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # As HF: normalise in float32, cast back, then scale (the order matters for bf16 parity).
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return weight * h.to(x.dtype)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [N, H, hd]; cos/sin [N, 1, hd]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


@dataclass(frozen=True, eq=False)
class _Batch:
    """Index tensors for one step, built once and shared by every layer."""

    slots: torch.Tensor  # [N] slot of every token
    positions: torch.Tensor  # [N]
    decode_rows: int  # the first decode_rows tokens are single-token segments
    decode_slots: torch.Tensor  # [Bd]
    decode_width: int  # columns the decode attention reads (max length among them)
    decode_mask: torch.Tensor | None  # [M, 1, 1, W] bool over slots 0..M-1
    prefill: tuple[tuple[Segment, int], ...]  # (segment, offset of its first token in N)
    emit_index: torch.Tensor  # [R] token index whose logits are returned (then: scored tokens)
    ids: torch.Tensor  # [N] every token, in this order


def _plan(segments: list[Segment], lengths: list[int], device: torch.device) -> _Batch:
    """lengths: each slot's filled columns after this step's tokens are written."""
    ordered = _ordered(segments)
    decode = [s for s in ordered if _is_decode(s)]
    prefill = ordered[len(decode) :]
    slots: list[int] = []
    positions: list[int] = []
    emit: list[int] = []
    offsets: list[int] = []
    scored: list[int] = []
    offset = 0
    for seg in ordered:
        slots += [seg.slot] * len(seg.tokens)
        positions += range(seg.start, seg.start + len(seg.tokens))
        offsets.append(offset)
        if seg.score:
            scored += range(offset, offset + len(seg.tokens))
        offset += len(seg.tokens)
        if seg.emit:
            emit.append(offset - 1)
    mask = None
    width = 0
    if decode:
        rows = max(s.slot for s in decode) + 1
        width = max(s.start + 1 for s in decode)
        cols = torch.arange(width, device=device)
        lens = torch.tensor([max(lengths[i], 1) for i in range(rows)], device=device)
        mask = (cols[None, :] < lens[:, None])[:, None, None, :]  # [M, 1, 1, W]
    return _Batch(
        slots=torch.tensor(slots, dtype=torch.long, device=device),
        positions=torch.tensor(positions, dtype=torch.long, device=device),
        decode_rows=len(decode),
        decode_slots=torch.tensor([s.slot for s in decode], dtype=torch.long, device=device),
        decode_width=width,
        decode_mask=mask,
        prefill=tuple(zip(prefill, offsets[len(decode) :], strict=True)),
        emit_index=torch.tensor(emit + scored, dtype=torch.long, device=device),
        ids=torch.tensor([t for s in ordered for t in s.tokens], device=device),
    )


def _attention(
    lean: LeanModel,
    q: torch.Tensor,  # [N, Hq, hd], already rotated
    k_cache: torch.Tensor,  # [slots, Hkv, S, hd] (this layer; new K already written)
    v_cache: torch.Tensor,
    batch: _Batch,
) -> torch.Tensor:  # [N, Hq * hd]
    n, hq, hd = q.shape
    hkv = lean.num_kv_heads
    group = hq // hkv
    scale = 1.0 / math.sqrt(hd)
    out = torch.empty_like(q)
    if batch.decode_rows:
        assert batch.decode_mask is not None
        rows, width = batch.decode_mask.shape[0], batch.decode_width
        # Queries laid out by slot so K/V are plain views of slots 0..M-1 (no gather); a slot that
        # does not decode this step gets a zero query whose output is thrown away.
        qd = q.new_zeros(rows, hkv, group, hd)  # the group's heads act as query rows: GQA, no copy
        qd[batch.decode_slots] = q[: batch.decode_rows].view(-1, hkv, group, hd)
        o = F.scaled_dot_product_attention(
            qd,
            k_cache[:rows, :, :width],
            v_cache[:rows, :, :width],
            attn_mask=batch.decode_mask,
            scale=scale,
        )  # [M, Hkv, G, hd]
        out[: batch.decode_rows] = o[batch.decode_slots].view(-1, hq, hd)
    for seg, offset in batch.prefill:
        t, end = len(seg.tokens), seg.start + len(seg.tokens)
        qs = q[offset : offset + t].view(t, hkv, group, hd).permute(1, 2, 0, 3)  # [Hkv, G, t, hd]
        cols = torch.arange(end, device=q.device)
        causal = cols[None, :] <= (cols[seg.start :])[:, None]  # [t, end]
        o = F.scaled_dot_product_attention(
            qs.reshape(hkv, group * t, hd),
            k_cache[seg.slot, :, :end],
            v_cache[seg.slot, :, :end],
            attn_mask=causal.repeat(group, 1),  # [G*t, end]
            scale=scale,
        )  # [Hkv, G*t, hd]
        out[offset : offset + t] = o.view(hkv, group, t, hd).permute(2, 0, 1, 3).reshape(t, hq, hd)
    return out.view(n, hq * hd)


def forward(lean: LeanModel, cache: SlotCache, segments: list[Segment]) -> torch.Tensor:
    """Run every segment's tokens through the model, writing their K/V into their slots.
    Returns float32 logits [R + S, V]: first one row per segment with `emit`, in the order of
    `emit_order` (decode segments first, then the others), then one row per token of every
    segment with `score`, in the same segment order (see `scored_order`)."""
    device = lean.embed.device
    batch = _plan(segments, cache.advance(segments), device)
    ids = batch.ids
    int8 = ids.shape[0] <= lean.int8_max_tokens
    hq, hkv, hd = lean.num_heads, lean.num_kv_heads, lean.head_dim
    cos = lean.cos[batch.positions][:, None]  # [N, 1, hd]
    sin = lean.sin[batch.positions][:, None]
    x = lean.embed[ids]  # [N, D]
    for index, layer in enumerate(lean.layers):
        h = rms_norm(x, layer.attn_norm, lean.eps)
        qkv = layer.qkv(h, int8)  # [N, (Hq + 2 Hkv) * hd]
        q = rope(qkv[:, : hq * hd].view(-1, hq, hd), cos, sin)
        k = rope(qkv[:, hq * hd : (hq + hkv) * hd].view(-1, hkv, hd), cos, sin)
        v = qkv[:, (hq + hkv) * hd :].view(-1, hkv, hd)
        k_cache, v_cache = cache.layer(index)
        k_cache[batch.slots, :, batch.positions] = k.to(k_cache.dtype)  # in place: [N, Hkv, hd]
        v_cache[batch.slots, :, batch.positions] = v.to(v_cache.dtype)
        x = x + layer.o(_attention(lean, q, k_cache, v_cache, batch), int8)
        h = rms_norm(x, layer.mlp_norm, lean.eps)
        gate, up = layer.gate_up(h, int8).chunk(2, dim=-1)
        x = x + layer.down(F.silu(gate) * up, int8)
    last = rms_norm(x[batch.emit_index], lean.norm, lean.eps)  # [R, D]: only rows that sample
    return lean.lm_head(last, int8).float()  # [R, V]


def _is_decode(seg: Segment) -> bool:
    """One token after earlier columns: attended like a decode token (one query per slot)."""
    return len(seg.tokens) == 1 and seg.start > 0


def _ordered(segments: list[Segment]) -> list[Segment]:
    """The step's token order: decode-like segments first, then prompt chunks."""
    return [s for s in segments if _is_decode(s)] + [s for s in segments if not _is_decode(s)]


def emit_order(segments: list[Segment]) -> list[Segment]:
    """The segments whose logits `forward` returns, in the order of its rows."""
    return [s for s in _ordered(segments) if s.emit]


def scored_order(segments: list[Segment]) -> list[Segment]:
    """The segments whose every token's logits follow the emitting rows, in that order."""
    return [s for s in _ordered(segments) if s.score]
