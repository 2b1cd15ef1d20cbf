from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from peft import (
    PeftConfig,
    PrefixTuningConfig,
    PromptEncoderConfig,
    PromptTuningConfig,
    TaskType,
    get_peft_model,
)

from app.engine import Engine, EngineConfig, GenerationRequest, RequestOutput
from app.model import FrozenModel
from tests.tiny import tiny_base

KINDS = ("prompt", "p-tuning", "prefix")


def peft_config(kind: str, num_virtual_tokens: int) -> PeftConfig:
    if kind == "prompt":
        return PromptTuningConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=num_virtual_tokens
        )
    if kind == "p-tuning":
        return PromptEncoderConfig(
            task_type=TaskType.CAUSAL_LM,
            num_virtual_tokens=num_virtual_tokens,
            encoder_hidden_size=32,
        )
    if kind == "prefix":
        return PrefixTuningConfig(
            task_type=TaskType.CAUSAL_LM, num_virtual_tokens=num_virtual_tokens
        )
    raise ValueError(kind)


@pytest.fixture(scope="session")
def tiny() -> FrozenModel:
    return tiny_base()


MakeAdapter = Callable[..., Path]


def write_adapter(
    base: FrozenModel, root: Path, name: str, kind: str, num_virtual_tokens: int = 5, seed: int = 1
) -> Path:
    """Write a PEFT adapter (made by PEFT itself, random weights) as `root/name`."""
    torch.manual_seed(seed)
    peft_model = get_peft_model(base.model, peft_config(kind, num_virtual_tokens))
    peft_model.save_pretrained(str(root / name))
    return root / name


@pytest.fixture
def make_adapter(tiny: FrozenModel) -> MakeAdapter:
    def make(root: Path, name: str, kind: str, num_virtual_tokens: int = 5, seed: int = 1) -> Path:
        return write_adapter(tiny, root, name, kind, num_virtual_tokens, seed)

    return make


def run_to_completion(
    engine: Engine, *requests: GenerationRequest
) -> dict[str, list[RequestOutput]]:
    for request in requests:
        engine.add_request(request)
    outputs: dict[str, list[RequestOutput]] = {}
    while engine.has_work():
        for out in engine.step().outputs:
            outputs.setdefault(out.request_id, []).append(out)
    return outputs


def tokens_of(outputs: list[RequestOutput]) -> list[int]:
    return [t for o in outputs for t in o.token_ids]


def text_of(outputs: list[RequestOutput]) -> str:
    return "".join(o.text for o in outputs)


@pytest.fixture
def engine(tiny: FrozenModel) -> Engine:
    return Engine(tiny, EngineConfig(max_batch_size=16))
