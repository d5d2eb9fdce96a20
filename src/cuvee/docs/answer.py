"""`cuvee ask`: retrieve, generate, verify, and answer or abstain.

The model sees the retrieved chunks numbered [1]..[k] and is asked to answer from them only,
citing each sentence. Whatever it writes, only sentences that :mod:`verify` finds supported
reach the answer, each followed by its (corrected) citation number; a sentence the sources do
not support is dropped (or kept and marked with ``keep_unsupported``). When nothing supported
remains, or the kept sentences do not touch the question at all, the answer is an explicit
abstention. Generation is a plain callable (messages -> text), so the CLI, the server and the
tests each bring their own model."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from cuvee.docs import verify as verifying
from cuvee.docs.embedders import Backend
from cuvee.docs.index import Collection
from cuvee.docs.retrieval import Hit, retrieve
from cuvee.docs.textnorm import fold, stem, terms
from cuvee.errors import DocsError

Generate = Callable[[list[dict]], str]

INSTRUCTIONS = (
    "Answer the question using only the numbered sources below. Write short sentences and end "
    "each sentence with the number of the source it comes from, like [1]. Copy names, numbers "
    "and dates exactly as the sources write them. If the sources do not contain the answer, "
    "reply only: The documents do not say."
)


def build_messages(question: str, hits: list[Hit]) -> list[dict]:
    sources = []
    for n, hit in enumerate(hits, 1):
        where = place(hit.title, hit.section)
        sources.append(f"[{n}] {where}\n{hit.text.strip()}")
    content = f"{INSTRUCTIONS}\n\nSources:\n\n" + "\n\n".join(sources) + f"\n\nQuestion: {question}"
    return [{"role": "user", "content": content}]


def place(title: str, section: str) -> str:
    """ "Title > Section", without repeating a title that is also the top heading."""
    if section == title or section.startswith(title + " > "):
        return section
    return " > ".join(part for part in (title, section) if part)


def abstention(question: str) -> str:
    return f"The documents do not say. (Nothing in the sources retrieved answers: {question})"


@dataclass
class AskResult:
    question: str
    collection: str
    answer: str
    abstained: bool
    citations: list[verifying.Citation] = field(default_factory=list)
    sentences: list[verifying.SentenceVerdict] = field(default_factory=list)
    retrieval: list[Hit] = field(default_factory=list)
    generated: str = ""
    model: str | None = None
    reason: str | None = None  # why it abstained
    timings: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return {
            "question": self.question,
            "collection": self.collection,
            "model": self.model,
            "answer": self.answer,
            "abstained": self.abstained,
            "abstain_reason": self.reason,
            "citations": [c.as_dict() for c in self.citations],
            "sentences": [s.as_dict() for s in self.sentences],
            "retrieval": [h.as_dict() for h in self.retrieval],
            "generated": self.generated,
            "timings": self.timings,
        }


def ask(
    collection: Collection,
    backend: Backend,
    question: str,
    generate: Generate,
    *,
    k: int = 5,
    min_support: float = verifying.DEFAULT_MIN_SUPPORT,
    reranker: str = "none",
    keep_unsupported: bool = False,
    model: str | None = None,
) -> AskResult:
    question = question.strip()
    if not question:
        raise ValueError("the question is empty")
    started = time.perf_counter()
    hits = retrieve(collection, backend, question, k, reranker=reranker)
    retrieved = time.perf_counter()
    result = AskResult(question, collection.name, "", True, retrieval=hits, model=model)
    result.timings["retrieval_ms"] = round((retrieved - started) * 1000, 1)
    if not hits:
        result.answer, result.reason = abstention(question), "nothing retrieved"
        return result

    hits = _fit(question, hits, generate, model)
    result.timings["sources_given"] = len(hits)
    generated_text = generate(build_messages(question, hits))
    generated = time.perf_counter()
    result.timings["generation_ms"] = round((generated - retrieved) * 1000, 1)
    cut = getattr(generate, "reason", None) == "length"
    check(result, hits, generated_text, min_support, keep_unsupported, cut=cut)
    result.timings["verification_ms"] = round((time.perf_counter() - generated) * 1000, 1)
    return result


def check(
    result: AskResult,
    hits: list[Hit],
    generated: str,
    min_support: float = verifying.DEFAULT_MIN_SUPPORT,
    keep_unsupported: bool = False,
    cut: bool = False,
) -> AskResult:
    """Verify ``generated`` (written from ``hits``, numbered from 1) and set the result's
    answer, citations and sentences: the second half of :func:`ask`, for callers that
    generate elsewhere (the eval suite, which batches every question through one engine)."""
    result.generated = generated
    result.sentences = verifying.verify(generated, hits, min_support)
    for sentence in result.sentences:
        if _is_abstention(sentence.text):
            sentence.verdict, sentence.citation = "no_claim", None
    last = result.sentences[-1] if result.sentences else None
    if cut and last is not None and last.text.rstrip()[-1:] not in '.!?…"»)':
        # the token limit cut the last sentence: half a sentence can be "found" in a source
        # and still say something else
        last.verdict, last.citation, last.missing = "no_claim", None, ["(cut by max_tokens)"]
    _assemble(result, hits, keep_unsupported)
    return result


def _off_question(question: str, supported, hits: list[Hit]) -> str | None:
    """Why the supported sentences do not answer the question, or None. The passages they
    cite must mention every name and number the question does (a question about the "C3" is
    not answered by passages about the "C2"), and at least half of its content terms."""
    cited = {s.citation.chunk_id for s in supported}
    text = " ".join(f"{h.title}\n{h.section}\n{h.text}" for h in hits if h.chunk_id in cited)
    missing = verifying.facts_missing(verifying.key_facts(question), text)
    if missing:
        return f"the passages cited never mention {', '.join(missing)}"
    wanted = {t for t in terms(question) if t not in QUESTION_WORDS}
    if wanted:
        covered = len(wanted & set(terms(text))) / len(wanted)
        if covered < MIN_QUESTION_COVERAGE:
            return f"the passages cited cover {covered:.0%} of the question's terms"
    return None


def _fit(question: str, hits: list[Hit], generate: Generate, model: str | None) -> list[Hit]:
    """The best-ranked passages whose prompt fits the model's context with room to answer."""
    fits = getattr(generate, "fits", None)
    if fits is None:
        return hits
    while len(hits) > 1 and not fits(build_messages(question, hits)):
        hits = hits[:-1]
    if not fits(build_messages(question, hits)):
        context = getattr(generate, "context_length", "?")
        raise DocsError(
            f"model {model or ''} has a context of {context} tokens: too small for even one "
            "passage of this collection, the instructions and an answer",
            hint="use a model with a longer context, or index with a smaller --chunk-size",
        )
    return hits


# Words that ask rather than say: a source need not contain them to answer the question.
_ASKING = """how many much long often what which who whom when where why name kind type
combien quel quelle quels quelles quand comment pourquoi ou lequel laquelle"""
QUESTION_WORDS = frozenset(stem(w) for w in _ASKING.split())
MIN_QUESTION_COVERAGE = 0.5


def _assemble(result: AskResult, hits: list[Hit], keep_unsupported: bool) -> None:
    supported = [s for s in result.sentences if s.verdict == "supported" and s.citation]
    if not supported:
        result.answer, result.reason = abstention(result.question), "no supported sentence"
        return
    wanted = {t for t in terms(result.question) if t not in QUESTION_WORDS}
    for sentence in supported:
        # a small model copies whole passages: true sentences that touch nothing the question
        # asks about are left out of the answer (listed as off_topic)
        if wanted and not wanted & set(terms(f"{sentence.text} {sentence.citation.quote}")):
            sentence.verdict = "off_topic"
    supported = [s for s in supported if s.verdict == "supported"]
    if not supported:
        result.answer = abstention(result.question)
        result.reason = "the supported sentences do not address the question"
        return
    reason = _off_question(result.question, supported, hits)
    if reason:
        result.answer, result.reason = abstention(result.question), reason
        return
    numbering: dict[tuple[str, int, int], int] = {}
    parts: list[str] = []
    seen: set[str] = set()
    for sentence in result.sentences:
        said = " ".join(fold(sentence.text).split())
        if said in seen:  # small models repeat themselves; say it once
            continue
        seen.add(said)
        if sentence.verdict == "supported" and sentence.citation:
            cite = sentence.citation
            key = (cite.doc, cite.start, cite.end)
            if key not in numbering:
                numbering[key] = len(numbering) + 1
                cite.n = numbering[key]
                result.citations.append(cite)
            else:
                cite.n = numbering[key]
            parts.append(f"{_ended(sentence.text)} [{cite.n}]")
        elif sentence.verdict == "unsupported" and keep_unsupported:
            parts.append(f"{_ended(sentence.text)} [unsupported]")
    result.answer = " ".join(parts)
    result.abstained = False
    for sentence in result.sentences:  # one numbering: the answer's, 0 for what it left out
        if sentence.citation is not None:
            cite = sentence.citation
            sentence.citation.n = numbering.get((cite.doc, cite.start, cite.end), 0)


def _is_abstention(text: str) -> bool:
    """The model saying the sources do not answer ("The documents do not say", "The text does
    not mention it", "Les documents ne le disent pas"): a statement about the sources, not a
    claim to check. A sentence about anything else ("The badge does not contain personal
    data") is a claim."""
    folded = " ".join(fold(text).split())
    about_sources = any(word in folded for word in _SOURCE_WORDS)
    return about_sources and any(phrase in folded for phrase in _ABSTAIN_PHRASES)


_SOURCE_WORDS = ("document", "source", "text", "passage", "context", "texte", "information")
_ABSTAIN_PHRASES = (
    "do not say",
    "does not say",
    "don't say",
    "doesn't say",
    "do not contain",
    "does not contain",
    "do not mention",
    "does not mention",
    "not mentioned",
    "no information",
    "ne disent pas",
    "ne le disent pas",
    "ne dit pas",
    "ne mentionne",
)


def _ended(text: str) -> str:
    text = text.strip()
    return text if text[-1:] in ".!?…" else text + "."
