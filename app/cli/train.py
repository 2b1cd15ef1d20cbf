"""`softserve train` and `softserve eval`: from a data file to a served task, and its figures."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

DEFAULT_PROMPTS = "prompts"


def _add_data_args(p: Any) -> None:
    p.add_argument("--data", required=True, type=Path, help=".jsonl, .tsv or .csv file")
    p.add_argument("--input-col", default="input", help="TSV/CSV column with the input")
    p.add_argument("--output-col", default="output", help="TSV/CSV column with the answer")
    p.add_argument("--label-map", help="map raw answers to text, e.g. 0=negative,1=positive")
    p.add_argument("--model", default="default", help="base model (as for serve)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--limit", type=int, help="use only the first N examples")


def add_commands(sub: Any) -> None:
    t = sub.add_parser("train", help="train a soft prompt into the prompts folder")
    t.add_argument("--kind", required=True, choices=["prompt", "p-tuning", "prefix"])
    t.add_argument("--task", required=True, help="task name to save it under")
    _add_data_args(t)
    t.add_argument(
        "--template", help="input template with {input}, e.g. 'Review: {input}\\nSentiment:'"
    )
    t.add_argument(
        "--distill-from",
        metavar="@PERSONA",
        help="train by KL to this teacher: @NAME.txt (its shots beside it) or a system prompt",
    )
    t.add_argument(
        "--objective",
        choices=["ce", "kl", "kl+ce"],
        help="ce: answer text cross-entropy; kl: match the teacher (default with --distill-from);"
        " kl+ce: both summed",
    )
    t.add_argument(
        "--ce-weight",
        type=float,
        default=1.0,
        help="kl+ce: the text cross-entropy's weight beside the KL's 1 (default 1)",
    )
    t.add_argument("--virtual-tokens", type=int, default=20)
    t.add_argument(
        "--init",
        default="random",
        help='text:"...", random, vocab, from:FOLDER (go on training) or teacher (prefix, with '
        "--distill-from: the teacher's context compressed to --virtual-tokens rows)",
    )
    t.add_argument("--epochs", type=int, default=3, help="passes over the data (default 3)")
    t.add_argument("--steps", type=int, help="train this many steps instead (cycles the data)")
    t.add_argument("--lr", type=float, help="learning rate (default depends on --kind)")
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--val-split", type=float, default=0.1, help="fraction, or a count if >= 1")
    t.add_argument("--eval-every", type=int, help="steps between validations (default: epoch)")
    t.add_argument("--patience", type=int, default=3)
    t.add_argument("--max-tokens", type=int, default=512, help="skip longer examples")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--description")
    t.add_argument("--labels", help="label set recorded in task.json (default: --label-map's)")
    t.add_argument("--defaults", help='sampling defaults as JSON, e.g. {"temperature": 0}')
    t.add_argument("--out", type=Path, default=Path(DEFAULT_PROMPTS), help="prompts folder")
    t.add_argument(
        "--store-dtype",
        choices=["float32", "float16", "bfloat16"],
        default="float32",
        help="dtype of the saved table (float16: half the bytes; served as float32 either way)",
    )
    t.add_argument("--push", metavar="URL", help="also hot-swap it into a running server")
    t.add_argument("--admin-key", help="admin key for --push (or SOFTSERVE_ADMIN_KEY)")
    t.add_argument("--quiet", action="store_true", help="no progress bar")

    e = sub.add_parser("eval", help="evaluate a soft prompt, a hand-written prompt or none")
    which = e.add_mutually_exclusive_group(required=True)
    which.add_argument("--prompt", metavar="TASK", help="a task from the prompts folder")
    which.add_argument("--hard-prompt", metavar="TEMPLATE", help="template with {input}, or @file")
    which.add_argument("--none", action="store_true", help="the bare model, raw input")
    _add_data_args(e)
    e.add_argument("--labels", help="comma-separated labels: classify by their log-likelihood")
    e.add_argument("--prompts", type=Path, default=Path(DEFAULT_PROMPTS))
    e.add_argument(
        "--system-prompt", help="system prompt for chat examples (text or @file), e.g. a teacher's"
    )
    e.add_argument("--server", metavar="URL", help="ask a running server instead (greedy answers)")
    e.add_argument("--api-key", help="key for --server (or SOFTSERVE_API_KEY)")
    e.add_argument(
        "--persona",
        type=Path,
        help="NAME.txt: persona figures of --prompt TASK on --data (distill --eval-out's file)",
    )
    e.add_argument("--max-new-tokens", type=int, default=64, help="answer budget for --persona")
    e.add_argument(
        "--facts",
        type=Path,
        help="--persona: questions with known answers (JSONL), for the share answered correctly",
    )
    e.add_argument(
        "--record", action="store_true", help="--persona: keep the figures in the task's task.json"
    )
    e.add_argument("--batch-size", type=int, default=32)
    e.add_argument("--json", type=Path, help="also write the figures as JSON here")
    add_distill(sub)


def add_distill(sub: Any) -> None:
    d = sub.add_parser("distill", help="a persona's teacher answers many questions")
    who = d.add_mutually_exclusive_group(required=True)
    who.add_argument(
        "--persona", type=Path, help="NAME.txt, with NAME.shots.jsonl and NAME.check.json beside it"
    )
    who.add_argument("--system-prompt", help="a bare system prompt: the text, or @file")
    d.add_argument("--questions", type=Path, help="one user message per line (default: generated)")
    d.add_argument("--generate", type=int, default=3000, help="generated training questions")
    d.add_argument("--eval-questions", type=int, default=60, help="held-out questions to write")
    d.add_argument("--eval-out", type=Path, help="JSONL of held-out questions + teacher answers")
    d.add_argument("--eval-max-tokens", type=int, default=64)
    d.add_argument("--out", required=True, type=Path, help="JSONL of chats, for train/eval")
    d.add_argument("--max-new-tokens", type=int, default=96)
    d.add_argument("--temperature", type=float, default=0.8, help="teacher sampling (0: greedy)")
    d.add_argument("--top-p", type=float, default=0.95)
    d.add_argument("--keep-unfinished", action="store_true", help="keep answers cut at the budget")
    d.add_argument(
        "--keep-passing", action="store_true", help="keep only answers passing the check"
    )
    d.add_argument(
        "--keep-on-topic",
        action="store_true",
        help="keep only answers naming their question's topic (generated questions)",
    )
    d.add_argument("--seed", type=int, default=0)
    d.add_argument("--json", type=Path, help="also write the counts as JSON here")
    d.add_argument("--model", default="default")
    d.add_argument("--device", default="cpu")


def run(args: argparse.Namespace) -> int:
    from app.cli import train_run  # imports torch and peft: only for these commands

    try:
        if args.command == "train":
            return train_run.train_command(args)
        if args.command == "distill":
            return train_run.distill_command(args)
        return train_run.eval_command(args)
    except ValueError as exc:  # DataError is a ValueError too
        print(f"softserve {args.command}: {exc}", file=sys.stderr)
        return 2
