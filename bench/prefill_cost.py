"""Cost of the soft prompt: prefill time of a batch whose requests carry 100-token soft prompts
vs the same batch with no soft prompt, with the KV-prefix cache warm, and with it off (every
request's prefix recomputed).

    .venv/bin/python -m bench.prefill_cost [--device cuda] [--quick]
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

NO_CACHE_MIB = 1e-9  # below one prefix: every prefix is computed and dropped


def prefill(
    base: FrozenModel,
    config: EngineConfig,
    prompts: list[SoftPrompt | None],
    prompt_len: int,
    cache_mib: float,
) -> Callable[[], float]:
    """One engine step that admits and prefills the whole batch (max_tokens=1 ends it there).
    Every run sends new prompts: a KV slot still holding a prompt would be reused, not prefilled."""
    runs = itertools.count(2)  # a new seed per run
    params = SamplingParams(max_tokens=1, temperature=0.0, ignore_eos=True)
    # The whole batch in one step: the prefill budget is lifted to all of its tokens.
    whole = replace(
        config,
        max_batch_size=len(prompts),
        kv_prefix_cache_mib=cache_mib,
        prefill_chunk=len(prompts) * prompt_len,
    )
    engine = Engine(base, whole)

    def run() -> float:
        ids = random_ids(len(prompts), prompt_len, seed=next(runs))
        for i, prompt in enumerate(prompts):
            engine.add_request(GenerationRequest(f"r{i}", ids[i], params, prompt))
        seconds = timed(engine.step, str(base.device))
        assert not engine.has_work()
        return seconds

    run()  # warm-up (and, with the cache on, the prefixes are computed here)
    return run


def main() -> None:
    parser = base_args(__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--virtual-tokens", type=int, default=100)
    parser.add_argument("--tasks", type=int, default=8, help="distinct soft prompts in the batch")
    parser.add_argument("--repeats", type=int, default=7)
    args = parser.parse_args()
    if args.quick:
        args.repeats = 2
    base = load(args)
    tables = soft_prompts(base, args.tasks, args.virtual_tokens)
    config = engine_config(args)
    with_prompts: list[SoftPrompt | None] = [tables[i % args.tasks] for i in range(args.batch)]
    none: list[SoftPrompt | None] = [None] * args.batch
    times = interleaved(
        {
            "none": prefill(base, config, none, args.prompt_len, 256.0),
            "cached": prefill(base, config, with_prompts, args.prompt_len, 256.0),
            "uncached": prefill(base, config, with_prompts, args.prompt_len, NO_CACHE_MIB),
        },
        args.repeats,
    )
    ms = {name: 1000 * median(values) for name, values in times.items()}
    print(f"batch {args.batch} x {args.prompt_len} tokens, soft prompts of {args.virtual_tokens}")
    print(f"{'variant':<30} {'prefill ms':>10} {'ratio':>7}")
    for name, label in (
        ("none", "no soft prompt"),
        ("cached", "soft prompt, KV prefix cached"),
        ("uncached", "soft prompt, cache off"),
    ):
        print(f"{label:<30} {ms[name]:>10.1f} {ms[name] / ms['none']:>6.2f}x")
    print("target: cached <= 1.10x")
    write(
        "prefill_cost",
        {
            "machine": machine(args),
            "workload": vars(args),
            "seconds": times,
            "median_ms": ms,
            "cached_ratio": ms["cached"] / ms["none"],
            "uncached_ratio": ms["uncached"] / ms["none"],
            "target": 1.1,
        },
    )
    plot_bars(
        "prefill_cost",
        f"Prefill of {args.batch} x {args.prompt_len} tokens (+{args.virtual_tokens} virtual)",
        ["prefill"],
        {
            "no soft prompt": [ms["none"]],
            "cached prefix": [ms["cached"]],
            "cache off": [ms["uncached"]],
        },
        "ms (median)",
    )


if __name__ == "__main__":
    main()
