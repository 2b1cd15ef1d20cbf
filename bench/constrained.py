"""Constrained decoding's cost: decode ms per step of a batch whose rows all answer inside a JSON
string (llguidance computes a mask per row per token) vs the same batch unconstrained, side by
side; and the grammar libraries' own cost per token on this model's tokenizer (compile time,
mask time along a real JSON answer): llguidance, and outlines-core when it is importable
(xgrammar was not measured: on Linux it pulls triton and a CUDA toolchain into a CPU install).

    .venv/bin/python -m bench.constrained [--device cuda] [--quick]
"""

from __future__ import annotations

import importlib.util
import json
import time
from dataclasses import replace
from typing import Any

from app.api.grammar import Grammar, Grammars
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

PROMPT_LEN = 16
# Free text inside a JSON string that is never closed: every row decodes every step.
OPEN_STRING = 'start: "{\\"story\\": \\"" /[^"\\\\\\x00-\\x1f]*/'
SCHEMA = {
    "type": "object",
    "properties": {
        "title": {"type": "string"},
        "year": {"type": "integer"},
        "rating": {"type": "number"},
        "genres": {"type": "array", "items": {"type": "string"}},
        "sequel": {"type": "boolean"},
    },
    "required": ["title", "year", "rating", "genres", "sequel"],
    "additionalProperties": False,
}
ANSWER = {
    "title": "The Grand Budapest Hotel",
    "year": 2014,
    "rating": 8.1,
    "genres": ["comedy", "drama"],
    "sequel": False,
}


def decode_ms(
    base: FrozenModel, config: EngineConfig, batch: int, steps: int, grammar: Grammar | None
) -> float:
    engine = Engine(base, replace(config, max_batch_size=batch, prefill_chunk=batch * PROMPT_LEN))
    params = SamplingParams(
        max_tokens=steps + 2, temperature=0.0, ignore_eos=True, constraint=grammar
    )
    for i in range(batch):
        ids = tuple(base.tokenizer(f"Tell me a story, number {i}.")["input_ids"])[:PROMPT_LEN]
        engine.add_request(GenerationRequest(f"r{i}", ids, params))
    engine.step()  # prefill and the first token

    def run() -> None:
        for _ in range(steps):
            engine.step()

    elapsed = timed(run, str(base.device))
    assert engine.num_running == batch, "every row must decode every step (same work)"
    return elapsed / steps * 1e3


def llguidance_cost(base: FrozenModel, grammars: Grammars, ids: list[int]) -> dict[str, float]:
    start = time.perf_counter()
    grammar = grammars.json_schema(SCHEMA, "bench")
    matcher = grammar.matcher()
    compile_ms = (time.perf_counter() - start) * 1e3
    start = time.perf_counter()
    for token in ids:
        matcher.mask()
        matcher.consume(token)
    return {
        "compile_ms": compile_ms,
        "mask_us_per_token": (time.perf_counter() - start) / len(ids) * 1e6,
    }


def _byte_level_alphabet() -> dict[int, str]:
    """GPT-2's byte -> printable character map (byte-level BPE token strings use it)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = list(printable)
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {b: chr(c) for b, c in zip(printable, chars, strict=True)}


def outlines_cost(base: FrozenModel, ids: list[int]) -> dict[str, float] | None:
    """outlines-core on the same tokenizer and answer (its vocabulary in raw bytes)."""
    if importlib.util.find_spec("outlines_core") is None:
        return None
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema

    decode = {v: k for k, v in _byte_level_alphabet().items()}
    eos = base.spec.eos_token_ids[0]
    tokens: dict[bytes, list[int]] = {}
    for token, index in base.tokenizer.get_vocab().items():
        if index != eos and index not in base.tokenizer.all_special_ids:
            tokens.setdefault(bytes(decode.get(c, ord(c) & 0xFF) for c in token), []).append(index)
    start = time.perf_counter()
    regex = build_regex_from_schema(json.dumps(SCHEMA), whitespace_pattern="")
    guide = Guide(Index(regex, Vocabulary(eos, tokens)))
    compile_ms = (time.perf_counter() - start) * 1e3
    start = time.perf_counter()
    for token in ids:
        guide.get_tokens()
        guide.advance(token)
    return {
        "compile_ms": compile_ms,
        "mask_us_per_token": (time.perf_counter() - start) / len(ids) * 1e6,
    }


def main() -> None:
    parser = base_args(__doc__)
    args = parser.parse_args()
    base = load(args)
    config = engine_config(args)
    batch, steps, repeats = (4, 8, 3) if args.quick else (8, 32, 7)
    grammars = Grammars(base.tokenizer, base.spec.vocab_size, base.spec.eos_token_ids)
    open_string = grammars.lark(OPEN_STRING, "bench")
    answer = list(
        base.tokenizer(json.dumps(ANSWER, separators=(",", ":")), add_special_tokens=False)[
            "input_ids"
        ]
    )
    libraries: dict[str, Any] = {"llguidance": llguidance_cost(base, grammars, answer)}
    outlines = outlines_cost(base, answer)
    if outlines is not None:
        libraries["outlines-core"] = outlines
    times = interleaved(
        {
            "unconstrained": lambda: decode_ms(base, config, batch, steps, None),
            "constrained": lambda: decode_ms(base, config, batch, steps, open_string),
        },
        repeats,
    )
    free, bound = median(times["unconstrained"]), median(times["constrained"])
    per_token_ms = (bound - free) / batch
    print(
        f"decode step, batch {batch}: unconstrained {free:.1f} ms, constrained {bound:.1f} ms ({bound / free:.2f}x)"
    )
    print(f"constraint cost per token: {per_token_ms:.3f} ms")
    for name, cost in libraries.items():
        print(
            f"{name}: compile {cost['compile_ms']:.0f} ms, mask {cost['mask_us_per_token']:.0f} us/token"
        )
    path = write(
        "constrained",
        {
            "machine": machine(args),
            "workload": {
                "batch": batch,
                "steps": steps,
                "repeats": repeats,
                "answer_tokens": len(answer),
            },
            "step_ms": {"unconstrained": free, "constrained": bound},
            "ratio": bound / free,
            "constraint_ms_per_token": per_token_ms,
            "libraries": libraries,
            "times_ms": times,
        },
    )
    plot_bars(
        "constrained",
        f"Decode step, batch {batch}",
        ["unconstrained", "constrained (JSON string)"],
        {"ms per step": [free, bound]},
        "ms",
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
