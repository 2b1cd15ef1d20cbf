"""Print the SST-2 dev table (each soft-prompt kind vs each hard prompt) from the eval JSON files
in runs/sst2/, and copy the best soft prompt to prompts/sst2-sentiment.

    python examples/sst2/report.py [--runs runs/sst2] [--prompts prompts] [--no-copy]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

SOFT = {"sst2-prefix": "prefix tuning", "sst2-prompt": "prompt tuning", "sst2-p-tuning": "P-tuning"}
HARD = {
    "hard-zero-shot": "hard: zero-shot template, labels ' positive'/' negative'",
    "hard-zero-shot-nospace": "hard: zero-shot template, labels 'positive'/'negative'",
    "hard-zero-shot-echo": "hard: zero-shot template reading the review twice",
    "hard-instruction": "hard: instruction + template",
    "hard-few-shot-4": "hard: 4-shot",
    "hard-few-shot-8": "hard: 8-shot",
    "hard-chat": "hard: chat-formatted question",
    "none": "bare model, raw review",
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=Path, default=Path("runs/sst2"))
    parser.add_argument("--prompts", type=Path, default=Path("prompts"))
    parser.add_argument("--no-copy", action="store_true")
    args = parser.parse_args()
    rows = []
    for name, label in (SOFT | HARD).items():
        path = args.runs / f"{name}.dev.json"
        if path.exists():
            figures = json.loads(path.read_text())
            task = args.runs / name / "task.json"
            info = json.loads(task.read_text())["info"]["training"] if task.exists() else {}
            rows.append((name, label, figures["accuracy"], info))
    print("| prompt | dev accuracy | training |")
    print("|---|---|---|")
    for name, label, acc, info in rows:
        train = f"{info['steps']} steps, {info['seconds']:.0f} s" if info else ""
        print(f"| {label} (`{name}`) | {acc:.3f} | {train} |")
    soft = [r for r in rows if r[0] in SOFT]
    if soft and not args.no_copy:
        best = max(soft, key=lambda r: r[2])
        target = args.prompts / "sst2-sentiment"
        if target.exists():
            shutil.rmtree(target)
        shutil.copytree(args.runs / best[0], target)
        task = json.loads((target / "task.json").read_text())
        task["description"] = (
            f"SST-2 movie-review sentiment ({SOFT[best[0]]}): positive or negative"
        )
        (target / "task.json").write_text(json.dumps(task, indent=2) + "\n")
        print(f"copied {best[0]} ({best[2]:.3f}) to {target}")


if __name__ == "__main__":
    main()
