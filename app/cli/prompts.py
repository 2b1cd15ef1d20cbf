"""`softserve prompts ls|push|rm` (over HTTP to a running server) and `softserve import-peft`."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import httpx

FILES = ("adapter_config.json", "adapter_model.safetensors", "task.json")


def add_commands(sub: Any) -> None:
    prompts = sub.add_parser("prompts", help="list, push or remove prompts on a running server")
    verbs = prompts.add_subparsers(dest="verb", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--server", default=os.environ.get("SOFTSERVE_SERVER", "http://127.0.0.1:8000")
    )
    common.add_argument(
        "--key",
        default=None,
        help="bearer key (default: $SOFTSERVE_ADMIN_KEY, then $SOFTSERVE_API_KEY)",
    )
    verbs.add_parser("ls", parents=[common], help="list the registry")
    push = verbs.add_parser(
        "push", parents=[common], help="upload a PEFT folder as a task (create or replace)"
    )
    push.add_argument("folder", type=Path)
    push.add_argument("--task", required=True)
    rm = verbs.add_parser("rm", parents=[common], help="delete a task")
    rm.add_argument("task")

    imp = sub.add_parser(
        "import-peft", help="validate a PEFT adapter folder and copy it into the registry"
    )
    imp.add_argument("folder", type=Path)
    imp.add_argument("--task", required=True)
    imp.add_argument(
        "--prompts",
        default=os.environ.get("SOFTSERVE_PROMPTS", "prompts"),
        help="the registry: a folder, or s3://BUCKET/PREFIX (endpoint: $SOFTSERVE_S3_ENDPOINT_URL)",
    )
    imp.add_argument("--model", default=os.environ.get("SOFTSERVE_MODEL", "default"))


def _headers(key: str | None) -> dict[str, str]:
    key = key or os.environ.get("SOFTSERVE_ADMIN_KEY") or os.environ.get("SOFTSERVE_API_KEY")
    return {"Authorization": f"Bearer {key}"} if key else {}


def _fail(response: httpx.Response) -> int:
    try:
        message = response.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        message = response.text
    print(f"softserve: HTTP {response.status_code}: {message}", file=sys.stderr)
    return 1


def push_folder(server: str, folder: Path, task: str, key: str | None) -> httpx.Response:
    opened = {name: (folder / name).open("rb") for name in FILES if (folder / name).is_file()}
    try:
        return httpx.put(
            f"{server}/v1/prompts/{task}",
            files={name: (name, f) for name, f in opened.items()},
            headers=_headers(key),
            timeout=60,
        )
    finally:
        for f in opened.values():
            f.close()


def run_prompts(args: argparse.Namespace) -> int:
    try:
        if args.verb == "ls":
            r = httpx.get(f"{args.server}/v1/prompts", headers=_headers(args.key), timeout=30)
            if r.status_code != 200:
                return _fail(r)
            body = r.json()
            print(f"{'task':<32} {'kind':<14} {'tokens':>6} {'version':>7}  sha256")
            for p in body["data"]:
                print(
                    f"{p['id']:<32} {p['kind']:<14} {p['num_virtual_tokens']:>6} {p['version']:>7}  {p['sha256'][:12]}"
                )
            for s in body["skipped"]:
                print(f"skipped {s['path']}: {s['reason']}")
            return 0
        if args.verb == "push":
            if not (args.folder / FILES[0]).is_file():
                print(f"softserve: {args.folder} has no {FILES[0]}", file=sys.stderr)
                return 2
            r = push_folder(args.server, args.folder, args.task, args.key)
            if r.status_code not in (200, 201):
                return _fail(r)
            p = r.json()
            print(
                f"{'created' if r.status_code == 201 else 'replaced'} {p['id']} (version {p['version']}, {p['kind']})"
            )
            return 0
        r = httpx.delete(
            f"{args.server}/v1/prompts/{args.task}", headers=_headers(args.key), timeout=30
        )
        if r.status_code != 200:
            return _fail(r)
        print(f"deleted {args.task}")
        return 0
    except httpx.HTTPError as exc:
        print(f"softserve: cannot reach {args.server}: {exc}", file=sys.stderr)
        return 1


def run_import(args: argparse.Namespace) -> int:
    from app.model import load_model_spec
    from app.registry import (
        InvalidPrompt,
        StoreUnavailable,
        WriteConflict,
        open_registry,
        parse_location,
    )
    from app.registry.store import read_prompt_folder
    from app.settings import Settings

    settings = Settings()
    try:
        location = parse_location(args.prompts)
    except ValueError as exc:
        print(f"softserve: --prompts: {exc}", file=sys.stderr)
        return 2
    spec = load_model_spec(args.model, settings.cache_dir)
    registry = open_registry(location, spec, options=settings.s3_options)
    try:
        files = read_prompt_folder(args.folder, registry.limits)
        entry = registry.put(args.task, files)  # validated completely, then written atomically
    except InvalidPrompt as exc:
        print(f"softserve: {args.folder}: {exc}", file=sys.stderr)
        return 1
    except (WriteConflict, StoreUnavailable) as exc:
        print(f"softserve: {location}: {exc}", file=sys.stderr)
        return 1
    print(
        f"imported {entry.name} ({entry.kind.value}, {entry.num_virtual_tokens} virtual tokens) into {location}"
    )
    return 0
