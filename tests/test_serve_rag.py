"""Answers from documents through the server: ``rag:COLLECTION`` chat completions (plain,
streamed, through the official SDK), ``/v1/retrieve``, ``rag:`` ids in ``/v1/models``, keys
restricted to collections, and the errors. No model: a hashing embedder and a scripted answerer
(or the fake engine behind the real registry) over the shipped sample documents."""

from __future__ import annotations

import json
import shutil
import sqlite3
from importlib import resources
from pathlib import Path

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from cuvee.config import load_settings
from cuvee.docs import index
from cuvee.docs.ingest import ingest
from cuvee.serve.app import create_app
from cuvee.serve.keys import ApiKey, Authenticator, KeyStore, digest
from cuvee.serve.models import ModelRegistry
from cuvee.serve.rag import DocsService
from docs_fakes import HashingBackend, Scripted
from helpers import uvicorn_in_thread
from test_serve import Fakes, assert_error, sse_events

SAMPLE = resources.files("cuvee.docs") / "sample" / "docs"
QUESTION = "How many days of paid annual leave does a full-time employee get?"
SUPPORTED = (
    "Every full-time employee receives 27 days of paid annual leave per calendar year [1]. "
    "Staff also get a free car [1]."
)
UNSUPPORTED = "The office has a heated swimming pool on the roof [1]."


@pytest.fixture
def docs_home(tmp_path: Path, isolated_home: Path) -> Path:
    """Two collections: ``hb`` (the whole sample set) and ``secret`` (its security notes)."""
    folder = tmp_path / "handbook"
    shutil.copytree(str(SAMPLE), folder)
    backend = HashingBackend()
    hb = index.create(isolated_home, "hb", backend.identity, backend.dim)
    ingest(hb, backend, [folder])
    secret = index.create(isolated_home, "secret", backend.identity, backend.dim)
    ingest(secret, backend, [folder / "security.txt"])
    hb.close()
    secret.close()
    return isolated_home


class Served:
    """An app over the fake engine registry, a hashing embedder and (unless ``engine``) a
    scripted answerer; records what the answerer factory was asked for."""

    def __init__(
        self,
        home: Path,
        answer: str = SUPPORTED,
        *,
        keys: KeyStore | None = None,
        engine: bool = False,
        backend: HashingBackend | None = None,
        fakes: Fakes | None = None,
        **settings,
    ) -> None:
        self.settings = load_settings({"default_chat_model": "fake", **settings})
        self.fakes = fakes or Fakes()
        self.registry = ModelRegistry(
            self.settings, opener=self.fakes.open, names=lambda: ["fake", "other"]
        )
        self.scripted = Scripted(answer)
        self.asked: list[tuple[str, object]] = []
        self.backend = backend or HashingBackend()
        self.docs = DocsService(
            home,
            lambda: self.backend,
            None if engine else self._scripted,
        )
        self.app = create_app(self.settings, self.registry, Authenticator(keys), docs=self.docs)
        self.client = TestClient(self.app)

    def _scripted(self, state, model, params):
        self.asked.append((model, params))
        return self.scripted

    def chat(self, headers=None, **body):
        payload = {"messages": [{"role": "user", "content": QUESTION}], **body}
        payload.setdefault("model", "rag:hb")
        return self.client.post("/v1/chat/completions", json=payload, headers=headers or {})

    def retrieve(self, headers=None, **body):
        return self.client.post("/v1/retrieve", json=body, headers=headers or {})

    def model_ids(self, headers=None) -> list[str]:
        r = self.client.get("/v1/models", headers=headers or {})
        assert r.status_code == 200, r.text
        return [m["id"] for m in r.json()["data"]]


def assert_verbatim(citations: list[dict]) -> None:
    assert citations
    for cite in citations:
        source = Path(cite["doc"]).read_text(encoding="utf-8")
        assert source[cite["start"] : cite["end"]] == cite["quote"], cite


# -- answers ---------------------------------------------------------------------------------


def test_a_supported_answer_comes_back_with_verbatim_citations(docs_home: Path) -> None:
    served = Served(docs_home)
    r = served.chat()
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "chat.completion" and body["model"] == "rag:hb"
    (choice,) = body["choices"]
    content = choice["message"]["content"]
    assert content.startswith("Every full-time employee receives 27 days") and "[1]" in content
    assert "free car" not in content  # the unsupported sentence is dropped
    assert "\n\nSources:\n[1] " in content and "leave-policy.md" in content
    assert choice["finish_reason"] == "stop"
    assert body["abstained"] is False and body["collection"] == "hb"
    assert_verbatim(body["citations"])
    assert {c["n"] for c in body["citations"]} == {1}
    # the answering model is the configured default chat model, greedy by default
    ((model, params),) = served.asked
    assert model == "fake" and params.temperature == 0.0
    (messages,) = served.scripted.calls
    assert QUESTION in messages[-1]["content"] and "Sources:" in messages[-1]["content"]


def test_an_unsupported_draft_is_replaced_by_the_passage_that_answers(docs_home: Path) -> None:
    served = Served(docs_home, UNSUPPORTED)
    r = served.chat()
    assert r.status_code == 200, r.text
    body = r.json()
    content = body["choices"][0]["message"]["content"]
    assert body["abstained"] is False and body["wording"] == "quote"
    assert "27 days" in content and "swimming" not in content
    assert_verbatim(body["citations"])


def test_a_question_the_passages_do_not_answer_abstains_without_the_model(
    docs_home: Path,
) -> None:
    served = Served(docs_home, SUPPORTED)
    question = "Combien de places de parking le bureau de Lyon possède-t-il ?"
    r = served.chat(messages=[{"role": "user", "content": question}])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["abstained"] is True and body["citations"] == [] and body["language"] == "fr"
    assert body["abstain_reason"]
    assert body["choices"][0]["message"]["content"].startswith("Les documents ne le disent pas")
    assert served.scripted.calls == []


def test_collection_and_k_in_the_body_with_any_chat_model(docs_home: Path) -> None:
    served = Served(docs_home)
    r = served.chat(model="other", collection="hb", k=2, temperature=0.7, max_tokens=40)
    assert r.status_code == 200, r.text
    assert r.json()["model"] == "other" and r.json()["abstained"] is False
    ((model, params),) = served.asked
    assert model == "other" and params.temperature == 0.7 and params.max_tokens == 40
    (messages,) = served.scripted.calls
    # k=2 passages retrieved; the model sees the windows of them that answer, numbered
    assert "[1]" in messages[-1]["content"] and "[4]" not in messages[-1]["content"]
    r = served.chat(rag_model="other")  # rag:hb answered by a named model
    assert r.status_code == 200 and served.asked[-1][0] == "other"


def test_the_server_engine_writes_the_draft(docs_home: Path) -> None:
    """No injected answerer: the registry's engine for the default chat model drafts the
    answer (one engine, released afterwards), with usage and greedy sampling."""
    words = SUPPORTED.split(" ")
    script = tuple(w if i == len(words) - 1 else w + " " for i, w in enumerate(words))
    served = Served(docs_home, engine=True, fakes=Fakes(script=script, context=100_000))
    r = served.chat()
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["abstained"] is False and body["choices"][0]["message"]["content"].startswith(
        "Every full-time employee receives 27 days"
    )
    assert_verbatim(body["citations"])
    engine = served.fakes.opened["fake"]
    (request,) = engine.submitted
    assert request.params.temperature == 0.0 and request.params.max_tokens == 256
    assert QUESTION in request.messages[-1]["content"]
    usage = body["usage"]
    assert usage["completion_tokens"] == len(script) + 1
    assert usage["prompt_tokens"] == len(engine.prompt_tokens(request))
    assert served.registry._slots["fake"].users == 0  # the engine was given back
    # max_tokens bounds the draft, and a cut draft says so
    r = served.chat(max_tokens=3)
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"
    assert engine.submitted[-1].params.max_tokens == 3


def test_a_context_too_small_for_one_passage_is_context_length_exceeded(docs_home) -> None:
    served = Served(docs_home, engine=True, fakes=Fakes(context=64))
    r = served.chat()
    assert_error(r, 400, param="messages", code="context_length_exceeded")
    # streamed, the role chunk went out before the draft: the error comes in the stream
    events = sse_events(served.chat(stream=True).text)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-1]["error"]["code"] == "context_length_exceeded" and "[DONE]" not in events
    # the queue slots and the engine were given back either way
    assert served.app.state.cuvee.capacity.used == 0
    assert served.registry._slots["fake"].users == 0


def test_streaming_sends_the_answer_then_citations_usage_and_done(docs_home: Path) -> None:
    served = Served(docs_home)
    r = served.chat(stream=True, stream_options={"include_usage": True})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text.startswith("Every full-time employee receives 27 days") and "Sources:" in text
    (finish,) = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert finish["abstained"] is False
    assert_verbatim(finish["citations"])
    assert chunks[-1]["choices"] == [] and "total_tokens" in chunks[-1]["usage"]
    assert served.app.state.cuvee.capacity.used == 0


def test_the_openai_sdk_parses_answers_and_streams(docs_home: Path) -> None:
    openai = pytest.importorskip("openai")
    served = Served(docs_home)
    with uvicorn_in_thread(served.app) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="none", max_retries=0)
        messages = [{"role": "user", "content": QUESTION}]
        response = client.chat.completions.create(
            model="rag:hb", messages=messages, extra_body={"k": 3}
        )
        assert response.choices[0].message.content.startswith("Every full-time employee")
        assert response.model_extra["abstained"] is False
        assert_verbatim(response.model_extra["citations"])

        stream = client.chat.completions.create(
            model="rag:hb",
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
        )
        chunks = list(stream)
        text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        assert text == response.choices[0].message.content
        (finish,) = [c for c in chunks if c.choices and c.choices[0].finish_reason]
        assert finish.model_extra["citations"] == response.model_extra["citations"]
        assert chunks[-1].usage is not None

        with pytest.raises(openai.NotFoundError) as missing:
            client.chat.completions.create(model="rag:ghost", messages=messages)
        assert missing.value.code == "collection_not_found"
        ids = [m.id for m in client.models.list()]
        assert "rag:hb" in ids and "rag:secret" in ids


# -- /v1/retrieve ----------------------------------------------------------------------------


def test_retrieve_returns_scored_chunks_without_generation(docs_home: Path) -> None:
    served = Served(docs_home)
    r = served.retrieve(collection="hb", query="paid annual leave days", k=3)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["object"] == "list" and body["collection"] == "hb"
    assert body["embedding_model"] == "hashing-test@1"
    hits = body["data"]
    assert len(hits) == 3
    assert Path(hits[0]["doc"]).name == "leave-policy.md"
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    for hit in hits:
        assert {"chunk_id", "doc", "title", "section", "start", "end", "text", "scores"} <= set(hit)
        source = Path(hit["doc"]).read_text(encoding="utf-8")
        assert hit["text"].strip() in source
    assert served.asked == [] and served.scripted.calls == []  # nothing generated
    assert len(served.retrieve(collection="hb", query="leave").json()["data"]) == 5  # default k


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"query": "leave"}, "collection"),
        ({"collection": "hb"}, "query"),
        ({"collection": "hb", "query": "   "}, "query"),
        ({"collection": "hb", "query": "leave", "k": 0}, "k"),
        ({"collection": "hb", "query": "leave", "k": "many"}, "k"),
        ({"collection": "hb", "query": "leave", "reranker": "magic"}, "reranker"),
        ({"collection": "hb", "query": "leave", "model": "x"}, "model"),
        ({"collection": 3, "query": "leave"}, "collection"),
    ],
)
def test_retrieve_bad_bodies_name_the_parameter(docs_home: Path, body: dict, param: str) -> None:
    assert_error(Served(docs_home).retrieve(**body), 400, param=param)


def test_unknown_collections_are_404(docs_home: Path) -> None:
    served = Served(docs_home)
    error = assert_error(
        served.retrieve(collection="ghost", query="x"), 404, "collection", "collection_not_found"
    )
    assert "'ghost' does not exist" in error["message"]
    assert_error(served.retrieve(collection="Not A Name", query="x"), 404, "collection")
    assert_error(served.chat(model="rag:ghost"), 404, "model", "collection_not_found")
    assert_error(served.chat(model="fake", collection="ghost"), 404, "collection")
    assert_error(served.client.get("/v1/models/rag:ghost"), 404, "model")
    assert served.asked == []


def test_a_collection_indexed_with_another_embedder_is_a_clear_409(docs_home: Path) -> None:
    served = Served(docs_home, backend=HashingBackend(identity="other-model@2"))
    error = assert_error(served.chat(), 409, "model", "embedding_model_mismatch")
    assert "hashing-test@1" in error["message"] and "cuvee docs reindex hb" in error["message"]
    assert_error(served.retrieve(collection="hb", query="leave"), 409, "collection")
    assert served.asked == []


def test_chat_parameters_that_do_not_fit_a_document_answer_are_refused(docs_home) -> None:
    served = Served(docs_home)
    cases = [
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "tools"),
        ({"k": 0}, "k"),
        ({"k": 51}, "k"),
        ({"reranker": "magic"}, "reranker"),
        ({"collection": "secret"}, "collection"),  # contradicts rag:hb
        ({"model": "fake", "collection": "hb", "rag_model": "other"}, "rag_model"),
        ({"model": "fake", "k": 3}, "k"),  # no collection: k would be ignored
        ({"messages": [{"role": "system", "content": "Be brief."}]}, "messages"),
        ({"messages": [{"role": "user", "content": "  "}]}, "messages[0].content"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
    ]
    for body, param in cases:
        assert_error(served.chat(**body), 400, param=param)
    assert_error(served.chat(rag_model="nope"), 404, "rag_model", "model_not_found")
    assert_error(served.chat(rag_model="rag:hb"), 404, "rag_model")
    r = served.client.post("/v1/completions", json={"model": "rag:hb", "prompt": "x"})
    assert_error(r, 400, "model")
    assert served.asked == []


def test_no_answering_model_anywhere_is_a_404_on_the_default(docs_home: Path) -> None:
    served = Served(docs_home, default_chat_model=None, default_base="missing-base")
    assert_error(served.chat(), 404, "model", "model_not_found")


# -- models and keys -------------------------------------------------------------------------


def test_models_lists_rag_ids_without_keys(docs_home: Path) -> None:
    served = Served(docs_home)
    models = served.client.get("/v1/models").json()["data"]
    rag = {m["id"]: m for m in models if m["id"].startswith("rag:")}
    assert set(rag) == {"rag:hb", "rag:secret"}
    assert rag["rag:hb"]["kind"] == "rag" and rag["rag:hb"]["collection"] == "hb"
    assert rag["rag:hb"]["created"] > 0
    assert served.client.get("/v1/models/rag:hb").json()["id"] == "rag:hb"


def test_keys_restricted_to_collections_never_see_the_others(docs_home, tmp_path) -> None:
    store = KeyStore(tmp_path / "keys.sqlite")
    _, everything = store.create("all")
    _, limited = store.create("limited", collections=["hb"])
    _, other_models = store.create("other-only", models=["other"], collections=["hb"])
    served = Served(docs_home, keys=store)
    auth = {
        name: {"Authorization": f"Bearer {k}"}
        for name, k in [("all", everything), ("limited", limited), ("other-only", other_models)]
    }

    assert {"rag:hb", "rag:secret"} <= set(served.model_ids(auth["all"]))
    ids = served.model_ids(auth["limited"])
    assert "rag:hb" in ids and "rag:secret" not in ids
    # a key that may not use the default answering model is offered no rag: id
    assert not [m for m in served.model_ids(auth["other-only"]) if m.startswith("rag:")]

    hidden = assert_error(served.chat(auth["limited"], model="rag:secret"), 404, "model")
    missing = assert_error(served.chat(auth["limited"], model="rag:ghost"), 404, "model")
    assert hidden["message"].replace("secret", "X") == missing["message"].replace("ghost", "X")
    assert hidden["code"] == missing["code"] == "collection_not_found"
    assert_error(served.chat(auth["limited"], model="fake", collection="secret"), 404)
    r = served.retrieve(auth["limited"], collection="secret", query="password")
    hidden = assert_error(r, 404, "collection")
    r = served.retrieve(auth["limited"], collection="ghost", query="password")
    missing = assert_error(r, 404, "collection")
    assert hidden["message"].replace("secret", "X") == missing["message"].replace("ghost", "X")
    assert_error(served.client.get("/v1/models/rag:secret", headers=auth["limited"]), 404)
    assert served.asked == [] and served.scripted.calls == []  # its chunks reached no one

    assert served.chat(auth["limited"]).status_code == 200
    assert served.retrieve(auth["limited"], collection="hb", query="leave").status_code == 200
    r = served.retrieve(auth["all"], collection="secret", query="password")
    assert r.status_code == 200 and r.json()["data"]
    # the answering model must be one the key may use
    assert_error(served.chat(auth["other-only"]), 404, "model", "model_not_found")
    assert served.chat(auth["other-only"], rag_model="other").status_code == 200
    assert_error(served.chat({}), 401)


OLD_SCHEMA = """
CREATE TABLE keys (
    key_id TEXT PRIMARY KEY, name TEXT NOT NULL, sha256 TEXT NOT NULL, rpm INTEGER,
    tpm INTEGER, models TEXT, created_at TEXT NOT NULL, revoked_at TEXT
);
CREATE UNIQUE INDEX keys_active_name ON keys (name) WHERE revoked_at IS NULL;
"""


def test_a_keys_file_from_before_collections_keeps_working(tmp_path: Path) -> None:
    path = tmp_path / "keys.sqlite"
    secret = "cv-0123456789ab-" + "s" * 43
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    db.execute(
        "INSERT INTO keys VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        ("0123456789ab", "old", digest(secret), 5, None, '["demo"]', "2024-01-01T00:00:00Z", None),
    )
    db.commit()
    db.close()

    store = KeyStore(path)
    key = store.verify(secret)
    assert key is not None and key.name == "old" and key.rpm == 5 and key.models == ("demo",)
    # limited to models and silent on collections: documents are granted explicitly, never
    # as a side effect of a key made before they existed
    assert key.collections is None and not key.sees("anything")
    assert ApiKey("x", "free", None, None, None, "2024-01-01T00:00:00Z").sees("anything")
    record, new_secret = store.create("new", collections=["hb", "hb", " faq "])
    assert record.collections == ("hb", "faq")
    assert store.verify(new_secret).collections == ("hb", "faq")
    assert store.revoke("new").collections == ("hb", "faq")
    store.close()
    # a second open (another process, say) finds the column there and changes nothing
    again = KeyStore(path)
    assert [k.name for k in again.list()] == ["old", "new"]
    columns = [row[1] for row in sqlite3.connect(path).execute("PRAGMA table_info(keys)")]
    assert columns.count("collections") == 1
    with pytest.raises(Exception, match="names no collection"):
        again.create("empty", collections=[" ", ""])


def test_keys_cli_create_with_collections_and_list(docs_home: Path) -> None:
    from cuvee.cli.keys import keys

    settings = load_settings()
    runner = CliRunner()
    made = runner.invoke(
        keys, ["create", "--name", "bot", "--collections", "hb,nothere"], obj=settings
    )
    assert made.exit_code == 0, made.output
    assert "no collection 'nothere' yet" in made.stderr and "collections hb, nothere" in made.stderr
    listed = runner.invoke(keys, ["list"], obj=settings).stdout
    assert "COLLECTIONS" in listed and "hb,nothere" in listed
    as_json = json.loads(runner.invoke(keys, ["list", "--json"], obj=settings).stdout)
    assert as_json[0]["collections"] == ["hb", "nothere"]


# -- collections as the server keeps them ----------------------------------------------------


def test_collections_are_opened_once_and_follow_changes(docs_home: Path, tmp_path: Path) -> None:
    served = Served(docs_home)
    first = served.docs.open("hb", None, "collection")
    assert served.docs.open("hb", None, "collection") is first
    before = served.retrieve(collection="hb", query="zebra migration fjord", k=50).json()["data"]
    assert not any("zebra" in h["text"] for h in before)

    # a document added while the server runs is found (the version counter)
    extra = tmp_path / "zoo.md"
    extra.write_text("# Zoo\n\nThe zebra migration crosses the fjord every spring.\n")
    writer = index.open_collection(docs_home, "hb")
    ingest(writer, HashingBackend(), [extra])
    hits = served.retrieve(collection="hb", query="zebra migration fjord", k=1).json()["data"]
    assert Path(hits[0]["doc"]).name == "zoo.md"
    assert served.docs.open("hb", None, "collection") is first

    # removed: 404; re-created under the same name: the new one is opened
    index.remove(docs_home, "hb")
    assert_error(served.retrieve(collection="hb", query="zebra"), 404, "collection")
    assert "rag:hb" not in served.model_ids()
    backend = HashingBackend()
    fresh = index.create(docs_home, "hb", backend.identity, backend.dim)
    ingest(fresh, backend, [extra])
    assert served.docs.open("hb", None, "collection") is not first
    data = served.retrieve(collection="hb", query="leave", k=5).json()["data"]
    assert {Path(h["doc"]).name for h in data} == {"zoo.md"}


def test_the_embedding_backend_is_loaded_once(docs_home: Path) -> None:
    made: list[HashingBackend] = []

    def factory() -> HashingBackend:
        made.append(HashingBackend())
        return made[-1]

    settings = load_settings({"default_chat_model": "fake"})
    fakes = Fakes()
    registry = ModelRegistry(settings, opener=fakes.open, names=lambda: ["fake"])
    docs = DocsService(docs_home, factory, lambda state, model, params: Scripted(SUPPORTED))
    client = TestClient(create_app(settings, registry, docs=docs))
    assert made == []  # nothing loaded before it is needed
    for _ in range(3):
        assert (
            client.post("/v1/retrieve", json={"collection": "hb", "query": "x"}).status_code == 200
        )
    payload = {"model": "rag:hb", "messages": [{"role": "user", "content": QUESTION}]}
    assert client.post("/v1/chat/completions", json=payload).status_code == 200
    assert len(made) == 1
