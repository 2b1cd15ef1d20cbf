"""The two forward passes: prefill new rows (on top of their KV prefixes) and decode one step.

Masks are built here as explicit boolean 4D tensors ([B, 1, q, kv], True = may attend), and
positions are explicit too: a row's real tokens sit at P_i, P_i+1, ... whatever padding the batch
adds around them, which is what makes a row's output independent of its neighbours.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from app.engine.kv import KVBatch, from_cache, to_cache
from app.model import FrozenModel


@dataclass(frozen=True, eq=False)
class ForwardResult:
    logits: torch.Tensor  # [B, V] float32, at each row's last position
    kv: KVBatch
    every: torch.Tensor | None = None  # [B, T, V] float32 at every position, when asked for


def _run(
    base: FrozenModel,
    kv: KVBatch,
    input_ids: torch.Tensor,  # [B, T]
    positions: torch.Tensor,  # [B, T]
    mask: torch.Tensor,  # [B, 1, T, S+T] bool
    valid: torch.Tensor,  # [B, S+T] bool: validity after this pass
    every: bool = False,
) -> ForwardResult:
    cache = to_cache(kv)
    out = base.model(
        input_ids=input_ids,
        attention_mask=mask,
        position_ids=positions,
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=0 if every else 1,  # usually only the last position feeds sampling
    )
    return ForwardResult(
        logits=out.logits[:, -1, :].float(),
        kv=from_cache(cache, valid),
        every=out.logits.float() if every else None,
    )


def prefill(
    base: FrozenModel, prefixes: KVBatch, prompts: list[tuple[int, ...]], every: bool = False
) -> ForwardResult:
    """prefixes: the new rows' KV prefixes, right-aligned ([B, H, P, D] per layer).
    Prompts are left-padded to the longest, so every row's last prompt token is the last column."""
    device = prefixes.valid.device
    rows, width = prefixes.size, prefixes.width
    longest = max(len(p) for p in prompts)
    pad_id = int(base.tokenizer.pad_token_id or 0)
    input_ids = torch.full((rows, longest), pad_id, dtype=torch.long, device=device)
    token_valid = torch.zeros(rows, longest, dtype=torch.bool, device=device)
    positions = torch.zeros(rows, longest, dtype=torch.long, device=device)
    prefix_lens = prefixes.valid.sum(dim=1)  # [B]
    for i, prompt in enumerate(prompts):
        start = longest - len(prompt)
        input_ids[i, start:] = torch.tensor(prompt, device=device)
        token_valid[i, start:] = True
        positions[i, start:] = torch.arange(len(prompt), device=device) + prefix_lens[i]
    valid = torch.cat([prefixes.valid, token_valid], dim=1)  # [B, P+T]
    query_col = torch.arange(longest, device=device) + width  # [T]
    key_col = torch.arange(width + longest, device=device)  # [P+T]
    causal = key_col[None, :] <= query_col[:, None]  # [T, P+T]
    mask = causal[None] & valid[:, None, :]  # [B, T, P+T]
    # A padding query attends to itself only: no fully-masked row, so no NaN anywhere.
    own = key_col[None, :] == query_col[:, None]  # [T, P+T]
    mask = torch.where(token_valid[:, :, None], mask, own[None])
    return _run(base, prefixes, input_ids, positions, mask[:, None], valid, every)


def decode_step(
    base: FrozenModel, kv: KVBatch, last_tokens: list[int], positions: list[int]
) -> ForwardResult:
    """One new token per row, at each row's own next position."""
    device = kv.valid.device
    valid = torch.nn.functional.pad(kv.valid, (0, 1), value=True)  # [B, S+1]
    return _run(
        base,
        kv,
        torch.tensor(last_tokens, dtype=torch.long, device=device)[:, None],  # [B, 1]
        torch.tensor(positions, dtype=torch.long, device=device)[:, None],  # [B, 1]
        valid[:, None, None, :],  # [B, 1, 1, S+1]
        valid,
    )
