"""Pilot: SST-2 prefix tuning with PEFT's MLP reparameterisation (Li & Liang 2021) in training.

The trainer trains the key/value table directly (`prefix_projection=False`, text init). Here the
table is instead the output of PEFT's prefix encoder, Embedding(P, kv_dim) -> Linear -> Tanh ->
Linear(L*2*kv_dim), trained from PEFT's random init by the same `train()` (same data, split,
batches, schedule and validation), and read out after training as the plain [P, L*2*kv_dim] table
the registry serves. Prints dev accuracy by the eval command's rule (`classify`).

    python examples/sst2/projection_pilot.py [--steps 400] [--lr 1e-3] [--hidden 512]
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch
from peft import PeftModel, PrefixTuningConfig

from app.model.kinds import PromptKind
from app.model.loader import FrozenModel, load_base_model
from app.model.soft_prompt import SoftPrompt
from app.settings import Settings
from app.train import adapters, trainer
from app.train.adapters import PromptInit
from app.train.data import Columns, TextExample, load_examples, parse_label_map
from app.train.evaluate import Subject, classify

TEMPLATE = "Review: {input}\nSentiment:"
LABELS = "0=negative,1=positive"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data", type=Path, default=Path("../shared/data/sst2"))
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--hidden", type=int, default=512, help="the MLP's hidden width")
    parser.add_argument("--virtual-tokens", type=int, default=20)
    args = parser.parse_args()
    settings = Settings()
    base = load_base_model(settings.model, device=settings.device, cache_dir=settings.cache_dir)

    def projected(
        base: FrozenModel, kind: PromptKind, virtual_tokens: int, init: PromptInit
    ) -> PeftModel:
        # The trainer's own prefix config, with PEFT's MLP switched on (nothing else differs).
        plain = adapters._config(base, kind, virtual_tokens, inference=False)
        assert isinstance(plain, PrefixTuningConfig)
        return adapters._wrap(
            base, replace(plain, prefix_projection=True, encoder_hidden_size=args.hidden)
        )

    trainer.trainable_model = projected  # the one difference from `softserve train --kind prefix`
    labels = parse_label_map(LABELS)
    examples = load_examples(args.data / "train.tsv", Columns("sentence", "label", labels))
    config = trainer.TrainConfig(
        kind=PromptKind.PREFIX_TUNING,
        template=TEMPLATE,
        virtual_tokens=args.virtual_tokens,
        max_steps=args.steps,
        lr=args.lr,
        batch_size=16,
        val_split=256,
        eval_every=100,
        patience=5,
    )
    trained = trainer.train(base, examples, config)
    model: PeftModel = trained.model
    encoder: Any = model.prompt_encoder["default"]
    with torch.no_grad():  # the encoder's output is what PEFT itself saves for a projected prefix
        table = encoder(torch.arange(args.virtual_tokens, device=base.device))  # [P, L*2*kv_dim]
    report = trained.report
    print(
        f"{report.steps} steps in {report.seconds:.0f} s, best validation loss "
        f"{report.best.val_loss:.4f} at step {report.best.step}, table {tuple(table.shape)}"
    )
    dev = load_examples(args.data / "dev.tsv", Columns("content", "label", labels))
    texts = [e for e in dev if isinstance(e, TextExample)]
    prompt = SoftPrompt(key="projection-pilot", kind=PromptKind.PREFIX_TUNING, table=table)
    result = classify(base, Subject(prompt, TEMPLATE), texts, [text for _, text in labels])
    print(f"dev accuracy {result.accuracy:.3f} ({result.correct}/{result.total}): {result.classes}")


if __name__ == "__main__":
    main()
