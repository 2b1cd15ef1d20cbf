"""Structured output by constrained decoding (llguidance): `response_format` JSON, a task's
labels, and tool calls, through the engine, over HTTP and through LangChain. Every JSON answer
parses and validates; a constrained row leaves its neighbours' greedy tokens alone."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import httpx
import openai
import pytest
from pydantic import BaseModel

from app.api.app import create_app
from app.api.grammar import Grammars
from app.api.structured import closed
from app.engine import Engine, EngineConfig, GenerationRequest, SamplingParams
from app.model import FrozenModel
from app.settings import Settings
from tests.conftest import KINDS, run_to_completion, text_of, tokens_of, write_adapter
from tests.live import LiveServer, live
from tests.tiny import tiny_base

# A tool-aware chat template in the common `<tool_call>` form (Hermes, Qwen, SmolLM3 style).
TOOL_TEMPLATE = (
    "{%- if tools %}<|im_start|>system\nTools:\n{% for tool in tools %}{{ tool | tojson }}\n"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] %}{{ message['content'] }}{% endif %}"
    "{% if message['tool_calls'] is defined %}{% for call in message['tool_calls'] %}"
    "<tool_call>\n{{ {'name': call['function']['name'], 'arguments': call['function']['arguments']} | tojson }}"
    "\n</tool_call>{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class Verdict(BaseModel):
    label: Literal["positive", "negative"]
    confident: bool


class Weather(BaseModel):
    """Look up the weather in a city."""

    city: Literal["Paris", "Rome"]


@pytest.fixture(scope="module")
def prompts_dir(tiny: FrozenModel, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prompts")
    for seed, kind in enumerate(KINDS):
        write_adapter(tiny, root, f"t-{kind}", kind, num_virtual_tokens=4, seed=80 + seed)
    sst = write_adapter(tiny, root, "sst", "prefix", num_virtual_tokens=3, seed=90)
    meta = {
        "template": "Review: {input}\nSentiment:",
        "labels": ["positive", "negative"],
        "constrain_to_labels": True,
    }
    (sst / "task.json").write_text(json.dumps(meta))
    return root


@pytest.fixture(scope="module")
def server(tiny: FrozenModel, prompts_dir: Path) -> Iterator[LiveServer]:
    with live(create_app(Settings(prompts=prompts_dir), base=tiny)) as srv:
        yield srv


@pytest.fixture(scope="module")
def tool_server(prompts_dir: Path) -> Iterator[LiveServer]:
    base = tiny_base()  # the same weights, with a chat template that knows tools
    base.tokenizer.chat_template = TOOL_TEMPLATE
    with live(create_app(Settings(prompts=prompts_dir), base=base)) as srv:
        yield srv


@pytest.fixture
def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def _schema_format(model: type[BaseModel]) -> dict[str, object]:
    schema = {"name": model.__name__, "schema": model.model_json_schema(), "strict": True}
    return {"type": "json_schema", "json_schema": schema}


def test_constrained_row_leaves_neighbours_alone(tiny: FrozenModel) -> None:
    grammars = Grammars(tiny.tokenizer, tiny.spec.vocab_size, tiny.spec.eos_token_ids)
    schema = grammars.json_schema(closed(Verdict.model_json_schema()), "response_format")
    ids = tuple(tiny.tokenizer("The quick brown fox")["input_ids"])
    greedy = SamplingParams(max_tokens=12, temperature=0.0, ignore_eos=True)
    alone = run_to_completion(Engine(tiny), GenerationRequest("o", ids, greedy))["o"]
    mixed = run_to_completion(
        Engine(tiny, EngineConfig(prefill_chunk=3)),
        GenerationRequest("o", ids, greedy),
        GenerationRequest(
            "j", ids, SamplingParams(max_tokens=40, temperature=0.0, constraint=schema)
        ),
        GenerationRequest(
            "s", ids, SamplingParams(max_tokens=40, temperature=1.0, seed=3, constraint=schema)
        ),
    )
    assert tokens_of(mixed["o"]) == tokens_of(alone)
    for name in ("j", "s"):
        assert mixed[name][-1].finish_reason == "stop"
        Verdict.model_validate_json(text_of(mixed[name]))


@pytest.mark.parametrize("model", ["tiny-llama", *(f"t-{k}" for k in KINDS)])
def test_response_format_json_schema(client: openai.OpenAI, model: str) -> None:
    out = client.chat.completions.create(
        model=model,
        messages=[{"role": "user", "content": "Was it good?"}],
        response_format=_schema_format(Verdict),  # type: ignore[arg-type]
        max_tokens=60,
        temperature=1.0,
        seed=5,
    )
    assert out.choices[0].finish_reason == "stop"
    Verdict.model_validate_json(out.choices[0].message.content or "")


def test_response_format_json_object_and_text(client: openai.OpenAI) -> None:
    out = client.completions.create(
        model="t-prompt",
        prompt="{",
        max_tokens=200,
        temperature=0,
        extra_body={"response_format": {"type": "json_object"}},
    )
    text, finish = out.choices[0].text, out.choices[0].finish_reason
    assert text.startswith("{")
    if finish == "stop":
        assert isinstance(json.loads(text), dict)
    plain = client.completions.create(
        model="t-prompt",
        prompt="Hi",
        max_tokens=4,
        temperature=0,
        extra_body={"response_format": {"type": "text"}},
    )
    again = client.completions.create(model="t-prompt", prompt="Hi", max_tokens=4, temperature=0)
    assert plain.choices[0].text == again.choices[0].text


def test_bad_schema_is_a_400(server: LiveServer) -> None:
    body = {
        "model": "t-prompt",
        "messages": [{"role": "user", "content": "x"}],
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "x", "schema": {"type": "nonsense"}},
        },
    }
    r = httpx.post(f"{server.url}/v1/chat/completions", json=body, timeout=30)
    assert r.status_code == 400 and r.json()["error"]["param"].startswith("response_format")


def test_task_answers_only_its_labels(client: openai.OpenAI) -> None:
    reviews = ["a great and moving film", "dull, slow and far too long", "Hello world!", "0123"]
    out = client.completions.create(
        model="sst", prompt=reviews, max_tokens=5, temperature=1.5, seed=1
    )
    assert len(out.choices) == len(reviews)
    assert all(c.text.strip() in ("positive", "negative") for c in out.choices), [
        c.text for c in out.choices
    ]
    # A request asking for JSON itself overrides the task's labels.
    json_out = client.completions.create(
        model="sst",
        prompt="good",
        max_tokens=60,
        extra_body={"response_format": _schema_format(Verdict)},
    )
    Verdict.model_validate_json(json_out.choices[0].text)


def test_langchain_with_structured_output(server: LiveServer) -> None:
    from langchain_openai import ChatOpenAI

    for model in ("t-prefix", "t-p-tuning"):
        chat = ChatOpenAI(
            base_url=f"{server.url}/v1", api_key="unused", model=model, temperature=0, max_tokens=60
        )  # type: ignore[arg-type]
        verdict = chat.with_structured_output(Verdict, method="json_schema").invoke(
            "Was the film good?"
        )
        assert isinstance(verdict, Verdict)


def test_tool_choice_needs_a_tool_aware_template(client: openai.OpenAI) -> None:
    tools = [
        {
            "type": "function",
            "function": {"name": "weather", "parameters": Weather.model_json_schema()},
        }
    ]
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(
            model="t-prompt", messages=messages, tools=tools, tool_choice="required"
        )  # type: ignore[arg-type]
    assert (
        err.value.body["param"] == "tool_choice" and "no tool support" in err.value.body["message"]
    )  # type: ignore[index]
    out = client.chat.completions.create(
        model="t-prompt", messages=messages, tools=tools, max_tokens=4
    )  # type: ignore[arg-type]
    assert out.choices[0].message.tool_calls is None and out.choices[0].finish_reason in (
        "stop",
        "length",
    )


def test_two_turn_tool_calling_with_langchain(tool_server: LiveServer) -> None:
    from langchain_core.messages import HumanMessage, ToolMessage
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(
        base_url=f"{tool_server.url}/v1",
        api_key="unused",
        model="t-prompt",
        temperature=0,
        max_tokens=120,
    )  # type: ignore[arg-type]
    history: list[object] = [HumanMessage("What is the weather in Paris?")]
    first = chat.bind_tools([Weather], tool_choice="Weather").invoke(history)  # type: ignore[arg-type]
    assert len(first.tool_calls) == 1 and first.tool_calls[0]["name"] == "Weather"
    Weather.model_validate(first.tool_calls[0]["args"])
    history += [first, ToolMessage("sunny, 21 C", tool_call_id=first.tool_calls[0]["id"])]
    second = chat.bind_tools([Weather]).invoke(history)  # type: ignore[arg-type]
    assert isinstance(second.content, str)
    for call in second.tool_calls:  # the random model may call again: then validly
        Weather.model_validate(call["args"])
