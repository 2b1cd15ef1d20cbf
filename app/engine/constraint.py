"""Constrained decoding, as the engine sees it: a per-row matcher says which tokens may come
next (a packed bitmask) and follows the tokens chosen. The grammar library behind it lives in a
higher layer (the API builds the constraints), so the engine stays pure torch.
"""

from __future__ import annotations

from typing import Protocol

import torch


class TokenMatcher(Protocol):
    """One row's live matcher (mutable: it follows the row's tokens)."""

    def mask(self) -> bytes:
        """Allowed next tokens: little-endian 32-bit words, bit i of word w is token 32w + i."""
        ...

    def consume(self, token: int) -> None: ...

    def finished(self) -> bool:
        """The grammar is complete and allows nothing more (or the matcher failed): stop."""
        ...


class TokenConstraint(Protocol):
    """What a request carries (immutable, shared by its choices): a fresh matcher per row."""

    def matcher(self) -> TokenMatcher: ...


def allowed(mask: bytes, vocab: int, device: torch.device) -> torch.Tensor:
    """A packed bitmask -> [vocab] bool (tokens past the mask's end are not allowed)."""
    packed = torch.frombuffer(bytearray(mask), dtype=torch.uint8)
    bits = (packed[:, None] >> torch.arange(8, dtype=torch.uint8)) & 1  # little-endian bit order
    flat = bits.flatten().bool()[:vocab]
    if flat.numel() < vocab:
        flat = torch.cat([flat, flat.new_zeros(vocab - flat.numel())])
    return flat.to(device)


def apply_masks(
    logits: torch.Tensor, rows: list[tuple[int, TokenMatcher]], fallback: tuple[int, ...]
) -> torch.Tensor:
    """logits [B, V] with each constrained row's disallowed tokens at -inf (a copy: the raw
    logits still give the reported log-probabilities). A row whose matcher allows nothing may
    only end (`fallback`: the EOS tokens), never sample from an empty set."""
    masked = logits.clone()
    vocab = logits.shape[-1]
    for index, matcher in rows:
        ok = allowed(matcher.mask(), vocab, logits.device)
        if not bool(ok.any()):
            ok[list(fallback)] = True
        masked[index].masked_fill_(~ok, float("-inf"))
    return masked
