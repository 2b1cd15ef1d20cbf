"""Log-probabilities of the target tokens: the one forward that training and evaluation share."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from app.train.encode import Batch
from transformers import Cache


@dataclass(frozen=True)
class TargetScores:
    logprobs: torch.Tensor  # [B, K] log p(target token) at the K kept positions
    mask: torch.Tensor  # [B, K] bool: which of them are targets of that row
    top1: torch.Tensor  # [B, K] bool: the target token was the most likely one

    def per_row(self) -> torch.Tensor:  # [B] summed log-likelihood of each row's targets
        return (self.logprobs * self.mask).sum(dim=1)

    def mean_loss(self) -> torch.Tensor:  # scalar: mean negative log-likelihood per target token
        return -(self.logprobs * self.mask).sum() / self.mask.sum().clamp(min=1)


def _forward(
    model: Any, batch: Batch, offset: int, past: Cache | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Logits [B, K, V] at the K columns that predict a target, the ids [B, K] they predict, and
    which of those are targets of their row [B, K] (bool). `past`: a KV prefix every row reads
    first (a teacher's context), so the mask grows by its length."""
    device = model.device
    targets = batch.targets.to(device)  # [B, T]
    ids = batch.input_ids.to(device)  # [B, T]
    mask = batch.attention_mask
    if past is not None:
        mask = torch.cat([torch.ones(len(mask), past.get_seq_length(), dtype=mask.dtype), mask], 1)
    predicted = targets[:, 1:].any(dim=0).nonzero().flatten()  # [K] columns t-1 predicting t
    out = model(
        input_ids=ids,
        attention_mask=mask.to(device),
        logits_to_keep=predicted + offset,
        **({"past_key_values": past, "use_cache": True} if past is not None else {}),
    )
    return out.logits, ids[:, predicted + 1], targets[:, predicted + 1]


def target_logits(model: Any, batch: Batch, offset: int, past: Cache | None = None) -> torch.Tensor:
    """[N, V] logits at every target-predicting position, row by row in order."""
    logits, _, mask = _forward(model, batch, offset, past)
    return logits[mask]


def target_logits_and_ids(
    model: Any, batch: Batch, offset: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`target_logits` [N, V] and the N target tokens [N] they predict, in the same order."""
    logits, ids, mask = _forward(model, batch, offset)
    return logits[mask], ids[mask]


def kl_divergence(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """[N] KL(teacher || student) over the whole vocabulary at each of N positions."""
    t = torch.log_softmax(teacher.float(), dim=-1)
    s = torch.log_softmax(student.float(), dim=-1)
    return (t.exp() * (t - s)).sum(dim=-1)


def score_targets(model: Any, batch: Batch, offset: int) -> TargetScores:
    """Score `batch.targets` under `model`, computing logits only where a target is predicted.

    `offset` is how many virtual tokens the model prepends to the sequence (prompt tuning) or 0
    (prefix tuning, bare model). The vocabulary projection is a fifth of this model's compute,
    and a classification example has 2-3 target tokens out of ~40, so keeping only the needed
    positions (`logits_to_keep` takes indices) is the cheap way to train.
    """
    logits, wanted, mask = _forward(model, batch, offset)
    logprobs = torch.log_softmax(logits.float(), dim=-1)  # [B, K, V]
    picked = logprobs.gather(-1, wanted[..., None]).squeeze(-1)  # [B, K]
    top1 = logprobs.argmax(dim=-1) == wanted  # [B, K]
    return TargetScores(logprobs=picked, mask=mask, top1=top1)
