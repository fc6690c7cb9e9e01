"""--reasoning-parser: the thinking section as reasoning_content, in messages and streamed deltas, through the
official openai client (outputs scripted with the ``ebnf`` extra, so the real generate and split path runs)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from sgl.api.reasoning import Thinking
from sgl.core.demo_model import ensure_demo_model
from sgl.core.grammar.base import GrammarKey, GrammarKind, GrammarVocab
from sgl.core.tokenizer.tokenizer import Tokenizer
from sgl.plugins.reasoning_parsers.parsers import DeepSeekR1Parser, Qwen3Parser
from tests.api.conftest import ServerProc
from tests.tools.conftest import TEMPLATE, client_of, tool_server
from tests.tools.test_tool_calls import ARGS, SCRIPTS, TOOLS, USER, forced

pytest.importorskip("xgrammar")

THOUGHT = "The user greets me.\nI should answer briefly."
ANSWER = "Hello there!"
QWEN3_TEXT = f"<think>\n{THOUGHT}\n</think>\n\n{ANSWER}"


@pytest.fixture(scope="module")
def qwen3() -> Iterator[ServerProc]:
    srv = tool_server("qwen25", "--reasoning-parser", "qwen3")
    try:
        yield srv
    finally:
        srv.stop()


def _stream(client: openai.OpenAI, **kwargs: Any) -> tuple[list[str], str, str | None, list[Any]]:
    """The reasoning deltas, the content, the finish reason and the tool-call deltas of a streamed answer."""
    thoughts: list[str] = []
    content: list[str] = []
    calls: list[Any] = []
    reason = None
    for chunk in client.chat.completions.create(stream=True, **kwargs):
        if not chunk.choices:
            continue
        choice = chunk.choices[0]
        delta = choice.delta.model_dump()
        if delta.get("reasoning_content"):
            thoughts.append(delta["reasoning_content"])
        content.append(choice.delta.content or "")
        calls += choice.delta.tool_calls or []
        reason = choice.finish_reason or reason
    return thoughts, "".join(content), reason, calls


def test_thinking_is_split_in_message_and_stream(qwen3: ServerProc) -> None:
    client = client_of(qwen3)
    body: dict[str, Any] = {"model": "m", "messages": USER, "max_tokens": 200, "extra_body": forced(QWEN3_TEXT)}
    message = client.chat.completions.create(**body).choices[0].message
    assert message.content == ANSWER
    assert message.model_dump()["reasoning_content"] == THOUGHT
    thoughts, content, reason, _ = _stream(client, **body)
    assert "".join(thoughts) == THOUGHT and content == ANSWER and reason == "stop"
    assert len(thoughts) > 1  # streamed as it grows
    # stream_reasoning false: the section comes in one delta
    thoughts, content, _, _ = _stream(client, **{**body, "extra_body": {**body["extra_body"],
                                                                        "stream_reasoning": False}})
    assert thoughts == [THOUGHT] and content == ANSWER
    # separate_reasoning false: the text as the model wrote it
    whole = client.chat.completions.create(**{**body, "extra_body": {**body["extra_body"],
                                                                      "separate_reasoning": False}})
    assert whole.choices[0].message.content == QWEN3_TEXT


def test_thinking_cut_by_max_tokens_is_reasoning(qwen3: ServerProc) -> None:
    client = client_of(qwen3)
    body: dict[str, Any] = {"model": "m", "messages": USER, "max_tokens": 12, "temperature": 0.0,
                            "extra_body": forced(QWEN3_TEXT)}
    choice = client.chat.completions.create(**body).choices[0]
    assert choice.finish_reason == "length" and choice.message.content is None
    reasoning = choice.message.model_dump()["reasoning_content"]
    assert reasoning and THOUGHT.startswith(reasoning)
    thoughts, content, reason, _ = _stream(client, **body)
    assert "".join(thoughts) == reasoning and content == "" and reason == "length"


def test_enable_thinking_reaches_the_template(qwen3: ServerProc) -> None:
    client = client_of(qwen3)
    off = client.chat.completions.create(model="m", messages=USER, max_tokens=40,  # type: ignore[arg-type]
                                         extra_body={**forced(ANSWER),
                                                     "chat_template_kwargs": {"enable_thinking": False}})
    assert off.choices[0].message.content == ANSWER
    assert off.choices[0].message.model_dump().get("reasoning_content") is None
    tok = Tokenizer.from_dir(ensure_demo_model())
    prompt = tok.apply_chat_template(USER, chat_template=TEMPLATE.read_text(), enable_thinking=False)
    assert isinstance(prompt, str) and prompt.endswith("<think>\n\n</think>\n\n")
    assert off.usage is not None and off.usage.prompt_tokens == len(tok.encode(prompt, add_special_tokens=False))


def test_reasoning_then_tool_call(qwen3: ServerProc) -> None:
    client = client_of(qwen3)
    text = f"<think>\nI need the weather.\n</think>\n\n{SCRIPTS['qwen25'][0]}"
    body: dict[str, Any] = {"model": "m", "messages": USER, "tools": TOOLS, "max_tokens": 300,
                            "extra_body": forced(text)}
    choice = client.chat.completions.create(**body).choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert choice.message.model_dump()["reasoning_content"] == "I need the weather."
    [call] = choice.message.tool_calls or []
    assert json.loads(call.function.arguments) == ARGS
    thoughts, content, reason, calls = _stream(client, **body)
    assert "".join(thoughts) == "I need the weather." and content == "" and reason == "tool_calls"
    assert calls[0].function.name == "get_weather"


def test_deepseek_r1_output_starts_inside_the_section() -> None:
    parser = DeepSeekR1Parser()
    text = "Let me see.\n</think>\n\nHi"
    assert parser.split(text, final=True) == ("Let me see.", "Hi")
    assert parser.split("Let me see.\n</thi", final=False) == ("Let me see.", "")
    assert parser.split("Let me", final=True) == ("Let me", "")
    assert not parser.thinks({"thinking": False}) and parser.thinks({})


def test_split_of_every_prefix_agrees_with_the_whole() -> None:
    parser = Qwen3Parser()
    final = parser.split(QWEN3_TEXT, final=True)
    assert final == (THOUGHT, ANSWER)
    for i in range(len(QWEN3_TEXT) + 1):
        reasoning, content = parser.split(QWEN3_TEXT[:i], final=False)
        assert final[0].startswith(reasoning) and final[1].startswith(content), i
    assert parser.split("No thinking here", final=True) == ("", "No thinking here")


@pytest.mark.parametrize("constraint", [
    {"json_schema": json.dumps({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})},
    {"regex": "(yes|no)"},
])
def test_constraint_applies_only_after_the_thinking_section(constraint: dict[str, Any]) -> None:
    from sgl.plugins.grammar.xgrammar_backend import XGrammarBackend

    sampling = dict(constraint)
    Thinking(Qwen3Parser(), stream=True).constrain_after(sampling)
    assert list(sampling) == ["structural_tag"]
    tok = Tokenizer.from_dir(ensure_demo_model())
    backend = XGrammarBackend(GrammarVocab(str(ensure_demo_model()), 2048, (tok.eos_token_id,)))
    compiled = backend.compile(GrammarKey(GrammarKind.STRUCTURAL_TAG, sampling["structural_tag"]))
    answer = '{"a":1}' if "json_schema" in constraint else "yes"

    def accepts(text: str) -> bool:
        m = compiled.fork()
        return all(m.accept_token(t) for t in tok.encode(text, add_special_tokens=False))

    free = "<think>\n{not json} [yes or no?] ok\n</think>\n\n"
    assert accepts(free + answer)
    assert not accepts(free + "maybe")  # after the section, the constraint holds
    assert not accepts("maybe")  # the section comes first
