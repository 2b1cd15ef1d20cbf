"""Who runs the model for the engine: the lean Llama-family forward over a slot cache, or (for any
other architecture) HF's own forward over a right-aligned batch. Both take one step's segments and
give back logits for the rows that sample, keyed by slot, so the engine does not care which runs.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from app.engine import kv as kvops
from app.engine import lean
from app.engine.forward import decode_step, prefill
from app.engine.kv import KVPrefix
from app.engine.lean import LeanModel, Segment
from app.engine.slots import Admission, SlotCache
from app.model import FrozenModel


@dataclass(frozen=True, eq=False)
class Scored:
    """Logits at every token of one `score` segment: row i predicts the token after token i."""

    slot: int
    logits: torch.Tensor  # [t, V] float32


@dataclass(frozen=True, eq=False)
class StepLogits:
    """What one forward gives back: logits of the rows that sample, and of scored segments."""

    slots: list[int]  # the emitting rows, in `logits` order
    logits: torch.Tensor  # [R, V] float32
    scored: tuple[Scored, ...] = ()


class Runner(Protocol):
    chunked_prefill: bool  # may a prompt be prefilled over several steps?

    @property
    def free_slots(self) -> int: ...

    def admit(
        self, prefix: KVPrefix | None, key: Hashable = None, prompt: Sequence[int] = ()
    ) -> Admission:
        """Take a slot for a new row starting from `prefix` (known as `key`) whose prompt starts
        with `prompt`; a runner that kept those tokens' K/V from an earlier row says how many
        it reuses (the row's prefill starts after them)."""
        ...

    def forward(self, segments: list[Segment]) -> StepLogits:
        """Run one step: logits for the emitting segments (and every token of scored ones)."""
        ...

    def release(self, slots: list[int]) -> None: ...

    def reset(self) -> None: ...


class LeanRunner:
    chunked_prefill = True

    def __init__(self, model: LeanModel, base: FrozenModel, num_slots: int, max_len: int) -> None:
        self.model = model
        self._upgrade: LeanModel | None = None
        spec = base.spec
        self._make_cache = lambda: SlotCache(
            num_layers=spec.num_layers,
            num_slots=num_slots,
            kv_heads=spec.num_kv_heads,
            head_dim=spec.head_dim,
            max_len=max_len,
            dtype=model.dtype,
            device=base.device,
        )
        self.cache = self._make_cache()

    @property
    def free_slots(self) -> int:
        return self.cache.free_slots

    def admit(
        self, prefix: KVPrefix | None, key: Hashable = None, prompt: Sequence[int] = ()
    ) -> Admission:
        kv = None if prefix is None else prefix.kv.to(self.model.dtype)
        return self.cache.allocate(kv, key, prompt)

    def virtual_kv(self, table: torch.Tensor) -> torch.Tensor:
        """Virtual tokens' K/V through the lean forward (engine thread, between steps)."""
        return lean.virtual_kv(self.model, table)

    def upgrade(self, model: LeanModel) -> None:
        """Any thread: `model` (same weights, other kernels) serves from the next step on."""
        self._upgrade = model

    def forward(self, segments: list[Segment]) -> StepLogits:
        if self._upgrade is not None:  # between steps, so a step never mixes two models
            self.model, self._upgrade = self._upgrade, None
        logits = lean.forward(self.model, self.cache, segments)
        emitting = lean.emit_order(segments)
        scored, offset = [], len(emitting)
        for seg in lean.scored_order(segments):
            scored.append(Scored(seg.slot, logits[offset : offset + len(seg.tokens)]))
            offset += len(seg.tokens)
        return StepLogits([s.slot for s in emitting], logits[: len(emitting)], tuple(scored))

    def release(self, slots: list[int]) -> None:
        for slot in slots:
            self.cache.release(slot)

    def reset(self) -> None:
        self.cache = self._make_cache()


class HFRunner:
    """The fallback and parity reference: HF's forward on a right-aligned KV batch (whole prompts
    at once; a row leaving copies the batch)."""

    chunked_prefill = False

    def __init__(self, base: FrozenModel, num_slots: int) -> None:
        self.base = base
        self._num_slots = num_slots
        self.reset()

    def reset(self) -> None:
        self._order: list[int] = []  # slots in the KV batch's row order
        self._kv: kvops.KVBatch | None = None
        self._pending: dict[int, KVPrefix | None] = {}  # admitted, not yet prefilled
        self._free = list(range(self._num_slots))

    @property
    def free_slots(self) -> int:
        return len(self._free)

    def admit(
        self, prefix: KVPrefix | None, key: Hashable = None, prompt: Sequence[int] = ()
    ) -> Admission:
        self._free.sort()
        slot = self._free.pop(0)
        self._pending[slot] = prefix
        return Admission(slot, 0)  # whole prompts at once: nothing is reused

    def forward(self, segments: list[Segment]) -> StepLogits:
        new = [s for s in segments if s.slot in self._pending]
        by_slot = {s.slot: s for s in segments if s.slot not in self._pending}
        assert set(by_slot) == set(self._order), "every running row decodes in every step"
        logits, slots, results, scored = [], [], [], []
        if self._order:
            assert self._kv is not None
            result = decode_step(
                self.base,
                self._kv,
                [by_slot[slot].tokens[0] for slot in self._order],
                [by_slot[slot].start for slot in self._order],
            )
            results.append(result)
            logits.append(result.logits)
            slots += self._order
        if new:
            spec = self.base.spec
            stacked = kvops.from_prefixes(
                [self._pending.pop(s.slot) for s in new],
                num_layers=spec.num_layers,
                kv_shape=(spec.num_kv_heads, spec.head_dim),
                device=self.base.device,
                dtype=self.base.dtype,
            )
            every = any(s.score for s in new)
            result = prefill(self.base, stacked, [s.tokens for s in new], every)
            results.append(result)
            if result.every is not None:  # left-padded: a row's tokens are its last columns
                scored += [
                    Scored(s.slot, result.every[i, -len(s.tokens) :])
                    for i, s in enumerate(new)
                    if s.score
                ]
            logits.append(result.logits)
            slots += [s.slot for s in new]
        kvs = [r.kv for r in results]
        self._kv = kvs[0] if len(kvs) == 1 else kvops.concat(kvs[0], kvs[1])
        self._order = slots
        return StepLogits(slots, torch.cat(logits), tuple(scored))

    def release(self, slots: list[int]) -> None:
        gone = set(slots)
        for slot in gone:
            self._pending.pop(slot, None)
            self._free.append(slot)
        keep = [i for i, slot in enumerate(self._order) if slot not in gone]
        if len(keep) < len(self._order):
            self._order = [self._order[i] for i in keep]
            self._kv = kvops.select(self._kv, keep) if keep and self._kv is not None else None
