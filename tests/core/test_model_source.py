"""Where the model and tokenizer come from: local paths pass through, Hub ids go through huggingface_hub with the
right revision, cache and file patterns, every Hub failure is one line, and the tokenizer takes --chat-template."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import huggingface_hub
import pytest
from huggingface_hub import errors

from sgl.core.config import ServerArgs
from sgl.core.model.hub import ModelSourceError, download, is_hub_id
from sgl.core.model.source import load_tokenizer, resolve_paths
from sgl.core.tokenizer.tokenizer import Tokenizer

MESSAGES = [{"role": "user", "content": "Hi"}]


class FakeHub:
    """Stands in for huggingface_hub.snapshot_download: records each call, answers a directory or raises."""

    def __init__(self, answer: Path | BaseException) -> None:
        self.answer = answer
        self.calls: list[dict[str, Any]] = []

    def __call__(self, repo_id: str, **kwargs: Any) -> str:
        self.calls.append({"repo_id": repo_id, **kwargs})
        if isinstance(self.answer, BaseException):
            raise self.answer
        return str(self.answer)


@pytest.fixture
def fake_hub(monkeypatch: pytest.MonkeyPatch, demo_model_dir: Path) -> FakeHub:
    hub = FakeHub(demo_model_dir)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
    return hub


def test_only_org_slash_name_that_is_not_a_local_path_is_a_hub_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "local" / "model").mkdir(parents=True)
    assert is_hub_id("Qwen/Qwen3-0.6B") and is_hub_id("meta-llama/Llama-3.1-8B-Instruct")
    assert not is_hub_id("local/model")  # exists here: a directory wins, as in transformers
    for path in ("llama-3.1-8b", "/abs/model", "./rel/model", "a/b/c", "../x", "~/m"):
        assert not is_hub_id(path), path


def test_a_local_model_directory_is_used_as_it_is_and_the_hub_is_not_asked(
    fake_hub: FakeHub, demo_model_dir: Path
) -> None:
    args = ServerArgs(model_path=str(demo_model_dir), revision="v2")
    assert resolve_paths(args) == args
    assert fake_hub.calls == []


def test_a_hub_id_resolves_to_its_snapshot_and_stays_the_served_name(fake_hub: FakeHub, demo_model_dir: Path) -> None:
    args = resolve_paths(ServerArgs(model_path="org/tiny", revision="v2", download_dir="/cache/hub"))
    assert args.model_path == str(demo_model_dir)
    assert args.served_model_name == "org/tiny"
    assert args.tokenizer_path is None
    [call] = fake_hub.calls
    assert (call["repo_id"], call["revision"], call["cache_dir"]) == ("org/tiny", "v2", "/cache/hub")
    assert "*.safetensors" in call["allow_patterns"] and "*.json" in call["allow_patterns"]
    assert not any(p.endswith((".bin", ".pt", ".gguf")) for p in call["allow_patterns"])
    assert resolve_paths(args) == args  # resolved once: a second pass finds local paths


def test_dummy_weights_download_no_weights_and_a_served_name_is_kept(fake_hub: FakeHub) -> None:
    args = resolve_paths(ServerArgs(model_path="org/tiny", load_format="dummy", served_model_name="mine"))
    assert args.served_model_name == "mine"
    [call] = fake_hub.calls
    assert "*.safetensors" not in call["allow_patterns"]


def test_a_hub_tokenizer_path_resolves_without_weights(fake_hub: FakeHub, demo_model_dir: Path) -> None:
    args = resolve_paths(ServerArgs(model_path=str(demo_model_dir), tokenizer_path="org/tok"))
    assert args.tokenizer_path == str(demo_model_dir)
    [call] = fake_hub.calls
    assert call["repo_id"] == "org/tok" and "*.safetensors" not in call["allow_patterns"]


def _http_error(cls: type[errors.HfHubHTTPError]) -> errors.HfHubHTTPError:
    """The Hub's error without the HTTP response its constructor wants (the message is all sgl reads)."""
    exc = cls.__new__(cls)
    Exception.__init__(exc, "boom")
    return exc


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (errors.LocalEntryNotFoundError("x"), "org/tiny@v2 is not in the Hugging Face cache (/c)"),
        ("RepositoryNotFoundError", "'org/tiny' is neither a local directory nor a model on the Hugging Face Hub"),
        ("GatedRepoError", "org/tiny@v2 is gated"),
        ("RevisionNotFoundError", "'org/tiny' has no revision 'v2' on the Hugging Face Hub"),
        (ConnectionError("network down\nmore"), "could not fetch org/tiny@v2 from the Hugging Face Hub: network down"),
    ],
    ids=["not-cached-offline", "not-found", "gated", "no-such-revision", "network"],
)
def test_each_hub_failure_is_one_line(monkeypatch: pytest.MonkeyPatch, raised: Any, expected: str) -> None:
    exc = _http_error(getattr(errors, raised)) if isinstance(raised, str) else raised
    monkeypatch.setattr(huggingface_hub, "snapshot_download", FakeHub(exc))
    with pytest.raises(ModelSourceError) as info:
        download("org/tiny", "v2", "/c", weights=True)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_a_model_without_tokenizer_json_is_told_it_lacks_a_fast_tokenizer(tmp_path: Path, demo_model_dir: Path) -> None:
    slow = tmp_path / "slow"
    shutil.copytree(demo_model_dir, slow)
    (slow / "tokenizer.json").unlink()
    (slow / "tokenizer.model").write_bytes(b"\x00")
    with pytest.raises(FileNotFoundError) as info:
        Tokenizer.from_dir(slow)
    message = str(info.value)
    assert "slow tokenizer only (tokenizer.model, no tokenizer.json)" in message
    assert "save_pretrained" in message and "--tokenizer-path" in message
    (slow / "tokenizer.model").unlink()
    with pytest.raises(FileNotFoundError, match="has no tokenizer.json, the fast tokenizer that sgl reads"):
        Tokenizer.from_dir(slow)
    with pytest.raises(FileNotFoundError, match="tokenizer directory .* does not exist"):
        Tokenizer.from_dir(tmp_path / "nowhere")


def test_chat_template_file_replaces_the_models_template(tmp_path: Path, demo_model_dir: Path) -> None:
    jinja = tmp_path / "t.jinja"
    jinja.write_text("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}[gen]")
    as_json = tmp_path / "chat_template.json"
    as_json.write_text(json.dumps({"chat_template": "JSON:{{ messages[0]['content'] }}"}))
    args = ServerArgs(model_path=str(demo_model_dir), chat_template=str(jinja))
    assert load_tokenizer(args).apply_chat_template(MESSAGES) == "<user>Hi[gen]"
    tools = [{"type": "function", "function": {"name": "f"}}]
    assert load_tokenizer(args).apply_chat_template(MESSAGES, tools=tools) == "<user>Hi[gen]"
    assert Tokenizer.from_dir(demo_model_dir, chat_template=str(as_json)).apply_chat_template(MESSAGES) == "JSON:Hi"
    default = Tokenizer.from_dir(demo_model_dir).apply_chat_template(MESSAGES)
    assert load_tokenizer(args.replace(chat_template=None)).apply_chat_template(MESSAGES) == default != "<user>Hi[gen]"


def test_chat_template_name_picks_one_of_the_models_templates(tmp_path: Path, demo_model_dir: Path) -> None:
    model = tmp_path / "model"
    shutil.copytree(demo_model_dir, model)
    (model / "additional_chat_templates").mkdir()
    (model / "additional_chat_templates" / "terse.jinja").write_text("T:{{ messages[-1]['content'] }}")
    assert Tokenizer.from_dir(model, chat_template="terse").apply_chat_template(MESSAGES) == "T:Hi"
    sglang_json = tmp_path / "conv.json"
    sglang_json.write_text(json.dumps({"name": "x", "system": "", "roles": ["user", "assistant"]}))
    with pytest.raises(ValueError, match="SGLang's conversation-template JSON is not supported"):
        Tokenizer.from_dir(model, chat_template=str(sglang_json))
    with pytest.raises(ValueError, match=r"'chatml' is neither a file nor one of the model's templates \(default, "
                                         r"terse\)"):
        Tokenizer.from_dir(model, chat_template="chatml")


def test_an_architecture_that_exists_only_as_the_models_own_code_is_refused_saying_so() -> None:
    from sgl.core.model.config import ModelConfig
    from sgl.core.model.loader import resolve_architecture

    base = {"hidden_size": 8, "num_attention_heads": 1, "num_hidden_layers": 1, "vocab_size": 8,
            "architectures": ["MyCustomForCausalLM"]}
    with pytest.raises(ValueError) as info:
        resolve_architecture(ModelConfig({**base, "auto_map": {"AutoModelForCausalLM": "modeling_my.MyCustom"}}))
    assert "'MyCustomForCausalLM' (the model ships its own code in auto_map, which sgl never runs)" in str(info.value)
    assert "LlamaForCausalLM" in str(info.value)
    with pytest.raises(ValueError) as info:
        resolve_architecture(ModelConfig(base))
    assert "auto_map" not in str(info.value)
