"""What each weight-precision setting costs in quality, through the engine that serves them:
SST-2 dev accuracy of the shipped `sst2-sentiment` task (its template, greedy, one token, the
answer compared with the label word), greedy agreement with fp32 on a fixed set of chat prompts
(64 tokens each, four rows at a time, so decode steps are small and int8 kernels run there), and
next-token agreement with fp32 along fp32's own answers (top-1 and mean KL over the vocabulary),
read in one large step and token by token: large and small steps use different kernels.

    .venv/bin/python -m bench.precision [--quick] [--limit N]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from app.engine import Backend, Engine, EngineConfig, GenerationRequest, SamplingParams
from app.engine.lean import Segment, forward
from app.engine.runner import LeanRunner
from app.model import DType, FrozenModel, Quantize, load_base_model
from app.registry import Registry
from app.render import ChatMessage, chat_ids, render_completion
from app.settings import Settings
from bench.common import plot_bars, write

ROOT = Path(__file__).resolve().parent.parent
SST2_DEV = ROOT.parent / "shared" / "data" / "sst2" / "dev.tsv"
QUESTIONS = [
    "What is the capital of France?",
    "Why is the sky blue?",
    "How do I boil an egg?",
    "Write a haiku about the sea.",
    "Explain photosynthesis in two sentences.",
    "What are three tips for a job interview?",
    "Tell me a fun fact about octopuses.",
    "How does a bicycle gear work?",
    "What is the difference between weather and climate?",
    "Give me a short recipe for pancakes.",
    "Why do cats purr?",
    "What should I pack for a weekend hike?",
    "How do vaccines work?",
    "Summarise the plot of Romeo and Juliet.",
    "What is a prime number?",
    "Suggest a name for a friendly robot.",
]


@dataclass(frozen=True)
class Setting:
    name: str
    dtype: DType
    quantize: Quantize
    int8_max_tokens: int = 1 << 30
    backend: Backend = Backend.AUTO
    native: bool = False  # a lone stream's decode steps in the native kernel


SETTINGS = [
    Setting("float32", DType.FLOAT32, Quantize.NONE),
    Setting("bfloat16", DType.BFLOAT16, Quantize.NONE),
    # The model's own forward in bfloat16: what rounding alone costs, whoever runs the model.
    Setting("bfloat16, HF forward (reference)", DType.BFLOAT16, Quantize.NONE, backend=Backend.HF),
    Setting("bfloat16 + int8 (steps <= 8 tokens)", DType.BFLOAT16, Quantize.INT8, 8),
    Setting("w8a8 (int8 <= 8 tokens, int8 activations above)", DType.BFLOAT16, Quantize.W8A8, 8),
    # The default: as w8a8, and a lone stream's decode steps in the native kernel (int8 inputs
    # in blocks of 32); its greedy answers are generated one row at a time, so it runs there.
    Setting("w8a8 + native decode (default)", DType.BFLOAT16, Quantize.W8A8, 8, native=True),
    Setting("int8 everywhere", DType.BFLOAT16, Quantize.INT8),
    Setting("int8 activations everywhere", DType.BFLOAT16, Quantize.W8A8, 0),
]


def run_all(engine: Engine, requests: list[GenerationRequest]) -> dict[str, list[int]]:
    for request in requests:
        engine.add_request(request)
    tokens: dict[str, list[int]] = {r.request_id: [] for r in requests}
    while engine.has_work():
        for out in engine.step().outputs:
            tokens[out.request_id].extend(out.token_ids)
    return tokens


def sst2(base: FrozenModel, engine: Engine, limit: int | None) -> tuple[float, int]:
    registry = Registry(ROOT / "prompts", base.spec)
    registry.load_all()
    entry = registry.get("sst2-sentiment")
    labels = entry.meta.labels
    style = entry.meta.style
    rows = [line.split("\t", 1) for line in SST2_DEV.read_text().splitlines()[1:]][:limit]
    params = SamplingParams(max_tokens=1, temperature=0.0)
    requests = [
        GenerationRequest(
            f"s{i}",
            render_completion(base.tokenizer, style, text.strip()).ids,
            params,
            entry.soft_prompt,
        )
        for i, (_, text) in enumerate(rows)
    ]
    answers = run_all(engine, requests)
    correct = sum(
        base.tokenizer.decode(answers[f"s{i}"]).strip() == labels[int(label)]
        for i, (label, _) in enumerate(rows)
    )
    return correct / len(rows), len(rows)


def greedy(base: FrozenModel, config: EngineConfig, tokens: int) -> dict[str, list[int]]:
    """Four rows at a time: decode steps stay small, so the int8 kernels of the hybrid run (one
    at a time with the native decode: a lone stream is what it runs)."""
    rows = 1 if config.native_dir is not None else 4
    engine = Engine(base, replace(config, max_batch_size=rows))
    params = SamplingParams(max_tokens=tokens, temperature=0.0, ignore_eos=True)
    requests = [
        GenerationRequest(f"q{i}", chat_ids(base.tokenizer, [ChatMessage("user", q)]), params)
        for i, q in enumerate(QUESTIONS)
    ]
    return run_all(engine, requests)


def teacher_forced(
    base: FrozenModel, engine: Engine, answers: dict[str, list[int]], one_step: bool
) -> list[torch.Tensor]:
    """Log-probabilities [T, V] at every answer position of each question followed by its fp32
    answer: the whole sequence in one step (large-step kernels), or the question in one step and
    then one token per step (small-step kernels)."""
    runner = engine.runner
    assert isinstance(runner, LeanRunner)
    out = []
    for i, question in enumerate(QUESTIONS):
        prompt = chat_ids(base.tokenizer, [ChatMessage("user", question)])
        answer = tuple(answers[f"q{i}"])
        runner.reset()
        slot = runner.admit(None).slot
        with torch.inference_mode():
            if one_step:
                seq = tuple(prompt) + answer[:-1]
                got = forward(runner.model, runner.cache, [Segment(slot, seq, 0, False, True)])
                logits = got[len(prompt) - 1 :]
            else:
                rows = [forward(runner.model, runner.cache, [Segment(slot, prompt, 0, True)])]
                for j, token in enumerate(answer[:-1]):
                    step = Segment(slot, (token,), len(prompt) + j, True)
                    rows.append(forward(runner.model, runner.cache, [step]))
                logits = torch.cat(rows)
        out.append(torch.log_softmax(logits.float(), dim=-1))
    return out


def next_token(reference: list[torch.Tensor], got: list[torch.Tensor]) -> tuple[float, float]:
    """Top-1 agreement and mean KL(reference || got) per answer position."""
    same = sum(
        int((g.argmax(-1) == r.argmax(-1)).sum()) for r, g in zip(reference, got, strict=True)
    )
    kl = sum(float((r.exp() * (r - g)).sum()) for r, g in zip(reference, got, strict=True))
    positions = sum(len(r) for r in reference)
    return same / positions, kl / positions


def agreement(reference: dict[str, list[int]], got: dict[str, list[int]]) -> tuple[float, int]:
    """Share of tokens equal before each answer's first difference; answers equal throughout."""
    same, exact = 0, 0
    for key, ref in reference.items():
        n = next((i for i, (a, b) in enumerate(zip(ref, got[key], strict=True)) if a != b), None)
        same += len(ref) if n is None else n
        exact += n is None
    return same / sum(len(r) for r in reference.values()), exact


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--limit", type=int, default=None, help="SST-2 dev reviews (all: 872)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument(
        "--only", type=int, nargs="+", help="these settings by index (0: fp32, the reference)"
    )
    args = parser.parse_args()
    limit = 64 if args.quick and args.limit is None else args.limit
    cache = Settings().cache_dir
    rows, reference, forced = [], None, None
    chosen = [SETTINGS[i] for i in args.only] if args.only else SETTINGS
    if chosen[0] is not SETTINGS[0]:
        parser.error("--only: the first setting must be 0 (fp32, the reference)")
    for setting in chosen[:2] if args.quick else chosen:
        base = load_base_model(dtype=setting.dtype, cache_dir=cache)
        config = EngineConfig(
            backend=setting.backend,
            quantize=setting.quantize,
            int8_max_tokens=setting.int8_max_tokens,
            native_dir=cache / "native" if setting.native else None,
        )
        engine = Engine(base, config)
        start = time.perf_counter()
        accuracy, n = sst2(base, engine, limit)
        answers = greedy(base, config, args.tokens)
        reference = reference or answers
        share, exact = agreement(reference, answers)
        row = {
            "setting": setting.name,
            "sst2_accuracy": round(accuracy, 4),
            "sst2_reviews": n,
            "greedy_agreement": round(share, 4),
            "greedy_exact": f"{exact}/{len(QUESTIONS)}",
        }
        if isinstance(engine.runner, LeanRunner):
            large = teacher_forced(base, engine, reference, one_step=True)
            small = teacher_forced(base, engine, reference, one_step=False)
            forced = forced or (large, small)
            for name, got, ref in (("large", large, forced[0]), ("small", small, forced[1])):
                top1, kl = next_token(ref, got)
                row[f"top1_{name}_steps"], row[f"kl_{name}_steps"] = round(top1, 4), round(kl, 5)
        rows.append(row | {"seconds": round(time.perf_counter() - start, 1)})
        print(rows[-1], flush=True)
    print(
        "\n| setting | SST-2 dev accuracy | greedy agreement with fp32 | answers equal "
        "| top-1 / KL, large steps | top-1 / KL, small steps |"
    )
    print("|---|---|---|---|---|---|")
    for r in rows:
        forced_cols = " | ".join(
            f"{r[f'top1_{k}_steps']:.3f} / {r[f'kl_{k}_steps']:.4f}"
            if f"top1_{k}_steps" in r
            else ""
            for k in ("large", "small")
        )
        print(
            f"| {r['setting']} | {r['sst2_accuracy']:.3f} ({r['sst2_reviews']}) | "
            f"{r['greedy_agreement']:.3f} | {r['greedy_exact']} | {forced_cols} |"
        )
    name = "precision-partial" if args.only else "precision"  # never a full run's file
    write(name, {"rows": rows, "tokens": args.tokens, "questions": QUESTIONS})
    plot_bars(
        name,
        "Quality per weight-precision setting",
        [r["setting"].split(" (")[0].replace(", HF forward", " HF") for r in rows],
        {
            "SST-2 dev accuracy": [r["sst2_accuracy"] for r in rows],
            "greedy agreement with fp32": [r["greedy_agreement"] for r in rows],
            "next-token top-1 with fp32, large steps": [
                r.get("top1_large_steps", 0.0) for r in rows
            ],
        },
        "share",
    )


if __name__ == "__main__":
    main()
