"""Softserve vs a naive PEFT server loop on the same workload: 32 requests over 8 prompt-tuning
adapters. The naive loop serves one request at a time: `set_adapter` for the request's task,
then HF `generate`. Softserve takes all 32 concurrently into the engine's shared batches.

    .venv/bin/python -m bench.naive_loop [--device cuda] [--quick]
"""

from __future__ import annotations

import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
from peft import PeftModel, PromptTuningConfig, get_peft_model

from app.engine import Engine, EngineConfig, GenerationRequest, SamplingParams
from app.model import FrozenModel, SoftPrompt
from app.registry.store import Registry
from bench.common import (
    base_args,
    engine_config,
    load,
    machine,
    plot_bars,
    random_ids,
    soft_prompts,
    sync,
    write,
)


def save_adapters(base: FrozenModel, tables: list[SoftPrompt], root: Path) -> list[str]:
    """Write each table as a PEFT folder (what a PEFT server would load from disk)."""
    names = []
    for i, table in enumerate(tables):
        config = PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=table.table.shape[0])
        model = get_peft_model(base.model, config)
        with torch.no_grad():
            model.prompt_encoder["default"].embedding.weight.copy_(table.table)
        model.save_pretrained(str(root / f"task-{i}"), save_embedding_layers=False)
        names.append(f"task-{i}")
    return names


def naive(
    base: FrozenModel, root: Path, names: list[str], ids: list[tuple[int, ...]], out: int
) -> float:
    model = PeftModel.from_pretrained(base.model, str(root / names[0]), adapter_name=names[0])
    for name in names[1:]:
        model.load_adapter(str(root / name), adapter_name=name)
    sync(str(base.device))
    start = time.perf_counter()
    for i, prompt in enumerate(ids):
        model.set_adapter(names[i % len(names)])
        x = torch.tensor([prompt], device=base.device)
        model.generate(
            input_ids=x,
            attention_mask=torch.ones_like(x),
            max_new_tokens=out,
            min_new_tokens=out,
            do_sample=False,
            pad_token_id=0,
        )
    sync(str(base.device))
    return time.perf_counter() - start


def softserve(
    base: FrozenModel,
    config: EngineConfig,
    root: Path,
    ids: list[tuple[int, ...]],
    out: int,
    tasks: int,
) -> float:
    registry = Registry(root, base.spec)
    registry.load_all()
    prompts = [registry.get(f"task-{i}").soft_prompt for i in range(tasks)]
    engine = Engine(base, replace(config, max_batch_size=len(ids)))
    params = SamplingParams(max_tokens=out, temperature=0.0, ignore_eos=True)
    sync(str(base.device))
    start = time.perf_counter()  # cold KV prefixes: computing them is part of serving
    for i, prompt in enumerate(ids):
        engine.add_request(GenerationRequest(f"r{i}", prompt, params, prompts[i % tasks]))
    while engine.has_work():
        engine.step()
    sync(str(base.device))
    return time.perf_counter() - start


def main() -> None:
    parser = base_args(__doc__)
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--virtual-tokens", type=int, default=20)
    args = parser.parse_args()
    if args.quick:
        args.requests, args.output_len = 8, 4
    base = load(args)
    tables = soft_prompts(base, args.tasks, args.virtual_tokens)
    config = engine_config(args)
    ids = random_ids(args.requests, args.prompt_len, seed=3)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        names = save_adapters(base, tables, root)
        softserve(base, config, root, ids[:2], 2, args.tasks)  # warm-up of both paths
        naive(base, root, names, ids[:2], 2)
        t_naive = naive(base, root, names, ids, args.output_len)
        t_ours = softserve(base, config, root, ids, args.output_len, args.tasks)
    tokens = args.requests * args.output_len
    rows = {"naive PEFT loop": tokens / t_naive, "Softserve engine": tokens / t_ours}
    ratio = t_naive / t_ours
    print(f"{args.requests} requests over {args.tasks} tasks, {args.output_len} tokens each")
    print(f"{'server':<20} {'output tok/s':>12}")
    for name, value in rows.items():
        print(f"{name:<20} {value:>12.1f}")
    print(f"Softserve / naive: {ratio:.2f}x (target >= 8x)")
    write(
        "naive_loop",
        {
            "machine": machine(args),
            "workload": vars(args),
            "seconds": {"naive": t_naive, "softserve": t_ours},
            "tok_s": rows,
            "ratio": ratio,
            "target": 8.0,
        },
    )
    plot_bars(
        "naive_loop",
        "Same workload: naive PEFT loop vs Softserve",
        ["output tokens / s"],
        {k: [v] for k, v in rows.items()},
        "tokens / s",
    )


if __name__ == "__main__":
    main()
