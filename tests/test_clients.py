"""What clients built for OpenAI-compatible servers send: unknown fields, agent histories,
model retrieval, usage details, body errors, echo, the tokenizer endpoints (vLLM's shapes) and
prompt log-probabilities over HTTP. A real uvicorn server, the official openai client."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest
import torch
from peft import PeftModel

from app.api.app import create_app
from app.model import FrozenModel
from app.settings import Settings
from tests.conftest import write_adapter
from tests.live import LiveServer, live
from tests.tiny import TINY_MODEL_ID

VIRTUAL = {"pt": 4, "ptune": 5, "px": 6}
KIND = {"pt": "prompt", "ptune": "p-tuning", "px": "prefix"}


@pytest.fixture(scope="module")
def prompts_dir(tiny: FrozenModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prompts")
    for seed, (name, kind) in enumerate(KIND.items()):
        write_adapter(tiny, root, name, kind, num_virtual_tokens=VIRTUAL[name], seed=seed + 50)
    review = write_adapter(tiny, root, "review", "prefix", num_virtual_tokens=2, seed=61)
    (review / "task.json").write_text(
        json.dumps({"template": "Review: {input}\nSentiment:", "system_prompt": "Be brief."})
    )
    return root


@pytest.fixture(scope="module")
def server(tiny: FrozenModel, prompts_dir: Path) -> Iterator[LiveServer]:
    with live(create_app(Settings(prompts=prompts_dir), base=tiny)) as srv:
        yield srv


@pytest.fixture
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def _post(server: LiveServer, path: str, body: dict[str, object]) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=60)


# -- small items --------------------------------------------------------------------------------


def test_unknown_fields_are_ignored_and_logged_once(
    server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    body = {"model": "pt", "prompt": "Hi", "max_tokens": 2, "frobnicate": 1, "metadata": {"a": 1}}
    with caplog.at_level(logging.WARNING, logger="softserve.api"):
        for _ in range(2):
            assert _post(server, "/v1/completions", body).status_code == 200
    logged = [r.getMessage() for r in caplog.records if "frobnicate" in r.getMessage()]
    assert len(logged) == 1
    # Fields Softserve implements stay strict.
    bad = _post(server, "/v1/completions", {**body, "temperature": 9})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "temperature"


def test_agent_fields_and_history(client: openai.OpenAI, tiny: FrozenModel) -> None:
    call = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
    }
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    out = client.chat.completions.create(
        model="pt",
        messages=messages,  # type: ignore[arg-type]
        max_tokens=3,
        temperature=0,
        store=False,
        reasoning_effort="low",
        parallel_tool_calls=False,
    )
    # The tiny template knows no tools: the call is written into the assistant's turn as text.
    expected = tiny.tokenizer.apply_chat_template(
        [
            messages[0],
            {
                "role": "assistant",
                "content": '<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call>',
            },
            {"role": "tool", "content": "sunny, 21 C"},
        ],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert out.usage is not None
    assert out.usage.prompt_tokens == len(
        tiny.tokenizer(expected, add_special_tokens=False)["input_ids"]
    )


def test_content_null_needs_tool_calls(server: LiveServer) -> None:
    body = {"model": "pt", "messages": [{"role": "user", "content": None}]}
    r = _post(server, "/v1/chat/completions", body)
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("messages.0")


def test_retrieve_model(client: openai.OpenAI) -> None:
    assert client.models.retrieve("px").id == "px"
    assert client.models.retrieve(TINY_MODEL_ID).id == TINY_MODEL_ID
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-task")


def test_continuous_usage_stats(client: openai.OpenAI) -> None:
    chunks = list(
        client.completions.create(
            model="pt",
            prompt="Hello",
            max_tokens=5,
            stream=True,
            extra_body={"ignore_eos": True},
            stream_options={"include_usage": True, "continuous_usage_stats": True},  # type: ignore[typeddict-unknown-key]
        )
    )
    made = [c.usage.completion_tokens for c in chunks if c.usage is not None]
    assert len(made) == len(chunks) and made == sorted(made) and made[-1] == 5


def test_cached_tokens_count_what_was_read_not_computed(client: openai.OpenAI) -> None:
    def usage(model: str, prompt: str) -> tuple[int, int]:
        out = client.completions.create(model=model, prompt=prompt, max_tokens=1, n=2)
        assert out.usage is not None and out.usage.prompt_tokens_details is not None
        return out.usage.prompt_tokens, int(out.usage.prompt_tokens_details.cached_tokens or 0)

    prompt = "Cached tokens: a prompt no other test sends"
    # The bare model, first time: nothing of it is held anywhere.
    tokens, cached = usage(TINY_MODEL_ID, prompt)
    assert cached == 0
    # Again: a KV slot still holds every prompt token but the last (computed for the logits).
    assert usage(TINY_MODEL_ID, prompt) == (tokens, tokens - 1)
    # After a soft prompt too; its virtual positions are not prompt tokens, so never counted
    # (clients compute prompt_tokens - cached_tokens); once per prompt, not per choice.
    usage("ptune", "Hi there")
    tokens, cached = usage("ptune", "Hi there")
    assert cached == tokens - 1


def test_body_errors_say_what_is_wrong(server: LiveServer) -> None:
    url = f"{server.url}/v1/completions"
    r = httpx.post(
        url, content=b'{"model": "pt", "prompt": ', headers={"content-type": "application/json"}
    )
    error = r.json()["error"]
    assert (
        r.status_code == 400 and error["param"] == "body" and "not valid JSON" in error["message"]
    )
    r = httpx.post(
        url, content=b'{"model": "pt", "prompt": "x"}', headers={"content-type": "text/plain"}
    )
    error = r.json()["error"]
    assert r.status_code == 400 and "Content-Type: application/json" in error["message"]


def test_echo_returns_what_was_sent(client: openai.OpenAI, tiny: FrozenModel) -> None:
    out = client.completions.create(model="review", prompt="a moving film", max_tokens=2, echo=True)
    assert out.choices[0].text.startswith("a moving film")
    ids = tiny.tokenizer("Hello world")["input_ids"]
    out = client.completions.create(model="pt", prompt=ids, max_tokens=0, echo=True)
    assert out.choices[0].text == "Hello world" and out.usage is not None
    assert out.usage.completion_tokens == 0 and out.choices[0].finish_reason == "length"


# -- tokenizer endpoints ------------------------------------------------------------------------


def test_tokenizer_info(server: LiveServer, tiny: FrozenModel) -> None:
    info = httpx.get(f"{server.url}/tokenizer_info").json()
    assert info["eos_token"] == "<|im_end|>" and info["bos_token"] == "<|im_start|>"
    assert (
        info["pad_token"] == "<|endoftext|>"
        and info["chat_template"] == tiny.tokenizer.chat_template
    )
    assert info["model_max_length"] == tiny.spec.max_context


def test_tokenize_and_detokenize(server: LiveServer, tiny: FrozenModel) -> None:
    text = "The quick brown fox"
    r = _post(server, "/tokenize", {"prompt": text, "add_special_tokens": False}).json()
    assert r["tokens"] == tiny.tokenizer(text, add_special_tokens=False)["input_ids"]
    assert r["count"] == len(r["tokens"]) and r["max_model_len"] == tiny.spec.max_context
    strs = _post(
        server, "/tokenize", {"model": "review", "prompt": text, "return_token_strs": True}
    )
    assert strs.json()["tokens"] == r["tokens"]  # a task's template never applies to /tokenize
    assert len(strs.json()["token_strs"]) == r["count"]
    assert _post(server, "/detokenize", {"tokens": r["tokens"]}).json() == {"prompt": text}
    assert _post(server, "/detokenize", {"tokens": [10**6]}).json()["error"]["param"] == "tokens"
    assert _post(server, "/tokenize", {"model": "nope", "prompt": "x"}).status_code == 404


def test_tokenize_messages_as_chat_renders_them(server: LiveServer) -> None:
    messages = [{"role": "user", "content": "Hello"}]
    for model in ("review", "pt"):  # with and without a task system prompt
        tokens = _post(server, "/tokenize", {"model": model, "messages": messages}).json()["count"]
        chat = _post(
            server, "/v1/chat/completions", {"model": model, "messages": messages, "max_tokens": 1}
        )
        assert chat.json()["usage"]["prompt_tokens"] == tokens


# -- prompt log-probabilities over HTTP -----------------------------------------------------------


@pytest.mark.parametrize("model", [TINY_MODEL_ID, *KIND])
def test_echo_logprobs_equal_a_direct_forward(
    server: LiveServer, tiny: FrozenModel, prompts_dir: Path, model: str
) -> None:
    """What lm-eval's local-completions sends for loglikelihood, and its parse."""
    ids = tiny.tokenizer("Review: a great and moving film. Sentiment: positive")["input_ids"]
    body = {
        "model": model,
        "prompt": [ids],
        "max_tokens": 1,
        "logprobs": 1,
        "echo": True,
        "temperature": 0,
    }
    choice = _post(server, "/v1/completions", body).json()["choices"][0]
    lp = choice["logprobs"]
    assert len(lp["token_logprobs"]) == len(ids) + 1 and lp["token_logprobs"][0] is None
    assert lp["top_logprobs"][0] is None and all(len(t) == 1 for t in lp["top_logprobs"][1:])
    reference = (
        tiny.model
        if model == TINY_MODEL_ID
        else PeftModel.from_pretrained(tiny.model, str(prompts_dir / model))
    )
    with torch.inference_mode():
        logits = reference(input_ids=torch.tensor([ids])).logits[0, -len(ids) :]
    expected = torch.log_softmax(logits.float(), -1)[torch.arange(len(ids) - 1), ids[1:]]
    got = torch.tensor(lp["token_logprobs"][1 : len(ids)])
    assert torch.allclose(got, expected, atol=1e-4, rtol=0), (got - expected).abs().max()


def test_vllm_prompt_logprobs_field(server: LiveServer, tiny: FrozenModel) -> None:
    ids = tiny.tokenizer("Hello world")["input_ids"]
    body = {"model": "px", "prompt": ids, "max_tokens": 1, "prompt_logprobs": 2}
    choice = _post(server, "/v1/completions", body).json()["choices"][0]
    scores = choice["prompt_logprobs"]
    assert len(scores) == len(ids) and scores[0] is None
    for token, entry in zip(ids[1:], scores[1:], strict=True):
        assert str(token) in entry and 2 <= len(entry) <= 3
        assert all(set(v) == {"logprob", "decoded_token"} for v in entry.values())
    assert choice["logprobs"] is None and not choice["text"].startswith("Hello")
