"""Mixed vs single task (engine level): 64 requests spread over 8 soft prompts vs the same 64
requests all on one soft prompt; same prompt and output lengths, EOS ignored, KV prefixes warm.

    .venv/bin/python -m bench.mixed_tasks [--device cuda] [--quick]
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import replace

from app.engine import Engine, EngineConfig, GenerationRequest, SamplingParams
from app.model import FrozenModel, SoftPrompt
from bench.common import (
    base_args,
    engine_config,
    interleaved,
    load,
    machine,
    median,
    plot_bars,
    random_ids,
    soft_prompts,
    timed,
    write,
)


def workload(
    base: FrozenModel,
    config: EngineConfig,
    prompts: list[SoftPrompt],
    tasks: int,
    n: int,
    prompt_len: int,
    out: int,
) -> Callable[[], float]:
    """A run of `n` requests, request i on soft prompt i % tasks; returns seconds to finish all.
    Every run sends new prompts (a KV slot still holding one would be reused, not prefilled)."""
    runs = itertools.count(1)  # a new seed per run
    params = SamplingParams(max_tokens=out, temperature=0.0, ignore_eos=True)
    engine = Engine(base, replace(config, max_batch_size=32))

    def run() -> float:
        ids = random_ids(n, prompt_len, seed=next(runs))
        for i in range(n):
            engine.add_request(GenerationRequest(f"r{i}", ids[i], params, prompts[i % tasks]))

        def drain() -> None:
            while engine.has_work():
                engine.step()

        return timed(drain, str(base.device))

    run()  # warm-up: computes and caches the KV prefixes
    return run


def main() -> None:
    parser = base_args(__doc__)
    parser.add_argument("--requests", type=int, default=64)
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=32)
    parser.add_argument("--output-len", type=int, default=32)
    parser.add_argument("--virtual-tokens", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.quick:
        args.requests, args.output_len, args.repeats = 16, 8, 1
    base = load(args)
    prompts = soft_prompts(base, args.tasks, args.virtual_tokens)
    config = engine_config(args)
    shape = (args.requests, args.prompt_len, args.output_len)
    times = interleaved(
        {
            "single": workload(base, config, prompts, 1, *shape),
            "mixed": workload(base, config, prompts, args.tasks, *shape),
        },
        args.repeats,
    )
    tokens = args.requests * args.output_len
    single, mixed = tokens / median(times["single"]), tokens / median(times["mixed"])
    ratio = mixed / single
    print(f"{'workload':<28} {'output tok/s':>12}")
    print(f"{'single task (1 prompt)':<28} {single:>12.1f}")
    print(f"{f'mixed ({args.tasks} prompts)':<28} {mixed:>12.1f}")
    print(f"mixed / single: {ratio:.3f}x (target >= 0.95x)")
    write(
        "mixed_tasks",
        {
            "machine": machine(args),
            "workload": vars(args) | {"model": args.model},
            "seconds": times,
            "single_tok_s": single,
            "mixed_tok_s": mixed,
            "ratio": ratio,
            "target": 0.95,
        },
    )
    plot_bars(
        "mixed_tasks",
        f"{args.requests} requests: one task vs {args.tasks} tasks in shared batches",
        ["output tokens / s"],
        {"single task": [single], f"{args.tasks} tasks mixed": [mixed]},
        "tokens / s",
    )


if __name__ == "__main__":
    main()
