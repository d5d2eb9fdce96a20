"""Collections end to end with a hashing embedder: ingest, sync, retrieval, verification,
answers and their evaluation. No model is needed: generation is scripted."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from cuvee.docs import index, retrieval
from cuvee.docs.answer import AskResult, ask, check, is_abstention
from cuvee.docs.evaluate import load_qa, run, score
from cuvee.docs.ingest import ingest, reindex
from cuvee.docs.verify import key_facts, verify
from cuvee.errors import DocsError
from docs_fakes import SAMPLE, HashingBackend, Scripted, copy_sample


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    return copy_sample(tmp_path / "handbook")


@pytest.fixture
def backend() -> HashingBackend:
    return HashingBackend()


@pytest.fixture
def collection(tmp_path: Path, folder: Path, backend: HashingBackend):
    home = tmp_path / "home"
    coll = index.create(home, "handbook", backend.identity, backend.dim)
    ingest(coll, backend, [folder])
    return coll


def test_adding_the_same_folder_twice_indexes_nothing(collection, folder, backend) -> None:
    assert len(collection.documents()) == 6
    version = collection.version
    backend.embedded.clear()
    report = ingest(collection, backend, [folder])
    assert report.added == [] and report.updated == [] and len(report.unchanged) == 6
    assert backend.embedded == [] and collection.version == version


def test_editing_one_file_reindexes_only_that_file(collection, folder, backend) -> None:
    before = {d.path: d for d in collection.documents()}
    target = folder / "security.txt"
    target.write_text(target.read_text() + "\nBadges must be worn at all times.\n")
    backend.embedded.clear()
    report = ingest(collection, backend, [folder])
    assert report.updated == [str(target)] and report.added == []
    after = {d.path: d for d in collection.documents()}
    assert len(backend.embedded) == after[str(target)].chunks
    assert all("Badges" in t or "security" in t.lower() for t in backend.embedded)
    assert after[str(target)].sha256 != before[str(target)].sha256
    hits = retrieval.retrieve(collection, backend, "must badges be worn", k=1)
    assert hits[0].doc == str(target) and "Badges must be worn" in hits[0].text


def test_sync_removes_vanished_files_and_add_does_not(collection, folder, backend) -> None:
    (folder / "onboarding.md").unlink()
    report = ingest(collection, backend, [folder])
    assert report.removed == [] and len(collection.documents()) == 6
    report = ingest(collection, backend, [folder], sync=True)
    assert report.removed == [str(folder / "onboarding.md")]
    assert len(collection.documents()) == 5
    hits = retrieval.retrieve(collection, backend, "Wren wiki documentation", k=5)
    assert all("onboarding" not in h.doc for h in hits)


def test_a_bad_file_changes_nothing_unless_skipped(collection, folder, backend) -> None:
    (folder / "broken.pdf").write_bytes(b"%PDF-1.4 garbage")
    (folder / "new.md").write_text("# New\n\nA new page about the canteen menu.\n")
    version, docs = collection.version, collection.documents()
    with pytest.raises(DocsError, match=r"broken\.pdf") as caught:
        ingest(collection, backend, [folder])
    assert "--skip-errors" in (caught.value.hint or "")
    assert collection.version == version and collection.documents() == docs
    report = ingest(collection, backend, [folder], skip_errors=True)
    assert report.added == [str(folder / "new.md")]
    assert report.skipped[0]["path"].endswith("broken.pdf")


def test_missing_paths_and_bad_names_are_clear(tmp_path: Path, collection, backend) -> None:
    with pytest.raises(DocsError, match="no such file"):
        ingest(collection, backend, [tmp_path / "nope"])
    with pytest.raises(DocsError, match="invalid collection name"):
        index.create(tmp_path, "Bad Name!", "x", 4)
    with pytest.raises(DocsError, match="no collection named 'ghost'"):
        index.open_collection(tmp_path / "home", "ghost")


def test_another_embedding_model_is_refused_until_reindexed(collection, folder) -> None:
    other = HashingBackend(dim=32, identity="other-model@2")
    with pytest.raises(DocsError, match="cuvee docs reindex") as caught:
        retrieval.retrieve(collection, other, "leave", k=3)
    assert "hashing-test@1" in caught.value.message
    with pytest.raises(DocsError):
        ingest(collection, other, [folder])
    chunks = sum(d.chunks for d in collection.documents())
    assert reindex(collection, other) == chunks
    assert collection.embedding_model == "other-model@2" and collection.dim == 32
    assert retrieval.retrieve(collection, other, "annual leave days", k=1)[0].doc.endswith(
        "leave-policy.md"
    )


def test_hybrid_retrieval_finds_exact_rare_words_and_french(collection, backend) -> None:
    hits = retrieval.retrieve(collection, backend, "extension 4242", k=3)
    assert hits[0].doc.endswith("security.txt") and "bm25_rank" in hits[0].scores
    fr = retrieval.retrieve(collection, backend, "Quel est le montant de l'indemnité ?", k=1)
    assert fr[0].doc.endswith("teletravail.md") and "35 euros" in fr[0].text
    # every hit is a verbatim slice of its stored document
    for hit in hits + fr:
        text = collection.document_text(hit.doc_id)
        assert text[hit.start : hit.end] == hit.text
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    reranked = retrieval.retrieve(collection, backend, "extension 4242", k=3, reranker="coverage")
    assert "coverage" in reranked[0].scores


def _hits(collection, backend, question: str, k: int = 5):
    return retrieval.retrieve(collection, backend, question, k)


def test_verification_keeps_supported_sentences_with_verbatim_quotes(collection, backend):
    hits = _hits(collection, backend, "annual leave days carried over")
    leave = next(n for n, h in enumerate(hits, 1) if "27 days" in h.text)
    answer = (
        f"Full-time employees receive 27 days of paid annual leave [{leave}]. "
        f"Employees receive 40 days of paid annual leave [{leave}]. "
        f"Unused days can never be carried over [{leave}]. "
        "The moon is made of cheese."
    )
    verdicts = verify(answer, hits)
    assert [v.verdict for v in verdicts] == [
        "supported",
        "unsupported",
        "unsupported",
        "unsupported",
    ]
    assert verdicts[1].missing == ["40"]
    assert "(negation)" in verdicts[2].missing
    quote = verdicts[0].citation
    assert "27 days" in quote.quote
    text = collection.document_text(hits[leave - 1].doc_id)
    assert text[quote.start : quote.end] == quote.quote
    assert Path(quote.doc).read_text(encoding="utf-8")[quote.start : quote.end] == quote.quote


def test_a_wrong_citation_is_corrected_and_flagged(collection, backend) -> None:
    hits = _hits(collection, backend, "hotel limit capital cities and password length")
    wrong = next(n for n, h in enumerate(hits, 1) if "180 euros" not in h.text)
    (verdict,) = verify(f"The nightly hotel limit is 180 euros in capital cities [{wrong}].", hits)
    assert verdict.verdict == "supported" and verdict.reattributed
    assert "180 euros" in verdict.citation.quote and verdict.citation.n != wrong


def test_names_and_numbers_must_appear_in_the_source() -> None:
    assert key_facts("Claims above 500 euros go to Mireille Okafor in Lyon.") == [
        "500",
        "Mireille",
        "Okafor",
        "Lyon",
    ]
    # a possessive names its owner, in the source without the 's
    assert key_facts("Why did Daniel Forsyth's robot and Northwind’s line stop?") == [
        "Daniel",
        "Forsyth",
        "Northwind",
    ]


def test_ask_returns_only_supported_sentences_or_abstains(collection, backend) -> None:
    question = "What is the nightly hotel limit in capital cities?"
    hits = _hits(collection, backend, question)
    n = next(i for i, h in enumerate(hits, 1) if "180 euros" in h.text)
    generate = Scripted(
        f"The nightly hotel limit is 180 euros in capital cities [{n}]. "
        "Breakfast is always included by Hilton."
    )
    result = ask(collection, backend, question, generate, model="scripted")
    assert not result.abstained
    assert result.answer == "The nightly hotel limit is 180 euros in capital cities. [1]"
    assert [s.verdict for s in result.sentences] == ["supported", "unsupported"]
    (cite,) = result.citations
    assert cite.n == 1 and "180 euros" in cite.quote
    # the model saw numbered sources and the question
    prompt = generate.calls[0][0]["content"]
    assert "[1]" in prompt and question in prompt
    payload = json.loads(json.dumps(result.as_dict()))
    assert {"answer", "abstained", "citations", "sentences", "retrieval"} <= set(payload)
    assert set(payload["citations"][0]) >= {"doc", "title", "section", "start", "end", "quote"}

    made_up = ask(collection, backend, "Who is the CEO?", Scripted("The CEO is Jane Doe [1]."))
    assert made_up.abstained and made_up.answer.startswith("The documents do not say")
    assert made_up.citations == []
    said_so = ask(collection, backend, "Who is the CEO?", Scripted("The documents do not say."))
    assert said_so.abstained


def test_kept_unsupported_sentences_are_marked(collection, backend) -> None:
    question = "What is the nightly hotel limit in capital cities?"
    generate = Scripted(
        "The nightly hotel limit is 180 euros in capital cities. Rooms have 3 beds."
    )
    result = ask(collection, backend, question, generate, keep_unsupported=True)
    assert result.answer.endswith("Rooms have 3 beds. [unsupported]")


def test_qa_file_errors_name_the_line(tmp_path: Path) -> None:
    path = tmp_path / "qa.jsonl"
    path.write_text('{"question": "ok?", "answers": [], "docs": []}\n{"question": 3}\n')
    with pytest.raises(DocsError, match=r"qa\.jsonl:2: 'question'"):
        load_qa(path)
    path.write_text('{"question": "q", "answers": ["x"]}\n')
    with pytest.raises(DocsError, match="gold 'docs'"):
        load_qa(path)
    path.write_bytes(b'{"question": "caf\xe9?"}\n')  # Latin-1, not UTF-8
    with pytest.raises(DocsError, match="cannot read the QA file"):
        load_qa(path)


def test_evaluation_on_the_shipped_qa_set(collection, backend) -> None:
    items = load_qa(Path(str(SAMPLE / "qa.jsonl")))
    assert sum(not i.answerable for i in items) >= 8
    assert any(not i.answerable and "?" in i.question and "é" in i.question for i in items)

    def oracle(messages: list[dict]) -> str:
        """Copies the first source sentence holding a gold answer; abstains otherwise."""
        content = messages[0]["content"]
        question = content.rsplit("Question: ", 1)[1]
        item = next(i for i in items if i.question == question)
        for line in content.split("\n"):
            for sentence in line.split(". "):
                if item.answers and any(a in sentence for a in item.answers):
                    n = content[: content.index(sentence)].rsplit("\n[", 1)[1].split("]")[0]
                    return f"{sentence.rstrip('.')}. [{n}]"
        return "The documents do not say."

    metrics, records = run(collection, backend, items, oracle, k=5, baselines=("extractive",))
    figures = metrics["cuvee"]["all"]
    assert figures["questions"] == len(items) == len(records)
    assert figures["citation_validity"] == 1.0
    assert figures["unsupported_rate_returned"] == 0.0
    assert figures["answer_accuracy"] >= 0.7
    assert figures["answer_precision"] >= 0.8
    assert figures["abstention_recall"] >= 0.8
    assert figures["retrieval_hit_at_5"] >= 0.9
    assert figures["language_match"] >= 0.95
    # the baseline that always quotes the best-overlapping sentence never abstains
    assert metrics["extractive"]["all"]["answer_rate"] == 1.0
    assert metrics["extractive"]["all"]["abstention_recall"] == 0.0

    # whether to answer is decided before the model writes: a model that writes nothing
    # useful gets the same questions answered, each by its best passage quoted verbatim
    silent = [ask(collection, backend, i.question, Scripted("No idea.")) for i in items]
    never = score(collection, items, silent, 5)
    assert never["answer_rate"] == figures["answer_rate"]
    assert never["quote_share"] == 1.0 and never["citation_validity"] == 1.0
    assert never["abstention_precision"] == figures["abstention_precision"]


@pytest.mark.parametrize(
    ("claim", "why"),
    [
        # a number borrowed from another sentence of the same chunk
        ("Up to 27 unused days may be carried over into the next year.", "27"),
        # polarity, both ways
        ("Staff may disable full-disk encryption on their laptops.", "(the source negates it)"),
        ("Multi-factor authentication is not mandatory for email.", "(negation)"),
        # a name as the first word
        ("Jane approves expense claims above 500 euros.", "Jane"),
    ],
)
def test_claims_cannot_borrow_from_other_sentences(collection, backend, claim, why) -> None:
    hits = _hits(collection, backend, claim)
    (verdict,) = verify(claim, hits)
    assert verdict.verdict == "unsupported" and why in verdict.missing


def test_numbers_match_across_writing_conventions(tmp_path: Path, backend) -> None:
    folder = tmp_path / "numbers"
    folder.mkdir()
    (folder / "facts.md").write_text(
        "# Facts\n\nThe grant is 1,000 euros. Le budget est de 25 000 euros.\n\n"
        "The audit happened on 2024-05-01 at 10:00.\n"
    )
    coll = index.create(tmp_path / "h", "numbers", backend.identity, backend.dim)
    ingest(coll, backend, [folder])
    hits = retrieval.retrieve(coll, backend, "grant budget audit", k=3)
    for claim in (
        "The grant is 1000 euros.",
        "Le budget est de 25000 euros.",
        "The audit happened in 2024 at 10.",
    ):
        (verdict,) = verify(claim, hits)
        assert verdict.verdict == "supported", (claim, verdict.missing)
    (wrong,) = verify("The grant is 2,000 euros.", hits)
    assert wrong.verdict == "unsupported" and wrong.missing == ["2000"]


def test_gold_answers_match_whole_words_outside_citation_marks() -> None:
    from cuvee.docs.evaluate import contains_answer

    assert contains_answer("Employees get 2 days [1].", "2")
    assert not contains_answer("Employees get several days [1] [2].", "2")
    assert not contains_answer("It takes 12 days [1].", "2 days")
    assert contains_answer("L'indemnité est de 35 euros [1].", "35 EUROS")


def checked(collection, backend, question: str, text: str, cut: bool = False):
    """The verification half of an answer: ``text`` checked against the retrieved chunks."""
    result = AskResult(question, collection.name, "", True)
    return check(result, _hits(collection, backend, question), text, cut=cut)


def test_a_claim_about_something_else_is_not_an_abstention(collection, backend) -> None:
    question = "Does the badge contain personal data?"
    assert not is_abstention("The badge does not contain data.")
    assert is_abstention("The sources do not mention badges.")
    made_up = checked(collection, backend, question, "The badge does not contain data.")
    assert [s.verdict for s in made_up.sentences] == ["unsupported"]
    said_so = checked(collection, backend, question, "The sources do not mention badges.")
    assert [s.verdict for s in said_so.sentences] == ["no_claim"] and said_so.abstained


def test_an_emptied_file_is_no_longer_cited(collection, folder, backend) -> None:
    target = folder / "onboarding.md"
    target.write_text("   \n")
    report = ingest(collection, backend, [folder])
    assert report.removed == [str(target)]
    assert str(target) not in {d.path for d in collection.documents()}


def test_no_chunk_repeats_a_part_of_the_previous_one(tmp_path: Path) -> None:
    from cuvee.docs import chunking, loaders

    path = tmp_path / "units.md"
    # sentences of 400, 100 and 800 characters in one paragraph (default 900 / 150)
    path.write_text(("a" * 398) + ". " + ("b" * 98) + ". " + ("c" * 798) + ".")
    chunks = chunking.chunk(loaders.load(path))
    spans = [(c.start, c.end) for c in chunks]
    for (a0, b0), (a1, b1) in itertools.pairwise(spans):
        assert not (a0 <= a1 and b1 <= b0), spans


def test_true_sentences_the_question_did_not_ask_about_are_left_out(collection, backend):
    question = "What is the nightly hotel limit in capital cities?"
    result = checked(
        collection,
        backend,
        question,
        "The nightly hotel limit is 180 euros in capital cities. "
        "Meals are reimbursed up to 45 euros per day while travelling.",
    )
    assert [s.verdict for s in result.sentences] == ["supported", "off_topic"]
    assert "Meals" not in result.answer and len(result.citations) == 1


def test_a_sentence_cut_by_the_token_limit_is_not_a_claim(collection, backend) -> None:
    question = "What is the nightly hotel limit in capital cities?"
    text = "The nightly hotel limit is 180 euros in capital cities. The nightly"
    result = checked(collection, backend, question, text, cut=True)
    assert [s.verdict for s in result.sentences] == ["supported", "no_claim"]
    assert result.sentences[1].missing == ["(cut by max_tokens)"]
    whole = checked(collection, backend, question, text, cut=False)
    assert whole.sentences[1].missing != ["(cut by max_tokens)"]


def test_sentence_citations_use_the_answers_numbers(collection, backend) -> None:
    question = "What is the nightly hotel limit in capital cities?"
    result = checked(
        collection,
        backend,
        question,
        "Meals are reimbursed up to 45 euros per day while travelling [4]. "
        "The nightly hotel limit is 180 euros in capital cities [3]. "
        "The nightly hotel limit is 180 euros in capital cities [3].",
    )
    numbers = [s.citation.n if s.citation else None for s in result.sentences]
    assert numbers == [0, 1, 1]  # left out (off topic), then the answer's own [1] twice
    assert result.answer.count("[1]") == 1


def test_a_sentence_restated_with_one_word_changed_is_said_once(collection, backend) -> None:
    question = "What is the nightly hotel limit in capital cities?"
    result = checked(
        collection,
        backend,
        question,
        "The nightly hotel limit is 180 euros in capital cities [1]. "
        "The nightly hotel limits are 180 euros in the capital cities [1].",
    )
    assert [s.verdict for s in result.sentences] == ["supported", "supported"]
    assert result.answer.count("180 euros") == 1 and result.answer.count("[1]") == 1
    # from the same span, but with another number: a second claim, not a restatement
    from cuvee.docs.answer import _restates
    from cuvee.docs.textnorm import terms

    first = set(terms("The nightly hotel limit is 180 euros in capital cities."))
    assert _restates(set(terms("The nightly hotel limits are 180 euros in capital cities.")), first)
    assert not _restates(
        set(terms("The nightly hotel limit is 220 euros in capital cities.")), first
    )


def test_each_retrievers_best_chunk_is_kept_among_the_k() -> None:
    from cuvee.docs.retrieval import _keep_each_best

    # chunk 9 is BM25's first (an exact ticket number) but no vector list's: fused by rank
    # alone it comes sixth; it takes the place of the weakest chunk that is no list's best
    fused = {
        1: {"bm25_rank": 2, "vector_rank": 1},
        2: {"bm25_rank": 3, "vector_rank": 2},
        3: {"bm25_rank": 4, "vector_rank": 3},
        4: {"bm25_rank": 5, "vector_rank": 4},
        5: {"bm25_rank": 6, "vector_rank": 5},
        9: {"bm25_rank": 1},
    }
    order = [1, 2, 3, 4, 5, 9]
    assert _keep_each_best(order, fused, 5) == [1, 2, 3, 4, 9, 5]
    assert _keep_each_best(order, fused, 6) == order  # already in: nothing moves
    assert _keep_each_best([9, 1, 2], fused, 2) == [9, 1, 2]


def test_the_models_wording_stands_only_when_it_says_all_the_best_window_says(
    collection, backend
) -> None:
    # on the dev half of the evaluation set, a model that copied one sentence of a
    # two-sentence window often left out the one that answered; the window is quoted whole
    question = "How many days of paid annual leave does a full-time employee get?"
    first = "Every full-time employee receives 27 days of paid annual leave per calendar year."
    second = "Part-time employees receive leave in proportion to their contracted hours."
    part = ask(collection, backend, question, Scripted(first), k=3)
    assert part.wording == "quote" and part.answer.endswith(f"{second} [1]")
    assert [s.verdict for s in part.sentences] == ["not_used", "supported"]
    whole = ask(collection, backend, question, Scripted(f"{first} {second}"), k=3)
    assert whole.wording == "model" and whole.answer.startswith(first)
    assert [s.verdict for s in whole.sentences] == ["supported", "supported"]


def test_a_list_question_is_answered_with_the_whole_list_quoted() -> None:
    from cuvee.docs.answer import finish, prepare
    from cuvee.docs.retrieval import Hit

    text = (
        "Les salles de réunion sont réparties sur deux étages.\n\n5e étage :\n"
        "- salle Fourvière : 24 personnes, réservée le lundi matin au comité de direction ;\n"
        "- salle Croix-Rousse : 6 personnes.\n\nLa cuisine est au 4e étage."
    )
    hit_ = Hit(1, 1, "/docs/locaux.md", "Locaux", "Salles", 100, 100 + len(text), text, 1.0)
    question = "Quelles sont les salles de réunion du 5e étage ?"
    draft = prepare(question, [hit_], "c")
    result = finish(draft, "Les documents ne le disent pas.")
    assert result.wording == "quote" and not result.abstained
    assert "Fourvière" in result.answer and "Croix-Rousse" in result.answer
    assert "- salle" not in result.answer  # read as prose; the citation keeps the bullets
    assert result.citations[0].quote.count("- salle") == 2
    cite = result.citations[0]
    assert text[cite.start - 100 : cite.end - 100] == cite.quote  # offsets into the document
    # a question about one room keeps the window about it
    one = finish(
        prepare("Combien de personnes la salle Fourvière accueille-t-elle ?", [hit_], "c"), ""
    )
    assert "Croix-Rousse" not in one.answer
