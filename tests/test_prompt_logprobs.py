"""Prompt log-probabilities from the engine equal a direct forward of the model (PEFT's, for
every soft-prompt kind) within 1e-4 in fp32, on both runners, whole and in prefill chunks; and
scoring a row changes nothing for its neighbours."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel

from app.engine import Engine, EngineConfig, GenerationRequest, SamplingParams, TokenLogprob
from app.engine.engine import Backend
from app.model import FrozenModel, SoftPrompt
from app.registry import Registry
from tests.conftest import KINDS, MakeAdapter, run_to_completion, tokens_of

PROMPT = "Review: a great and moving film. Sentiment: positive"
TOP = 3


def direct_logprobs(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    """log-softmax of the logits at every prompt position [T, V] (a soft prompt's virtual
    positions, which PEFT's prompt tuning returns first, dropped)."""
    with torch.inference_mode():
        out = model(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids)).long())
    return torch.log_softmax(out.logits[0, -len(ids) :].float(), dim=-1)


def scored(
    tiny: FrozenModel,
    backend: Backend,
    chunk: int,
    ids: list[int],
    soft: SoftPrompt | None,
    max_tokens: int = 0,
) -> tuple[TokenLogprob | None, ...]:
    engine = Engine(tiny, EngineConfig(backend=backend, prefill_chunk=chunk))
    params = SamplingParams(
        max_tokens=max_tokens, temperature=0.0, ignore_eos=True, prompt_logprobs=TOP
    )
    outs = run_to_completion(engine, GenerationRequest("r", tuple(ids), params, soft))["r"]
    assert len(tokens_of(outs)) == max_tokens and outs[-1].finish_reason is not None
    return outs[0].prompt_logprobs


def assert_matches(
    scores: tuple[TokenLogprob | None, ...], ref: torch.Tensor, ids: list[int]
) -> None:
    assert len(scores) == len(ids) and scores[0] is None
    for j, score in enumerate(scores[1:], start=1):
        assert score is not None and score.token_id == ids[j]
        assert abs(score.logprob - float(ref[j - 1, ids[j]])) < 1e-4
        best = torch.topk(ref[j - 1], TOP)
        assert [t.token_id for t in score.top] == best.indices.tolist()
        got = torch.tensor([t.logprob for t in score.top])
        assert torch.allclose(got, best.values, atol=1e-4, rtol=0)


@pytest.mark.parametrize("backend", [Backend.LEAN, Backend.HF])
@pytest.mark.parametrize("kind", KINDS)
def test_prompt_logprobs_match_peft_forward(
    kind: str, backend: Backend, tiny: FrozenModel, make_adapter: MakeAdapter, tmp_path: Path
) -> None:
    folder = make_adapter(tmp_path, f"task-{kind}", kind, num_virtual_tokens=6)
    registry = Registry(tmp_path, tiny.spec)
    registry.load_all()
    soft = registry.get(f"task-{kind}").soft_prompt
    ids = tiny.tokenizer(PROMPT)["input_ids"]
    ref = direct_logprobs(PeftModel.from_pretrained(tiny.model, str(folder)), ids)
    for chunk in (256, 4):  # whole, and spread over several steps (the lean runner chunks)
        assert_matches(scored(tiny, backend, chunk, ids, soft), ref, ids)


@pytest.mark.parametrize("backend", [Backend.LEAN, Backend.HF])
def test_prompt_logprobs_bare_model_then_generation(tiny: FrozenModel, backend: Backend) -> None:
    ids = tiny.tokenizer(PROMPT)["input_ids"]
    ref = direct_logprobs(tiny.model, ids)
    assert_matches(scored(tiny, backend, 5, ids, None, max_tokens=3), ref, ids)


def test_scoring_a_row_leaves_its_neighbours_alone(tiny: FrozenModel) -> None:
    ids = tuple(tiny.tokenizer(PROMPT)["input_ids"])
    other = tuple(tiny.tokenizer("The quick brown fox")["input_ids"])
    greedy = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    alone = run_to_completion(Engine(tiny), GenerationRequest("o", other, greedy))["o"]
    engine = Engine(tiny, EngineConfig(prefill_chunk=4))
    mixed = run_to_completion(
        engine,
        GenerationRequest("o", other, greedy),
        GenerationRequest("s", ids, SamplingParams(max_tokens=2, prompt_logprobs=1)),
    )
    assert tokens_of(mixed["o"]) == tokens_of(alone)
    assert mixed["o"][0].prompt_logprobs == ()  # only asked-for rows are scored
    assert len(mixed["s"][0].prompt_logprobs) == len(ids)


def test_max_tokens_zero_generates_nothing(engine: Engine, tiny: FrozenModel) -> None:
    ids = tuple(tiny.tokenizer("Hello world")["input_ids"])
    outs = run_to_completion(engine, GenerationRequest("z", ids, SamplingParams(max_tokens=0)))
    assert tokens_of(outs["z"]) == [] and outs["z"][-1].finish_reason == "length"
    assert engine.num_running == 0
