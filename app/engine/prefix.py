"""Soft prompt -> KV prefix, computed once per task version and kept in a byte-bounded LRU."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from app.engine.kv import KVPrefix, cache_tensors
from app.model import FrozenModel, SoftPrompt

# Virtual-token vectors [P, D] -> their K/V [L, 2, Hkv, P, hd] (the lean forward's `virtual_kv`).
VirtualKV = Callable[[torch.Tensor], torch.Tensor]


def compute_kv_prefix(
    base: FrozenModel, soft_prompt: SoftPrompt, virtual: VirtualKV | None = None
) -> KVPrefix:
    """A soft prompt's KV prefix. Virtual tokens (prompt tuning, P-tuning) run through
    `virtual` when given (the lean forward: no HF model needed), else the HF model."""
    spec = base.spec
    table = soft_prompt.table.to(device=base.device, dtype=base.dtype)
    length = soft_prompt.num_virtual_tokens
    if soft_prompt.kind.key_values:
        # PEFT's layout: view(P, 2L, kv_heads, head_dim), index 2l = K of layer l, 2l+1 = V.
        kv = table.view(length, 2 * spec.num_layers, spec.num_kv_heads, spec.head_dim)
        kv = kv.permute(1, 2, 0, 3)  # [2L, H, P, D]
        kv = kv.reshape(spec.num_layers, 2, spec.num_kv_heads, length, spec.head_dim)
        return KVPrefix(kv=kv.contiguous())
    # Virtual tokens come first and attention is causal, so their K/V never depend on the
    # request: run them through the frozen model once, at positions 0..P-1.
    if virtual is not None:
        with torch.inference_mode():
            return KVPrefix(kv=virtual(table))
    cache = DynamicCache()
    with torch.inference_mode():
        base.model(
            inputs_embeds=table.unsqueeze(0),  # [1, P, hidden]
            position_ids=torch.arange(length, device=base.device).unsqueeze(0),
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
    kv = torch.stack(
        [torch.stack([k[0], v[0]]) for k, v in cache_tensors(cache)]
    )  # [L, 2, H, P, D]
    return KVPrefix(kv=kv)


@dataclass(frozen=True)
class PrefixCacheStats:
    hits: int
    misses: int
    entries: int
    bytes: int
    capacity_bytes: int


class PrefixCache:
    """LRU of KV prefixes keyed by `SoftPrompt.key` (task + version + digest).

    Derived data only: an evicted prefix is recomputed on the next miss. A prefix larger than the
    whole capacity is computed and used but not kept.
    """

    def __init__(
        self, base: FrozenModel, capacity_bytes: int, virtual: VirtualKV | None = None
    ) -> None:
        self._base = base
        self._virtual = virtual
        self._capacity = capacity_bytes
        self._items: OrderedDict[str, KVPrefix] = OrderedDict()
        self._bytes = 0
        self._hits = 0
        self._misses = 0

    def __contains__(self, key: str) -> bool:
        return key in self._items

    def get(self, soft_prompt: SoftPrompt) -> KVPrefix:
        found = self._items.get(soft_prompt.key)
        if found is not None:
            self._items.move_to_end(soft_prompt.key)
            self._hits += 1
            return found
        self._misses += 1
        prefix = compute_kv_prefix(self._base, soft_prompt, self._virtual)
        if prefix.nbytes <= self._capacity:
            self._items[soft_prompt.key] = prefix
            self._bytes += prefix.nbytes
            while self._bytes > self._capacity:
                _, evicted = self._items.popitem(last=False)
                self._bytes -= evicted.nbytes
        return prefix

    def stats(self) -> PrefixCacheStats:
        return PrefixCacheStats(
            hits=self._hits,
            misses=self._misses,
            entries=len(self._items),
            bytes=self._bytes,
            capacity_bytes=self._capacity,
        )
