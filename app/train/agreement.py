"""How closely a subject (soft prompt, shorter prompt, bare model) follows a teacher, token by
token, along the teacher's own answers: top-1 agreement of the next-token choice and the mean
KL(teacher || subject) over the whole vocabulary."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from app.model.loader import FrozenModel
from app.model.soft_prompt import SoftPrompt
from app.train.adapters import inference_model, prepends_embeddings
from app.train.data import ChatExample
from app.train.encode import collate, encode_chat, pad_id
from app.train.scoring import kl_divergence, target_logits
from app.train.teacher import Teacher, teacher_logits


@dataclass(frozen=True)
class Agreement:
    top1: float  # share of answer positions where the subject's argmax is the teacher's
    mean_kl: float  # nats per answer position
    positions: int


@torch.no_grad()
def agreement(
    base: FrozenModel,
    teacher: Teacher,
    subject: Teacher | SoftPrompt | None,
    chats: Sequence[ChatExample],
    batch_size: int = 8,
) -> Agreement:
    """`subject`: another context (a Teacher), a soft prompt, or None for the bare model."""
    tok = base.tokenizer
    pad = pad_id(tok)
    model = None if isinstance(subject, Teacher) else inference_model(base, subject)
    hits, kl, count = 0, 0.0, 0
    for start in range(0, len(chats), batch_size):
        chunk = chats[start : start + batch_size]
        want = teacher_logits(base, teacher, collate([teacher.encode(tok, c) for c in chunk], pad))
        if isinstance(subject, Teacher):
            rows = [subject.encode(tok, c) for c in chunk]
            got = teacher_logits(base, subject, collate(rows, pad))
        else:
            rows = [encode_chat(tok, c) for c in chunk]
            got = target_logits(model, collate(rows, pad), prepends_embeddings(model))
        hits += int((got.argmax(-1) == want.argmax(-1)).sum())
        kl += float(kl_divergence(want, got).sum())
        count += int(want.shape[0])
    return Agreement(top1=hits / max(count, 1), mean_kl=kl / max(count, 1), positions=count)
