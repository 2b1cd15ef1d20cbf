"""Shared helpers for the benchmarks: the model, the machine description, result files."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from app.api.state import engine_config as serve_engine_config
from app.engine import Backend, EngineConfig
from app.model import DType, FrozenModel, PromptKind, Quantize, SoftPrompt, load_base_model
from app.settings import Settings

RESULTS = Path(__file__).resolve().parent / "results"


def results_dir() -> Path:
    """bench/results, or $SOFTSERVE_BENCH_RESULTS (the smoke test keeps the committed results)."""
    return Path(os.environ.get("SOFTSERVE_BENCH_RESULTS") or RESULTS)


def base_args(description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--model", default="default")
    parser.add_argument("--device", default="cpu")
    # Defaults: what `softserve serve` runs, so the figures are what users get.
    defaults = Settings()
    parser.add_argument("--dtype", default=defaults.dtype.value, choices=[d.value for d in DType])
    parser.add_argument(
        "--quantize", default=defaults.quantize.value, choices=[q.value for q in Quantize]
    )
    parser.add_argument("--backend", default=defaults.backend, choices=[b.value for b in Backend])
    parser.add_argument(
        "--native-decode",
        default="on" if defaults.native_decode else "off",
        choices=["on", "off"],
        help="a lone stream's decode step in the C kernel (README: Native decode)",
    )
    parser.add_argument("--quick", action="store_true", help="smaller workload (smoke run)")
    return parser


def load(args: argparse.Namespace) -> FrozenModel:
    return load_base_model(
        args.model, device=args.device, dtype=DType(args.dtype), cache_dir=Settings().cache_dir
    )


def engine_config(args: argparse.Namespace, **overrides: Any) -> EngineConfig:
    """The engine as `softserve serve` builds it from the same settings (int8 quantized before
    timing starts, not in the background)."""
    settings = Settings(
        dtype=args.dtype,
        quantize=args.quantize,
        backend=args.backend,
        native_decode=args.native_decode == "on",
    )
    return replace(serve_engine_config(settings, quantize_in_background=False), **overrides)


def machine(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "device": args.device,
        "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        "dtype": args.dtype,
        "quantize": args.quantize,
        "backend": args.backend,
        "native_decode": args.native_decode,
        "model": args.model,
    }


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], Any], device: str) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def write(name: str, payload: dict[str, Any]) -> Path:
    results_dir().mkdir(parents=True, exist_ok=True)
    path = results_dir() / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2))
    return path


def plot_bars(
    name: str, title: str, labels: list[str], series: dict[str, list[float]], ylabel: str
) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / max(len(series), 1)
    for i, (label, values) in enumerate(series.items()):
        ax.bar([x + i * width for x in range(len(labels))], values, width, label=label)
    ax.set_xticks([x + width * (len(series) - 1) / 2 for x in range(len(labels))], labels)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    path = results_dir() / f"{name}.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def soft_prompts(base: FrozenModel, count: int, tokens: int, seed: int = 0) -> list[SoftPrompt]:
    """`count` distinct prompt-tuning tables shaped like real ones (rows of the word embeddings
    plus noise), so the engine does exactly the work a trained prompt costs."""
    words = base.model.get_input_embeddings().weight.detach()
    gen = torch.Generator().manual_seed(seed)
    prompts = []
    for i in range(count):
        rows = torch.randint(0, words.shape[0], (tokens,), generator=gen)
        noise = torch.randn(tokens, words.shape[1], generator=gen) * float(words.std()) * 0.1
        table = (words[rows.to(words.device)].cpu() + noise).to(words.dtype).to(words.device)
        prompts.append(
            SoftPrompt(key=f"bench-{seed}-{i}", kind=PromptKind.PROMPT_TUNING, table=table)
        )
    return prompts


def random_ids(count: int, length: int, seed: int) -> list[tuple[int, ...]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        tuple(torch.randint(100, 20000, (length,), generator=gen).tolist()) for _ in range(count)
    ]


def interleaved(runs: dict[str, Callable[[], float]], repeats: int) -> dict[str, list[float]]:
    """Alternate the variants (A B A B ...) so machine noise hits all of them alike."""
    times: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            times[name].append(run())
    return times


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
