"""The HTTP API through a real uvicorn server, driven by the official openai client and httpx."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from app.api.app import create_app
from app.engine import Engine, GenerationRequest, SamplingParams
from app.model import FrozenModel
from app.settings import Settings
from tests.conftest import run_to_completion, text_of, write_adapter
from tests.live import LiveServer, live, wait_until
from tests.tiny import TINY_MODEL_ID

TASKS = {"pt": "prompt", "ptune": "p-tuning", "px": "prefix"}


@pytest.fixture(scope="module")
def prompts_dir(tiny: FrozenModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prompts")
    for seed, (name, kind) in enumerate(TASKS.items()):
        write_adapter(tiny, root, name, kind, num_virtual_tokens=4 + 3 * seed, seed=seed + 20)
    persona = write_adapter(tiny, root, "persona", "prompt", num_virtual_tokens=3, seed=40)
    (persona / "task.json").write_text(
        json.dumps(
            {"system_prompt": "You are a pirate. Answer like one.", "defaults": {"max_tokens": 3}}
        )
    )
    review = write_adapter(tiny, root, "review", "prefix", num_virtual_tokens=2, seed=41)
    (review / "task.json").write_text(
        json.dumps({"template": "Review: {input}\nSentiment:", "labels": ["positive", "negative"]})
    )
    return root


@pytest.fixture(scope="module")
def server(tiny: FrozenModel, prompts_dir: Path) -> Iterator[LiveServer]:
    settings = Settings(prompts=prompts_dir, max_body_bytes=64 * 1024, max_n=4)
    with live(create_app(settings, base=tiny)) as srv:
        yield srv


@pytest.fixture
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def _alone(server: LiveServer, model: str, ids: list[int], max_tokens: int) -> str:
    """The same request through a fresh engine of its own: the reference for 'equals alone'."""
    services = server.services
    soft = None if model == TINY_MODEL_ID else services.registry.get(model).soft_prompt
    request = GenerationRequest(
        "x", tuple(ids), SamplingParams(max_tokens=max_tokens, temperature=0.0), soft
    )
    return text_of(run_to_completion(Engine(services.base), request)["x"])


def test_models_lists_base_and_tasks(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list().data]
    assert ids[0] == TINY_MODEL_ID
    assert sorted(ids[1:]) == sorted([*TASKS, "persona", "review"])


@pytest.mark.parametrize("model", [TINY_MODEL_ID, *TASKS])
def test_completion_equals_engine_alone(
    client: openai.OpenAI, server: LiveServer, tiny: FrozenModel, model: str
) -> None:
    out = client.completions.create(
        model=model, prompt="The quick brown fox", max_tokens=8, temperature=0
    )
    ids = tiny.tokenizer("The quick brown fox")["input_ids"]
    assert out.choices[0].text == _alone(server, model, ids, 8)
    assert out.model == model and out.usage is not None
    assert out.usage.prompt_tokens == len(ids) and out.usage.completion_tokens <= 8
    assert out.choices[0].finish_reason in ("stop", "length")


def test_completion_prompt_list_and_n(client: openai.OpenAI, tiny: FrozenModel) -> None:
    kw = dict(
        model="pt",
        prompt=["Hello", "What is"],
        n=2,
        max_tokens=4,
        temperature=1.0,
        seed=3,
        extra_body={"ignore_eos": True},
    )
    out = client.completions.create(**kw)  # type: ignore[call-overload]
    assert sorted(c.index for c in out.choices) == [0, 1, 2, 3]
    prompt_tokens = len(tiny.tokenizer("Hello")["input_ids"]) + len(
        tiny.tokenizer("What is")["input_ids"]
    )
    assert (
        out.usage is not None
        and out.usage.completion_tokens == 16
        and out.usage.prompt_tokens == prompt_tokens
    )
    again = client.completions.create(**kw)  # type: ignore[call-overload]
    assert [c.text for c in out.choices] == [c.text for c in again.choices]


def test_template_from_task_json(
    client: openai.OpenAI, server: LiveServer, tiny: FrozenModel
) -> None:
    out = client.completions.create(
        model="review", prompt="a moving film", max_tokens=5, temperature=0
    )
    ids = tiny.tokenizer("Review: a moving film\nSentiment:")["input_ids"]
    assert out.choices[0].text == _alone(server, "review", ids, 5)
    assert out.usage is not None and out.usage.prompt_tokens == len(ids)


def test_chat_and_persona(client: openai.OpenAI, tiny: FrozenModel) -> None:
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    plain = client.chat.completions.create(
        model="pt", messages=messages, max_tokens=5, temperature=0
    )  # type: ignore[arg-type]
    assert plain.choices[0].message.role == "assistant" and isinstance(
        plain.choices[0].message.content, str
    )
    persona = client.chat.completions.create(model="persona", messages=messages, temperature=0)  # type: ignore[arg-type]
    system = tiny.tokenizer.apply_chat_template(
        [{"role": "system", "content": "You are a pirate. Answer like one."}, *messages],
        add_generation_prompt=True,
        tokenize=False,
    )
    assert persona.usage is not None
    assert persona.usage.prompt_tokens == len(
        tiny.tokenizer(system, add_special_tokens=False)["input_ids"]
    )
    assert persona.usage.completion_tokens <= 3  # the task's default max_tokens


def test_streaming_matches_non_streaming(client: openai.OpenAI) -> None:
    kw = dict(
        model="px",
        prompt="Hello world",
        max_tokens=12,
        temperature=0,
        extra_body={"ignore_eos": True},
    )
    whole = client.completions.create(**kw)  # type: ignore[call-overload]
    chunks = list(
        client.completions.create(**kw, stream=True, stream_options={"include_usage": True})
    )  # type: ignore[call-overload]
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 12


def test_chat_streaming(client: openai.OpenAI) -> None:
    messages = [{"role": "user", "content": "Hello"}]
    whole = client.chat.completions.create(
        model="ptune", messages=messages, max_tokens=10, temperature=0
    )  # type: ignore[arg-type]
    stream = client.chat.completions.create(
        model="ptune", messages=messages, max_tokens=10, temperature=0, stream=True
    )  # type: ignore[arg-type]
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks)
        == whole.choices[0].message.content
    )
    assert chunks[-1].choices[0].finish_reason == whole.choices[0].finish_reason


def test_raw_sse_framing(server: LiveServer) -> None:
    body = {"model": "pt", "prompt": "Hi", "max_tokens": 3, "stream": True}
    with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [line for line in r.iter_lines() if line]
    assert all(e.startswith("data: ") for e in events)
    assert events[-1] == "data: [DONE]"
    assert all(json.loads(e[6:])["object"] == "text_completion" for e in events[:-1])


def test_logprobs(client: openai.OpenAI) -> None:
    out = client.completions.create(
        model="pt", prompt="Hello", max_tokens=3, temperature=0, logprobs=2
    )
    lp = out.choices[0].logprobs
    assert (
        lp is not None
        and lp.tokens is not None
        and lp.token_logprobs is not None
        and lp.top_logprobs is not None
    )
    assert len(lp.tokens) == len(lp.token_logprobs) == 3 and all(
        len(t) <= 2 for t in lp.top_logprobs
    )
    assert all(v <= 0 for v in lp.token_logprobs)
    chat = client.chat.completions.create(
        model="pt",
        messages=[{"role": "user", "content": "Hi"}],
        max_tokens=3,
        temperature=0,
        logprobs=True,
        top_logprobs=2,
    )
    content = chat.choices[0].logprobs.content  # type: ignore[union-attr]
    assert content is not None and len(content) == chat.usage.completion_tokens  # type: ignore[union-attr]
    assert all(len(c.top_logprobs) == 2 and c.logprob <= 0 for c in content)


def test_openai_errors(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError) as nf:
        client.completions.create(model="no-such-task", prompt="x", max_tokens=1)
    assert nf.value.body["param"] == "model"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as br:
        client.completions.create(model="pt", prompt="x", max_tokens=1, temperature=5)
    assert br.value.body["param"] == "temperature"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as ctx:
        client.completions.create(model="pt", prompt="x", max_tokens=100_000)
    assert "context length of 512" in str(ctx.value) and "100000 max_tokens" in str(ctx.value)


@pytest.mark.parametrize(
    ("path", "body", "status", "param"),
    [
        ("/v1/completions", {"model": "pt", "prompt": "x", "top_p": 0}, 400, "top_p"),
        ("/v1/completions", {"model": "pt"}, 400, "prompt"),
        ("/v1/completions", {"model": "pt", "prompt": "x", "n": 9}, 400, "n"),
        (
            "/v1/completions",
            {"model": "pt", "prompt": "x", "stop": ["a", "b", "c", "d", "e"]},
            400,
            "stop",
        ),
        ("/v1/completions", {"model": "pt", "prompt": []}, 400, "prompt"),
        (
            "/v1/completions",
            {"model": "pt", "prompt": "x", "presence_penalty": 1},
            400,
            "presence_penalty",
        ),
        ("/v1/completions", {"model": "pt", "prompt": "x", "logprobs": 50}, 400, "logprobs"),
        ("/v1/completions", {"model": "pt", "prompt": [[99999]]}, 400, "prompt"),
        ("/v1/completions", {"model": "nope", "prompt": "x"}, 404, "model"),
        ("/v1/chat/completions", {"model": "pt", "messages": []}, 400, "messages"),
        (
            "/v1/chat/completions",
            {"model": "pt", "messages": [{"role": "wizard", "content": "x"}]},
            400,
            "messages.0.role",
        ),
        (
            "/v1/chat/completions",
            {"model": "pt", "messages": [{"role": "user", "content": "x"}], "top_logprobs": 2},
            400,
            "top_logprobs",
        ),
    ],
)
def test_error_shape(
    server: LiveServer, path: str, body: dict[str, object], status: int, param: str
) -> None:
    r = httpx.post(f"{server.url}{path}", json=body, timeout=30)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["param"] == param and error["message"]


def test_malformed_json_and_size_limit(server: LiveServer) -> None:
    r = httpx.post(
        f"{server.url}/v1/completions",
        content=b"{not json",
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and "error" in r.json()
    big = {"model": "pt", "prompt": "x" * 70_000}
    r = httpx.post(f"{server.url}/v1/completions", json=big)
    assert r.status_code == 413 and r.json()["error"]["type"] == "invalid_request_error"

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit is enforced while reading
        yield b'{"model": "pt", "prompt": "'
        for _ in range(100):
            yield b"y" * 1000
        yield b'"}'

    r = httpx.post(
        f"{server.url}/v1/completions",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413
    r = httpx.get(f"{server.url}/v1/nothing-here")
    assert r.status_code == 404 and "error" in r.json()


def test_concurrent_tasks_share_steps_and_match_alone(
    server: LiveServer, tiny: FrozenModel
) -> None:
    models = [*TASKS, TINY_MODEL_ID, "pt", "px"]
    bridge, engine = server.services.bridge, server.services.engine
    first_step = engine.steps
    bridge.pause()  # hold the loop so every request is queued before the first step

    async def send_all() -> list[dict[str, object]]:
        async with httpx.AsyncClient(base_url=server.url, timeout=60) as http:
            sends = [
                http.post(
                    "/v1/completions",
                    json={"model": m, "prompt": "Hello world", "max_tokens": 10, "temperature": 0},
                )
                for m in models
            ]
            tasks = [asyncio.ensure_future(s) for s in sends]
            assert await asyncio.to_thread(wait_until, lambda: bridge.in_flight == len(models))
            bridge.resume()
            return [(await t).json() for t in tasks]

    try:
        bodies = asyncio.run(send_all())
    finally:
        bridge.resume()
    steps = [r for r in engine.history if r.step > first_step]
    # All six rows (three kinds and the bare model) ran in shared steps, not one after another.
    assert sum(len(r.tasks) == len(models) and len(set(r.tasks)) == 4 for r in steps) >= 5
    ids = tiny.tokenizer("Hello world")["input_ids"]
    for model, body in zip(models, bodies, strict=True):
        assert body["choices"][0]["text"] == _alone(server, model, ids, 10)  # type: ignore[index]


def test_disconnects_free_rows(server: LiveServer) -> None:
    engine, bridge = server.services.engine, server.services.bridge
    body = {"model": "px", "prompt": "Hello", "max_tokens": 400, "stream": True, "ignore_eos": True}
    first_step = engine.steps
    for _ in range(50):
        with httpx.stream("POST", f"{server.url}/v1/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            assert next(line for line in lines if line).startswith("data: ")
        # Leaving the block closes the connection mid-stream.
    assert wait_until(lambda: engine.num_running == 0 and bridge.in_flight == 0), (
        engine.num_running,
        bridge.in_flight,
    )
    # Each row was cut short: far from the 50 x 400 row-steps that finishing them would take.
    row_steps = sum(
        len(r.decoded) + len(r.prefilled) for r in engine.history if r.step > first_step
    )
    assert row_steps < 50 * 400 // 10, row_steps


def test_non_streaming_disconnect_frees_row(server: LiveServer) -> None:
    engine, bridge = server.services.engine, server.services.bridge
    bridge.pause()
    try:
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{server.url}/v1/completions",
                json={"model": "pt", "prompt": "Hello", "max_tokens": 400, "ignore_eos": True},
                timeout=0.5,
            )
    finally:
        bridge.resume()
    assert wait_until(lambda: engine.num_running == 0 and bridge.in_flight == 0)


def test_api_key(tiny: FrozenModel, prompts_dir: Path) -> None:
    settings = Settings(prompts=prompts_dir, api_key="s3cret")
    with live(create_app(settings, base=tiny)) as srv:
        assert httpx.get(f"{srv.url}/health").status_code == 200  # stays open
        bad = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
        r = httpx.get(f"{srv.url}/v1/models")
        assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
        good = openai.OpenAI(base_url=f"{srv.url}/v1", api_key="s3cret", max_retries=0)
        assert good.completions.create(model="pt", prompt="Hi", max_tokens=2).choices
