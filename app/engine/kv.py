"""The running batch's KV state: per-layer K/V, right-aligned rows, and a validity mask.

Every row's most recent token sits in the last column, so one decode step appends one column for
all rows. Rows of different lengths (soft-prompt prefix + prompt + generated) are left-padded;
`valid` marks the real columns. Padding columns hold zeros and are never attended to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer


@dataclass(frozen=True, eq=False)
class KVPrefix:
    """One task version's KV prefix: what its soft prompt contributes to every layer."""

    kv: torch.Tensor  # [L, 2, H_kv, P, D]

    @property
    def length(self) -> int:
        return int(self.kv.shape[3])

    @property
    def nbytes(self) -> int:
        return self.kv.numel() * self.kv.element_size()


@dataclass(frozen=True, eq=False)
class KVBatch:
    keys: tuple[torch.Tensor, ...]  # per layer [B, H_kv, S, D]
    values: tuple[torch.Tensor, ...]  # per layer [B, H_kv, S, D]
    valid: torch.Tensor  # [B, S] bool: real (attendable) columns

    @property
    def size(self) -> int:
        return int(self.valid.shape[0])

    @property
    def width(self) -> int:
        return int(self.valid.shape[1])


def from_prefixes(
    prefixes: list[KVPrefix | None],
    *,
    num_layers: int,
    kv_shape: tuple[int, int],
    device: torch.device,
    dtype: torch.dtype,
) -> KVBatch:
    """Stack each row's prefix, left-padded to the longest (rows without one are all padding)."""
    heads, head_dim = kv_shape
    width = max((p.length for p in prefixes if p is not None), default=0)
    rows = len(prefixes)
    kv = torch.zeros(num_layers, 2, rows, heads, width, head_dim, device=device, dtype=dtype)
    valid = torch.zeros(rows, width, dtype=torch.bool, device=device)
    for i, prefix in enumerate(prefixes):
        if prefix is not None and prefix.length:
            kv[:, :, i, :, width - prefix.length :] = prefix.kv
            valid[i, width - prefix.length :] = True
    return KVBatch(keys=tuple(kv[:, 0].unbind(0)), values=tuple(kv[:, 1].unbind(0)), valid=valid)


def _pad_left(t: torch.Tensor, extra: int) -> torch.Tensor:
    if extra == 0:
        return t
    return torch.nn.functional.pad(t, (0, 0, extra, 0))  # pads dim -2 (columns)


def concat(a: KVBatch, b: KVBatch) -> KVBatch:
    """Join two batches along the batch dimension, right-aligning their columns."""
    width = max(a.width, b.width)
    da, db = width - a.width, width - b.width
    return KVBatch(
        keys=tuple(
            torch.cat([_pad_left(x, da), _pad_left(y, db)])
            for x, y in zip(a.keys, b.keys, strict=True)
        ),
        values=tuple(
            torch.cat([_pad_left(x, da), _pad_left(y, db)])
            for x, y in zip(a.values, b.values, strict=True)
        ),
        valid=torch.cat(
            [
                torch.nn.functional.pad(a.valid, (da, 0), value=False),
                torch.nn.functional.pad(b.valid, (db, 0), value=False),
            ]
        ),
    )


def select(batch: KVBatch, rows: list[int]) -> KVBatch:
    """Keep `rows`, then drop leading columns that no remaining row uses."""
    index = torch.tensor(rows, dtype=torch.long, device=batch.valid.device)
    valid = batch.valid.index_select(0, index)
    used = valid.any(dim=0).nonzero()
    start = int(used[0]) if used.numel() else valid.shape[1]
    return KVBatch(
        keys=tuple(k.index_select(0, index)[:, :, start:] for k in batch.keys),
        values=tuple(v.index_select(0, index)[:, :, start:] for v in batch.values),
        valid=valid[:, start:],
    )


def to_cache(batch: KVBatch) -> DynamicCache:
    """Wrap the batch's tensors in a transformers cache without copying them."""
    cache = DynamicCache()
    for k, v in zip(batch.keys, batch.values, strict=True):
        layer = DynamicLayer()
        layer.lazy_initialization(k, v)
        layer.keys, layer.values = k, v
        cache.layers.append(layer)
    return cache


def cache_tensors(cache: DynamicCache) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer (K, V), each [B, H, S, D], out of a cache the model has filled."""
    pairs = []
    for layer in cache.layers:
        assert isinstance(layer, DynamicLayer) and layer.keys is not None
        assert layer.values is not None
        pairs.append((layer.keys, layer.values))
    return pairs


def from_cache(cache: DynamicCache, valid: torch.Tensor) -> KVBatch:
    pairs = cache_tensors(cache)
    return KVBatch(keys=tuple(k for k, _ in pairs), values=tuple(v for _, v in pairs), valid=valid)
