"""Engine outputs -> OpenAI logprob shapes (token text from the tokenizer)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from app.api.schemas import (
    ChatLogprobs,
    CompletionLogprobs,
    PromptLogprob,
    TokenLogprobOut,
    TopLogprobOut,
)
from app.engine import TokenLogprob


@dataclass(frozen=True)
class PromptScores:
    """A prompt's tokens and their log-probabilities (None for the first), listed before the
    generated tokens when `echo` asks for the prompt back; `top` is how many alternatives each
    lists."""

    ids: tuple[int, ...]
    scores: tuple[TokenLogprob | None, ...]
    top: int


def token_text(tokenizer: Any, token_id: int) -> str:
    return str(tokenizer.decode([token_id]))


def _top(tokenizer: Any, lp: TokenLogprob, k: int | None = None) -> dict[str, float]:
    return {token_text(tokenizer, t.token_id): t.logprob for t in lp.top[:k]}


def completion_logprobs(
    tokenizer: Any,
    logprobs: Sequence[TokenLogprob],
    offset: int = 0,
    prompt: PromptScores | None = None,
) -> CompletionLogprobs:
    """`offset`: where the generated text starts in the choice's text; echoed prompt tokens
    count their offsets from 0."""
    tokens: list[str] = []
    values: list[float | None] = []
    tops: list[dict[str, float] | None] = []
    offsets: list[int] = []
    if prompt is not None:
        at = 0
        for token_id, score in zip(prompt.ids, prompt.scores, strict=True):
            tokens.append(token_text(tokenizer, token_id))
            values.append(None if score is None else score.logprob)
            tops.append(None if score is None else _top(tokenizer, score, prompt.top))
            offsets.append(at)
            at += len(tokens[-1])
    for lp in logprobs:
        tokens.append(token_text(tokenizer, lp.token_id))
        values.append(lp.logprob)
        tops.append(_top(tokenizer, lp))
        offsets.append(offset)
        offset += len(tokens[-1])
    return CompletionLogprobs(
        tokens=tokens, token_logprobs=values, top_logprobs=tops, text_offset=offsets
    )


def vllm_prompt_logprobs(
    tokenizer: Any, scores: Sequence[TokenLogprob | None], top: int
) -> list[dict[str, PromptLogprob] | None]:
    """vLLM's `prompt_logprobs`: per prompt token, None for the first, else the token's own
    entry plus the top `top`, keyed by token id."""
    out: list[dict[str, PromptLogprob] | None] = []
    for score in scores:
        if score is None:
            out.append(None)
            continue
        entries = [
            (score.token_id, score.logprob),
            *((t.token_id, t.logprob) for t in score.top[:top]),
        ]
        out.append(
            {
                str(token_id): PromptLogprob(
                    logprob=logprob, decoded_token=token_text(tokenizer, token_id)
                )
                for token_id, logprob in entries
            }
        )
    return out


def _top_out(tokenizer: Any, token_id: int, logprob: float) -> TopLogprobOut:
    text = token_text(tokenizer, token_id)
    return TopLogprobOut(token=text, logprob=logprob, bytes=list(text.encode("utf-8")))


def chat_logprobs(tokenizer: Any, logprobs: list[TokenLogprob]) -> ChatLogprobs:
    content = []
    for lp in logprobs:
        head = _top_out(tokenizer, lp.token_id, lp.logprob)
        content.append(
            TokenLogprobOut(
                token=head.token,
                logprob=head.logprob,
                bytes=head.bytes,
                top_logprobs=[_top_out(tokenizer, t.token_id, t.logprob) for t in lp.top],
            )
        )
    return ChatLogprobs(content=content)
