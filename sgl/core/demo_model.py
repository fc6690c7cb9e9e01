"""A tiny Llama in Hugging Face format, generated on the spot, so tests and `sgl serve` need no download."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import torch
from safetensors.torch import save_file
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from sgl.core import env

# NOTE: bump when the generator's output changes, so cached demo models are rebuilt instead of reused.
_FORMAT_VERSION = 1
_STAMP_FILE = "sgl_demo.json"

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
EOT_TOKEN = "<|eot_id|>"
SPECIAL_TOKENS = (BOS_TOKEN, EOS_TOKEN, "<|start_header_id|>", "<|end_header_id|>", EOT_TOKEN)

# A Llama-3-style template: one header + body + <|eot_id|> per message; unknown roles are refused.
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- for message in messages %}"
    "{%- if message['role'] not in ['system', 'user', 'assistant', 'tool'] %}"
    "{{- raise_exception('Unknown role: ' + message['role']) }}"
    "{%- endif %}"
    "{{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' }}"
    "{{- message['content'] | trim }}"
    "{{- '<|eot_id|>' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)


@dataclass(frozen=True)
class DemoModelSpec:
    """Everything that determines the files; equal specs give byte-identical directories."""

    seed: int = 0
    hidden_size: int = 128
    num_layers: int = 4
    vocab_size: int = 2048
    max_position_embeddings: int = 4096
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    head_dim: int = 32
    intermediate_size: int = 352
    # NOTE: 0.02 (the usual init) makes greedy decoding collapse into one repeated token within a few steps;
    # 0.1 keeps the output varied, so tests comparing token streams can tell implementations apart.
    init_std: float = 0.1


def _corpus_text() -> str:
    return resources.files("sgl").joinpath("data/demo_corpus.txt").read_text(encoding="utf-8")


def _stamp(spec: DemoModelSpec) -> str:
    corpus_sha = hashlib.sha256(_corpus_text().encode("utf-8")).hexdigest()
    body = {"format_version": _FORMAT_VERSION, "corpus_sha256": corpus_sha, "spec": asdict(spec)}
    return json.dumps(body, indent=2, sort_keys=True) + "\n"


def train_demo_tokenizer(vocab_size: int = 2048) -> Tokenizer:
    """Byte-level BPE over the shipped corpus; special tokens take the last ids, as in Llama 3."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - len(SPECIAL_TOKENS),
        min_frequency=1,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    # NOTE: training must be deterministic (same corpus -> same tokenizer.json); a test trains twice and compares.
    tokenizer.train_from_iterator(_corpus_text().splitlines(keepends=True), trainer)
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    bos_id = tokenizer.token_to_id(BOS_TOKEN)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS_TOKEN} $A:0",
        pair=f"{BOS_TOKEN} $A:0 {BOS_TOKEN}:1 $B:1",
        special_tokens=[(BOS_TOKEN, bos_id)],
    )
    return tokenizer


def _random_weights(spec: DemoModelSpec) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(spec.seed)

    def normal(*shape: int) -> torch.Tensor:
        return (torch.randn(*shape, generator=gen, dtype=torch.float32) * spec.init_std).contiguous()

    h, d, inter = spec.hidden_size, spec.head_dim, spec.intermediate_size
    q_out, kv_out = spec.num_attention_heads * d, spec.num_key_value_heads * d
    weights: dict[str, torch.Tensor] = {"model.embed_tokens.weight": normal(spec.vocab_size, h)}
    for i in range(spec.num_layers):
        p = f"model.layers.{i}."
        weights[p + "self_attn.q_proj.weight"] = normal(q_out, h)
        weights[p + "self_attn.k_proj.weight"] = normal(kv_out, h)
        weights[p + "self_attn.v_proj.weight"] = normal(kv_out, h)
        weights[p + "self_attn.o_proj.weight"] = normal(h, q_out)
        weights[p + "mlp.gate_proj.weight"] = normal(inter, h)
        weights[p + "mlp.up_proj.weight"] = normal(inter, h)
        weights[p + "mlp.down_proj.weight"] = normal(h, inter)
        weights[p + "input_layernorm.weight"] = torch.ones(h)
        weights[p + "post_attention_layernorm.weight"] = torch.ones(h)
    weights["model.norm.weight"] = torch.ones(h)
    weights["lm_head.weight"] = normal(spec.vocab_size, h)
    return weights


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _write_files(out: Path, spec: DemoModelSpec) -> None:
    tokenizer = train_demo_tokenizer(spec.vocab_size)
    ids: dict[str, int] = {}
    for token in SPECIAL_TOKENS:
        token_id = tokenizer.token_to_id(token)
        assert token_id is not None, token
        ids[token] = token_id
    if max(ids.values()) >= spec.vocab_size:
        raise ValueError(f"vocab_size={spec.vocab_size} is too small for the demo tokenizer")
    tokenizer.save(str(out / "tokenizer.json"))
    _write_json(
        out / "config.json",
        {
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "hidden_size": spec.hidden_size,
            "intermediate_size": spec.intermediate_size,
            "num_hidden_layers": spec.num_layers,
            "num_attention_heads": spec.num_attention_heads,
            "num_key_value_heads": spec.num_key_value_heads,
            "head_dim": spec.head_dim,
            "hidden_act": "silu",
            "max_position_embeddings": spec.max_position_embeddings,
            "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0,
            "rope_scaling": None,
            "attention_bias": False,
            "attention_dropout": 0.0,
            "mlp_bias": False,
            "tie_word_embeddings": False,
            "torch_dtype": "float32",
            "vocab_size": spec.vocab_size,
            "bos_token_id": ids[BOS_TOKEN],
            "eos_token_id": ids[EOS_TOKEN],
        },
    )
    _write_json(
        out / "generation_config.json",
        {"bos_token_id": ids[BOS_TOKEN], "eos_token_id": [ids[EOS_TOKEN], ids[EOT_TOKEN]]},
    )
    _write_json(
        out / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": BOS_TOKEN,
            "eos_token": EOT_TOKEN,
            "clean_up_tokenization_spaces": False,
            "model_max_length": spec.max_position_embeddings,
            "added_tokens_decoder": {
                str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                         "single_word": False, "special": True}
                for t, i in ids.items()
            },
            "chat_template": CHAT_TEMPLATE,
        },
    )
    save_file(_random_weights(spec), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / _STAMP_FILE).write_text(_stamp(spec), encoding="utf-8")


def _is_current(path: Path, spec: DemoModelSpec) -> bool:
    stamp = path / _STAMP_FILE
    return stamp.is_file() and stamp.read_text(encoding="utf-8") == _stamp(spec)


def write_demo_model(
    path: str | os.PathLike[str],
    seed: int = 0,
    *,
    hidden_size: int = 128,
    num_layers: int = 4,
    vocab_size: int = 2048,
    max_position_embeddings: int = 4096,
    num_attention_heads: int = 4,
    num_key_value_heads: int = 2,
    head_dim: int = 32,
    intermediate_size: int = 352,
    init_std: float = 0.1,
) -> Path:
    """Writes the demo model to `path` (reusing it when already written with the same spec); returns the path.

    The directory appears in one rename, so a concurrent reader sees either no model or a whole one.
    """
    spec = DemoModelSpec(
        seed=seed, hidden_size=hidden_size, num_layers=num_layers, vocab_size=vocab_size,
        max_position_embeddings=max_position_embeddings, num_attention_heads=num_attention_heads,
        num_key_value_heads=num_key_value_heads, head_dim=head_dim, intermediate_size=intermediate_size,
        init_std=init_std,
    )
    target = Path(path)
    if _is_current(target, spec):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        _write_files(tmp, spec)
        try:
            os.rename(tmp, target)
            return target
        except OSError:
            if _is_current(target, spec):  # another writer finished first with identical files
                return target
        # An older or different model is in the way: move it aside, then put ours in its place.
        trash = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
        os.rename(target, trash / target.name)
        os.rename(tmp, target)
        shutil.rmtree(trash, ignore_errors=True)
        return target
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def default_demo_model_dir() -> Path:
    """`$SGL_CACHE_DIR/demo-model`, else `~/.cache/sgl/demo-model`."""
    root = env.CACHE_DIR.get()
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "sgl"
    return base / "demo-model"


def ensure_demo_model() -> Path:
    """The default demo model, created on first use."""
    return write_demo_model(default_demo_model_dir())
