"""The loader and ModelConfig: sharded == single file, deterministic dummy weights, errors that name the culprit,
and tensor-parallel sharding that reproduces the tp=1 logits."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file, save_file

from sgl.core.distributed.communicator import Communicator, ParallelState
from sgl.core.model.config import ModelConfig
from sgl.core.model.context import ModelContext
from sgl.core.model.loader import load_model
from sgl.core.platform import Platform
from tests.core.tiny_models import build_forward_batch, make_paged_kv, make_tiny_hf_model


def _ctx(parallel: ParallelState | None = None) -> ModelContext:
    return ModelContext.from_platform(Platform(), torch.float32, parallel or ParallelState())


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return make_tiny_hf_model("llama", tmp_path_factory.mktemp("llama"), seed=3)


def _copy_config(src: str, dst: Path, **changes: Any) -> Path:
    dst.mkdir(parents=True, exist_ok=True)
    config = json.loads(Path(src, "config.json").read_text())
    config.update(changes)
    (dst / "config.json").write_text(json.dumps(config))
    return dst


def _with_tensors(src: str, dst: Path, tensors: dict[str, torch.Tensor]) -> str:
    _copy_config(src, dst)
    save_file(tensors, str(dst / "model.safetensors"))
    return str(dst)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_sharded_checkpoint_with_index_loads_identically_to_single_file(llama_dir: str, tmp_path: Path) -> None:
    tensors = load_file(os.path.join(llama_dir, "model.safetensors"))
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    _copy_config(llama_dir, tmp_path)
    for file, part in shards.items():
        save_file({n: tensors[n] for n in part}, str(tmp_path / file))
    weight_map = {n: file for file, part in shards.items() for n in part}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    single, _ = load_model(llama_dir, _ctx())
    sharded, _ = load_model(str(tmp_path), _ctx())
    a, b = _state(single), _state(sharded)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_dummy_load_of_config_only_directory_is_deterministic_per_seed(llama_dir: str, tmp_path: Path) -> None:
    path = str(_copy_config(llama_dir, tmp_path))
    m1: Any = load_model(path, _ctx(), load_format="dummy", seed=5)[0]
    m2, _ = load_model(path, _ctx(), load_format="dummy", seed=5)
    m3, _ = load_model(path, _ctx(), load_format="dummy", seed=6)
    s1, s2, s3 = _state(m1), _state(m2), _state(m3)
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    assert not torch.equal(s1["model.layers.0.self_attn.qkv_proj.weight"], s3["model.layers.0.self_attn.qkv_proj.weight"])
    norm = s1["model.layers.1.input_layernorm.weight"]
    assert (norm - 1).abs().max() < 0.2 and norm.std() > 0
    assert s1["model.embed_tokens.weight"].std().item() == pytest.approx(0.02, rel=0.2)
    config = ModelConfig.from_dir(path)
    fb = build_forward_batch(make_paged_kv(config), [0], [0], [[3, 4, 5, 6]])
    with torch.no_grad():
        assert torch.isfinite(m1.compute_logits(m1(fb.input_ids, fb.positions, fb))).all()


def test_missing_directory_and_config_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_model(str(tmp_path / "nowhere"), _ctx())
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_model(str(tmp_path), _ctx())


def test_no_weights_without_dummy_is_a_clear_error(llama_dir: str, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="dummy"):
        load_model(str(_copy_config(llama_dir, tmp_path)), _ctx())


def test_unsupported_architecture_error_lists_supported(llama_dir: str, tmp_path: Path) -> None:
    path = str(_copy_config(llama_dir, tmp_path, architectures=["FooForCausalLM"]))
    with pytest.raises(ValueError, match="FooForCausalLM") as info:
        load_model(path, _ctx(), load_format="dummy")
    for arch in ("LlamaForCausalLM", "MistralForCausalLM", "Qwen2ForCausalLM", "Qwen3ForCausalLM"):
        assert arch in str(info.value)


@pytest.mark.parametrize(
    "dropped", ["model.layers.1.mlp.down_proj.weight", "model.layers.0.self_attn.k_proj.weight", "model.norm.weight"]
)
def test_missing_tensor_error_names_it(llama_dir: str, tmp_path: Path, dropped: str) -> None:
    tensors = load_file(os.path.join(llama_dir, "model.safetensors"))
    del tensors[dropped]
    with pytest.raises(ValueError, match="missing") as info:
        load_model(_with_tensors(llama_dir, tmp_path, tensors), _ctx())
    assert dropped in str(info.value)


def test_unexpected_tensor_error_names_it_but_rope_buffers_are_ignored(llama_dir: str, tmp_path: Path) -> None:
    tensors = load_file(os.path.join(llama_dir, "model.safetensors"))
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    load_model(_with_tensors(llama_dir, tmp_path / "ok", tensors), _ctx())
    tensors["model.layers.0.mlp.surprise.weight"] = torch.ones(2, 2)
    with pytest.raises(ValueError, match=r"unexpected tensor 'model\.layers\.0\.mlp\.surprise\.weight'"):
        load_model(_with_tensors(llama_dir, tmp_path / "bad", tensors), _ctx())


def test_shape_mismatch_error_names_the_tensor(llama_dir: str, tmp_path: Path) -> None:
    tensors = load_file(os.path.join(llama_dir, "model.safetensors"))
    tensors["model.layers.1.self_attn.v_proj.weight"] = torch.zeros(8, 64)
    with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.v_proj\.weight"):
        load_model(_with_tensors(llama_dir, tmp_path, tensors), _ctx())


def test_model_config_normalises_hf_keys_across_versions(tmp_path: Path) -> None:
    base = {"architectures": ["LlamaForCausalLM"], "vocab_size": 10, "hidden_size": 64, "num_attention_heads": 4,
            "num_hidden_layers": 1, "intermediate_size": 8}
    old = ModelConfig.from_dict({**base, "rope_theta": 5e5, "torch_dtype": "bfloat16", "eos_token_id": 2,
                                 "rope_scaling": {"type": "linear", "factor": 2.0}})
    new = ModelConfig.from_dict({**base, "dtype": "bfloat16", "eos_token_id": [2, 7],
                                 "rope_parameters": {"rope_type": "linear", "factor": 2.0, "rope_theta": 5e5}})
    for cfg in (old, new):
        assert cfg.rope_theta == 5e5 and cfg.rope_scaling is not None and cfg.rope_scaling["factor"] == 2.0
        assert cfg.torch_dtype is torch.bfloat16 and cfg.head_dim == 16 and cfg.num_kv_heads == 4
    plain = ModelConfig.from_dict({**base, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4}})
    assert plain.rope_scaling is None and plain.rope_theta == 1e4 and plain.tie_word_embeddings is False
    assert new.hf["intermediate_size"] == 8 and new.intermediate_size == 8 and new.get("missing", 3) == 3
    (tmp_path / "config.json").write_text(json.dumps({**base, "eos_token_id": 2, "max_position_embeddings": 77}))
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": [9, 2], "bos_token_id": 1}))
    cfg = ModelConfig.from_dir(tmp_path)
    assert cfg.eos_token_ids == [2, 9] and cfg.bos_token_id == 1 and cfg.max_position_embeddings == 77
    with pytest.raises(ValueError, match="hidden_size"):
        ModelConfig.from_dict({"vocab_size": 3})


class _ThreadGroup:
    """Collectives between threads that stand in for tensor-parallel processes (gloo without the processes)."""

    def __init__(self, size: int) -> None:
        self.barrier = threading.Barrier(size)
        self.slots: list[Any] = [None] * size


class _ThreadComm(Communicator):
    def __init__(self, rank: int, group: _ThreadGroup) -> None:
        super().__init__(None)
        self.rank, self.shared = rank, group

    @property
    def world_size(self) -> int:
        return len(self.shared.slots)

    def _exchange(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.shared.slots[self.rank] = x
        self.shared.barrier.wait()
        return list(self.shared.slots)

    def all_reduce(self, x: torch.Tensor) -> torch.Tensor:
        total = torch.stack(self._exchange(x)).sum(0)
        self.shared.barrier.wait()  # NOTE: every rank has read every slot before any slot is overwritten
        return x.copy_(total)

    def all_gather(self, x: torch.Tensor, dim: int = -1) -> torch.Tensor:
        out = torch.cat(self._exchange(x), dim=dim)
        self.shared.barrier.wait()
        return out

    def all_to_all(self, x: torch.Tensor, send_counts: list[int]) -> tuple[torch.Tensor, list[int]]:
        sent = self._exchange((x, list(send_counts)))  # type: ignore[arg-type]
        parts, counts = [], []
        for rows, sizes in sent:
            start = sum(sizes[: self.rank])
            parts.append(rows[start : start + sizes[self.rank]])
            counts.append(sizes[self.rank])
        self.shared.barrier.wait()
        return torch.cat(parts), counts


@pytest.mark.parametrize(("arch", "tp", "vocab"), [("qwen2", 2, 256), ("llama", 4, 250)])
def test_tensor_parallel_ranks_reproduce_single_rank_logits(arch: str, tp: int, vocab: int, tmp_path: Path) -> None:
    """tp=4 over 2 kv heads replicates kv heads; vocab 250 over 4 ranks pads the last shard."""
    path = make_tiny_hf_model(arch, tmp_path, seed=9, vocab_size=vocab)
    prompts = [[5, 9, 33, 7, 100, 2], [8, 8, 1]]
    config = ModelConfig.from_dir(path)

    def run(parallel: ParallelState) -> torch.Tensor:
        model: Any = load_model(path, _ctx(parallel))[0]
        kv_heads = model.model.layers[0].self_attn.num_kv_heads
        fb = build_forward_batch(make_paged_kv(config, num_kv_heads=kv_heads), [0, 1], [0, 0], prompts)
        with torch.no_grad():
            return model.compute_logits(model(fb.input_ids, fb.positions, fb))

    expected = run(ParallelState())
    group = _ThreadGroup(tp)
    results: list[Any] = [None] * tp
    errors: list[BaseException] = []

    def worker(rank: int) -> None:
        try:
            results[rank] = run(ParallelState(rank, tp, _ThreadComm(rank, group)))
        except BaseException as exc:  # noqa: BLE001 (surfaced below; a dead rank would otherwise hang the barrier)
            errors.append(exc)
            group.barrier.abort()

    threads = [threading.Thread(target=worker, args=(r,)) for r in range(tp)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not errors, errors
    for r in range(tp):
        torch.testing.assert_close(results[r], expected, atol=1e-5, rtol=0)
