"""Limits are checked with a clear error, never a crash."""

from __future__ import annotations

import pytest

from app.engine import (
    Engine,
    EngineConfig,
    EngineFull,
    GenerationRequest,
    RequestError,
    SamplingParams,
)
from app.model import FrozenModel, PromptKind, SoftPrompt


def _req(
    rid: str, ids: tuple[int, ...], soft: SoftPrompt | None = None, **kw: object
) -> GenerationRequest:
    return GenerationRequest(rid, ids, SamplingParams(**kw), soft)  # type: ignore[arg-type]


def test_context_overflow_names_the_numbers(tiny: FrozenModel) -> None:
    import torch

    soft = SoftPrompt("t@1", PromptKind.PROMPT_TUNING, torch.zeros(12, tiny.spec.hidden_size))
    engine = Engine(tiny)
    with pytest.raises(RequestError) as err:
        engine.add_request(_req("r", (5,) * 100, soft, max_tokens=401))
    assert err.value.param == "max_tokens"
    assert "513 tokens" in str(err.value) and "12 soft-prompt + 100 prompt + 401 max_tokens" in str(
        err.value
    )
    assert "512" in str(err.value)
    engine.add_request(_req("ok", (5,) * 100, soft, max_tokens=400))  # exactly at the limit is fine
    assert engine.num_waiting == 1


def test_configured_context_is_capped_by_model(tiny: FrozenModel) -> None:
    assert Engine(tiny, EngineConfig(max_context=10_000)).max_context == tiny.spec.max_context
    assert Engine(tiny, EngineConfig(max_context=64)).max_context == 64


@pytest.mark.parametrize(
    ("ids", "kw", "param"),
    [
        ((), {}, "prompt"),
        ((1,), {"max_tokens": -1}, "max_tokens"),
        ((1,), {"temperature": -1.0}, "temperature"),
        ((1,), {"top_p": 0.0}, "top_p"),
        ((1,), {"top_p": 1.5}, "top_p"),
        ((1,), {"top_k": -2}, "top_k"),
        ((10_000,), {}, "prompt"),
        ((-1,), {}, "prompt"),
    ],
)
def test_bad_requests_rejected(
    tiny: FrozenModel, ids: tuple[int, ...], kw: dict[str, object], param: str
) -> None:
    engine = Engine(tiny)
    with pytest.raises(RequestError) as err:
        engine.add_request(_req("r", ids, **kw))
    assert err.value.param == param
    assert engine.num_waiting == 0


def test_waiting_queue_cap(tiny: FrozenModel) -> None:
    engine = Engine(tiny, EngineConfig(max_batch_size=2, max_waiting=3))
    for i in range(3):
        engine.add_request(_req(f"r{i}", (1, 2), ignore_eos=True))
    with pytest.raises(EngineFull):
        engine.add_request(_req("r3", (1, 2), ignore_eos=True))
    engine.step()  # two admitted, one still waiting
    assert engine.num_running == 2 and engine.num_waiting == 1
    engine.add_request(_req("r4", (1, 2), ignore_eos=True))
