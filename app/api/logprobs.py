"""Engine outputs -> OpenAI logprob shapes (token text from the tokenizer)."""

from __future__ import annotations

from typing import Any

from app.api.schemas import ChatLogprobs, CompletionLogprobs, TokenLogprobOut, TopLogprobOut
from app.engine import TokenLogprob


def token_text(tokenizer: Any, token_id: int) -> str:
    return str(tokenizer.decode([token_id]))


def completion_logprobs(
    tokenizer: Any, logprobs: list[TokenLogprob], offset: int = 0
) -> CompletionLogprobs:
    tokens = [token_text(tokenizer, lp.token_id) for lp in logprobs]
    offsets = []
    for text in tokens:
        offsets.append(offset)
        offset += len(text)
    return CompletionLogprobs(
        tokens=tokens,
        token_logprobs=[lp.logprob for lp in logprobs],
        top_logprobs=[
            {token_text(tokenizer, t.token_id): t.logprob for t in lp.top} for lp in logprobs
        ],
        text_offset=offsets,
    )


def _top(tokenizer: Any, token_id: int, logprob: float) -> TopLogprobOut:
    text = token_text(tokenizer, token_id)
    return TopLogprobOut(token=text, logprob=logprob, bytes=list(text.encode("utf-8")))


def chat_logprobs(tokenizer: Any, logprobs: list[TokenLogprob]) -> ChatLogprobs:
    content = []
    for lp in logprobs:
        head = _top(tokenizer, lp.token_id, lp.logprob)
        content.append(
            TokenLogprobOut(
                token=head.token,
                logprob=head.logprob,
                bytes=head.bytes,
                top_logprobs=[_top(tokenizer, t.token_id, t.logprob) for t in lp.top],
            )
        )
    return ChatLogprobs(content=content)
