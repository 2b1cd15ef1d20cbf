"""The lean forward's settings: bf16 and int8 weights agree with fp32 within a stated tolerance,
kernels switch by step size, and architectures outside the Llama family fall back to HF's forward."""

from __future__ import annotations

import copy
import time

import pytest
import torch

from app.engine import Engine, EngineConfig, GenerationRequest, SamplingParams
from app.engine.engine import Backend
from app.engine.lean import LeanUnsupported
from app.engine.runner import HFRunner, LeanRunner
from app.model import FrozenModel, Quantize
from app.model.loader import freeze
from tests.conftest import run_to_completion, tokens_of
from tests.tiny import TINY_MODEL_ID, in_dtype

PROMPTS = [
    "What is the capital of France?",
    "Hello world!",
    "Review: a great film.",
    "0123",
    "The quick brown fox",
    "Stop here.",
    "Sentiment: negative",
    "What is",
]
NEW_TOKENS = 10


def _greedy(base: FrozenModel, config: EngineConfig) -> dict[str, list[int]]:
    params = SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    requests = [
        GenerationRequest(f"r{i}", tuple(base.tokenizer(p)["input_ids"]), params)
        for i, p in enumerate(PROMPTS)
    ]
    return {k: tokens_of(v) for k, v in run_to_completion(Engine(base, config), *requests).items()}


def _agreement(a: dict[str, list[int]], b: dict[str, list[int]]) -> float:
    """Share of tokens equal up to each row's first disagreement (later ones follow other text)."""
    same = 0
    for key, tokens in a.items():
        for x, y in zip(tokens, b[key], strict=True):
            if x != y:
                break
            same += 1
    return same / sum(len(t) for t in a.values())


def test_bf16_agrees_with_hf_bf16(tiny: FrozenModel) -> None:
    """The reference in the same dtype: greedy tokens agree on >= 90%. Rounding of a different
    operation order may flip a near-tie, and a flip costs the rest of its row: here one row of
    eight parts at its 4th token, where HF's bf16 logits tie exactly (fp32: margin 0.08), which
    leaves 0.91. On this tiny random model fp32 vs HF bf16 is 0.84."""
    base = in_dtype(tiny, torch.bfloat16)
    hf = _greedy(base, EngineConfig(backend=Backend.HF))
    assert _agreement(hf, _greedy(base, EngineConfig(backend=Backend.LEAN))) >= 0.9


@pytest.mark.parametrize(
    ("quantize", "int8_max_tokens"),
    [(Quantize.INT8, 1 << 30), (Quantize.INT8, 2), (Quantize.W8A8, 0), (Quantize.W8A8, 4)],
    ids=["int8", "int8-hybrid", "w8a8", "w8a8-hybrid"],
)
def test_quantized_agreement_with_fp32(
    tiny: FrozenModel, quantize: Quantize, int8_max_tokens: int
) -> None:
    """Stated tolerance: int8 weights (and int8 activations) keep greedy agreement with fp32
    within 0.2 of what bf16 alone keeps (the real model's figures are in the README: there int8
    activations cost more than int8 weights alone)."""
    reference = _greedy(tiny, EngineConfig(backend=Backend.HF))
    base = in_dtype(tiny, torch.bfloat16)
    bf16 = _agreement(reference, _greedy(base, EngineConfig(backend=Backend.HF)))
    config = EngineConfig(quantize=quantize, int8_max_tokens=int8_max_tokens)
    assert _agreement(reference, _greedy(base, config)) >= bf16 - 0.2


def test_int8_weights_are_used(tiny: FrozenModel) -> None:
    """Not a silent bf16 run: int8 logits differ from bf16 ones, and only in int8 steps."""
    base = in_dtype(tiny, torch.bfloat16)
    int8 = Engine(base, EngineConfig(quantize=Quantize.INT8, int8_max_tokens=4)).runner
    assert isinstance(int8, LeanRunner)
    layer = int8.model.layers[0]
    assert layer.qkv.qweight is not None and layer.qkv.qweight.dtype == torch.int8
    assert layer.qkv.weight is not None  # kept for steps of more than 4 tokens
    only_int8 = Engine(base, EngineConfig(quantize=Quantize.INT8)).runner
    assert isinstance(only_int8, LeanRunner)
    assert only_int8.model.layers[0].qkv.weight is None  # never used: not kept


def test_int8_needs_bf16(tiny: FrozenModel) -> None:
    with pytest.raises(LeanUnsupported, match="bfloat16"):
        Engine(tiny, EngineConfig(quantize=Quantize.INT8))
    with pytest.raises(LeanUnsupported, match="bfloat16"):
        Engine(tiny, EngineConfig(quantize=Quantize.W8A8))


def test_w8a8_kernels_serve_the_larger_steps(tiny: FrozenModel) -> None:
    """int8 activations in steps of more than int8_max_tokens tokens, weight-only int8 at or
    below; the bf16 weights are not kept; each linear's output stays close to bf16's."""
    base = in_dtype(tiny, torch.bfloat16)
    runner = Engine(base, EngineConfig(quantize=Quantize.W8A8, int8_max_tokens=4)).runner
    assert isinstance(runner, LeanRunner)
    qkv = runner.model.layers[0].qkv
    assert qkv.w8a8 is not None and qkv.qweight is not None and qkv.weight is None
    bf16 = Engine(base, EngineConfig(quantize=Quantize.NONE)).runner
    assert isinstance(bf16, LeanRunner)
    reference = bf16.model.layers[0].qkv
    x = torch.randn(16, reference.weight.shape[1]).to(torch.bfloat16)  # type: ignore[union-attr]
    want = reference(x, small=False).float()
    for got in (qkv(x, small=False).float(), qkv(x, small=True).float()):
        assert (got - want).norm() / want.norm() < 0.05
    assert not torch.equal(qkv(x, small=False), qkv(x, small=True))  # two different kernels


def test_w8a8_rows_do_not_depend_on_each_other(tiny: FrozenModel) -> None:
    """One activation scale per token: a row's int8 inputs, hence its output, are the same
    whatever else shares the step."""
    base = in_dtype(tiny, torch.bfloat16)
    runner = Engine(base, EngineConfig(quantize=Quantize.W8A8, int8_max_tokens=0)).runner
    assert isinstance(runner, LeanRunner)
    down = runner.model.layers[1].down
    x = torch.randn(12, runner.model.layers[1].down.w8a8.inv_smooth.shape[0]).bfloat16()  # type: ignore[union-attr]
    x[3] *= 50  # one loud row
    together = down(x, small=False)
    alone = torch.cat([down(x[i : i + 1], small=False) for i in range(len(x))])
    assert torch.equal(together, alone)


def test_other_architectures_fall_back_to_hf(tiny: FrozenModel) -> None:
    model = copy.deepcopy(tiny.model)
    model.config.hidden_act = "gelu"  # outside what the lean forward implements
    base = freeze(model, tiny.tokenizer, TINY_MODEL_ID, tiny.device)
    assert isinstance(Engine(base).runner, HFRunner)
    with pytest.raises(LeanUnsupported, match="SiLU"):
        Engine(base, EngineConfig(backend=Backend.LEAN))


def test_slots_are_reused_and_cache_grows(tiny: FrozenModel) -> None:
    """Rows leave and join without moving others; a long row doubles the column capacity."""
    engine = Engine(tiny, EngineConfig(max_batch_size=2))
    runner = engine.runner
    assert isinstance(runner, LeanRunner)
    start = runner.cache.capacity
    params = SamplingParams(max_tokens=start + 5, temperature=0.0, ignore_eos=True)
    ids = tuple(tiny.tokenizer("Hello")["input_ids"])
    short = SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)
    outs = run_to_completion(
        engine,
        GenerationRequest("long", ids, params),
        *(GenerationRequest(f"s{i}", ids, short) for i in range(4)),
    )
    assert len(tokens_of(outs["long"])) == start + 5
    assert runner.cache.capacity >= start + 5 + len(ids)
    assert runner.free_slots == 2
    alone = run_to_completion(Engine(tiny), GenerationRequest("long", ids, params))
    assert tokens_of(alone["long"]) == tokens_of(outs["long"])


def test_background_quantization_upgrades_between_steps(tiny: FrozenModel) -> None:
    """The server answers with bf16 weights at once; int8 ones take over at a step boundary."""
    base = in_dtype(tiny, torch.bfloat16)
    config = EngineConfig(quantize=Quantize.INT8, int8_max_tokens=4, quantize_in_background=True)
    engine = Engine(base, config)
    runner = engine.runner
    assert isinstance(runner, LeanRunner)
    params = SamplingParams(max_tokens=3, temperature=0.0, ignore_eos=True)
    ids = tuple(base.tokenizer("Hello")["input_ids"])
    deadline = time.monotonic() + 30
    while runner.model.layers[0].qkv.qweight is None and time.monotonic() < deadline:
        run_to_completion(engine, GenerationRequest(f"r{time.monotonic()}", ids, params))
        time.sleep(0.01)
    assert runner.model.layers[0].qkv.qweight is not None
    assert runner.model.int8_max_tokens == 4
