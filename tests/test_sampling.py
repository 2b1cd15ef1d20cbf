"""Sampling, stop strings, EOS and log-probabilities."""

from __future__ import annotations

import math

import pytest
import torch

from app.engine import Engine, FinishReason, GenerationRequest, SamplingParams
from app.engine.sampling import _filter
from app.engine.text import TextStream
from app.model import FrozenModel
from tests.conftest import run_to_completion, text_of, tokens_of
from tests.tiny import tiny_base


def _req(tiny: FrozenModel, rid: str, prompt: str = "Hello", **kw: object) -> GenerationRequest:
    return GenerationRequest(rid, tuple(tiny.tokenizer(prompt)["input_ids"]), SamplingParams(**kw))  # type: ignore[arg-type]


def test_seeded_sampling_reproducible_alone_and_in_batch(tiny: FrozenModel) -> None:
    kw = dict(max_tokens=20, temperature=1.0, top_p=0.95, top_k=50, seed=1234, ignore_eos=True)
    first = tokens_of(run_to_completion(Engine(tiny), _req(tiny, "s", **kw))["s"])
    again = tokens_of(run_to_completion(Engine(tiny), _req(tiny, "s", **kw))["s"])
    others = [
        _req(tiny, f"o{i}", "The quick brown fox", max_tokens=10, temperature=1.0, ignore_eos=True)
        for i in range(5)
    ]
    batched = run_to_completion(Engine(tiny), *others, _req(tiny, "s", **kw))
    assert first == again == tokens_of(batched["s"])
    other_seed = tokens_of(
        run_to_completion(Engine(tiny), _req(tiny, "s", **{**kw, "seed": 99}))["s"]
    )
    assert other_seed != first


def test_top_k_one_is_greedy(tiny: FrozenModel) -> None:
    greedy = tokens_of(
        run_to_completion(
            Engine(tiny), _req(tiny, "g", max_tokens=10, temperature=0.0, ignore_eos=True)
        )["g"]
    )
    top1 = tokens_of(
        run_to_completion(
            Engine(tiny), _req(tiny, "k", max_tokens=10, temperature=1.5, top_k=1, ignore_eos=True)
        )["k"]
    )
    assert greedy == top1


def test_filter_top_k_and_top_p() -> None:
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    kept = torch.isfinite(_filter(logits, SamplingParams(temperature=1.0, top_k=2)))
    assert kept.tolist() == [True, True, False, False]
    kept = torch.isfinite(_filter(logits, SamplingParams(temperature=1.0, top_p=0.8)))
    assert kept.tolist() == [True, True, False, False]  # 0.5 + 0.3 reaches 0.8
    kept = torch.isfinite(_filter(logits, SamplingParams(temperature=1.0, top_p=0.81)))
    assert kept.tolist() == [True, True, True, False]
    kept = torch.isfinite(_filter(logits, SamplingParams(temperature=1.0, top_p=0.1)))
    assert kept.tolist() == [True, False, False, False]  # the best token always stays
    kept = torch.isfinite(_filter(logits, SamplingParams(temperature=1.0, top_p=5e-324)))
    assert kept.tolist() == [True, False, False, False]  # even below float32's range


def test_stop_string_cuts_exactly(tiny: FrozenModel) -> None:
    full = text_of(
        run_to_completion(
            Engine(tiny), _req(tiny, "f", max_tokens=30, temperature=0.0, ignore_eos=True)
        )["f"]
    )
    assert len(full) > 10
    stop = full[5:8]
    outs = run_to_completion(
        Engine(tiny), _req(tiny, "s", max_tokens=30, temperature=0.0, ignore_eos=True, stop=(stop,))
    )["s"]
    assert text_of(outs) == full[: full.index(stop)]
    assert outs[-1].finish_reason is FinishReason.STOP


class _CharTokenizer:
    """One character per token: makes the stop-string hold-back visible step by step."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids)


def test_text_stream_holds_back_partial_stop() -> None:
    stream = TextStream(_CharTokenizer(), stop=("END", "xy"))
    released = [stream.add(ord(c)) for c in "abEN"]
    assert [r[0] for r in released] == ["a", "b", "", ""]  # "EN" may still become "END"
    assert stream.add(ord("x")) == ("EN", False)  # "ENx" cannot be END; "x" may become "xy"
    assert stream.add(ord("q")) == ("xq", False)
    assert stream.add(ord("E")) == ("", False)
    assert stream.add(ord("N")) == ("", False)
    assert stream.add(ord("D")) == ("", True)  # cut exactly before the stop string
    assert stream.flush() == ""


def test_text_stream_flush_releases_held_text() -> None:
    stream = TextStream(_CharTokenizer(), stop=("END",))
    assert stream.add(ord("E")) == ("", False)
    assert stream.flush() == "E"


def test_eos_finishes_with_stop() -> None:
    base = tiny_base(seed=3)
    eos = base.spec.eos_token_ids[0]
    plain = tokens_of(
        run_to_completion(
            Engine(base), _req(base, "p", max_tokens=12, temperature=0.0, ignore_eos=True)
        )["p"]
    )
    # Make EOS the model's favourite wherever it would have said plain[4]: deterministic EOS.
    with torch.no_grad():
        base.model.lm_head.weight[eos] = base.model.lm_head.weight[plain[4]] * 2
    forced = tokens_of(
        run_to_completion(
            Engine(base), _req(base, "f", max_tokens=12, temperature=0.0, ignore_eos=True)
        )["f"]
    )
    first_eos = forced.index(eos)
    outs = run_to_completion(Engine(base), _req(base, "e", max_tokens=12, temperature=0.0))["e"]
    assert tokens_of(outs) == forced[: first_eos + 1]
    assert outs[-1].finish_reason is FinishReason.STOP
    assert "<|im_end|>" not in text_of(outs)


def test_max_tokens_finishes_with_length(tiny: FrozenModel) -> None:
    outs = run_to_completion(
        Engine(tiny), _req(tiny, "m", max_tokens=4, temperature=0.0, ignore_eos=True)
    )["m"]
    assert len(tokens_of(outs)) == 4 and outs[-1].finish_reason is FinishReason.LENGTH
    assert outs[-1].completion_tokens == 4 and outs[-1].prompt_tokens == len(
        tiny.tokenizer("Hello")["input_ids"]
    )


def test_logprobs_match_model_distribution(tiny: FrozenModel) -> None:
    ids = tiny.tokenizer("Hello")["input_ids"]
    outs = run_to_completion(
        Engine(tiny), _req(tiny, "l", max_tokens=3, temperature=0.0, logprobs=5, ignore_eos=True)
    )["l"]
    first = outs[0].logprobs[0]
    with torch.inference_mode():
        ref = torch.log_softmax(tiny.model(torch.tensor([ids])).logits[0, -1].float(), -1)
    assert first.token_id == int(ref.argmax())
    assert math.isclose(first.logprob, float(ref.max()), abs_tol=1e-4)
    assert [t.token_id for t in first.top] == ref.topk(5).indices.tolist()
    assert len(first.top) == 5 and all(len(o.logprobs) == 1 for o in outs)


@pytest.mark.parametrize("temperature", [0.7, 1.3])
def test_sampled_tokens_come_from_top_k(tiny: FrozenModel, temperature: float) -> None:
    outs = run_to_completion(
        Engine(tiny),
        _req(
            tiny,
            "t",
            max_tokens=15,
            temperature=temperature,
            top_k=3,
            seed=5,
            logprobs=3,
            ignore_eos=True,
        ),
    )["t"]
    for out in outs:
        lp = out.logprobs[0]
        assert lp.token_id in {t.token_id for t in lp.top}


@pytest.mark.parametrize("temperature", [1e-300, 5e-324, 1e-6])
def test_tiny_temperature_is_greedy_not_nan(tiny: FrozenModel, temperature: float) -> None:
    greedy = tokens_of(
        run_to_completion(
            Engine(tiny), _req(tiny, "g", max_tokens=8, temperature=0.0, ignore_eos=True)
        )["g"]
    )
    tiny_t = tokens_of(
        run_to_completion(
            Engine(tiny), _req(tiny, "t", max_tokens=8, temperature=temperature, ignore_eos=True)
        )["t"]
    )
    assert tiny_t == greedy
