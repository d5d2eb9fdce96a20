"""The web UI's routes without a browser: the files and their headers, the size budget, and the
two small endpoints the documents screen uses (``/v1/collections`` and one document's text),
with the same key checks as the rest of /v1."""

from __future__ import annotations

import json
from pathlib import Path

from cuvee.serve.keys import KeyStore
from cuvee.serve.ui import CSP, assets
from test_serve import assert_error
from test_serve_rag import Served, docs_home  # noqa: F401  (the fixture)


def test_the_root_redirects_to_the_ui_and_its_files_carry_a_strict_policy(
    docs_home: Path,  # noqa: F811
) -> None:
    client = Served(docs_home).client
    r = client.get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/ui/"
    assert client.get("/ui", follow_redirects=False).headers["location"] == "/ui/"
    page = client.get("/ui/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert page.headers["content-security-policy"] == CSP
    assert "script-src 'self'" in CSP and "connect-src 'self'" in CSP
    assert page.headers["x-content-type-options"] == "nosniff"
    script = client.get("/ui/app.js")
    assert script.headers["content-type"].startswith("text/javascript")
    # every file the page names is served
    for name in ("ui.css", "app.js"):
        assert f"/ui/{name}" in page.text
    for name in assets():
        assert client.get(f"/ui/{name}").status_code == 200


def test_a_missing_ui_file_is_an_openai_shaped_404(docs_home: Path) -> None:  # noqa: F811
    r = Served(docs_home).client.get("/ui/nothing.js")
    assert_error(r, 404, code="not_found")
    assert Served(docs_home).client.get("/ui/../pyproject.toml").status_code == 404


def test_the_ui_stays_small_and_loads_nothing_from_elsewhere() -> None:
    files = assets()
    assert {"index.html", "app.js", "ui.css", "markdown.js"} <= set(files)
    assert sum(len(data) for data in files.values()) <= 200_000  # the budget
    for name, data in files.items():
        text = data.decode("utf-8").replace("http://www.w3.org/2000/svg", "")  # a namespace
        assert "http://" not in text and "https://" not in text.replace("https?:", ""), (
            f"{name} names another host"
        )
        assert ".innerHTML" not in text and "insertAdjacentHTML" not in text, name


def test_collections_lists_what_the_key_may_see(docs_home: Path, tmp_path: Path) -> None:  # noqa: F811
    keys = KeyStore(tmp_path / "keys.sqlite")
    _, restricted = keys.create("analyst", collections=["hb"])
    _, everything = keys.create("admin")
    served = Served(docs_home, keys=keys)
    r = served.client.get("/v1/collections", headers={"Authorization": f"Bearer {everything}"})
    assert r.status_code == 200, r.text
    listed = {c["id"]: c for c in r.json()["data"]}
    assert set(listed) == {"hb", "secret"}
    assert listed["hb"]["documents"] >= 2 and listed["hb"]["chunks"] >= listed["hb"]["documents"]
    assert listed["hb"]["model"] == "rag:hb"
    assert listed["hb"]["embedding_model"] == "hashing-test@1"
    assert "path" not in listed["hb"]  # no server paths
    r = served.client.get("/v1/collections", headers={"Authorization": f"Bearer {restricted}"})
    assert [c["id"] for c in r.json()["data"]] == ["hb"]
    assert_error(served.client.get("/v1/collections"), 401)


def test_a_document_is_read_whole_by_the_path_a_citation_names(docs_home: Path) -> None:  # noqa: F811
    served = Served(docs_home)
    answer = served.chat().json()
    (citation,) = answer["citations"]
    r = served.client.get("/v1/collections/hb/document", params={"ref": citation["doc"]})
    assert r.status_code == 200, r.text
    doc = r.json()
    assert doc["text"][citation["start"] : citation["end"]] == citation["quote"]
    assert doc["path"] == citation["doc"] and doc["title"] == citation["title"]
    # and by id
    again = served.client.get("/v1/collections/hb/document", params={"ref": str(doc["id"])})
    assert again.json()["text"] == doc["text"]
    # the answer lists what the checker did with each sentence the model wrote
    verdicts = {s["text"]: (s["verdict"], s["n"]) for s in answer["sentences"]}
    assert verdicts["Staff also get a free car."][0] == "unsupported"
    assert any(v == ("supported", 1) for v in verdicts.values())


def test_document_errors(docs_home: Path, tmp_path: Path) -> None:  # noqa: F811
    keys = KeyStore(tmp_path / "keys.sqlite")
    _, restricted = keys.create("analyst", collections=["hb"])
    served = Served(docs_home, keys=keys)
    auth = {"Authorization": f"Bearer {restricted}"}
    r = served.client.get("/v1/collections/hb/document", params={"ref": "nope.md"}, headers=auth)
    assert_error(r, 404, code="document_not_found")
    # another collection answers exactly as a missing one
    hidden = served.client.get(
        "/v1/collections/secret/document", params={"ref": "security.txt"}, headers=auth
    )
    missing = served.client.get(
        "/v1/collections/nothing/document", params={"ref": "security.txt"}, headers=auth
    )
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["error"]["code"] == missing.json()["error"]["code"]
    assert_error(served.client.get("/v1/collections/hb/document", headers=auth), 400)


def test_a_vote_is_appended_for_models_the_key_may_use(docs_home: Path, tmp_path: Path) -> None:  # noqa: F811
    from cuvee.serve.votes import votes_path

    keys = KeyStore(tmp_path / "keys.sqlite")
    _, narrow = keys.create("narrow", models=["fake"])
    _, wide = keys.create("wide")
    served = Served(docs_home, keys=keys)
    vote = {
        "prompt": "Hi",
        "a": {"model": "fake", "answer": "Hello"},
        "b": {"model": "other", "answer": "Hey"},
        "winner": "tie",
    }
    r = served.client.post("/v1/votes", json=vote, headers={"Authorization": f"Bearer {wide}"})
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "vote" and r.json()["winner"] == "tie"
    (line,) = votes_path(docs_home).read_text(encoding="utf-8").splitlines()
    stored = json.loads(line)
    assert stored["vote"]["key"] == "wide" and wide not in line  # the name, never the secret
    # a model the key may not use answers as a missing one; nothing is written
    r = served.client.post("/v1/votes", json=vote, headers={"Authorization": f"Bearer {narrow}"})
    assert_error(r, 404, code="model_not_found")
    bad = {**vote, "winner": "both"}
    r = served.client.post("/v1/votes", json=bad, headers={"Authorization": f"Bearer {wide}"})
    assert_error(r, 400, param="winner")
    same = {**vote, "b": {"model": "fake", "answer": "x"}}
    r = served.client.post("/v1/votes", json=same, headers={"Authorization": f"Bearer {wide}"})
    assert_error(r, 400)
    assert len(votes_path(docs_home).read_text(encoding="utf-8").splitlines()) == 1


def test_model_objects_carry_lineage_for_the_compare_labels(tiny_gemma_dir: Path) -> None:
    from cuvee.serve.models import ModelRegistry
    from helpers import store_tiny

    settings, _ = store_tiny(tiny_gemma_dir, "tiny", licence="MIT")
    described = ModelRegistry(settings, opener=lambda name: None).describe("tiny")
    assert described["licence"] == {"id": "MIT", "commercial_use": True}
    assert described["created_at"] and "parent" in described


def test_the_store_is_listed_and_read_for_models_the_key_may_use(
    tiny_gemma_dir: Path,
    docs_home: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    from helpers import store_tiny

    store_tiny(tiny_gemma_dir, "tiny", licence="MIT")
    store_tiny(tiny_gemma_dir, "hidden", licence="MIT")
    keys = KeyStore(tmp_path / "keys.sqlite")
    _, narrow = keys.create("narrow", models=["tiny"])
    served = Served(docs_home, keys=keys)
    auth = {"Authorization": f"Bearer {narrow}"}
    r = served.client.get("/v1/store/models", headers=auth)
    assert r.status_code == 200, r.text
    (listed,) = r.json()["data"]
    assert listed["id"] == "tiny" and listed["licence"]["id"] == "MIT"
    assert listed["commercial_use"] is True and listed["kind"]
    r = served.client.get("/v1/store/models/tiny", headers=auth)
    assert r.status_code == 200, r.text
    model = r.json()
    assert model["manifest"]["name"] == "tiny" and "chat_template" not in model["manifest"]
    assert model["manifest"]["files"]  # hashes of the weights
    hidden = served.client.get("/v1/store/models/hidden", headers=auth)
    missing = served.client.get("/v1/store/models/nothing", headers=auth)
    assert_error(hidden, 404, code="model_not_found")
    assert hidden.json()["error"]["message"].replace("hidden", "X") == missing.json()["error"][
        "message"
    ].replace("nothing", "X")


def test_training_needs_an_admin_and_a_valid_recipe(docs_home: Path, tmp_path: Path) -> None:  # noqa: F811
    from fastapi.testclient import TestClient

    keys = KeyStore(tmp_path / "keys.sqlite")
    _, plain = keys.create("plain")
    _, boss = keys.create("boss", admin=True)
    served = Served(docs_home, keys=keys)
    start = {"name": "mine", "data": ["starter"], "max_steps": 2}
    r = served.client.post("/v1/runs", json=start, headers={"Authorization": f"Bearer {plain}"})
    assert_error(r, 403, code="admin_required")
    assert_error(served.client.get("/v1/runs", headers={"Authorization": f"Bearer {plain}"}), 403)
    admin = {"Authorization": f"Bearer {boss}"}
    listed = served.client.get("/v1/runs", headers=admin)
    assert listed.status_code == 200 and "starter-lora-cpu" in listed.json()["recipes"]
    # a bad knob, recipe or name is refused before anything starts
    bad = {**start, "knobs": {"lr": -1}}
    assert_error(served.client.post("/v1/runs", json=bad, headers=admin), 400, param="knobs")
    bad = {**start, "knobs": {"no_such_knob": 1}}
    assert "no_such_knob" in served.client.post("/v1/runs", json=bad, headers=admin).text
    bad = {**start, "recipe": "nothing"}
    assert_error(served.client.post("/v1/runs", json=bad, headers=admin), 400, param="recipe")
    bad = {**start, "name": "../up"}
    assert_error(served.client.post("/v1/runs", json=bad, headers=admin), 400, param="name")
    assert not served.settings.runs_dir.exists() or not any(served.settings.runs_dir.iterdir())
    # with no keys at all: loopback only
    open_app = Served(docs_home).app
    remote = TestClient(open_app, client=("10.0.0.8", 5000)).get("/v1/runs")
    assert_error(remote, 403, code="admin_required")
    local = TestClient(open_app, client=("127.0.0.1", 5000)).get("/v1/runs")
    assert local.status_code == 200, local.text


def test_keys_are_managed_by_an_admin_and_secrets_shown_once(
    docs_home: Path,  # noqa: F811
    tmp_path: Path,
) -> None:
    keys = KeyStore(tmp_path / "keys.sqlite")
    _, plain = keys.create("plain")
    _, boss = keys.create("boss", admin=True)
    served = Served(docs_home, keys=keys)
    admin = {"Authorization": f"Bearer {boss}"}
    assert_error(served.client.get("/v1/keys", headers={"Authorization": f"Bearer {plain}"}), 403)
    made = served.client.post(
        "/v1/keys", json={"name": "bot", "rpm": 5, "collections": ["hb"]}, headers=admin
    )
    assert made.status_code == 200, made.text
    secret = made.json()["key"]
    assert secret.startswith("cv-") and made.json()["collections"] == ["hb"]
    listed = served.client.get("/v1/keys", headers=admin)
    assert {k["name"] for k in listed.json()["data"]} == {"plain", "boss", "bot"}
    assert secret not in listed.text and "sha256" not in listed.text
    # the new key works at once, within its scope
    seen = served.client.get("/v1/collections", headers={"Authorization": f"Bearer {secret}"})
    assert [c["id"] for c in seen.json()["data"]] == ["hb"]
    taken = served.client.post("/v1/keys", json={"name": "bot"}, headers=admin)
    assert_error(taken, 400)
    budgeted = {"name": "capped", "budgets": ["usd/month=20", "tokens/day=1000"]}
    capped = served.client.post("/v1/keys", json=budgeted, headers=admin)
    assert capped.json()["budgets"] == {"usd/month": 20.0, "tokens/day": 1000}
    bad_budget = served.client.post(
        "/v1/keys", json={"name": "x", "budgets": ["usd/week=1"]}, headers=admin
    )
    assert "UNIT/PERIOD=AMOUNT" in assert_error(bad_budget, 400)["message"]
    revoked = served.client.post("/v1/keys/bot/revoke", headers=admin)
    assert revoked.status_code == 200 and revoked.json()["revoked_at"]
    gone = served.client.get("/v1/collections", headers={"Authorization": f"Bearer {secret}"})
    assert_error(gone, 401)
    assert_error(
        served.client.post("/v1/keys/bot/revoke", headers=admin), 404, code="key_not_found"
    )


def test_evaluations_need_an_admin_and_known_suites(docs_home: Path, tmp_path: Path) -> None:  # noqa: F811
    keys = KeyStore(tmp_path / "keys.sqlite")
    _, plain = keys.create("plain")
    _, boss = keys.create("boss", admin=True)
    served = Served(docs_home, keys=keys)
    body = {"models": ["fake"], "suites": ["tasks"], "limit": 1}
    r = served.client.post("/v1/evals", json=body, headers={"Authorization": f"Bearer {plain}"})
    assert_error(r, 403, code="admin_required")
    admin = {"Authorization": f"Bearer {boss}"}
    listed = served.client.get("/v1/evals", headers=admin)
    assert listed.status_code == 200 and "tasks" in listed.json()["suites"]
    bad = {**body, "suites": ["no-such-suite"]}
    assert_error(served.client.post("/v1/evals", json=bad, headers=admin), 400, param="suites")
    assert_error(served.client.post("/v1/evals", json={"models": []}, headers=admin), 400)
    for path in ("/v1/evals/eval-20260101-000000", "/v1/evals/../keys/report"):
        assert served.client.get(path, headers=admin).status_code == 404


def test_uploads_need_an_admin_and_a_readable_file(docs_home: Path, tmp_path: Path) -> None:  # noqa: F811
    import base64

    keys = KeyStore(tmp_path / "keys.sqlite")
    _, plain = keys.create("plain")
    _, boss = keys.create("boss", admin=True)
    served = Served(docs_home, keys=keys)
    text = base64.b64encode(b"The pond is 3 metres deep.\n").decode()
    body = {"files": [{"name": "pond.txt", "content_base64": text}]}
    r = served.client.post(
        "/v1/collections/garden/documents", json=body, headers={"Authorization": f"Bearer {plain}"}
    )
    assert_error(r, 403, code="admin_required")
    admin = {"Authorization": f"Bearer {boss}"}
    bad = {"files": [{"name": "run.exe", "content_base64": text}]}
    assert_error(
        served.client.post("/v1/collections/garden/documents", json=bad, headers=admin),
        400,
        param="files",
    )
    garbled = {"files": [{"name": "pond.txt", "content_base64": "%%%"}]}
    assert_error(
        served.client.post("/v1/collections/garden/documents", json=garbled, headers=admin), 400
    )
    assert_error(
        served.client.post("/v1/collections/Bad Name/documents", json=body, headers=admin), 400
    )
    assert "garden" not in [
        c["id"] for c in served.client.get("/v1/collections", headers=admin).json()["data"]
    ]
    ok = served.client.post("/v1/collections/garden/documents", json=body, headers=admin)
    assert ok.status_code == 200, ok.text
    assert len(ok.json()["added"]) == 1
    again = served.client.post("/v1/collections/garden/documents", json=body, headers=admin)
    assert again.json()["unchanged"] == 1
    synced = served.client.post("/v1/collections/garden/sync", headers=admin)
    assert synced.status_code == 200 and synced.json()["unchanged"] == 1
    (doc,) = served.client.get("/v1/collections/garden/documents", headers=admin).json()["data"]
    gone = served.client.post(
        "/v1/collections/garden/documents/remove", json={"ref": str(doc["id"])}, headers=admin
    )
    assert gone.status_code == 200
    assert not Path(doc["path"]).exists()  # the uploaded file goes with it
    missing = served.client.post(
        "/v1/collections/garden/documents/remove", json={"ref": "nope"}, headers=admin
    )
    assert_error(missing, 404, code="document_not_found")


def test_loopback_clients_and_uploaded_file_names() -> None:
    from cuvee.serve.deps import upload_name
    from cuvee.serve.keys import is_loopback

    # the same judgement for an address to bind and a client's address
    assert is_loopback("127.0.0.1") and is_loopback("127.0.0.9") and is_loopback("::1")
    assert is_loopback("::ffff:127.0.0.1")  # an IPv4 loopback client seen on an IPv6 socket
    assert not is_loopback("::ffff:10.0.0.8") and not is_loopback("10.0.0.8")
    assert not is_loopback("") and not is_loopback("testclient")
    assert upload_name("../../etc/passwd") == "passwd"
    assert upload_name("my notes (v2).md") == "my notes -v2-.md"
    assert upload_name("$(rm -rf).txt") == "rm -rf-.txt"  # no leading dash: not an option
    assert upload_name("...") == ""
