"""The heavy half of `train`/`eval` (torch, PEFT), imported only when those commands run."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from typing import Any

from app.cli.args import parse_labels, print_figures, read_template, read_text_arg
from app.cli.prompts import push_folder
from app.cli.remote_eval import remote_figures
from app.model.kinds import PromptKind
from app.model.loader import FrozenModel, load_base_model
from app.registry.names import validate_task_name
from app.registry.store import Registry
from app.render import ChatMessage, chat_ids
from app.settings import Settings
from app.train.adapters import PromptInit
from app.train.data import (
    Columns,
    Example,
    TextExample,
    load_examples,
    parse_label_map,
)
from app.train.distill import distill
from app.train.evaluate import Subject, classify, generate_and_score
from app.train.save import TaskInfo, save_prompt
from app.train.trainer import TrainConfig, train


def _examples(args: argparse.Namespace) -> tuple[list[Example], tuple[tuple[str, str], ...]]:
    label_map = parse_label_map(args.label_map) if args.label_map else ()
    columns = Columns(input_col=args.input_col, output_col=args.output_col, label_map=label_map)
    examples = load_examples(args.data, columns)
    if args.limit is not None:
        examples = examples[: args.limit]
    return examples, label_map


def _base(args: argparse.Namespace) -> FrozenModel:
    settings = Settings(model=args.model, device=args.device)
    return load_base_model(settings.model, device=settings.device, cache_dir=settings.cache_dir)


def train_command(args: argparse.Namespace) -> int:
    validate_task_name(args.task)
    examples, label_map = _examples(args)
    labels = parse_labels(args.labels) or tuple(dict.fromkeys(label for _, label in label_map))
    defaults = json.loads(args.defaults) if args.defaults else {}
    if not isinstance(defaults, dict):
        raise ValueError("--defaults must be a JSON object")
    config = TrainConfig(
        kind=PromptKind.parse(args.kind),
        template=args.template.replace("\\n", "\n") if args.template else None,
        virtual_tokens=args.virtual_tokens,
        init=PromptInit.parse(args.init),
        epochs=args.epochs,
        max_steps=args.steps,
        lr=args.lr,
        batch_size=args.batch_size,
        val_split=args.val_split,
        eval_every=args.eval_every,
        patience=args.patience,
        max_tokens=args.max_tokens,
        seed=args.seed,
        progress=not args.quiet,
    )
    config.validate()  # before the model loads: a typo should not cost 10 s
    base = _base(args)
    trained = train(base, examples, config)
    report = trained.report
    info = TaskInfo(
        description=args.description,
        template=config.template,
        labels=labels,
        defaults=tuple(defaults.items()),
    )
    extra = {
        "kind": config.kind.cli_name,
        "data": args.data.name,
        "virtual_tokens": args.virtual_tokens,
    }
    entry = save_prompt(base, trained.model, report, args.out, args.task, info, extra)
    print(
        f"saved {args.out / args.task} (version {entry.version}, sha256 {entry.sha256[:12]}): "
        f"{report.steps} steps in {report.seconds:.0f} s ({report.tokens_per_s:.0f} tokens/s), "
        f"best validation loss {report.best.val_loss} at step {report.best.step}"
        + (", stopped early" if report.stopped_early else "")
    )
    if args.push:
        key = args.admin_key or os.environ.get("SOFTSERVE_ADMIN_KEY")
        response = push_folder(args.push, args.out / args.task, args.task, key)
        if response.status_code >= 400:
            print(f"push failed: HTTP {response.status_code}: {response.text}")
            return 1
        print(f"pushed to {args.push}: {response.json().get('sha256', '')[:12]}")
    return 0


def _subject(args: argparse.Namespace, base: FrozenModel) -> tuple[Subject, tuple[str, ...]]:
    subject, labels = _chosen_subject(args, base)
    if args.system_prompt:  # wins over the task's own, as a request's system message would
        subject = dataclasses.replace(
            subject, system_prompt=read_text_arg(args.system_prompt).strip()
        )
    return subject, labels


def _chosen_subject(args: argparse.Namespace, base: FrozenModel) -> tuple[Subject, tuple[str, ...]]:
    if args.none:
        return Subject(), ()
    if args.hard_prompt:
        return Subject(template=read_template(args.hard_prompt)), ()
    registry = Registry(args.prompts, base.spec)
    registry.load_all()
    entry = registry.get(validate_task_name(args.prompt))
    meta = entry.meta
    subject = Subject(entry.soft_prompt, meta.template, meta.system_prompt)
    return subject, meta.labels


def eval_command(args: argparse.Namespace) -> int:
    examples, _ = _examples(args)
    labels = parse_labels(args.labels)
    figures: dict[str, Any]
    if args.server:
        figures = remote_figures(args, examples, labels)
    else:
        base = _base(args)
        subject, task_labels = _subject(args, base)
        labels = labels or task_labels
        if labels:
            texts = [e for e in examples if isinstance(e, TextExample)]
            if len(texts) != len(examples):
                raise ValueError("classification (--labels) needs input/output examples, not chats")
            result = classify(base, subject, texts, labels, args.batch_size)
            figures = {
                "accuracy": result.accuracy,
                "correct": result.correct,
                "total": result.total,
                "classes": [dataclasses.asdict(c) for c in result.classes],
            }
        else:
            gen = generate_and_score(base, subject, examples, args.batch_size)
            figures = {
                "exact_match": gen.exact_match,
                "exact": gen.exact,
                "total": gen.total,
                "prefix_match": gen.prefix_match,
                "token_accuracy": gen.token_accuracy,
                "mean_token_loss": gen.mean_token_loss,
            }
    print_figures(figures, args.json)
    return 0


def distill_command(args: argparse.Namespace) -> int:
    system_prompt = read_text_arg(args.system_prompt).strip()
    lines = args.questions.read_text(encoding="utf-8").splitlines()
    questions = [q.strip() for q in lines if q.strip()]
    if not system_prompt or not questions:
        raise ValueError("distill needs a non-empty system prompt and at least one question")
    base = _base(args)
    result = distill(base, system_prompt, questions, args.max_new_tokens)
    with args.out.open("w", encoding="utf-8") as f:
        for example in result.examples:
            messages = [{"role": m.role, "content": m.content} for m in example.messages]
            f.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    # What each request pays for the persona: the system prompt's tokens, averaged over the
    # questions (the chat template adds a few of its own around it).
    tok = base.tokenizer
    system = ChatMessage("system", system_prompt)
    with_system = [len(chat_ids(tok, (system, ChatMessage("user", q)))) for q in questions]
    without = [len(chat_ids(tok, (ChatMessage("user", q),))) for q in questions]
    figures = {
        "conversations": len(result.examples),
        "dropped": result.dropped,
        "prompt_tokens_with_system": sum(with_system) / len(questions),
        "prompt_tokens_without": sum(without) / len(questions),
    }
    print(
        f"wrote {len(result.examples)} conversations to {args.out} "
        f"({result.dropped} dropped: unfinished or empty); prompt tokens per request: "
        f"{figures['prompt_tokens_with_system']:.1f} with the system prompt, "
        f"{figures['prompt_tokens_without']:.1f} without"
    )
    if args.json is not None:
        args.json.write_text(json.dumps(figures, indent=2) + "\n", encoding="utf-8")
    return 0
