"""`grounded`: document QA as `cuvee docs eval` measures it, as an eval suite, so a fine-tune's
grounded answering is compared with its base (or an endpoint) like any other skill.

Items are the questions of a QA file (``question``, ``answers``, ``docs``; no answers means
unanswerable) over the shipped sample documents, indexed once into
``$CUVEE_HOME/eval/grounded/`` with the configured embedding model (unchanged files are never
re-embedded). Retrieval happens when the suite loads, so the prompt of each item (the numbered
passages and the question, exactly as `cuvee ask` builds it) is fixed and cacheable; the
model's answer is then verified sentence by sentence as `cuvee ask` does, and scored with the
metrics of `cuvee docs eval`."""

from __future__ import annotations

from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cuvee.eval.suites import EvalError, Item, Score

if TYPE_CHECKING:
    from cuvee.config import Settings

COLLECTION = "grounded-sample"
K = 5


def _sample() -> Path:
    return Path(str(resources.files("cuvee.docs") / "sample"))


@dataclass
class GroundedSuite:
    name: str = "grounded"
    version: str = "1"
    description: str = "answers from documents, every sentence checked (sample handbook)"
    max_tokens: int = 256
    settings: Settings | None = None

    @property
    def fixture(self) -> Path:
        return _sample() / "qa.jsonl"

    def bind(self, settings: Settings) -> GroundedSuite:
        return replace(self, settings=settings)

    def accepts(self, record: dict[str, Any]) -> bool:
        return "question" in record and "answers" in record and "docs" in record

    def _collection(self):
        from cuvee.config import load_settings
        from cuvee.docs import index
        from cuvee.docs.embedders import open_backend
        from cuvee.docs.ingest import ingest

        settings = self.settings or load_settings()
        home = settings.home / "eval" / "grounded"
        backend = open_backend(settings.embedding_model)
        if index.collection_path(home, COLLECTION).is_file():
            collection = index.open_collection(home, COLLECTION)
            if collection.embedding_model != backend.identity:
                collection.close()
                index.remove(home, COLLECTION)
        if not index.collection_path(home, COLLECTION).is_file():
            index.create(home, COLLECTION, backend.identity, backend.dim)
        collection = index.open_collection(home, COLLECTION)
        docs = (_sample() / "docs").resolve()
        # documents indexed from another installation's copy of the sample are dropped
        stale = [d.path for d in collection.documents() if not Path(d.path).is_relative_to(docs)]
        collection.apply([], stale)
        ingest(collection, backend, [docs], sync=True)
        return collection, backend

    def load(self, path: Path | None) -> list[Item]:
        from cuvee.docs.answer import prepare
        from cuvee.docs.evaluate import load_qa
        from cuvee.docs.retrieval import retrieve
        from cuvee.errors import DocsError

        source = path or self.fixture
        try:
            questions = load_qa(source)
        except DocsError as exc:
            raise EvalError(exc.message) from exc
        collection, backend = self._collection()
        items = []
        for number, qa in enumerate(questions, 1):
            hits = retrieve(collection, backend, qa.question, K)
            draft = prepare(
                qa.question,
                hits,
                COLLECTION,
                embed=backend.embed,
                document=collection.document_text,
            )
            # a question the passages do not answer is abstained on without the model; it is
            # still generated for (the runner batches every item), and the output unused
            prompt = (draft.messages or [{"content": qa.question}])[0]["content"]
            data = {
                "question": qa.question,
                "answers": qa.answers,
                "docs": qa.docs,
                "hits": [hit.as_dict() for hit in hits],
            }
            items.append(Item(qa.id, prompt, data=data, where=f"{source}:{number}"))
        return items

    def score(self, items: list[Item], outputs: list[str]) -> Score:
        from cuvee.docs.answer import finish, prepare
        from cuvee.docs.evaluate import HEADLINE, QAItem, score
        from cuvee.docs.retrieval import Hit

        collection, backend = self._collection()
        results, qa_items, details = [], [], []
        for item, output in zip(items, outputs, strict=True):
            hits = [Hit(**hit) for hit in item.data["hits"]]
            draft = prepare(
                item.data["question"],
                hits,
                COLLECTION,
                embed=backend.embed,
                document=collection.document_text,
            )
            result = finish(draft, output)
            results.append(result)
            qa_items.append(
                QAItem(item.id, item.data["question"], item.data["answers"], item.data["docs"])
            )
            details.append({"id": item.id, "answer": result.answer, "abstained": result.abstained})
        metrics = score(collection, qa_items, results, K)
        keys = (*HEADLINE, f"retrieval_hit_at_{K}", "retrieval_mrr")
        return Score(
            metrics={k: metrics[k] for k in keys if metrics[k] is not None},
            counts={
                k: metrics[k]
                for k in ("questions", "answerable", "unanswerable", "citations", "abstentions")
            },
            items=details,
        )


SUITE = GroundedSuite()
