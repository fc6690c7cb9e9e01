"""--is-embedding: /v1/embeddings through the official openai client and sgl.Engine.encode, against transformers'
hidden states of the same tiny seeded model, pooled as the checkpoint's sentence-transformers config says."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
import torch

from sgl.core.demo_model import write_demo_model
from tests.api.conftest import start_server

transformers = pytest.importorskip("transformers")

TEXTS = ["The cat sat on the mat.", "A second, rather longer prompt about the weather in Paris today."]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The demo Llama twice: as is (last-token pooling) and with a sentence-transformers mean Pooling module."""
    root = tmp_path_factory.mktemp("embedding-models")
    last = write_demo_model(root / "last", seed=3, num_layers=2)
    mean = root / "mean"
    shutil.copytree(last, mean)
    (mean / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]))
    (mean / "1_Pooling").mkdir()
    (mean / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 128, "pooling_mode_mean_tokens": True, "pooling_mode_lasttoken": False}))
    return {"last": last, "mean": mean}


def reference(model_dir: Path, pooling: str, ids: list[int]) -> np.ndarray:
    """transformers' final hidden states (after the last norm), pooled and L2-normalized."""
    model = transformers.AutoModel.from_pretrained(str(model_dir), torch_dtype=torch.float32).eval()
    with torch.no_grad():
        hidden = model(torch.tensor([ids])).last_hidden_state[0]
    vec = hidden.mean(0) if pooling == "mean" else hidden[-1]
    return torch.nn.functional.normalize(vec, dim=0).numpy()


def hf_ids(model_dir: Path, text: str) -> list[int]:
    return list(transformers.AutoTokenizer.from_pretrained(str(model_dir))(text)["input_ids"])


@pytest.fixture(scope="module")
def mean_server(model_dirs: dict[str, Path]) -> Iterator[openai.OpenAI]:
    srv = start_server("--model-path", str(model_dirs["mean"]), "--is-embedding")
    try:
        # NOTE: not strict: the client asks for base64 by default and decodes it after validation, so its own
        # strict mode would reject the string it asked for
        yield openai.OpenAI(base_url=f"{srv.url}/v1", api_key="-")
    finally:
        srv.stop()


def test_embeddings_route_equals_transformers_mean_pooling(mean_server: openai.OpenAI,
                                                            model_dirs: dict[str, Path]) -> None:
    resp = mean_server.embeddings.create(model="m", input=TEXTS)
    assert [d.index for d in resp.data] == [0, 1]
    ids = [hf_ids(model_dirs["mean"], t) for t in TEXTS]
    assert resp.usage.prompt_tokens == resp.usage.total_tokens == sum(len(x) for x in ids)
    for d, x in zip(resp.data, ids):
        np.testing.assert_allclose(np.array(d.embedding), reference(model_dirs["mean"], "mean", x), atol=1e-4)
    # token ids (one list, or a batch of them) embed like the text they encode
    by_ids = mean_server.embeddings.create(model="m", input=ids)
    one = mean_server.embeddings.create(model="m", input=ids[1])
    np.testing.assert_allclose(by_ids.data[1].embedding, resp.data[1].embedding, atol=1e-5)
    np.testing.assert_allclose(one.data[0].embedding, resp.data[1].embedding, atol=1e-5)


def test_base64_is_the_float32_bytes(mean_server: openai.OpenAI) -> None:
    as_float = mean_server.embeddings.create(model="m", input=TEXTS[0], encoding_format="float").data[0].embedding
    raw = mean_server.embeddings.with_raw_response.create(model="m", input=TEXTS[0], encoding_format="base64")
    encoded = json.loads(raw.text)["data"][0]["embedding"]
    assert isinstance(encoded, str)
    np.testing.assert_array_equal(np.frombuffer(base64.b64decode(encoded), dtype="<f4"),
                                  np.array(as_float, dtype=np.float32))
    # the openai client decodes base64 itself (its default format)
    np.testing.assert_allclose(mean_server.embeddings.create(model="m", input=TEXTS[0]).data[0].embedding, as_float)


def test_bad_embedding_input_is_a_400_naming_the_field(mean_server: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        mean_server.embeddings.create(model="m", input=TEXTS[0], dimensions=8)
    assert isinstance(err.value.body, dict) and err.value.body["param"] == "dimensions"
    with pytest.raises(openai.BadRequestError) as err:
        mean_server.embeddings.create(model="m", input=[])
    assert isinstance(err.value.body, dict) and err.value.body["param"] == "input"


def test_engine_encode_equals_transformers_last_token_pooling(model_dirs: dict[str, Path]) -> None:
    import sgl

    engine = sgl.Engine(model_path=str(model_dirs["last"]), is_embedding=True, max_total_tokens=2048,
                        context_length=256)
    try:
        out = engine.encode(TEXTS)
        single = engine.encode(TEXTS[0])
    finally:
        engine.shutdown()
    for o, text in zip(out, TEXTS):
        ids = hf_ids(model_dirs["last"], text)
        assert o["meta_info"]["prompt_tokens"] == len(ids)
        np.testing.assert_allclose(np.array(o["embedding"]), reference(model_dirs["last"], "last", ids), atol=1e-4)
    np.testing.assert_allclose(single["embedding"], out[0]["embedding"], atol=1e-6)
