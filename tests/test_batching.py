"""Continuous batching of mixed tasks: a row's output never depends on its neighbours."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.engine import Engine, EngineConfig, FinishReason, GenerationRequest, SamplingParams
from app.engine.engine import Backend
from app.model import FrozenModel
from app.registry import Registry
from tests.conftest import MakeAdapter, run_to_completion, tokens_of

PROMPTS = [
    "What is the capital of France?",
    "Hello",
    "Review: a great and moving film. Sentiment:",
    "The quick brown fox",
    "0123",
    "Stop here.",
]


@pytest.fixture
def registry(tiny: FrozenModel, make_adapter: MakeAdapter, tmp_path: Path) -> Registry:
    # Two tasks of every kind, with different prefix lengths.
    specs = [
        ("pt-a", "prompt", 3),
        ("pt-b", "prompt", 11),
        ("pv-a", "p-tuning", 5),
        ("pv-b", "p-tuning", 9),
        ("px-a", "prefix", 4),
        ("px-b", "prefix", 13),
    ]
    for seed, (name, kind, length) in enumerate(specs):
        make_adapter(tmp_path, name, kind, num_virtual_tokens=length, seed=seed + 10)
    reg = Registry(tmp_path, tiny.spec)
    reg.load_all()
    assert len(reg) == 6
    return reg


def _requests(tiny: FrozenModel, registry: Registry) -> list[GenerationRequest]:
    tasks: list[str | None] = [None, *(e.name for e in registry.entries()), None, "px-b", "pt-a"]
    requests = []
    for i, task in enumerate(tasks):
        ids = tuple(tiny.tokenizer(PROMPTS[i % len(PROMPTS)])["input_ids"])
        params = SamplingParams(max_tokens=6 + (i % 5) * 3, temperature=0.0, ignore_eos=True)
        soft = registry.get(task).soft_prompt if task else None
        requests.append(GenerationRequest(f"r{i}-{task}", ids, params, soft))
    return requests


@pytest.mark.parametrize(
    "config",
    [
        EngineConfig(max_batch_size=32, backend=Backend.LEAN),
        EngineConfig(max_batch_size=32, backend=Backend.LEAN, prefill_chunk=5),
        EngineConfig(max_batch_size=32, backend=Backend.HF),
    ],
    ids=["lean", "lean-chunked", "hf"],
)
def test_mixed_batch_equals_alone(
    tiny: FrozenModel, registry: Registry, config: EngineConfig
) -> None:
    requests = _requests(tiny, registry)
    assert len(requests) >= 8
    alone = {
        r.request_id: tokens_of(run_to_completion(Engine(tiny), r)[r.request_id]) for r in requests
    }

    # All at once: one mixed batch of every kind, the bare model, different P and T.
    together = run_to_completion(Engine(tiny, config), *requests)
    assert {k: tokens_of(v) for k, v in together.items()} == alone

    # Staggered: some rows join mid-decode, others leave early (different max_tokens).
    engine = Engine(tiny, config)
    got: dict[str, list[int]] = {}
    pending = list(requests)
    joined_mid_decode = 0
    while pending or engine.has_work():
        if pending:
            joined_mid_decode += engine.num_running > 0
            engine.add_request(pending.pop(0))
        for out in engine.step().outputs:
            got.setdefault(out.request_id, []).extend(out.token_ids)
    assert joined_mid_decode >= 5
    assert got == alone


def test_small_batch_cap_queues_and_still_matches(tiny: FrozenModel, registry: Registry) -> None:
    requests = _requests(tiny, registry)
    alone = {
        r.request_id: tokens_of(run_to_completion(Engine(tiny), r)[r.request_id]) for r in requests
    }
    engine = Engine(tiny, EngineConfig(max_batch_size=3))
    for r in requests:
        engine.add_request(r)
    got: dict[str, list[int]] = {}
    while engine.has_work():
        assert engine.num_running <= 3
        for out in engine.step().outputs:
            got.setdefault(out.request_id, []).extend(out.token_ids)
    assert got == alone


def test_joining_request_does_not_wait(tiny: FrozenModel) -> None:
    """Step counting: a request added while a long one decodes is prefilled at the very next step
    and finishes long before the long one."""
    engine = Engine(tiny)
    ids = tuple(tiny.tokenizer("Hello")["input_ids"])
    long = GenerationRequest(
        "long", ids, SamplingParams(max_tokens=40, temperature=0.0, ignore_eos=True)
    )
    short = GenerationRequest(
        "short", ids, SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)
    )
    engine.add_request(long)
    for _ in range(5):
        engine.step()
    joined_at = engine.steps + 1
    engine.add_request(short)
    finished: dict[str, int] = {}
    while engine.has_work():
        for out in engine.step().outputs:
            if out.finish_reason is not None:
                finished[out.request_id] = engine.steps
    record = next(r for r in engine.history if r.step == joined_at)
    assert record.prefilled == ("short",)
    assert record.decoded == ("long",)  # the long row kept decoding in the same step
    assert finished["short"] == joined_at + 2  # 3 tokens: prefill step + 2 decode steps
    assert finished["long"] == 40
    assert all("long" in r.decoded for r in engine.history if 1 < r.step <= 40)


def test_finished_rows_leave_at_once(tiny: FrozenModel) -> None:
    engine = Engine(tiny)
    ids = tuple(tiny.tokenizer("Hello")["input_ids"])
    for n in (2, 5, 9):
        engine.add_request(
            GenerationRequest(
                f"n{n}", ids, SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)
            )
        )
    running = []
    while engine.has_work():
        engine.step()
        running.append(engine.num_running)
    assert running == [3, 2, 2, 2, 1, 1, 1, 1, 0]


def test_abort_frees_row(tiny: FrozenModel) -> None:
    engine = Engine(tiny)
    ids = tuple(tiny.tokenizer("Hello")["input_ids"])
    engine.add_request(
        GenerationRequest("a", ids, SamplingParams(max_tokens=50, temperature=0.0, ignore_eos=True))
    )
    engine.add_request(
        GenerationRequest("b", ids, SamplingParams(max_tokens=50, temperature=0.0, ignore_eos=True))
    )
    engine.step()
    engine.abort("a")
    outs = engine.step().outputs
    assert [(o.request_id, o.finish_reason) for o in outs if o.finish_reason] == [
        ("a", FinishReason.ABORT)
    ]
    assert engine.num_running == 1
    assert engine.history[-1].decoded == ("b",)
    engine.abort("b")
    engine.step()
    assert engine.num_running == 0 and not engine.has_work()
