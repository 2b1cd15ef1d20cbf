"""SST-2: combine several prefix prompts two ways and score both on dev by the eval command's rule.

- The prediction ensemble: each prompt scores the labels under its own template, and the mean of
  their normalised label log-likelihoods decides. It needs one forward pass per prompt, so it is
  not served; it is the measure of how far combining these prompts can go at all, and the
  report of how many reviews every prompt gets wrong says how alike their errors are.
- The "model soup" (Wortsman et al. 2022): the element-wise mean of the key/value tables, for
  prompts of one template (the mean of prompts read under different templates means nothing).

Prompts trained from one init (here the same text init, different seeds: different shuffles and
validation splits) tend to stay in one basin, where the mean of their weights can beat each of
them. The average is one table of the same shape, so it is served like any other prompt: with
--out it is written into a registry folder (validated and atomic, as `softserve train` writes),
its task.json the first prompt's plus a record of the soup.

    python examples/sst2/soup.py --prompt prompts/sst2-sentiment --prompt runs/soup1/sst2-prefix-seed1 \
        [--prompt ...] [--out runs/soup --task sst2-soup]
"""

from __future__ import annotations

import argparse
import json
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from app.model.loader import load_base_model
from app.model.spec import ModelSpec
from app.registry.entry import PromptEntry, PromptFiles, build_entry
from app.registry.peft_format import Limits
from app.registry.store import Registry, read_prompt_folder
from app.settings import Settings
from app.train.data import Columns, TextExample, load_examples, parse_label_map
from app.train.evaluate import Subject, classify, label_loglikelihoods

LABELS = "0=negative,1=positive"


def _entry(folder: Path, spec: ModelSpec) -> tuple[PromptFiles, PromptEntry]:
    """A prompt folder, read and validated as the server reads it."""
    files = read_prompt_folder(folder, Limits())
    entry = build_entry(folder.name, files, spec=spec, limits=Limits(), version=1, created=0.0)
    return files, entry


def average(entries: list[tuple[PromptFiles, PromptEntry]]) -> bytes:
    """The element-wise mean of the prompts' tensors, as a safetensors file."""
    configs = {json.loads(files.adapter_config)["peft_type"] for files, _ in entries}
    shapes = {tuple(entry.soft_prompt.table.shape) for _, entry in entries}
    if len(configs) != 1 or len(shapes) != 1:
        raise SystemExit(f"only prompts of one kind and shape average: {configs}, {shapes}")
    tensors = [load_safetensors(files.adapter_model) for files, _ in entries]
    keys = set(tensors[0])
    if any(set(t) != keys for t in tensors):
        raise SystemExit("the prompts' tensor files hold different keys")
    mean = {k: torch.stack([t[k].float() for t in tensors]).mean(0).contiguous() for k in keys}
    return save_safetensors(mean, metadata={"format": "pt"})


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompt", type=Path, action="append", required=True, help="a folder")
    parser.add_argument("--data", type=Path, default=Path("../shared/data/sst2/dev.tsv"))
    parser.add_argument("--out", type=Path, help="registry folder to write the average into")
    parser.add_argument("--task", default="sst2-soup")
    args = parser.parse_args()
    settings = Settings()
    base = load_base_model(settings.model, device=settings.device, cache_dir=settings.cache_dir)
    entries = [_entry(folder, base.spec) for folder in args.prompt]
    one_template = len({entry.meta.template for _, entry in entries}) == 1
    if args.out and not one_template:  # said before the minutes of scoring, not after
        raise SystemExit("--out: no soup to write, the prompts are read under different templates")
    labels = parse_label_map(LABELS)
    dev = load_examples(args.data, Columns("content", "label", labels))
    texts = [e for e in dev if isinstance(e, TextExample)]
    names = [text for _, text in labels]
    gold = torch.tensor([names.index(e.output.strip()) for e in texts])  # [N]
    right = []  # one [N] bool per prompt: which reviews it gets right
    normalised = []  # one [N, 2] per prompt: log-probabilities over the two labels alone
    for folder, (_, entry) in zip(args.prompt, entries, strict=True):
        subject = Subject(entry.soft_prompt, entry.meta.template)
        scores = label_loglikelihoods(base, subject, [e.input for e in texts], names)  # [N, 2]
        right.append(scores.argmax(dim=1) == gold)
        normalised.append(scores.log_softmax(dim=1))
        print(f"{folder}: dev accuracy {right[-1].float().mean():.3f} ({int(right[-1].sum())})")
    ensemble = torch.stack(normalised).mean(dim=0).argmax(dim=1) == gold  # [N]
    wrong = ~torch.stack(right)  # [P, N]
    print(
        f"prediction ensemble of {len(entries)}: dev accuracy {ensemble.float().mean():.3f} "
        f"({int(ensemble.sum())}/{len(texts)}); wrong under every prompt: "
        f"{int(wrong.all(dim=0).sum())}, under at least one: {int(wrong.any(dim=0).sum())}"
    )
    first = entries[0][1]
    if not one_template:
        print("no soup: the prompts are read under different templates")
        return
    # The average is scored as the server will read it: built from the very files --out writes.
    files = replace(entries[0][0], adapter_model=average(entries))
    soup = build_entry(args.task, files, spec=base.spec, limits=Limits(), version=1, created=0.0)
    result = classify(base, Subject(soup.soft_prompt, first.meta.template), texts, names)
    print(
        f"average of {len(entries)}: dev accuracy {result.accuracy:.3f} "
        f"({result.correct}/{result.total}): {result.classes}"
    )
    if args.out:
        task = json.loads(files.task or b"{}")
        task.setdefault("info", {})["soup"] = {
            "of": [str(p) for p in args.prompt],
            "evaluation": {
                "data": args.data.name,
                "examples": result.total,
                "accuracy": round(result.accuracy, 3),
            },
        }
        files = replace(files, task=(json.dumps(task, indent=2) + "\n").encode())
        args.out.mkdir(parents=True, exist_ok=True)
        Registry(args.out, base.spec).put(args.task, files)
        print(f"wrote {args.out / args.task}")


if __name__ == "__main__":
    main()
