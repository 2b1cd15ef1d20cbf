"""The distillation teacher: the frozen model reading a persona's long context (system prompt and
example dialogues) before each conversation.

The context comes first and attention is causal, so its key/values never depend on what follows:
they are computed once and used as a KV prefix, exactly the shape of a prefix-tuning table. So
the teacher is served by the engine as a prefix soft prompt (sampling its answers), and scored
here by handing the same key/values to the model as its cache (its next-token distributions).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from app.model.kinds import PromptKind
from app.model.loader import FrozenModel
from app.model.soft_prompt import SoftPrompt
from app.render import ChatMessage, chat_ids
from app.train.adapters import key_values_table
from app.train.data import ChatExample
from app.train.encode import Batch, Encoded, encode_chat
from app.train.scoring import target_logits
from transformers import DynamicCache


@dataclass(frozen=True, eq=False)
class Teacher:
    context: tuple[ChatMessage, ...]
    context_ids: tuple[int, ...]
    prompt: SoftPrompt  # the context's key/values as a prefix table [P, L*2*kv_heads*head_dim]

    def tail_ids(self, tokenizer: Any, messages: Sequence[ChatMessage]) -> tuple[int, ...]:
        """What follows the context when the teacher reads `messages` (generation prompt on)."""
        full = chat_ids(tokenizer, (*self.context, *messages))
        return self._strip(full)

    def encode(self, tokenizer: Any, example: ChatExample) -> Encoded:
        """The example as the teacher reads it after its context; targets as the student's."""
        row = encode_chat(tokenizer, ChatExample((*self.context, *example.messages)))
        ids = self._strip(row.ids)
        return Encoded(ids=ids, targets=row.targets[len(self.context_ids) :])

    def _strip(self, ids: tuple[int, ...]) -> tuple[int, ...]:
        n = len(self.context_ids)
        if ids[:n] != self.context_ids:
            raise ValueError("the chat template does not render the teacher's context as a prefix")
        return ids[n:]


def build_teacher(base: FrozenModel, context: Sequence[ChatMessage], name: str) -> Teacher:
    context = tuple(context)
    ids = chat_ids(base.tokenizer, context, generation=False)
    digest = hashlib.sha256(repr(ids).encode()).hexdigest()[:16]
    table = key_values_table(base, torch.tensor(ids, device=base.device))
    prompt = SoftPrompt(key=f"teacher:{name}:{digest}", kind=PromptKind.PREFIX_TUNING, table=table)
    return Teacher(context=context, context_ids=ids, prompt=prompt)


def context_cache(base: FrozenModel, teacher: Teacher, batch: int) -> DynamicCache:
    """The context's key/values as a model cache, repeated for `batch` rows."""
    spec = base.spec
    p = len(teacher.context_ids)
    kv = teacher.prompt.table.view(p, spec.num_layers, 2, spec.num_kv_heads, spec.head_dim)
    cache = DynamicCache()
    for layer in range(spec.num_layers):
        k = kv[:, layer, 0].transpose(0, 1)[None].expand(batch, -1, -1, -1)  # [B, H, P, D]
        v = kv[:, layer, 1].transpose(0, 1)[None].expand(batch, -1, -1, -1)
        cache.update(k.contiguous(), v.contiguous(), layer)
    return cache


@torch.no_grad()
def teacher_logits(base: FrozenModel, teacher: Teacher, batch: Batch) -> torch.Tensor:
    """[N, V] the teacher's logits at every target-predicting position, row by row in order
    (the order `target_logits` gives the student's: the same answer tokens, after other ids)."""
    cache = context_cache(base, teacher, int(batch.input_ids.shape[0]))
    return target_logits(base.model, batch, 0, cache)
