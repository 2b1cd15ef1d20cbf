"""PEFT is the reference: for every kind, the engine's greedy tokens and fp32 logits must match
`PeftModel.generate` on the same adapter."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import PeftModel

from app.engine import (
    Engine,
    EngineConfig,
    GenerationRequest,
    SamplingParams,
    compute_kv_prefix,
    lean,
    weights,
)
from app.engine import kv as kvops
from app.engine.engine import Backend
from app.engine.forward import decode_step, prefill
from app.engine.runner import LeanRunner
from app.model import FrozenModel, SoftPrompt
from app.registry import Registry
from tests.conftest import KINDS, MakeAdapter, run_to_completion, tokens_of

PROMPT = "What is the capital of France?"
NEW_TOKENS = 12


def _reference(tiny: FrozenModel, folder: Path, ids: list[int]) -> tuple[list[int], torch.Tensor]:
    peft_model = PeftModel.from_pretrained(tiny.model, str(folder))
    out = peft_model.generate(
        input_ids=torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=NEW_TOKENS,
        eos_token_id=None,  # no stopping and no EOS suppression: raw greedy, like ignore_eos
        do_sample=False,
        output_logits=True,
        return_dict_in_generate=True,
    )
    return out.sequences[0, len(ids) :].tolist(), torch.cat(out.logits)  # [N, V]


def _engine_logits(
    tiny: FrozenModel, soft_prompt: SoftPrompt, ids: list[int], tokens: list[int]
) -> torch.Tensor:
    """Teacher-force the reference's tokens through prefill + decode_step; logits per step."""
    spec = tiny.spec
    prefix = compute_kv_prefix(tiny, soft_prompt)
    stacked = kvops.from_prefixes(
        [prefix],
        num_layers=spec.num_layers,
        kv_shape=(spec.num_kv_heads, spec.head_dim),
        device=tiny.device,
        dtype=tiny.dtype,
    )
    with torch.inference_mode():
        result = prefill(tiny, stacked, [tuple(ids)])
        logits = [result.logits]
        position = prefix.length + len(ids)
        for token in tokens[:-1]:
            result = decode_step(tiny, result.kv, [token], [position])
            logits.append(result.logits)
            position += 1
    return torch.cat(logits)


def _lean_logits(
    tiny: FrozenModel, soft_prompt: SoftPrompt, ids: list[int], tokens: list[int], chunk: int
) -> torch.Tensor:
    """The same through the lean forward and its slot cache, the prompt in chunks of `chunk`."""
    model = weights.build(
        tiny.config,
        tiny.weights.tensors(),
        dtype=torch.float32,
        max_positions=tiny.spec.max_context,
    )
    runner = LeanRunner(model, tiny, num_slots=2, max_len=tiny.spec.max_context)
    runner.admit(None)  # a neighbour slot, so the row under test is not slot 0
    prefix = compute_kv_prefix(tiny, soft_prompt, runner.virtual_kv)  # the lean forward's own
    slot = runner.admit(prefix).slot
    logits = []
    with torch.inference_mode():
        for start in range(0, len(ids), chunk):
            part = tuple(ids[start : start + chunk])
            done = start + len(part) == len(ids)
            seg = lean.Segment(slot, part, prefix.length + start, emit=done)
            out = runner.forward([seg]).logits
            logits += [out] if done else []
        position = prefix.length + len(ids)
        for token in tokens[:-1]:
            out = runner.forward([lean.Segment(slot, (token,), position, emit=True)]).logits
            logits.append(out)
            position += 1
    return torch.cat(logits)


@pytest.mark.parametrize("backend", [Backend.LEAN, Backend.HF])
@pytest.mark.parametrize("kind", KINDS)
def test_engine_matches_peft(
    kind: str, backend: Backend, tiny: FrozenModel, make_adapter: MakeAdapter, tmp_path: Path
) -> None:
    folder = make_adapter(tmp_path, f"task-{kind}", kind, num_virtual_tokens=7)
    registry = Registry(tmp_path, tiny.spec)
    registry.load_all()
    entry = registry.get(f"task-{kind}")
    ids = tiny.tokenizer(PROMPT)["input_ids"]
    ref_tokens, ref_logits = _reference(tiny, folder, ids)

    # Greedy tokens through the full engine.
    engine = Engine(tiny, EngineConfig(backend=backend, prefill_chunk=4))
    request = GenerationRequest(
        "r",
        tuple(ids),
        SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True),
        entry.soft_prompt,
    )
    assert tokens_of(run_to_completion(engine, request)["r"]) == ref_tokens

    # fp32 logits at every step: HF's forward, and the lean one whole and in chunks.
    for ours in (
        _engine_logits(tiny, entry.soft_prompt, ids, ref_tokens)
        if backend is Backend.HF
        else _lean_logits(tiny, entry.soft_prompt, ids, ref_tokens, chunk=len(ids)),
        _lean_logits(tiny, entry.soft_prompt, ids, ref_tokens, chunk=3),
    ):
        assert ours.shape == ref_logits.shape
        assert torch.allclose(ours, ref_logits.float(), atol=1e-4, rtol=0), (
            (ours - ref_logits).abs().max()
        )


@pytest.mark.parametrize("backend", [Backend.LEAN, Backend.HF])
def test_bare_model_matches_generate(tiny: FrozenModel, backend: Backend) -> None:
    ids = tiny.tokenizer(PROMPT)["input_ids"]
    ref = tiny.model.generate(
        input_ids=torch.tensor([ids]),
        attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=NEW_TOKENS,
        eos_token_id=None,  # no stopping and no EOS suppression: raw greedy, like ignore_eos
        do_sample=False,
    )[0, len(ids) :].tolist()
    request = GenerationRequest(
        "r", tuple(ids), SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    )
    engine = Engine(tiny, EngineConfig(backend=backend))
    assert tokens_of(run_to_completion(engine, request)["r"]) == ref


def test_adapters_differ_from_bare_model(
    tiny: FrozenModel, make_adapter: MakeAdapter, tmp_path: Path
) -> None:
    """Guard against a parity test that passes because the soft prompt is ignored."""
    for kind in KINDS:
        make_adapter(tmp_path, f"t-{kind}", kind)
    registry = Registry(tmp_path, tiny.spec)
    registry.load_all()
    ids = tuple(tiny.tokenizer(PROMPT)["input_ids"])
    params = SamplingParams(max_tokens=8, temperature=0.0, ignore_eos=True)
    requests = [GenerationRequest("bare", ids, params)] + [
        GenerationRequest(e.name, ids, params, e.soft_prompt) for e in registry.entries()
    ]
    outs = run_to_completion(Engine(tiny), *requests)
    distinct = {tuple(tokens_of(o)) for o in outs.values()}
    assert len(distinct) == 4
