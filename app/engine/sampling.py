"""Next-token choice per row: greedy, temperature, top-k, top-p, with a per-request generator."""

from __future__ import annotations

import torch

from app.engine.types import SamplingParams, TokenLogprob, TopLogprob


def _filter(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    logits = logits / params.temperature  # [V]
    if params.top_k > 0 and params.top_k < logits.shape[-1]:
        kth = torch.topk(logits, params.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # Drop a token once the tokens before it already cover top_p; the first always stays.
        drop = (cumulative - sorted_logits.softmax(-1)) >= params.top_p
        drop[0] = False  # explicitly: a top_p below float32's range would otherwise drop it too
        logits = logits.masked_fill(drop.scatter(0, order, drop), float("-inf"))
    return logits


def sample(
    logits: torch.Tensor, params: list[SamplingParams], generators: list[torch.Generator]
) -> list[int]:
    """logits: [B, V] float32. Each row draws from its own generator, so a seeded request gets
    the same tokens whatever else shares its batch."""
    chosen = logits.argmax(dim=-1).tolist()  # [B]; kept for greedy rows
    for i, p in enumerate(params):
        if p.greedy:
            continue
        probs = _filter(logits[i], p).softmax(-1)
        chosen[i] = int(torch.multinomial(probs, 1, generator=generators[i]))
    return [int(t) for t in chosen]


def token_logprob(logits: torch.Tensor, token_id: int, top: int) -> TokenLogprob:
    """Log-probabilities of the model's own distribution (before temperature/top-p)."""
    logprobs = torch.log_softmax(logits, dim=-1)  # [V]
    best = torch.topk(logprobs, top) if top > 0 else None
    return TokenLogprob(
        token_id=token_id,
        logprob=float(logprobs[token_id]),
        top=tuple(
            TopLogprob(token_id=int(t), logprob=float(v))
            for v, t in zip(best.values.tolist(), best.indices.tolist(), strict=True)
        )
        if best is not None
        else (),
    )


def prompt_logprobs(logits: torch.Tensor, targets: list[int], top: int) -> list[TokenLogprob]:
    """logits [t, V]: row i scores targets[i] (the token after the one it was computed at).
    One log-softmax over the whole chunk, not one per token."""
    logprobs = torch.log_softmax(logits[: len(targets)].float(), dim=-1)  # [t, V]
    index = torch.tensor(targets, dtype=torch.long, device=logprobs.device)
    chosen = logprobs.gather(1, index[:, None])[:, 0].tolist()
    best = torch.topk(logprobs, top, dim=-1) if top > 0 else None
    values = best.values.tolist() if best is not None else [[] for _ in targets]
    ids = best.indices.tolist() if best is not None else [[] for _ in targets]
    return [
        TokenLogprob(
            token_id=target,
            logprob=float(lp),
            top=tuple(TopLogprob(int(t), float(v)) for v, t in zip(vs, ts, strict=True)),
        )
        for target, lp, vs, ts in zip(targets, chosen, values, ids, strict=True)
    ]
