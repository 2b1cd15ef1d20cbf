"""The engine-thread bridge on its own (no HTTP): submit, abort, failure, admission and drain."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from app.bridge import BridgeConfig, BridgeStopped, EngineBridge, Overloaded
from app.engine import (
    Engine,
    EngineConfig,
    FinishReason,
    GenerationRequest,
    RequestError,
    RequestOutput,
    SamplingParams,
)
from app.model import FrozenModel
from tests.conftest import run_to_completion, tokens_of
from tests.live import wait_until


class Steps:
    """A BridgeObserver that remembers what it was told."""

    def __init__(self) -> None:
        self.batches: list[tuple[int, int]] = []
        self.admitted: list[str] = []

    def on_step(self, batch_size: int, prefilled: int, seconds: float) -> None:
        self.batches.append((batch_size, prefilled))

    def on_admitted(self, request: GenerationRequest, queued_s: float) -> None:
        self.admitted.append(request.request_id)


def _req(tiny: FrozenModel, rid: str, max_tokens: int, prompt: str = "Hello") -> GenerationRequest:
    ids = tuple(tiny.tokenizer(prompt)["input_ids"])
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, ignore_eos=True)
    return GenerationRequest(rid, ids, params)


@pytest.fixture
def observer() -> Steps:
    return Steps()


@pytest.fixture
def bridge(tiny: FrozenModel, observer: Steps) -> Iterator[EngineBridge]:
    engine = Engine(tiny, EngineConfig(max_batch_size=4))
    config = BridgeConfig(max_in_flight=4, max_queued_tokens=500)
    bridge = EngineBridge(engine, config, observer=observer)
    bridge.start()
    yield bridge
    bridge.resume()
    bridge.stop()


def _idle(bridge: EngineBridge) -> bool:
    stats = bridge.stats()
    return stats.in_flight == 0 and stats.queued_tokens == 0 and stats.engine.running == 0


async def _settled(bridge: EngineBridge) -> bool:
    """Wait, inside the submitting loop (it must outlive the rows' last outputs), until idle."""
    return await asyncio.to_thread(wait_until, lambda: _idle(bridge))


async def _all(bridge: EngineBridge, requests: list[GenerationRequest]) -> list[RequestOutput]:
    async with bridge.submit(requests) as submission:
        return [out async for out in submission]


def test_submit_delivers_what_the_engine_alone_makes(
    tiny: FrozenModel, bridge: EngineBridge, observer: Steps
) -> None:
    requests = [_req(tiny, "a", 3), _req(tiny, "b", 6, "What is the capital")]
    outputs = asyncio.run(_all(bridge, requests))
    by_id: dict[str, list[RequestOutput]] = {}
    for out in outputs:
        by_id.setdefault(out.request_id, []).append(out)
    alone = run_to_completion(Engine(tiny), *requests)
    assert {k: tokens_of(v) for k, v in by_id.items()} == {
        k: tokens_of(v) for k, v in alone.items()
    }
    assert [o.finish_reason for o in by_id["b"]][-1] is FinishReason.LENGTH
    # The observer heard of every step from the step's own record: both rows ran together.
    assert observer.batches[0] == (2, 2) and sorted(observer.admitted) == ["a", "b"]
    assert wait_until(lambda: _idle(bridge))


def test_leaving_early_aborts_the_rows(tiny: FrozenModel, bridge: EngineBridge) -> None:
    async def first_token() -> RequestOutput:
        async with bridge.submit([_req(tiny, "long", 200), _req(tiny, "other", 200)]) as sub:
            first = await anext(sub)
        assert await _settled(bridge)
        return first

    assert asyncio.run(first_token()).token_ids
    assert bridge.stats().engine.steps < 100  # cut short, not run to 200 tokens


def test_invalid_request_is_refused_before_anything_is_queued(
    tiny: FrozenModel, bridge: EngineBridge
) -> None:
    async def submit() -> None:
        bridge.submit([_req(tiny, "ok", 3), _req(tiny, "bad", -1)])

    with pytest.raises(RequestError) as err:
        asyncio.run(submit())
    assert err.value.param == "max_tokens"
    assert _idle(bridge) and bridge.stats().engine.waiting == 0


def test_caps_answer_overloaded_naming_the_cap(tiny: FrozenModel, bridge: EngineBridge) -> None:
    async def fill() -> tuple[str, str]:
        bridge.pause()  # nothing runs: what is admitted stays in flight
        held = bridge.submit([_req(tiny, f"r{i}", 5) for i in range(3)])
        with pytest.raises(Overloaded) as many:
            bridge.submit([_req(tiny, "r3", 5), _req(tiny, "r4", 5)])
        with pytest.raises(Overloaded) as big:
            bridge.submit([_req(tiny, "huge", 490)])
        bridge.resume()
        async with held:
            assert len([o async for o in held if o.finish_reason]) == 3
        assert await _settled(bridge)
        return many.value.reason, big.value.reason

    assert asyncio.run(fill()) == ("in_flight", "queued_tokens")


def test_a_failed_step_fails_its_requests_and_the_loop_goes_on(
    tiny: FrozenModel, bridge: EngineBridge, monkeypatch: pytest.MonkeyPatch
) -> None:
    engine = bridge.engine
    real_step = engine.step

    def broken() -> object:
        monkeypatch.setattr(engine, "step", real_step)  # fail once only
        raise RuntimeError("out of memory")

    monkeypatch.setattr(engine, "step", broken)
    with pytest.raises(RuntimeError, match="engine step failed: out of memory"):
        asyncio.run(_all(bridge, [_req(tiny, "a", 3)]))
    assert wait_until(lambda: _idle(bridge))
    assert bridge.alive
    outputs = asyncio.run(_all(bridge, [_req(tiny, "b", 3)]))
    assert outputs[-1].finish_reason is FinishReason.LENGTH


def test_drain_then_stop(tiny: FrozenModel, bridge: EngineBridge) -> None:
    async def drain() -> list[RequestOutput]:
        submission = bridge.submit([_req(tiny, "a", 8), _req(tiny, "b", 4)])
        async with submission:
            outputs = [out async for out in submission]
        bridge.stop()  # after the last output: nothing is cut
        return outputs

    outputs = asyncio.run(drain())
    assert sorted(o.request_id for o in outputs if o.finish_reason) == ["a", "b"]
    assert _idle(bridge) and not bridge.alive

    async def late() -> None:
        bridge.submit([_req(tiny, "c", 3)])

    with pytest.raises(BridgeStopped):
        asyncio.run(late())
