"""`softserve distill`: a persona's teacher answers thousands of generated questions.

The teacher is the frozen model reading the persona's context (system prompt + example
dialogues); its key/values are a prefix table, so the engine serves it like any prefix soft
prompt: batched, the context computed once. Writes the training chats (no system prompt: the soft
prompt replaces it) and the held-out evaluation questions with the teacher's greedy answers.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace

from app.cli.args import read_text_arg
from app.engine import Engine, EngineConfig, GenerationRequest, SamplingParams
from app.engine.types import FinishReason
from app.model.loader import FrozenModel
from app.model.soft_prompt import SoftPrompt
from app.render import ChatMessage, chat_ids
from app.train.persona import Persona, load_persona, on_topic
from app.train.questions import Question, generate
from app.train.teacher import Teacher, build_teacher


@dataclass(frozen=True)
class Reading:
    """What the engine is given for one answer: prompt ids, and the KV prefix before them."""

    ids: Sequence[int]
    soft_prompt: SoftPrompt | None


@dataclass(frozen=True)
class Answer:
    text: str
    tokens: int
    finished: bool  # ended by EOS, not by the token budget


@dataclass(frozen=True)
class Keep:
    """Which sampled answers become training chats (rejection sampling)."""

    unfinished: bool = False  # also answers cut at the token budget
    passing: bool = False  # only answers passing the persona's check
    topical: bool = False  # only answers naming their question's topic (eval's on-topic rule)

    def keeps(self, answer: Answer, question: Question, persona: Persona) -> bool:
        return (
            bool(answer.text)
            and (answer.finished or self.unfinished)
            and (not self.passing or persona.check is None or persona.check.passes(answer.text))
            and (not self.topical or on_topic(answer.text, question.topic))
        )


def teacher_reads(
    base: FrozenModel, teacher: Teacher | None, conversations: Sequence[Sequence[ChatMessage]]
) -> list[Reading]:
    """Each conversation as the teacher reads it (its context as KV prefix), or the bare model."""
    tok = base.tokenizer
    if teacher is None:
        return [Reading(chat_ids(tok, m), None) for m in conversations]
    return [Reading(teacher.tail_ids(tok, m), teacher.prompt) for m in conversations]


def answer_all(
    base: FrozenModel, reads: Sequence[Reading], sampling: SamplingParams, batch: int = 32
) -> list[Answer]:
    """One answer per prompt, all through one engine (continuous batching); a sampled row's
    seed is the sampling seed plus its index, so a run is reproducible."""
    engine = Engine(base, EngineConfig(max_batch_size=batch, prefill_chunk=512))
    for i, read in enumerate(reads):
        seed = None if sampling.greedy else (sampling.seed or 0) + i
        engine.add_request(
            GenerationRequest(
                request_id=str(i),
                prompt_ids=tuple(read.ids),
                sampling=replace(sampling, seed=seed),
                soft_prompt=read.soft_prompt,
            )
        )
    tokens: dict[str, list[int]] = {}
    finished: dict[str, bool] = {}
    while engine.has_work():
        for out in engine.step().outputs:
            tokens.setdefault(out.request_id, []).extend(out.token_ids)
            if out.finish_reason is not None:
                finished[out.request_id] = out.finish_reason is FinishReason.STOP
    eos = set(base.spec.eos_token_ids)
    answers = []
    for i in range(len(reads)):
        got = [t for t in tokens.get(str(i), []) if t not in eos]
        text = str(base.tokenizer.decode(got, skip_special_tokens=True)).strip()
        answers.append(Answer(text=text, tokens=len(got), finished=finished.get(str(i), False)))
    return answers


def _chat(messages: Sequence[ChatMessage]) -> str:
    turns = [{"role": m.role, "content": m.content} for m in messages]
    return json.dumps({"messages": turns}, ensure_ascii=False)


def _persona(args: argparse.Namespace) -> Persona:
    if args.persona:
        return load_persona(args.persona)
    system = read_text_arg(args.system_prompt).strip()
    if not system:
        raise ValueError("distill needs a non-empty system prompt")
    return Persona("system-prompt", system, (), None)


def _questions(args: argparse.Namespace) -> tuple[list[Question], list[Question]]:
    if args.questions:
        lines = args.questions.read_text(encoding="utf-8").splitlines()
        asked = [Question(q.strip(), "", "file") for q in lines if q.strip()]
        if not asked:
            raise ValueError(f"{args.questions}: no questions")
        return asked, []
    generated = generate(args.generate, args.eval_questions, seed=args.seed)
    return list(generated.train), list(generated.eval)


def distill_command(args: argparse.Namespace, base: FrozenModel) -> int:
    persona = _persona(args)
    train_qs, eval_qs = _questions(args)
    teacher = build_teacher(base, persona.context(), persona.name)
    sampling = SamplingParams(
        max_tokens=args.max_new_tokens,
        temperature=args.temperature,
        top_p=args.top_p,
        seed=args.seed,
    )
    first = [(ChatMessage("user", q.text),) for q in train_qs]
    reads = teacher_reads(base, teacher, first)
    answers = answer_all(base, reads, sampling)
    chats: list[tuple[ChatMessage, ...]] = [
        (*m, ChatMessage("assistant", a.text)) for m, a in zip(first, answers, strict=True)
    ]
    # Follow-up turns: the teacher's own first answer stays in the conversation.
    follow = [
        (i, (*chats[i], ChatMessage("user", q.follow_up)))
        for i, q in enumerate(train_qs)
        if q.follow_up and answers[i].finished and answers[i].text
    ]
    second = answer_all(base, teacher_reads(base, teacher, [m for _, m in follow]), sampling)
    for (i, messages), answer in zip(follow, second, strict=True):
        if answer.finished and answer.text:
            chats[i] = (*messages, ChatMessage("assistant", answer.text))
    keep = Keep(args.keep_unfinished, args.keep_passing, args.keep_on_topic)
    kept = [
        c for c, a, q in zip(chats, answers, train_qs, strict=True) if keep.keeps(a, q, persona)
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("".join(_chat(c) + "\n" for c in kept), encoding="utf-8")
    figures = _counts(base, persona, teacher, first, reads, answers, kept)
    if eval_qs and args.eval_out:
        greedy = SamplingParams(max_tokens=args.eval_max_tokens, temperature=0.0)
        asked = [(ChatMessage("user", q.text),) for q in eval_qs]
        held = answer_all(base, teacher_reads(base, teacher, asked), greedy)
        rows = [
            {"question": q.text, "topic": q.topic, "form": q.form, "teacher": a.text}
            for q, a in zip(eval_qs, held, strict=True)
        ]
        args.eval_out.write_text(
            "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8"
        )
        figures["eval_questions"] = len(rows)
        figures["teacher_eval_adherence"] = persona.adherence([a.text for a in held])
    print(
        f"wrote {len(kept)} conversations to {args.out} ({figures['dropped']} dropped: "
        f"unfinished, empty, failing the check or off topic); teacher adherence while sampling "
        f"{figures['teacher_adherence']}; prompt tokens per request: "
        f"{figures['prompt_tokens_with_system']:.1f} with the persona context, "
        f"{figures['prompt_tokens_without']:.1f} without"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0


def _counts(
    base: FrozenModel,
    persona: Persona,
    teacher: Teacher,
    asked: Sequence[Sequence[ChatMessage]],
    reads: Sequence[Reading],
    answers: Sequence[Answer],
    kept: Sequence[object],
) -> dict[str, float | int | None]:
    # What each request pays for the persona: its whole context, against the bare question
    # (the chat template adds a few tokens of its own around it).
    context = len(teacher.context_ids)
    with_context = [context + len(r.ids) for r in reads]
    without = [len(chat_ids(base.tokenizer, m)) for m in asked]
    return {
        "conversations": len(kept),
        "dropped": len(asked) - len(kept),
        "unfinished": sum(not a.finished for a in answers),
        "teacher_adherence": persona.adherence([a.text for a in answers]),
        "prompt_tokens_with_system": sum(with_context) / len(asked),
        "prompt_tokens_without": sum(without) / len(asked),
        "context_tokens": context,
    }
