"""`softserve eval --persona NAME.txt --prompt TASK --data EVAL.jsonl`: what a chatbot operator
asks of a persona, side by side for the soft prompt, the long prompt and the bare model.

On the held-out questions `softserve distill --eval-out` wrote (forms and topics training never
saw), greedy answers of at most `--max-new-tokens` tokens from each subject:
- adherence: share of answers passing the persona's check;
- on-topic: share of answers naming the question's topic;
- agreement with the teacher (system prompt + example dialogues): next-token top-1 agreement and
  mean KL along the teacher's own greedy answers;
- prompt tokens per request (what each request makes the model read; a soft prompt's virtual
  tokens are listed beside it);
- with `--facts FILE`: correct, the share of questions with a known short answer (held out from
  training too: the generator never asks them) whose greedy answer names it, in any voice.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from app.cli.distill_run import Reading, answer_all, teacher_reads
from app.engine import SamplingParams
from app.model.loader import FrozenModel
from app.model.soft_prompt import SoftPrompt
from app.registry.names import validate_task_name
from app.registry.peft_format import Limits
from app.registry.store import Registry, read_prompt_folder
from app.render import ChatMessage, chat_ids
from app.train.agreement import agreement
from app.train.data import ChatExample
from app.train.persona import Fact, Persona, load_facts, load_persona, on_topic
from app.train.save import LOSS_PLOT
from app.train.teacher import Teacher, build_teacher


@dataclass(frozen=True)
class Held:
    question: str
    topic: str
    teacher: str  # the teacher's greedy answer, the continuation agreement is measured on


@dataclass(frozen=True)
class SubjectFigures:
    subject: str
    adherence: float | None
    on_topic: float
    top1_agreement: float
    mean_kl: float
    prompt_tokens: float
    virtual_tokens: int
    correct: float | None  # None without --facts
    samples: tuple[str, ...]  # the first answers, to read


def read_held(path: Path) -> list[Held]:
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            data = json.loads(line)
            rows.append(Held(str(data["question"]), str(data["topic"]), str(data["teacher"])))
        except (ValueError, KeyError, TypeError):
            raise ValueError(
                f"{path}:{i}: expected question, topic and teacher (softserve distill --eval-out)"
            ) from None
    if not rows:
        raise ValueError(f"{path}: no held-out questions")
    return rows


def _soft_prompt(prompts: Path, task: str, base: FrozenModel) -> SoftPrompt:
    registry = Registry(prompts, base.spec)
    registry.load_all()
    entry = registry.get(validate_task_name(task))
    if entry.soft_prompt is None:
        raise ValueError(f"task {task!r} has no soft prompt")
    return entry.soft_prompt


def _reads(
    base: FrozenModel, subject: Teacher | SoftPrompt | None, questions: list[str]
) -> list[Reading]:
    asked = [(ChatMessage("user", q),) for q in questions]
    if isinstance(subject, SoftPrompt):
        return [Reading(chat_ids(base.tokenizer, m), subject) for m in asked]
    return teacher_reads(base, subject, asked)


def _figures(
    base: FrozenModel,
    persona: Persona,
    teacher: Teacher,
    name: str,
    subject: Teacher | SoftPrompt | None,
    held: list[Held],
    max_tokens: int,
    facts: tuple[Fact, ...],
) -> SubjectFigures:
    reads = _reads(base, subject, [h.question for h in held])
    context = len(subject.context_ids) if isinstance(subject, Teacher) else 0
    # The facts' answers come from the same engine run as the held-out ones.
    fact_reads = _reads(base, subject, [f.question for f in facts])
    answers = answer_all(
        base, [*reads, *fact_reads], SamplingParams(max_tokens=max_tokens, temperature=0.0)
    )
    texts = [a.text for a in answers[: len(held)]]
    right = [f.answered_by(a.text) for f, a in zip(facts, answers[len(held) :], strict=True)]
    chats = [
        ChatExample((ChatMessage("user", h.question), ChatMessage("assistant", h.teacher)))
        for h in held
    ]
    agreed = agreement(base, teacher, subject, chats)
    return SubjectFigures(
        subject=name,
        adherence=persona.adherence(texts),
        on_topic=sum(on_topic(t, h.topic) for t, h in zip(texts, held, strict=True)) / len(held),
        top1_agreement=agreed.top1,
        mean_kl=agreed.mean_kl,
        prompt_tokens=context + sum(len(r.ids) for r in reads) / len(reads),
        virtual_tokens=subject.num_virtual_tokens if isinstance(subject, SoftPrompt) else 0,
        correct=sum(right) / len(right) if right else None,
        samples=tuple(texts[:3]),
    )


def persona_eval_command(args: argparse.Namespace, base: FrozenModel) -> int:
    persona = load_persona(args.persona)
    held = read_held(args.data)
    facts = load_facts(args.facts) if args.facts is not None else ()
    teacher = build_teacher(base, persona.context(), persona.name)
    system_only = build_teacher(base, persona.context()[:1], f"{persona.name}-system")
    subjects: list[tuple[str, Teacher | SoftPrompt | None]] = [
        ("soft prompt", _soft_prompt(args.prompts, args.prompt, base)),
        ("system prompt + example dialogues (the teacher)", teacher),
        ("system prompt only", system_only),
        ("bare model", None),
    ]
    figures = [
        _figures(base, persona, teacher, name, subject, held, args.max_new_tokens, facts)
        for name, subject in subjects
    ]
    print(
        f"persona {persona.name}: {len(held)} held-out questions, greedy, {args.max_new_tokens} tokens"
    )
    if facts:
        print(f"correct: {len(facts)} questions with a known answer ({args.facts})")
    print(
        "| subject | adherence | on-topic | correct | top-1 agreement | mean KL | prompt tokens |"
    )
    print("|---|---|---|---|---|---|---|")
    for f in figures:
        adherence = "-" if f.adherence is None else f"{f.adherence:.2f}"
        correct = "-" if f.correct is None else f"{f.correct:.2f}"
        tokens = f"{f.prompt_tokens:.0f}" + (
            f" + {f.virtual_tokens} virtual" if f.virtual_tokens else ""
        )
        print(
            f"| {f.subject} | {adherence} | {f.on_topic:.2f} | {correct} | {f.top1_agreement:.3f} "
            f"| {f.mean_kl:.3f} | {tokens} |"
        )
    for f in figures:
        print(f"{f.subject}: " + " / ".join(repr(s[:100]) for s in f.samples))
    out: dict[str, Any] = {"persona": persona.name, "questions": len(held)}
    out["max_new_tokens"] = args.max_new_tokens
    if facts:
        out["facts"] = len(facts)
    out["subjects"] = [asdict(f) for f in figures]
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")
    if args.record:
        record_figures(args.prompts, args.prompt, base, out)
        print(f"recorded the figures in {args.prompts / args.prompt / 'task.json'}")
    return 0


def record_figures(prompts: Path, task: str, base: FrozenModel, figures: dict[str, Any]) -> None:
    """Put the figures in the task's task.json (`info.evaluation`): a new version, validated and
    written atomically like any other; the loss curve beside it is kept."""
    folder = prompts / task
    files = read_prompt_folder(folder, Limits())
    meta = json.loads(files.task) if files.task else {}
    meta.setdefault("info", {})["evaluation"] = {
        k: v for k, v in figures.items() if k != "subjects"
    } | {"subjects": [{k: v for k, v in s.items() if k != "samples"} for s in figures["subjects"]]}
    plot = folder / LOSS_PLOT
    curve = plot.read_bytes() if plot.is_file() else None
    task_json = (json.dumps(meta, indent=2, ensure_ascii=False) + "\n").encode()
    Registry(prompts, base.spec).put(task, replace(files, task=task_json))
    if curve is not None:
        plot.write_bytes(curve)
