"""sgl's Tokenizer gives the same ids, special tokens and chat prompts as transformers on the same directory."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from tokenizers import Tokenizer as Backend
from tokenizers import models, pre_tokenizers

from sgl.core.demo_model import BOS_TOKEN, EOT_TOKEN, write_demo_model
from sgl.core.tokenizer.chat_template import render_chat_template
from sgl.core.tokenizer.tokenizer import Tokenizer

transformers = pytest.importorskip("transformers")

TEXTS = [
    "",
    "Hello, world!",
    "  leading and trailing spaces  ",
    "The lighthouse keeper wrote 384,400 km in his notebook.\n\nNew paragraph\twith a tab.",
    "def f(x: int) -> int:\n    return x ** 2  # squares\n",
    "Café naïve crème brûlée, ¿Dónde está? Straße Größe",
    "中文：今天天气很好。日本語：おはようございます。한국어: 안녕하세요",
    "emoji 👩‍💻 🇯🇵 👍🏽 🎉🎉 and rare ones 🦑🪐",
    f"{BOS_TOKEN}special tokens inside text{EOT_TOKEN} stay special",
    "unseen script: ᚠᛇᚻ ꦧꦱꦗ and control \x01\x7f",
]

MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "  What is 17 × 23? 中文 🎉 "},
    {"role": "assistant", "content": "391."},
    {"role": "user", "content": "Thanks!"},
]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_demo_model(tmp_path_factory.mktemp("demo") / "model", num_layers=1)


@pytest.fixture(scope="module")
def tok(demo_dir: Path) -> Tokenizer:
    return Tokenizer.from_dir(demo_dir)


@pytest.fixture(scope="module")
def hf(demo_dir: Path):  # type: ignore[no-untyped-def]
    return transformers.AutoTokenizer.from_pretrained(demo_dir)


def _copy_tokenizer(src: Path, dst: Path, config: dict) -> Path:
    dst.mkdir()
    shutil.copy(src / "tokenizer.json", dst / "tokenizer.json")
    (dst / "tokenizer_config.json").write_text(json.dumps(config))
    return dst


@pytest.mark.parametrize("add_special_tokens", [True, False])
def test_encode_matches_transformers_ids(tok: Tokenizer, hf, add_special_tokens: bool) -> None:  # type: ignore[no-untyped-def]
    for text in TEXTS:
        assert tok.encode(text, add_special_tokens) == hf.encode(text, add_special_tokens=add_special_tokens), text


def test_decode_round_trips_multibyte_utf8(tok: Tokenizer, hf) -> None:  # type: ignore[no-untyped-def]
    for text in TEXTS[:-3]:
        ids = tok.encode(text, add_special_tokens=False)
        assert tok.decode(ids) == text
        assert tok.decode(ids) == hf.decode(ids, skip_special_tokens=True)
    # Some CJK/emoji characters are split across tokens: single tokens decode to U+FFFD, the sequence does not.
    ids = tok.encode("🦑🪐", add_special_tokens=False)
    assert len(ids) > 2 and any("\ufffd" in tok.decode([i]) for i in ids)


def test_special_tokens_and_vocab_match_transformers(tok: Tokenizer, hf) -> None:  # type: ignore[no-untyped-def]
    assert tok.vocab_size == len(hf) == 2048
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (hf.bos_token_id, hf.eos_token_id, None)
    assert tok.id_to_token(tok.bos_token_id) == BOS_TOKEN and tok.token_to_id(EOT_TOKEN) == tok.eos_token_id
    assert set(hf.all_special_ids) <= tok.all_special_ids
    assert len(tok.all_special_ids) == 5 and max(tok.all_special_ids) == 2047
    ids = tok.encode("a Café 🎉", add_special_tokens=False)
    assert tok.convert_ids_to_tokens(ids) == hf.convert_ids_to_tokens(ids)


def test_skip_special_tokens_drops_only_special_tokens(tok: Tokenizer, hf) -> None:  # type: ignore[no-untyped-def]
    ids = tok.encode(f"hi{EOT_TOKEN} there", add_special_tokens=True)
    assert ids[0] == tok.bos_token_id and tok.eos_token_id in ids
    assert tok.decode(ids) == "hi there" == hf.decode(ids, skip_special_tokens=True)
    assert tok.decode(ids, skip_special_tokens=False) == f"{BOS_TOKEN}hi{EOT_TOKEN} there"
    assert tok.decode(ids, skip_special_tokens=False) == hf.decode(ids, skip_special_tokens=False)


@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_transformers(tok: Tokenizer, hf, add_generation_prompt: bool) -> None:  # type: ignore[no-untyped-def]
    ours = tok.apply_chat_template(MESSAGES, add_generation_prompt=add_generation_prompt)
    theirs = hf.apply_chat_template(MESSAGES, add_generation_prompt=add_generation_prompt, tokenize=False)
    assert ours == theirs
    assert isinstance(ours, str) and ours.startswith(BOS_TOKEN) and ours.count(EOT_TOKEN) == 4
    ids = tok.apply_chat_template(MESSAGES, add_generation_prompt=add_generation_prompt, tokenize=True)
    hf_ids = hf.apply_chat_template(MESSAGES, add_generation_prompt=add_generation_prompt, tokenize=True)
    hf_ids = hf_ids["input_ids"] if not isinstance(hf_ids, list) else hf_ids
    assert ids == list(hf_ids) and ids.count(tok.bos_token_id) == 1  # the template's BOS is not doubled


def test_template_with_tools_tojson_and_loop_controls_matches_transformers(tmp_path: Path, demo_dir: Path) -> None:
    template = (
        "{%- if tools %}Tools: {{ tools | tojson }}\n{% endif %}"
        "{%- for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}"
        "{% generation %}[{{ m.role }}] {{ m.content }}{% endgeneration %}\n"
        "{%- if loop.index > 2 %}{% break %}{% endif %}{% endfor %}"
        "{{ extra_flag | default('no flag') }} {{ eos_token }}"
    )
    d = _copy_tokenizer(demo_dir, tmp_path / "t", {"eos_token": EOT_TOKEN, "chat_template": template})
    tools = [{"type": "function", "function": {"name": "météo", "description": "天气 <b>&</b>"}}]
    ours = Tokenizer.from_dir(d).apply_chat_template(MESSAGES, tools=tools, extra_flag="on")
    theirs = transformers.AutoTokenizer.from_pretrained(d).apply_chat_template(
        MESSAGES, tools=tools, extra_flag="on", tokenize=False, add_generation_prompt=True
    )
    assert ours == theirs
    assert '"météo"' in ours and "<b>&</b>" in ours  # tojson neither escapes HTML nor forces ASCII
    assert "[system]" not in ours and "Thanks" not in ours and "[assistant] 391." in ours  # continue / break


def test_named_templates_tool_use_selection_and_jinja_file_override(tmp_path: Path, demo_dir: Path) -> None:
    config = {"chat_template": [{"name": "default", "template": "D{{ messages | length }}"},
                                {"name": "tool_use", "template": "T{{ tools | length }}"}]}
    d = _copy_tokenizer(demo_dir, tmp_path / "named", config)
    tok = Tokenizer.from_dir(d)
    assert tok.chat_template == "D{{ messages | length }}"
    assert tok.apply_chat_template(MESSAGES) == "D4"
    assert tok.apply_chat_template(MESSAGES, tools=[{"name": "x"}]) == "T1"
    assert tok.apply_chat_template(MESSAGES, chat_template="tool_use", tools=[]) == "T0"
    (d / "chat_template.jinja").write_text("J{{ add_generation_prompt }}")
    assert Tokenizer.from_dir(d).apply_chat_template(MESSAGES, add_generation_prompt=False) == "JFalse"
    assert transformers.AutoTokenizer.from_pretrained(d).apply_chat_template(
        MESSAGES, add_generation_prompt=False, tokenize=False) == "JFalse"


def test_template_errors_become_value_errors(tok: Tokenizer, tmp_path: Path, demo_dir: Path) -> None:
    with pytest.raises(ValueError, match="Unknown role: wizard"):
        tok.apply_chat_template([{"role": "wizard", "content": "hi"}])
    with pytest.raises(ValueError, match="chat template error"):
        render_chat_template("{% for m in messages %}", MESSAGES)
    bare = Tokenizer.from_dir(_copy_tokenizer(demo_dir, tmp_path / "bare", {}))
    assert bare.chat_template is None
    with pytest.raises(ValueError, match="no chat template"):
        bare.apply_chat_template(MESSAGES)


def test_sandbox_refuses_unsafe_attribute_access() -> None:
    with pytest.raises(ValueError):
        render_chat_template("{{ messages.__class__.__mro__[1].__subclasses__() }}", MESSAGES)
    with pytest.raises(ValueError):
        render_chat_template("{% set _ = messages.append(1) %}", MESSAGES)


def test_strftime_now_and_special_tokens_are_template_globals() -> None:
    out = render_chat_template("{{ strftime_now('%Y') }}|{{ bos_token }}", [], special_tokens={"bos_token": "<s>"})
    year, bos = out.split("|")
    assert len(year) == 4 and year.isdigit() and bos == "<s>"


def test_added_tokens_decoder_and_added_token_dicts_are_honoured(tmp_path: Path, demo_dir: Path) -> None:
    config = {
        "bos_token": {"content": BOS_TOKEN, "special": True, "__type": "AddedToken"},
        "eos_token": EOT_TOKEN,
        "pad_token": {"content": "<|pad|>", "special": True, "__type": "AddedToken"},
        "added_tokens_decoder": {
            "2048": {"content": "<|pad|>", "special": True, "normalized": False},
            "2049": {"content": "<tool>", "special": False, "normalized": False},
        },
    }
    d = _copy_tokenizer(demo_dir, tmp_path / "added", config)
    tok, hf = Tokenizer.from_dir(d), transformers.AutoTokenizer.from_pretrained(d)
    assert (tok.token_to_id("<|pad|>"), tok.token_to_id("<tool>")) == (2048, 2049)
    assert tok.pad_token_id == hf.pad_token_id == 2048 and tok.vocab_size == len(hf) == 2050
    assert 2048 in tok.all_special_ids and 2049 not in tok.all_special_ids
    text = "call <tool> then <|pad|> done"
    assert tok.encode(text) == hf.encode(text)
    assert tok.decode(tok.encode(text)) == hf.decode(hf.encode(text), skip_special_tokens=True)


def test_add_bos_token_adds_bos_when_the_post_processor_does_not(tmp_path: Path) -> None:
    backend = Backend(models.WordLevel({"<s>": 0, "<unk>": 1, "hi": 2}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    d = tmp_path / "wl"
    d.mkdir()
    backend.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "add_bos_token": True}))
    tok = Tokenizer.from_dir(d)
    assert tok.encode("hi hi") == [0, 2, 2] and tok.encode("hi", add_special_tokens=False) == [2]
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>"}))
    assert Tokenizer.from_dir(d).encode("hi hi") == [2, 2]


def test_missing_tokenizer_json_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        Tokenizer.from_dir(tmp_path)
