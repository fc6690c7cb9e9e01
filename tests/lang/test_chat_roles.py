"""Role texts cut from a template's renderings concatenate to the template's rendering of the conversation."""

from __future__ import annotations

import pytest

from sgl.lang.chat import ChatTemplate

# A Qwen-style template: a default system turn appears when the conversation has none.
DEFAULT_SYSTEM = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nBe helpful.<|im_end|>\n{% endif %}"
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
LLAMA3 = (
    "{{- bos_token }}{%- for m in messages %}{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{- m['content'] | trim }}{{- '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{%- endif %}"
)


def _build(template: ChatTemplate, turns: list[tuple[str, str]]) -> tuple[str, list[dict[str, str]]]:
    text, messages = "", []
    for role, content in turns:
        parts = template.role_text(messages, role)
        text += parts.begin + content + parts.end
        messages.append({"role": role, "content": content})
    return text, messages


@pytest.mark.parametrize("source", [DEFAULT_SYSTEM, LLAMA3])
def test_concatenated_role_texts_equal_the_full_rendering(source: str) -> None:
    template = ChatTemplate(source, {"bos_token": "<BOS>"})
    for turns in ([("user", "hi"), ("assistant", "hello"), ("user", "more?")],
                  [("system", "S"), ("user", "u"), ("assistant", "a")]):
        text, messages = _build(template, turns)
        assert text == template.render(messages)


def test_assistant_opening_is_the_generation_prompt() -> None:
    template = ChatTemplate(LLAMA3, {"bos_token": "<BOS>"})
    history = [{"role": "user", "content": "q"}]
    opening = template.role_text(history, "assistant").begin
    assert template.render(history) + opening == template.render(history, add_generation_prompt=True)
    assert template.end_of_turn(history) == "<|eot_id|>"


def test_template_errors_and_unknown_roles_are_value_errors() -> None:
    with pytest.raises(ValueError, match="unknown role"):
        ChatTemplate(LLAMA3).role_text([], "tool_call")
    with pytest.raises(ValueError, match="chat template error"):
        ChatTemplate("{{ raise_exception('no system allowed') }}").role_text([], "system")
    with pytest.raises(ValueError, match="does not compile"):
        ChatTemplate("{% for %}").render([])
