"""`softserve` (also `python -m app`): serve, and the registry/training commands."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from app.cli import prompts, train

if TYPE_CHECKING:
    from app.settings import Settings


def _add_serve(sub: Any) -> None:
    p = sub.add_parser("serve", help="serve the OpenAI-compatible HTTP API")
    p.add_argument(
        "--model", help="'default' (embedded SmolLM2-135M-Instruct), a HF folder or a .gguf file"
    )
    p.add_argument("--prompts", help="prompt registry folder (default: prompts/)")
    p.add_argument("--host", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port (default 8000)")
    p.add_argument("--device", help="cpu or cuda[:N]")
    p.add_argument("--dtype", help="bfloat16 (default), float32 or float16")
    p.add_argument(
        "--quantize", help="auto (default: w8a8 with bfloat16 on a CPU), none, int8, w8a8"
    )
    p.add_argument("--backend", help="auto (default), lean or hf")
    p.add_argument(
        "--native-decode",
        dest="native_decode",
        action=argparse.BooleanOptionalAction,
        help="a lone stream's decode step in the C kernel (default on where the CPU has "
        "AVX-512 VNNI and a C compiler is at hand)",
    )
    p.add_argument("--prefill-chunk", type=int, dest="prefill_chunk")
    p.add_argument("--max-batch-size", type=int, dest="max_batch_size")
    p.add_argument("--log-level", dest="log_level")


def build_settings(args: argparse.Namespace, fields: Sequence[str]) -> Settings:
    """Flags given on the command line win over SOFTSERVE_* variables, which win over defaults."""
    from app.settings import Settings  # pydantic-settings: only for the commands that need it

    overrides = {
        name: getattr(args, name) for name in fields if getattr(args, name, None) is not None
    }
    return Settings(**overrides)


def _serve(args: argparse.Namespace) -> int:
    from app.cli.serve import serve

    settings = build_settings(
        args,
        [
            "model",
            "prompts",
            "host",
            "port",
            "device",
            "dtype",
            "quantize",
            "backend",
            "native_decode",
            "prefill_chunk",
            "max_batch_size",
            "log_level",
        ],
    )
    return serve(settings)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="softserve", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_serve(sub)
    prompts.add_commands(sub)
    train.add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command == "serve":
            return _serve(args)
        if args.command == "prompts":
            return prompts.run_prompts(args)
        if args.command == "import-peft":
            return prompts.run_import(args)
        if args.command in ("train", "eval", "distill"):
            return train.run(args)
    except ValidationError as exc:
        print(f"softserve: invalid setting: {exc}", file=sys.stderr)
        return 2
    parser.error(f"unknown command {args.command}")
    return 2
