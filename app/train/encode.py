"""Examples -> token ids with a target mask, rendered by `app.render` exactly as the server
renders requests (one renderer: a prompt is trained on the ids it is later served with).

Text examples: the templated prompt, and the model continues it, so the target is the output's
own tokens plus EOS right after the prompt (no delimiter: the soft prompt learns to answer
`positive`, not ` positive`). Chat examples: each assistant turn is the rendered text it adds to
the conversation up to it (rendered with a generation prompt, as a request would be).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from app.render import ChatMessage, TaskStyle, chat_ids, render_completion
from app.train.data import ChatExample, Example, TextExample


@dataclass(frozen=True)
class Encoded:
    ids: tuple[int, ...]
    targets: tuple[bool, ...]  # targets[i]: token i is predicted and counted in the loss
    teacher: Encoded | None = None  # distillation: the same example as the teacher reads it


@dataclass(frozen=True)
class Batch:
    input_ids: torch.Tensor  # [B, T] right-padded, so positions match the unpadded request
    attention_mask: torch.Tensor  # [B, T]
    targets: torch.Tensor  # [B, T] bool


def prompt_ids(tokenizer: Any, template: str | None, text: str) -> list[int]:
    return list(render_completion(tokenizer, TaskStyle(template=template), text).ids)


def output_ids(tokenizer: Any, output: str) -> list[int]:
    return [*tokenizer(output, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]


def _render(tokenizer: Any, messages: tuple[ChatMessage, ...], generation: bool) -> list[int]:
    return list(chat_ids(tokenizer, messages, generation))


def encode_chat(tokenizer: Any, example: ChatExample) -> Encoded:
    ids: list[int] = []
    targets: list[bool] = []
    for i, message in enumerate(example.messages):
        if message.role != "assistant":
            continue
        before = _render(tokenizer, example.messages[:i], generation=True)
        after = _render(tokenizer, example.messages[: i + 1], generation=False)
        if after[: len(before)] != before or before[: len(ids)] != ids:
            raise ValueError("the chat template does not render turns as prefixes of each other")
        targets += [False] * (len(before) - len(ids)) + [True] * (len(after) - len(before))
        ids = after
    return Encoded(ids=tuple(ids), targets=tuple(targets))


def encode(
    tokenizer: Any, example: Example, template: str | None, max_tokens: int
) -> Encoded | None:
    """Token ids and target mask, or None when the example does not fit in `max_tokens`."""
    if isinstance(example, TextExample):
        prompt = prompt_ids(tokenizer, template, example.input)
        answer = output_ids(tokenizer, example.output)
        encoded = Encoded(
            ids=tuple(prompt + answer), targets=(False,) * len(prompt) + (True,) * len(answer)
        )
    else:
        encoded = encode_chat(tokenizer, example)
    return encoded if len(encoded.ids) <= max_tokens else None


def pad_id(tokenizer: Any) -> int:
    """The id batches are padded with: the tokenizer's pad token, else 0 (masked out anyway)."""
    pad = tokenizer.pad_token_id
    return int(pad) if pad is not None else 0


def collate(rows: list[Encoded], pad_id: int) -> Batch:
    width = max(len(r.ids) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    targets = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        n = len(row.ids)
        ids[i, :n] = torch.tensor(row.ids)
        mask[i, :n] = 1
        targets[i, :n] = torch.tensor(row.targets)
    return Batch(input_ids=ids, attention_mask=mask, targets=targets)
