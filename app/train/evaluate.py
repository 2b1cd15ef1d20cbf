"""Evaluate a soft prompt, a hand-written prompt or the bare model on the same data.

Classification (labels given) compares the labels' log-likelihoods after the templated input;
otherwise the figures are exact match of the greedy answer, how far into the reference answer
the greedy answer agrees (a softer match for long answers), the share of reference tokens that
are the most likely next token (teacher forcing), and the mean loss per target token.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from app.model.loader import FrozenModel
from app.model.soft_prompt import SoftPrompt
from app.render import TaskStyle, chat_ids, render_completion, with_system_prompt
from app.train.adapters import inference_model, prepends_embeddings
from app.train.data import ChatExample, Example, TextExample
from app.train.encode import Encoded, collate, encode, pad_id
from app.train.scoring import score_targets


@dataclass(frozen=True)
class Subject:
    """What is evaluated: a soft prompt and/or a template and system prompt (all optional)."""

    soft_prompt: SoftPrompt | None = None
    template: str | None = None
    system_prompt: str | None = None

    @property
    def style(self) -> TaskStyle:
        return TaskStyle(template=self.template, system_prompt=self.system_prompt)


@dataclass(frozen=True)
class ClassCount:
    label: str
    gold: int  # examples whose answer is this label
    correct: int
    predicted: int  # times this label won


@dataclass(frozen=True)
class Classification:
    correct: int
    total: int
    classes: tuple[ClassCount, ...]

    @property
    def accuracy(self) -> float:
        return self.correct / self.total


@dataclass(frozen=True)
class Generation:
    exact: int
    total: int
    prefix_match: float  # mean share of the reference answer's characters greedy reproduces first
    token_accuracy: float  # share of reference tokens that are the argmax under teacher forcing
    mean_token_loss: float

    @property
    def exact_match(self) -> float:
        return self.exact / self.total


def _sequence_scores(
    base: FrozenModel,
    model: Any,
    prompts: list[list[int]],
    labels: list[list[int]],
    batch_size: int,
) -> torch.Tensor:
    """[N, L] log-likelihood of each label's tokens after each prompt (one row per pair)."""
    offset = prepends_embeddings(model)
    rows = [
        Encoded(tuple(prompt + ids), (False,) * len(prompt) + (True,) * len(ids))
        for prompt in prompts
        for ids in labels
    ]
    scores = torch.empty(len(rows))
    for start in range(0, len(rows), batch_size):
        chunk = collate(rows[start : start + batch_size], pad_id(base.tokenizer))
        scores[start : start + batch_size] = score_targets(model, chunk, offset).per_row().cpu()
    return scores.view(len(prompts), len(labels))


def _last_token_scores(
    base: FrozenModel, model: Any, prompts: list[list[int]], labels: list[int], batch_size: int
) -> torch.Tensor:
    """[N, L] the same figure when every label is one token: one forward per prompt, reading
    the next-token distribution at its last position (half the work for two labels)."""
    offset = prepends_embeddings(model)
    scores = torch.empty(len(prompts), len(labels))
    for start in range(0, len(prompts), batch_size):
        chunk = prompts[start : start + batch_size]
        batch = collate(
            [Encoded(tuple(p), (False,) * len(p)) for p in chunk], pad_id(base.tokenizer)
        )
        last = batch.attention_mask.sum(dim=1) - 1  # [B] each row's last real position
        out = model(
            input_ids=batch.input_ids.to(model.device),
            attention_mask=batch.attention_mask.to(model.device),
        )
        logits = out.logits[torch.arange(len(chunk)), (last + offset).to(model.device)]  # [B, V]
        logprobs = torch.log_softmax(logits.float(), dim=-1)
        scores[start : start + len(chunk)] = logprobs[:, labels].cpu()
    return scores


def _label_of(output: str, labels: Sequence[str], index: int) -> int:
    for i, label in enumerate(labels):
        if label.strip() == output.strip():
            return i
    raise ValueError(
        f"example {index + 1}: answer {output!r} is not one of the labels {list(labels)}"
    )


@torch.no_grad()
def label_loglikelihoods(
    base: FrozenModel,
    subject: Subject,
    inputs: Sequence[str],
    labels: Sequence[str],
    batch_size: int = 32,
) -> torch.Tensor:
    """[N, L] log-likelihood of each label's tokens after each templated input, under the
    subject: the figure classification compares (and lm-eval's loglikelihood, per example)."""
    label_ids = [base.tokenizer(label, add_special_tokens=False)["input_ids"] for label in labels]
    model = inference_model(base, subject.soft_prompt)
    prompts = [list(render_completion(base.tokenizer, subject.style, text).ids) for text in inputs]
    if all(len(ids) == 1 for ids in label_ids):
        return _last_token_scores(base, model, prompts, [ids[0] for ids in label_ids], batch_size)
    return _sequence_scores(base, model, prompts, label_ids, batch_size)


@torch.no_grad()
def classify(
    base: FrozenModel,
    subject: Subject,
    examples: Sequence[TextExample],
    labels: Sequence[str],
    batch_size: int = 32,
) -> Classification:
    """Pick, for each example, the label whose tokens are most likely after the prompt."""
    if len(labels) < 2:
        raise ValueError("classification needs at least two labels")
    gold = [_label_of(e.output, labels, i) for i, e in enumerate(examples)]
    scores = label_loglikelihoods(base, subject, [e.input for e in examples], labels, batch_size)
    predicted = scores.argmax(dim=1).tolist()
    classes = tuple(
        ClassCount(
            label=label,
            gold=gold.count(i),
            correct=sum(g == p == i for g, p in zip(gold, predicted, strict=True)),
            predicted=predicted.count(i),
        )
        for i, label in enumerate(labels)
    )
    return Classification(
        correct=sum(c.correct for c in classes), total=len(examples), classes=classes
    )


def _with_system(example: ChatExample, system_prompt: str | None) -> ChatExample:
    """The subject's system prompt, by the server's rule (`app.render.with_system_prompt`)."""
    return ChatExample(with_system_prompt(example.messages, system_prompt))


def reference_prompt(
    base: FrozenModel, subject: Subject, example: Example
) -> tuple[list[int], str]:
    """The prompt ids the server would build, and the expected (last) answer."""
    if isinstance(example, TextExample):
        prompt = render_completion(base.tokenizer, subject.style, example.input)
        return list(prompt.ids), example.output
    chat = _with_system(example, subject.system_prompt)
    last = max(i for i, m in enumerate(chat.messages) if m.role == "assistant")
    return list(chat_ids(base.tokenizer, chat.messages[:last])), chat.messages[last].content


@torch.no_grad()
def _greedy(base: FrozenModel, model: Any, prompt: list[int], max_new_tokens: int) -> list[int]:
    # One request at a time: no padding, so the answer is exactly what a lone request gets.
    ids = torch.tensor([prompt], device=base.device)
    out = model.generate(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=max_new_tokens,
        do_sample=False,
        eos_token_id=list(base.spec.eos_token_ids),
        pad_token_id=pad_id(base.tokenizer),
    )
    return [int(t) for t in out[0, len(prompt) :]]


def _common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def encode_reference(base: FrozenModel, subject: Subject, example: Example) -> Encoded:
    if isinstance(example, ChatExample):
        example = _with_system(example, subject.system_prompt)
    row = encode(base.tokenizer, example, subject.template, max_tokens=1 << 30)
    assert row is not None  # no length limit
    return row


def generate_and_score(
    base: FrozenModel, subject: Subject, examples: Sequence[Example], batch_size: int = 16
) -> Generation:
    """Greedy answers against the references, and the references' loss under the subject."""
    model = inference_model(base, subject.soft_prompt)
    rows = [encode_reference(base, subject, example) for example in examples]
    exact, prefix = 0, 0.0
    for example, row in zip(examples, rows, strict=True):
        prompt, answer = reference_prompt(base, subject, example)
        budget = sum(row.targets) + 1  # every target token, plus one: a longer answer differs
        got = str(
            base.tokenizer.decode(_greedy(base, model, prompt, budget), skip_special_tokens=True)
        )
        # Compared as text, so a different tokenization of the same answer still matches.
        exact += got.strip() == answer.strip()
        prefix += _common_prefix(got.strip(), answer.strip()) / max(len(answer.strip()), 1)
    offset = prepends_embeddings(model)
    nll, hits, count = 0.0, 0, 0
    with torch.no_grad():
        for start in range(0, len(rows), batch_size):
            scores = score_targets(
                model, collate(rows[start : start + batch_size], pad_id(base.tokenizer)), offset
            )
            nll -= float((scores.logprobs * scores.mask).sum())
            hits += int((scores.top1 & scores.mask).sum())
            count += int(scores.mask.sum())
    return Generation(
        exact=exact,
        total=len(examples),
        prefix_match=prefix / len(examples),
        token_accuracy=hits / max(count, 1),
        mean_token_loss=nll / max(count, 1),
    )
