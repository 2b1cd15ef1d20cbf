"""Engine overhead: decode tokens/s through the Softserve engine vs a bare loop of the same HF
model's forward with its own DynamicCache and no Softserve code, at batch 1, 8 and 32.

    .venv/bin/python -m bench.engine_overhead [--device cuda] [--quick]
"""

from __future__ import annotations

from dataclasses import replace

import torch
from transformers import DynamicCache

from app.engine import Engine, EngineConfig, GenerationRequest, SamplingParams
from app.model import FrozenModel
from bench.common import (
    base_args,
    engine_config,
    interleaved,
    load,
    machine,
    median,
    plot_bars,
    timed,
    write,
)

PROMPT_LEN = 32


def bare_loop(base: FrozenModel, batch: int, new_tokens: int) -> float:
    """Prefill then `new_tokens` greedy steps with HF's own cache; returns decode seconds."""
    ids = torch.randint(100, 1000, (batch, PROMPT_LEN), device=base.device)
    with torch.inference_mode():
        cache = DynamicCache()
        out = base.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
        token = out.logits[:, -1].argmax(-1, keepdim=True)

        def decode() -> None:
            nonlocal token
            for _ in range(new_tokens):
                out = base.model(input_ids=token, past_key_values=cache, use_cache=True)
                token = out.logits[:, -1].argmax(-1, keepdim=True)

        return timed(decode, str(base.device))


def engine_loop(base: FrozenModel, config: EngineConfig, batch: int, new_tokens: int) -> float:
    # One prefill step for the whole batch, then decode steps only (what this measures).
    engine = Engine(base, replace(config, max_batch_size=batch, prefill_chunk=batch * PROMPT_LEN))
    params = SamplingParams(max_tokens=new_tokens + 1, temperature=0.0, ignore_eos=True)
    for i in range(batch):
        ids = tuple(torch.randint(100, 1000, (PROMPT_LEN,)).tolist())
        engine.add_request(GenerationRequest(f"r{i}", ids, params))
    engine.step()  # prefill (and first token)

    def decode() -> None:
        for _ in range(new_tokens):
            engine.step()

    seconds = timed(decode, str(base.device))
    assert not engine.has_work()
    return seconds


def main() -> None:
    parser = base_args(__doc__)
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    base = load(args)
    config = engine_config(args)
    new_tokens = 16 if args.quick else args.tokens
    repeats = 1 if args.quick else args.repeats
    rows = []
    for batch in (1, 8, 32):
        bare_loop(base, batch, 4)  # warm-up
        engine_loop(base, config, batch, 4)
        times = interleaved(
            {
                "bare": lambda: bare_loop(base, batch, new_tokens),  # noqa: B023 (used at once)
                "engine": lambda: engine_loop(base, config, batch, new_tokens),  # noqa: B023
            },
            repeats,
        )
        bare, ours = median(times["bare"]), median(times["engine"])
        rows.append(
            {
                "batch": batch,
                "bare_tok_s": batch * new_tokens / bare,
                "engine_tok_s": batch * new_tokens / ours,
                "ratio": bare / ours,
            }
        )
    print(f"{'batch':>5} {'bare HF tok/s':>14} {'engine tok/s':>13} {'ratio':>6}")
    for r in rows:
        print(
            f"{r['batch']:>5} {r['bare_tok_s']:>14.1f} {r['engine_tok_s']:>13.1f} {r['ratio']:>6.2f}x"
        )
    write(
        "engine_overhead",
        {
            "machine": machine(args),
            "new_tokens": new_tokens,
            "prompt_len": PROMPT_LEN,
            "rows": rows,
        },
    )
    plot_bars(
        "engine_overhead",
        "Decode throughput: Softserve engine vs bare HF loop",
        [str(r["batch"]) for r in rows],
        {"bare HF": [r["bare_tok_s"] for r in rows], "engine": [r["engine_tok_s"] for r in rows]},
        "tokens / s",
    )


if __name__ == "__main__":
    main()
