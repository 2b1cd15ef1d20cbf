"""Distillation data: the frozen model's own answers under a long system prompt.

A soft prompt trained on these conversations *without* the system prompt learns to stand in for
it, so each request stops paying for those tokens.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from app.model.loader import FrozenModel
from app.render import ChatMessage, chat_ids
from app.train.data import ChatExample


@dataclass(frozen=True)
class Distilled:
    examples: tuple[ChatExample, ...]  # user question + teacher answer, no system prompt
    dropped: int  # answers that hit the token budget before EOS, or empty: no clean target


def _left_pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, width - len(row) :] = torch.tensor(row)
        mask[i, width - len(row) :] = 1
    return ids, mask


@torch.no_grad()
def distill(
    base: FrozenModel,
    system_prompt: str,
    questions: Sequence[str],
    max_new_tokens: int = 96,
    batch_size: int = 16,
) -> Distilled:
    """Greedy teacher answers (HF generate, left-padded batches: generate derives positions
    from the attention mask, so padding does not shift them)."""
    tok = base.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
    eos = set(base.spec.eos_token_ids)
    examples: list[ChatExample] = []
    dropped = 0
    for start in range(0, len(questions), batch_size):
        chunk = questions[start : start + batch_size]
        prompts = [
            list(chat_ids(tok, (ChatMessage("system", system_prompt), ChatMessage("user", q))))
            for q in chunk
        ]
        ids, mask = _left_pad(prompts, pad_id)
        model: Any = base.model
        out = model.generate(
            input_ids=ids.to(base.device),
            attention_mask=mask.to(base.device),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            eos_token_id=list(eos),
            pad_token_id=pad_id,
        )
        for question, row in zip(chunk, out[:, ids.shape[1] :].tolist(), strict=True):
            ends = [i for i, t in enumerate(row) if t in eos]
            answer = (
                str(tok.decode(row[: ends[0]], skip_special_tokens=True)).strip() if ends else ""
            )
            if not answer:
                dropped += 1
                continue
            messages = (ChatMessage("user", question), ChatMessage("assistant", answer))
            examples.append(ChatExample(messages))
    return Distilled(examples=tuple(examples), dropped=dropped)
