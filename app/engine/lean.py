"""A lean forward for the Llama family (Llama, SmolLM2, Mistral, Qwen2-style q/k/v biases), in the
gpt-fast style: the weights in fused, typed records (built by `app.engine.weights`), and one
`forward` over a flat list of tokens from many rows, reading and writing a preallocated slot KV
cache in place.

Contract: for float32 weights the logits equal the HF model's within 1e-4 (same operations in the
same order: RMSNorm in float32, rotary tables computed as the model's rotary module does, softmax
attention over exactly the row's own columns). A row's result never depends on the other rows'
values: linear layers treat every token alone, and attention reads only the row's own slot. With
int8 weights the kernels depend on the step's size: weight-only int8 (or, for a decode token
alone, `LeanModel.single`, the native kernel) for small steps, bf16 or int8 activations above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F

from app.engine.slots import SlotCache


class LeanUnsupported(RuntimeError):
    """The model is outside the Llama family this forward implements: the engine falls back."""


class LargeLinear(Protocol):
    """The kernel of a linear for larger steps when it is not bf16's (`w8a8.W8A8`)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...  # [N, in] -> [N, out], no bias


class SingleDecode(Protocol):
    """A kernel for a step that is one decode token alone (`app.engine.native`): K/V written to
    column `pos` of `slot` in the cache `k`/`v` [L, slots, Hkv, cap, hd]; logits [1, V] float32."""

    def decode(
        self, token: int, pos: int, k: torch.Tensor, v: torch.Tensor, slot: int
    ) -> torch.Tensor: ...


@dataclass(frozen=True, eq=False)
class Linear:
    """One projection. `weight` [out, in] in the compute dtype; with int8, `qweight` [out, in]
    int8 and `scales` [out] (per output channel) serve steps of at most `int8_max_tokens` tokens
    (int8 GEMV wins at small batches), and `w8a8` (int8 activations too) larger ones where set,
    else `weight` (bf16 GEMM)."""

    weight: torch.Tensor | None
    bias: torch.Tensor | None
    qweight: torch.Tensor | None = None
    scales: torch.Tensor | None = None
    w8a8: LargeLinear | None = None

    def __call__(self, x: torch.Tensor, small: bool) -> torch.Tensor:  # [N, in] -> [N, out]
        if small and self.qweight is not None:
            assert self.scales is not None
            y = torch.ops.aten._weight_int8pack_mm(x, self.qweight, self.scales)
        elif self.w8a8 is not None:
            y = self.w8a8(x)
        else:
            assert self.weight is not None
            return F.linear(x, self.weight, self.bias)
        return y if self.bias is None else y + self.bias


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
    int8_max_tokens: int  # steps of at most this many tokens use the weight-only int8 kernels
    single: SingleDecode | None = None  # runs a step of one decode token alone, where set


@dataclass(frozen=True)
class Segment:
    """Tokens of one row in one step: a decode token (len 1) or a chunk of its prompt.
    They take positions start .. start+len-1, which are also their columns in the row's slot."""

    slot: int
    tokens: tuple[int, ...]
    start: int
    emit: bool  # the row samples from the last token's logits this step
    score: bool = False  # also return the logits of every token (prompt log-probabilities)


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
    decode_dense: bool  # the decode rows are slots 0..Bd-1 in order: no scatter or gather
    decode_width: int  # columns the decode attention reads (max length among them)
    decode_span: int  # M: the decode attention runs over slots 0..M-1
    decode_mask: torch.Tensor | None  # [M, 1, 1, W] bool; None where every column is valid
    # (segment, offset of its first token in N, its causal mask [G*t, end] for the group's heads)
    prefill: tuple[tuple[Segment, int, torch.Tensor], ...]
    emit_index: torch.Tensor  # [R] token index whose logits are returned (then: scored tokens)
    ids: torch.Tensor  # [N] every token, in this order


def _plan(segments: list[Segment], lengths: list[int], group: int, device: torch.device) -> _Batch:
    """lengths: each slot's filled columns after this step's tokens are written; group: query
    heads per K/V head."""
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
    width = rows = 0
    if decode:
        rows = max(s.slot for s in decode) + 1
        width = max(s.start + 1 for s in decode)
        filled = [max(lengths[i], 1) for i in range(rows)]
        if min(filled) < width:  # else (a single stream, say) no mask: SDPA's cheaper path
            cols = torch.arange(width, device=device)
            lens = torch.tensor(filled, device=device)
            mask = (cols[None, :] < lens[:, None])[:, None, None, :]  # [M, 1, 1, W]
    return _Batch(
        slots=torch.tensor(slots, dtype=torch.long, device=device),
        positions=torch.tensor(positions, dtype=torch.long, device=device),
        decode_rows=len(decode),
        decode_slots=torch.tensor([s.slot for s in decode], dtype=torch.long, device=device),
        decode_dense=[s.slot for s in decode] == list(range(len(decode))),
        decode_width=width,
        decode_span=rows,
        decode_mask=mask,
        prefill=tuple(
            (seg, offset, _causal(seg, group, device))
            for seg, offset in zip(prefill, offsets[len(decode) :], strict=True)
        ),
        emit_index=torch.tensor(emit + scored, dtype=torch.long, device=device),
        ids=torch.tensor([t for s in ordered for t in s.tokens], device=device),
    )


def _causal(seg: Segment, group: int, device: torch.device) -> torch.Tensor:
    """[G*t, end]: query i of the chunk (in each of the group's heads) sees columns <= its own."""
    cols = torch.arange(seg.start + len(seg.tokens), device=device)
    return (cols[None, :] <= cols[seg.start :, None]).repeat(group, 1)


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
    if batch.decode_rows:
        rows, width = batch.decode_span, batch.decode_width
        # Queries laid out by slot so K/V are plain views of slots 0..M-1 (no gather); the
        # group's heads act as query rows (GQA without repeating K/V). A slot that does not
        # decode this step gets a zero query whose output is thrown away.
        if batch.decode_dense:
            qd = q[:rows].view(rows, hkv, group, hd)
        else:
            qd = q.new_zeros(rows, hkv, group, hd)
            qd[batch.decode_slots] = q[: batch.decode_rows].view(-1, hkv, group, hd)
        o = F.scaled_dot_product_attention(
            qd,
            k_cache[:rows, :, :width],
            v_cache[:rows, :, :width],
            attn_mask=batch.decode_mask,
            scale=scale,
        )  # [M, Hkv, G, hd]
        if not batch.prefill and batch.decode_dense:  # a decode-only step: o is the output
            return o.view(n, hq * hd)
        decoded = o[:rows] if batch.decode_dense else o[batch.decode_slots]
    out = torch.empty_like(q)
    if batch.decode_rows:
        out[: batch.decode_rows] = decoded.view(-1, hq, hd)
    for seg, offset, causal in batch.prefill:
        t, end = len(seg.tokens), seg.start + len(seg.tokens)
        qs = q[offset : offset + t].view(t, hkv, group, hd).permute(1, 2, 0, 3)  # [Hkv, G, t, hd]
        # 4-D, one batch row: CPU SDPA takes its fused kernel (3-D inputs take the math path).
        o = F.scaled_dot_product_attention(
            qs.reshape(1, hkv, group * t, hd),
            k_cache[seg.slot : seg.slot + 1, :, :end],
            v_cache[seg.slot : seg.slot + 1, :, :end],
            attn_mask=causal,  # [G*t, end]
            scale=scale,
        )  # [1, Hkv, G*t, hd]
        out[offset : offset + t] = o.view(hkv, group, t, hd).permute(2, 0, 1, 3).reshape(t, hq, hd)
    return out.view(n, hq * hd)


def forward(
    lean: LeanModel,
    cache: SlotCache,
    segments: list[Segment],
    embeds: torch.Tensor | None = None,  # [N, D]: these input vectors instead of the tokens'
) -> torch.Tensor:
    """Run every segment's tokens through the model, writing their K/V into their slots.
    Returns float32 logits [R + S, V]: first one row per segment with `emit`, in the order of
    `emit_order` (decode segments first, then the others), then one row per token of every
    segment with `score`, in the same segment order (see `scored_order`)."""
    device = lean.embed.device
    group = lean.num_heads // lean.num_kv_heads
    lengths = cache.advance(segments)
    if lean.single is not None and embeds is None and len(segments) == 1:
        seg = segments[0]
        if _is_decode(seg) and seg.emit and not seg.score:
            # A lone stream's step: ~1,000 tiny ops that cost more in dispatch than in work.
            return lean.single.decode(seg.tokens[0], seg.start, cache.k, cache.v, seg.slot)
    batch = _plan(segments, lengths, group, device)
    ids = batch.ids
    small = ids.shape[0] <= lean.int8_max_tokens
    hq, hkv, hd = lean.num_heads, lean.num_kv_heads, lean.head_dim
    cos = lean.cos[batch.positions][:, None]  # [N, 1, hd]
    sin = lean.sin[batch.positions][:, None]
    x = lean.embed[ids] if embeds is None else embeds.to(lean.dtype)  # [N, D]
    for index, layer in enumerate(lean.layers):
        h = rms_norm(x, layer.attn_norm, lean.eps)
        qkv = layer.qkv(h, small)  # [N, (Hq + 2 Hkv) * hd]
        qk = rope(qkv[:, : (hq + hkv) * hd].view(-1, hq + hkv, hd), cos, sin)  # one pass for both
        q, k = qk[:, :hq], qk[:, hq:]  # [N, Hq, hd], [N, Hkv, hd]
        v = qkv[:, (hq + hkv) * hd :].view(-1, hkv, hd)
        k_cache, v_cache = cache.layer(index)
        k_cache[batch.slots, :, batch.positions] = k.to(k_cache.dtype)  # in place: [N, Hkv, hd]
        v_cache[batch.slots, :, batch.positions] = v.to(v_cache.dtype)
        x = x + layer.o(_attention(lean, q, k_cache, v_cache, batch), small)
        h = rms_norm(x, layer.mlp_norm, lean.eps)
        gate, up = layer.gate_up(h, small).chunk(2, dim=-1)
        x = x + layer.down(F.silu(gate) * up, small)
    last = rms_norm(x[batch.emit_index], lean.norm, lean.eps)  # [R, D]: only rows that sample
    return lean.lm_head(last, small).float()  # [R, V]


def virtual_kv(lean: LeanModel, table: torch.Tensor) -> torch.Tensor:
    """K/V [L, 2, Hkv, P, hd] of P virtual-token vectors `table` [P, D] at positions 0..P-1:
    a prompt-tuning soft prompt's KV prefix (causal attention: they never see the request)."""
    length = table.shape[0]
    cache, slot = run_alone(lean, (0,) * length, embeds=table)
    layers = [cache.layer(i) for i in range(len(lean.layers))]
    return torch.stack([torch.stack((k[slot, :, :length], v[slot, :, :length])) for k, v in layers])


def run_alone(
    lean: LeanModel,
    tokens: tuple[int, ...],
    embeds: torch.Tensor | None = None,
    logits: bool = False,
) -> tuple[SlotCache, int]:
    """One sequence through the model at positions 0.. in a cache of its own (the LM head run on
    every token if `logits`): (cache, slot)."""
    cache = SlotCache(
        num_layers=len(lean.layers),
        num_slots=1,
        kv_heads=lean.num_kv_heads,
        head_dim=lean.head_dim,
        max_len=len(tokens),
        dtype=lean.dtype,
        device=lean.embed.device,
    )
    slot = cache.allocate(None).slot
    forward(lean, cache, [Segment(slot, tokens, 0, emit=False, score=logits)], embeds=embeds)
    return cache, slot


def _is_decode(seg: Segment) -> bool:
    """One token after earlier columns: attended like a decode token (one query per slot)."""
    return len(seg.tokens) == 1 and seg.start > 0


def _ordered(segments: list[Segment]) -> list[Segment]:
    """The step's token order: decode-like segments first (by slot: with every slot busy their
    attention needs no scatter or gather), then prompt chunks."""
    decode = sorted((s for s in segments if _is_decode(s)), key=lambda s: s.slot)
    return decode + [s for s in segments if not _is_decode(s)]


def emit_order(segments: list[Segment]) -> list[Segment]:
    """The segments whose logits `forward` returns, in the order of its rows."""
    return [s for s in _ordered(segments) if s.emit]


def scored_order(segments: list[Segment]) -> list[Segment]:
    """The segments whose every token's logits follow the emitting rows, in that order."""
    return [s for s in _ordered(segments) if s.score]
