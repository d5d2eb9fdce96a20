"""`cuvee serve` fuzzed with schemathesis from its own /openapi.json: every operation, with
requests that fit the schema and requests that break it, against the real app over the fake
engine. No answer may be a 5xx, every 4xx must have OpenAI's error shape, and the server must
still answer a plain request at the end. Reproducible: hypothesis runs derandomized.

A second pass pins ``model`` (and ``collection``) to names the server has, so generated
requests get past the model check into generation, embedding and document search rather than
stopping at a 404. Each failure the fuzzer found is kept as a small test in test_serve_limits.

Run with ``-s`` to see the figures (requests sent, statuses, 5xx count)."""

from __future__ import annotations

import copy
import json
import shutil
from collections import Counter
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode

from cuvee.config import load_settings
from cuvee.docs import index
from cuvee.docs.ingest import ingest
from cuvee.serve.app import create_app
from cuvee.serve.keys import Authenticator
from cuvee.serve.models import ModelRegistry
from cuvee.serve.rag import DocsService
from docs_fakes import HashingBackend
from test_serve import Fakes, chat

# Generated requests per operation and mode, for each pass. Chat bodies cost the most to
# generate (messages, tools and schemas nest deeply), so they get fewer.
BUDGET = {
    "/v1/chat/completions": 120,
    "/v1/completions": 180,
    "/v1/embeddings": 180,
    "/v1/retrieve": 150,
    "/v1/models/{model_id}": 150,
    "/v1/models": 60,
}
PINNED_BUDGET = {
    "/v1/chat/completions": 120,
    "/v1/completions": 120,
    "/v1/embeddings": 80,
    "/v1/retrieve": 60,
}
OTHER_BUDGET = 5  # operations a pass does not name (/health takes no parameters: one request)
MIN_REQUESTS = 2000
# Parameters the server declares but refuses whenever they are set.
REFUSED = ("logit_bias", "functions", "function_call", "audio", "prediction", "reasoning_effort")
REFUSED += ("modalities", "suffix", "best_of")
EMBEDDING_DIM = 8


class FakeEmbedder:
    """The /v1/embeddings embedder without a model: one constant vector per text."""

    dim = EMBEDDING_DIM

    def embed(self, texts: list[str]) -> tuple[np.ndarray, int]:
        return np.ones((len(texts), self.dim), dtype=np.float32), sum(len(t) for t in texts)


@pytest.fixture
def fuzzed_app(isolated_home: Path, tmp_path: Path):
    """The real app: fake engines "fake" and "other", a fake embedder, and a collection "hb"
    of one sample document searched with a hashing embedder."""
    folder = tmp_path / "docs"
    folder.mkdir()
    sample = resources.files("cuvee.docs") / "sample" / "docs" / "security.txt"
    shutil.copyfile(str(sample), folder / "security.txt")
    backend = HashingBackend()
    collection = index.create(isolated_home, "hb", backend.identity, backend.dim)
    ingest(collection, backend, [folder])
    collection.close()
    settings = load_settings({"default_chat_model": "fake"})
    fakes = Fakes()
    registry = ModelRegistry(settings, opener=fakes.open, names=lambda: ["fake", "other"])
    app = create_app(
        settings,
        registry,
        Authenticator(None),
        embedder_factory=FakeEmbedder,
        docs=DocsService(isolated_home, lambda: backend),
    )
    return app, fakes


def pinned(spec: dict[str, Any]) -> dict[str, Any]:
    """The schema with ``model`` and ``collection`` limited to what the server has."""
    spec = copy.deepcopy(spec)
    schemas = spec["components"]["schemas"]
    chat = schemas["ChatCompletionRequest"]["properties"]
    chat["model"] = {"enum": ["fake", "other", "rag:hb"]}
    chat["collection"] = {"enum": ["hb", None]}
    # messages and parameters as clients send them, so most requests reach generation rather
    # than a 400 for a parameter refused by name (covered by the first pass)
    schemas["ChatMessage"] = {
        "type": "object",
        "properties": {
            "role": {"enum": ["system", "developer", "user", "assistant"]},
            "content": {"type": "string"},
        },
        "required": ["role", "content"],
        "additionalProperties": False,
    }
    completion = schemas["CompletionRequest"]["properties"]
    completion["model"] = {"enum": ["fake", "other"]}
    for refused in REFUSED:
        chat.pop(refused, None)
        completion.pop(refused, None)
    embedding = schemas["EmbeddingRequest"]["properties"]
    embedding["model"] = {"enum": ["all-minilm-l6-v2"]}
    embedding["dimensions"] = {"enum": [EMBEDDING_DIM, None]}
    schemas["RetrieveRequest"]["properties"]["collection"] = {"enum": ["hb"]}
    return spec


def error_shape_problem(response) -> str | None:
    """Why an error response is not OpenAI's error object (None when it is)."""
    try:
        body = response.json()
    except ValueError:
        return "not JSON"
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or set(error) != {"message", "type", "param", "code"}:
        return f"not {{'error': {{message, type, param, code}}}}: {body!r:.200}"
    if not isinstance(error["message"], str) or not error["message"]:
        return "empty message"
    if not isinstance(error["type"], str):
        return "type is not a string"
    return None


class Tally:
    """What the fuzzer sent and what came back; the first few bad answers, to reproduce."""

    def __init__(self) -> None:
        self.statuses: Counter[tuple[str, int]] = Counter()
        self.failures: list[str] = []

    @property
    def sent(self) -> int:
        return sum(self.statuses.values())

    @property
    def server_errors(self) -> int:
        return sum(n for (_, status), n in self.statuses.items() if status >= 500)

    def record(self, case, response) -> None:
        label = case.operation.label
        self.statuses[(label, response.status_code)] += 1
        problem = None
        if response.status_code >= 500:
            problem = f"status {response.status_code}: {response.text[:300]}"
        elif response.status_code >= 400:
            problem = error_shape_problem(response)
        if problem is not None and len(self.failures) < 10:
            self.failures.append(f"{label}: {problem}\n  sent: {sent(case)}")


def sent(case) -> str:
    """The request, to reproduce it (schemathesis' curl command masks fields such as
    ``max_tokens`` as if they were secrets)."""
    kwargs = case.as_transport_kwargs(base_url="http://testserver")
    body = kwargs.get("json", kwargs.get("data"))
    shown = json.dumps(body) if "json" in kwargs else repr(body)
    headers = {k: v for k, v in kwargs["headers"].items() if k.lower() == "authorization"}
    return f"{kwargs['method']} {kwargs['url']} {headers or ''} {shown:.2000}"


def fuzz(schema, client: TestClient, budget: dict[str, int], tally: Tally) -> None:
    """Send each operation's generated requests (both modes) through ``client``."""
    for result in schema.get_all_operations():
        operation = result.ok()
        examples = budget.get(operation.path, OTHER_BUDGET)
        if not examples:
            continue
        # a GET has nothing to break: any path segment or header value is a valid string
        modes = [GenerationMode.POSITIVE] + [GenerationMode.NEGATIVE] * bool(operation.body)
        for mode in modes:

            @settings(
                max_examples=examples,
                derandomize=True,
                database=None,
                deadline=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(mode))
            def send(case) -> None:
                kwargs = case.as_transport_kwargs(base_url=str(client.base_url))
                if "data" in kwargs:
                    kwargs["content"] = kwargs.pop("data")
                kwargs.pop("cookies", None)
                tally.record(case, client.request(**kwargs))

            send()


def test_fuzzed_requests_get_no_5xx_and_only_openai_shaped_errors(fuzzed_app) -> None:
    app, fakes = fuzzed_app
    tally = Tally()
    with TestClient(app, raise_server_exceptions=False) as client:
        spec = client.get("/openapi.json").json()
        fuzz(schemathesis.openapi.from_asgi("/openapi.json", app), client, BUDGET, tally)
        fuzz(schemathesis.openapi.from_dict(pinned(spec)), client, PINNED_BUDGET, tally)
        after = chat(client)
        assert after.status_code == 200, after.text
        assert after.json()["choices"][0]["message"]["content"] == "Hello, world!"

    print(f"\nschemathesis: {tally.sent} requests, {tally.server_errors} with a 5xx status")
    for (label, status), n in sorted(tally.statuses.items()):
        print(f"  {label}: {status} x{n}")
    assert tally.failures == [], "\n".join(tally.failures)
    assert tally.sent >= MIN_REQUESTS
    operations = {label for label, _ in tally.statuses}
    assert len(operations) == len(spec_operations(spec))  # every operation was fuzzed
    # the pinned pass reached the engine, the embedder and the collection
    assert fakes.opened["fake"].submitted and fakes.opened["other"].submitted
    assert any(status == 200 for (label, status) in tally.statuses if "retrieve" in label)
    assert any(status == 200 for (label, status) in tally.statuses if "embeddings" in label)


def spec_operations(spec: dict[str, Any]) -> list[str]:
    return [f"{m.upper()} {p}" for p, methods in spec["paths"].items() for m in methods]


def test_the_fuzzer_reports_a_5xx_and_a_malformed_error() -> None:
    """The checks themselves can fail: a 500 and a 400 without OpenAI's shape are both caught."""

    class Response:
        def __init__(self, status: int, body: Any) -> None:
            self.status_code = status
            self.text = json.dumps(body)

        def json(self) -> Any:
            return json.loads(self.text)

    class Operation:
        label = "POST /v1/x"

    class Case:
        operation = Operation()

        def as_transport_kwargs(self, base_url: str) -> dict[str, Any]:
            return {"method": "POST", "url": f"{base_url}/v1/x", "headers": {}, "json": {}}

    tally = Tally()
    tally.record(Case(), Response(200, {"ok": True}))
    assert tally.failures == []
    tally.record(Case(), Response(500, {"detail": "boom"}))
    tally.record(Case(), Response(400, {"detail": "bad"}))
    error = {"message": "x", "type": "invalid_request_error", "param": None, "code": None}
    tally.record(Case(), Response(404, {"error": error}))
    assert tally.server_errors == 1 and tally.sent == 4 and len(tally.failures) == 2
