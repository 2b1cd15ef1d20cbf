"""The preallocated KV cache of the lean forward: one slot per running row, written in place.

A slot's columns are its row's positions: column p holds the K/V of position p (the soft prompt's
virtual tokens at 0..P-1, then the prompt, then generated tokens). A row joins by taking a free
slot (its KV prefix copied in once) and leaves by freeing it: nobody else's columns move. The
column capacity doubles when a row needs more (a copy once per doubling, not per step).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import torch


class _HasSpan(Protocol):
    @property
    def slot(self) -> int: ...
    @property
    def start(self) -> int: ...
    @property
    def tokens(self) -> tuple[int, ...]: ...


class SlotCache:
    def __init__(
        self,
        *,
        num_layers: int,
        num_slots: int,
        kv_heads: int,
        head_dim: int,
        max_len: int,
        dtype: torch.dtype,
        device: torch.device,
        initial_len: int = 256,
    ) -> None:
        self.max_len = max_len
        self.num_slots = num_slots
        capacity = min(initial_len, max_len)
        shape = (num_layers, num_slots, kv_heads, capacity, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)  # [L, slots, Hkv, cap, hd]
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = [0] * num_slots  # filled columns per slot
        self._free = list(range(num_slots))

    @property
    def capacity(self) -> int:
        return int(self.k.shape[3])

    @property
    def free_slots(self) -> int:
        return len(self._free)

    @property
    def nbytes(self) -> int:
        return 2 * self.k.numel() * self.k.element_size()

    def layer(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.k[index], self.v[index]  # [slots, Hkv, cap, hd] views

    def allocate(self, prefix: torch.Tensor | None) -> int:
        """Take the lowest free slot (keeps the decode attention's slot range short) and copy
        the row's KV prefix [L, 2, Hkv, P, hd] into its first P columns."""
        if not self._free:
            raise RuntimeError("no free KV slot")
        self._free.sort()
        slot = self._free.pop(0)
        length = 0 if prefix is None else int(prefix.shape[3])
        self._ensure(length)
        if prefix is not None and length:
            self.k[:, slot, :, :length] = prefix[:, 0]
            self.v[:, slot, :, :length] = prefix[:, 1]
        self.lengths[slot] = length
        return slot

    def release(self, slot: int) -> None:
        # The stale columns stay: a new owner's lengths mask them out until overwritten.
        self.lengths[slot] = 0
        self._free.append(slot)

    def advance(self, segments: Sequence[_HasSpan]) -> list[int]:
        """Make room for this step's tokens and record the new lengths (returned)."""
        for seg in segments:
            end = seg.start + len(seg.tokens)
            self._ensure(end)
            self.lengths[seg.slot] = max(self.lengths[seg.slot], end)
        return self.lengths

    def _ensure(self, length: int) -> None:
        if length <= self.capacity:
            return
        if length > self.max_len:
            raise RuntimeError(f"{length} positions exceed the cache's {self.max_len}")
        capacity = self.capacity
        while capacity < length:
            capacity *= 2
        capacity = min(capacity, self.max_len)
        for name in ("k", "v"):
            old = getattr(self, name)
            new = old.new_zeros(*old.shape[:3], capacity, old.shape[4])
            new[:, :, :, : old.shape[3]] = old
            setattr(self, name, new)
