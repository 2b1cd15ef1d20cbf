"""A freed KV slot keeps its columns: a new row whose prompt starts like them (after the same soft
prompt) reuses them instead of computing them again, and answers exactly as if it had not."""

from __future__ import annotations

from pathlib import Path

import pytest

from app.engine import Engine, EngineConfig, GenerationRequest, SamplingParams
from app.engine.engine import Backend
from app.engine.slots import _common_start
from app.engine.types import RequestOutput
from app.model import FrozenModel, SoftPrompt
from app.registry import Registry
from tests.conftest import MakeAdapter, run_to_completion, tokens_of

LEAN = EngineConfig(max_batch_size=4, backend=Backend.LEAN)


@pytest.fixture
def soft(tiny: FrozenModel, make_adapter: MakeAdapter, tmp_path: Path) -> dict[str, SoftPrompt]:
    make_adapter(tmp_path, "pt", "prompt", num_virtual_tokens=4, seed=3)
    make_adapter(tmp_path, "px", "prefix", num_virtual_tokens=6, seed=4)
    registry = Registry(tmp_path, tiny.spec)
    registry.load_all()
    return {name: registry.get(name).soft_prompt for name in ("pt", "px")}


def _ids(tiny: FrozenModel, text: str) -> tuple[int, ...]:
    return tuple(tiny.tokenizer(text)["input_ids"])


def _run(
    engine: Engine,
    rid: str,
    ids: tuple[int, ...],
    soft: SoftPrompt | None = None,
    tokens: int = 6,
    prompt_logprobs: int | None = None,
) -> list[RequestOutput]:
    params = SamplingParams(
        max_tokens=tokens,
        temperature=0.0,
        ignore_eos=True,
        logprobs=3,
        prompt_logprobs=prompt_logprobs,
    )
    return run_to_completion(engine, GenerationRequest(rid, ids, params, soft))[rid]


def _logprobs(outputs: list[RequestOutput]) -> list[float]:
    return [lp.logprob for out in outputs for lp in out.logprobs]


@pytest.mark.parametrize("task", [None, "pt", "px"])
def test_same_prompt_again_reuses_all_but_its_last_token(
    tiny: FrozenModel, soft: dict[str, SoftPrompt], task: str | None
) -> None:
    prompt = soft[task] if task else None
    ids = _ids(tiny, "Review: a great and moving film. Sentiment:")
    fresh = _run(Engine(tiny, LEAN), "fresh", ids, prompt)

    engine = Engine(tiny, LEAN)
    first = _run(engine, "first", ids, prompt)
    again = _run(engine, "again", ids, prompt)
    assert first[0].cached_tokens == 0
    # Prompt tokens only: the soft prompt's columns are not prompt tokens.
    assert again[0].cached_tokens == len(ids) - 1
    assert tokens_of(again) == tokens_of(first) == tokens_of(fresh)
    assert _logprobs(again) == pytest.approx(_logprobs(fresh), abs=1e-4)


def test_a_conversation_reuses_the_earlier_answer(tiny: FrozenModel) -> None:
    engine = Engine(tiny, LEAN)
    ids = _ids(tiny, "The quick brown fox")
    answer = tokens_of(_run(engine, "turn1", ids, tokens=5))
    follow = ids + tuple(answer) + _ids(tiny, " and then?")
    second = _run(engine, "turn2", follow)
    # The answer's last token was sampled but never fed back in: its K/V were not written.
    assert second[0].cached_tokens == len(ids) + len(answer) - 1
    assert tokens_of(second) == tokens_of(_run(Engine(tiny, LEAN), "alone", follow))


def test_only_the_common_start_under_the_same_prefix_is_reused(
    tiny: FrozenModel, soft: dict[str, SoftPrompt]
) -> None:
    engine = Engine(tiny, LEAN)
    ids = _ids(tiny, "The quick brown fox jumps")
    _run(engine, "a", ids, soft["pt"])
    # Another soft prompt, or none: the same tokens sit behind other K/V, so nothing is reused.
    assert _run(engine, "b", ids, soft["px"])[0].cached_tokens == 0
    assert _run(engine, "c", ids)[0].cached_tokens == 0
    # A prompt that parts ways after k tokens reuses k (the slot of "a" still holds them).
    other = ids[:3] + _ids(tiny, " lazy dog")
    out = _run(engine, "d", other, soft["pt"])
    assert out[0].cached_tokens == 3
    assert tokens_of(out) == tokens_of(_run(Engine(tiny, LEAN), "e", other, soft["pt"]))


def test_a_scored_prompt_computes_every_token(tiny: FrozenModel) -> None:
    engine = Engine(tiny, LEAN)
    ids = _ids(tiny, "What is the capital of France?")
    _run(engine, "warm", ids)
    scored = _run(engine, "scored", ids, prompt_logprobs=2)
    assert scored[0].cached_tokens == 0
    expected = _run(Engine(tiny, LEAN), "alone", ids, prompt_logprobs=2)[0].prompt_logprobs
    assert len(scored[0].prompt_logprobs) == len(ids)
    got = [p.logprob for p in scored[0].prompt_logprobs[1:] if p is not None]
    want = [p.logprob for p in expected[1:] if p is not None]
    assert got == pytest.approx(want, abs=1e-4)


def test_reuse_inside_a_busy_batch(tiny: FrozenModel, soft: dict[str, SoftPrompt]) -> None:
    """Rows reusing columns, rows computing theirs and decoding rows share steps; every answer
    is still the one the row gets alone (chunked prefill too)."""
    prompts = [_ids(tiny, t) for t in ("Hello there", "The quick brown fox", "0123 4567")]
    config = EngineConfig(max_batch_size=3, backend=Backend.LEAN, prefill_chunk=4)
    engine = Engine(tiny, config)
    params = SamplingParams(max_tokens=7, temperature=0.0, ignore_eos=True)
    requests = [
        GenerationRequest(f"r{i}", prompts[i % 3], params, soft["px"] if i % 3 == 1 else None)
        for i in range(9)
    ]
    got = run_to_completion(engine, *requests)  # 9 rows through 3 slots: later rows reuse
    assert sum(outs[0].cached_tokens for outs in got.values()) > 0
    for r in requests:
        alone = run_to_completion(Engine(tiny, LEAN), r)[r.request_id]
        assert tokens_of(got[r.request_id]) == tokens_of(alone), r.request_id


@pytest.mark.parametrize("chunk", [1, 3, 256])
def test_common_start_by_chunks(chunk: int) -> None:
    a = [1, 2, 3, 4, 5, 6, 7]
    assert _common_start(a, [1, 2, 3, 4, 5, 6, 7, 8], chunk) == 7
    assert _common_start(a, [1, 2, 3, 9, 5], chunk) == 3
    assert _common_start(a, [], chunk) == 0
    assert _common_start(a, [2], chunk) == 0
    assert _common_start(a + [8] * 600, a + [8] * 599 + [0], chunk) == 606
