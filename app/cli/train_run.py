"""The heavy half of `train`/`eval` (torch, PEFT), imported only when those commands run."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

from app.cli.args import parse_labels, print_figures, read_template, read_text_arg
from app.cli.prompts import push_folder
from app.cli.remote_eval import remote_figures
from app.model.kinds import PromptKind
from app.model.loader import FrozenModel, load_base_model
from app.registry.errors import InvalidPrompt
from app.registry.names import validate_task_name
from app.registry.peft_format import Limits, parse_adapter_config, read_prompt_table
from app.registry.store import Registry, read_prompt_folder
from app.render import chat_ids
from app.settings import Settings
from app.train.adapters import InitKind, PromptInit
from app.train.data import (
    Columns,
    Example,
    TextExample,
    load_examples,
    parse_label_map,
)
from app.train.evaluate import Subject, classify, generate_and_score
from app.train.persona import Persona, load_persona
from app.train.save import STORE_DTYPES, StoreDtypeError, TaskInfo, save_prompt
from app.train.teacher import build_teacher
from app.train.trainer import Objective, TrainConfig, train


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
    objective = Objective(args.objective or ("kl" if args.distill_from else "ce"))
    if objective.distills and not args.distill_from:
        raise ValueError(
            f"--objective {objective} needs a teacher: add --distill-from @PERSONA.txt"
        )
    config = TrainConfig(
        kind=PromptKind.parse(args.kind),
        objective=objective,
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
        ce_weight=args.ce_weight,
        progress=not args.quiet,
    )
    config.validate()  # before the model loads: a typo should not cost 10 s
    persona = _teacher_persona(args.distill_from) if args.distill_from else None
    base = _base(args)
    if config.init.kind is InitKind.FROM:
        config = dataclasses.replace(
            config, init=_saved_table(config.init, base, config.kind, config.virtual_tokens)
        )
    teacher = None
    if persona is not None and objective.distills:
        teacher = build_teacher(base, persona.context(), persona.name)
    trained = train(base, examples, config, teacher)
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
        "objective": objective.value,
        **({"ce_weight": config.text_weight} if config.text_weight else {}),
        "init": args.init,
        "store_dtype": args.store_dtype,
    }
    if persona is not None:
        extra["teacher"] = {
            "persona": persona.name,
            "context_tokens": len(chat_ids(base.tokenizer, persona.context(), generation=False)),
            "example_dialogues": len(persona.shots),
        }
        if persona.check is not None:
            extra["check"] = persona.check.to_json()
    store_dtype = STORE_DTYPES[args.store_dtype]
    try:
        entry = save_prompt(
            base, trained.model, report, args.out, args.task, info, extra, store_dtype
        )
    except StoreDtypeError as exc:  # a finished training run is never thrown away for its dtype
        print(f"warning: {exc}: stored as float32 instead", file=sys.stderr)
        extra["store_dtype"] = "float32"
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


def _saved_table(
    init: PromptInit, base: FrozenModel, kind: PromptKind, virtual_tokens: int
) -> PromptInit:
    """`--init from:FOLDER`: the saved prompt's table, validated as the server would read it."""
    folder = Path(init.text or "")
    limits = Limits()
    try:
        files = read_prompt_folder(folder, limits)
        saved = parse_adapter_config(files.adapter_config, base.spec, limits)
        table = read_prompt_table(files.adapter_model, saved, base.spec, limits)
    except (InvalidPrompt, OSError) as exc:
        raise ValueError(f"--init from:{folder}: {exc}") from None
    if saved.kind is not kind:
        raise ValueError(
            f"--init from:{folder}: a {saved.kind.cli_name} prompt cannot start a {kind.cli_name} one"
        )
    if saved.num_virtual_tokens != virtual_tokens:  # before a teacher is built, not after
        raise ValueError(
            f"--init from:{folder}: it has {saved.num_virtual_tokens} virtual tokens, "
            f"--virtual-tokens is {virtual_tokens}"
        )
    return dataclasses.replace(init, table=table)


def _teacher_persona(value: str) -> Persona:
    """`@NAME.txt` with its shots and check beside it, or an inline system prompt."""
    if value.startswith("@") and Path(value[1:]).with_suffix(".check.json").is_file():
        return load_persona(Path(value[1:]))
    text = read_text_arg(value).strip()
    if not text:
        raise ValueError("--distill-from needs a non-empty system prompt")
    return Persona("system-prompt", text, (), None)


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
    if args.persona is not None:
        from app.cli.persona_eval import persona_eval_command

        if not args.prompt:
            raise ValueError("--persona compares a soft prompt: give it as --prompt TASK")
        return persona_eval_command(args, _base(args))
    if args.facts is not None or args.record:
        raise ValueError("--facts and --record go with --persona")
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
    from app.cli.distill_run import distill_command as run

    if args.persona is None and not read_text_arg(args.system_prompt).strip():
        raise ValueError("distill needs a non-empty system prompt")
    if args.questions and args.keep_on_topic:
        raise ValueError("--keep-on-topic needs generated questions (a file's have no topic)")
    return run(args, _base(args))
