"""One renderer: the server and training turn the same example into the same token ids."""

from __future__ import annotations

import pytest

from app.api.inputs import chat_prompts, completion_prompts
from app.api.schemas import ChatMessageBody
from app.model import FrozenModel
from app.registry import TaskMeta
from app.render import ChatMessage, with_system_prompt
from app.train.data import ChatExample, TextExample
from app.train.encode import encode
from app.train.evaluate import Subject, encode_reference, reference_prompt

TEMPLATE = "Review: {input}\nSentiment:"
PERSONA = "You are a pirate. Answer like one."


@pytest.mark.parametrize("template", [None, TEMPLATE])
@pytest.mark.parametrize("text", ["a great and moving film", "dull, slow and far too long"])
def test_completion_ids_match(tiny: FrozenModel, template: str | None, text: str) -> None:
    meta = TaskMeta(template=template)
    served = completion_prompts(tiny.tokenizer, text, meta.style).ids[0]
    example = TextExample(input=text, output="positive")
    trained = encode(tiny.tokenizer, example, template, max_tokens=1 << 20)
    assert trained is not None
    assert trained.ids[: trained.targets.index(True)] == served  # the prompt part, as trained
    evaluated, _ = reference_prompt(tiny, Subject(template=template), example)
    assert tuple(evaluated) == served


CONVERSATIONS = {
    "no system message": (ChatMessage("user", "What is the capital of France?"),),
    "caller's system first": (
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "Hello world!"),
    ),
    # The rule is "any system message", not "the first message is one".
    "caller's system later": (
        ChatMessage("user", "Hello world!"),
        ChatMessage("assistant", "Hello."),
        ChatMessage("system", "Be brief."),
        ChatMessage("user", "Stop here."),
    ),
    "developer message": (
        ChatMessage("developer", "Be brief."),
        ChatMessage("user", "Hello world!"),
    ),
}


@pytest.mark.parametrize("persona", [None, PERSONA])
@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
def test_chat_ids_match(tiny: FrozenModel, persona: str | None, name: str) -> None:
    messages = CONVERSATIONS[name]
    meta = TaskMeta(system_prompt=persona)
    body = [ChatMessageBody(role=m.role, content=m.content) for m in messages]  # type: ignore[arg-type]
    served = chat_prompts(tiny.tokenizer, body, meta.style).ids[0]

    example = ChatExample((*messages, ChatMessage("assistant", "The answer.")))
    subject = Subject(system_prompt=persona)
    evaluated, answer = reference_prompt(tiny, subject, example)
    assert tuple(evaluated) == served and answer == "The answer."
    # Training's rows: the ids before the last answer are the served prompt.
    row = encode_reference(tiny, subject, example)
    last_start = max(i for i, t in enumerate(row.targets) if not t) + 1
    assert row.ids[:last_start] == served
    assert all(row.targets[last_start:])


def test_the_system_prompt_rule(tiny: FrozenModel) -> None:
    user = ChatMessage("user", "hi")
    assert with_system_prompt((user,), PERSONA) == (ChatMessage("system", PERSONA), user)
    assert with_system_prompt((user,), None) == (user,)
    own = (user, ChatMessage("developer", "terse"))
    assert with_system_prompt(own, PERSONA) == own


def test_agent_history_renders_calls_for_either_kind_of_template(tiny: FrozenModel) -> None:
    from app.render import ToolCall, chat_text
    from tests.test_structured import TOOL_TEMPLATE

    call = ToolCall(id="c1", name="weather", arguments='{"city": "Paris"}')
    history = (
        ChatMessage("user", "Weather?"),
        ChatMessage("assistant", "", tool_calls=(call,)),
        ChatMessage("tool", "sunny", tool_call_id="c1"),
    )
    # A template that knows no tools reads the call as text in the assistant's turn ...
    plain = chat_text(tiny.tokenizer, history)
    assert '<tool_call>\n{"name": "weather", "arguments": {"city": "Paris"}}\n</tool_call>' in plain
    # ... one that does renders it itself, from the parsed arguments, and lists the tools.
    tool = {"type": "function", "function": {"name": "weather", "parameters": {}}}
    original = tiny.tokenizer.chat_template
    try:
        tiny.tokenizer.chat_template = TOOL_TEMPLATE
        aware = chat_text(tiny.tokenizer, history, tools=[tool])
    finally:
        tiny.tokenizer.chat_template = original
    assert '"name": "weather"' in aware and '{"city": "Paris"}' in aware
    assert aware.startswith("<|im_start|>system\nTools:")
