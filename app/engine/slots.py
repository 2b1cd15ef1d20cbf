"""The preallocated KV cache of the lean forward: one slot per running row, written in place.

A slot's columns are its row's positions: column p holds the K/V of position p (the soft prompt's
virtual tokens at 0..P-1, then the prompt, then generated tokens). A row joins by taking a free
slot (its KV prefix copied in once) and leaves by freeing it: nobody else's columns move. The
column capacity doubles when a row needs more (a copy once per doubling, not per step).

A freed slot keeps what it holds (the prefix's key, and the tokens whose K/V fill its columns), so
a new row whose prompt starts like that content reuses those columns instead of computing them
again: the same soft prompt and the same leading tokens at the same positions have the same K/V.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch


class _HasSpan(Protocol):
    @property
    def slot(self) -> int: ...
    @property
    def start(self) -> int: ...
    @property
    def tokens(self) -> tuple[int, ...]: ...


@dataclass
class _Held:
    """What a slot's columns hold: the KV prefix (by key) in 0..virtual-1, then `tokens`."""

    key: Hashable | None = None  # None: no content worth reusing
    virtual: int = 0
    tokens: list[int] = field(default_factory=list)
    freed: int = 0  # when it was last released (a counter)


@dataclass(frozen=True)
class Admission:
    slot: int
    reused: int  # leading prompt tokens whose K/V the slot already held (not to be computed)


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
        self._held = [_Held() for _ in range(num_slots)]
        self._free = list(range(num_slots))
        self._releases = 0

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

    def allocate(
        self, prefix: torch.Tensor | None, key: Hashable = None, prompt: Sequence[int] = ()
    ) -> Admission:
        """Take a free slot for a row starting from the KV prefix [L, 2, Hkv, P, hd] known as
        `key` (None: nothing to reuse), whose prompt starts with `prompt`: the free slot already
        holding that prefix and the longest start of `prompt` (its columns are reused as they
        are); else an empty slot or the one freed longest ago, the prefix copied in. Ties go to
        the lowest slot (keeps the decode attention's slot range short)."""
        if not self._free:
            raise RuntimeError("no free KV slot")
        virtual = 0 if prefix is None else int(prefix.shape[3])
        tokens = list(prompt)  # once: compared with every free slot's held tokens
        reuse = {slot: self._common(slot, key, virtual, tokens) for slot in self._free}
        # Without a match, what an old slot holds is the least likely to be asked for again.
        # A match, however short, wins over an empty slot: rows stay on few slots (the decode
        # attention reads slots 0..max), at the price of cutting a long held conversation short.
        slot = max(
            self._free,
            key=lambda i: (reuse[i], self._held[i].key is None, -self._held[i].freed, -i),
        )
        self._free.remove(slot)
        reused = max(reuse[slot], 0)
        held = self._held[slot]
        if reuse[slot] < 0:  # another prefix (or none) in its columns: copy this one in
            self._ensure(virtual)
            if prefix is not None and virtual:
                self.k[:, slot, :, :virtual] = prefix[:, 0]
                self.v[:, slot, :, :virtual] = prefix[:, 1]
            held.key, held.virtual = key, virtual
        del held.tokens[reused:]
        self.lengths[slot] = virtual + reused
        return Admission(slot, reused)

    def _common(self, slot: int, key: Hashable, virtual: int, prompt: list[int]) -> int:
        """How many leading tokens of `prompt` slot's columns hold after the same prefix; -1 if
        it holds another prefix (or nothing known)."""
        held = self._held[slot]
        if key is None or held.key != key or held.virtual != virtual:
            return -1
        return _common_start(held.tokens, prompt)

    def release(self, slot: int) -> None:
        # The columns stay: a new owner reuses what matches and its lengths mask out the rest.
        self.lengths[slot] = 0
        self._free.append(slot)
        self._releases += 1
        self._held[slot].freed = self._releases

    def advance(self, segments: Sequence[_HasSpan]) -> list[int]:
        """Make room for this step's tokens, record them as the slot's content (their K/V are
        written next) and return the new lengths."""
        for seg in segments:
            end = seg.start + len(seg.tokens)
            self._ensure(end)
            self.lengths[seg.slot] = max(self.lengths[seg.slot], end)
            held = self._held[seg.slot]
            at = seg.start - held.virtual
            if at < 0 or at > len(held.tokens):  # columns not written in order: forget them
                held.key = None
            else:
                held.tokens[at:] = seg.tokens
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


def _common_start(a: list[int], b: list[int], chunk: int = 256) -> int:
    """Length of the common start of a and b: slices compared in C, one chunk at a time (every
    free slot is compared at each admission, on the engine thread)."""
    end = min(len(a), len(b))
    n = 0
    while n < end and a[n : n + chunk] == b[n : min(n + chunk, end)]:
        n = min(n + chunk, end)
    while n < end and a[n] == b[n]:
        n += 1
    return n
