"""What cuvee's answerer is measured against, on the same retrieval (``cuvee docs eval
--baselines``, ``bench/rag_bench.py``):

- ``plain``: the same model given the same passages, numbered, and asked to answer with
  citations; its text is the answer as it stands, with no check (what PrivateGPT or
  AnythingLLM return). It abstains only when it says so itself.
- ``extractive``: no model at all. The sentence of the retrieved passages that shares the most
  content words with the question (one holding a number when the question asks how many), quoted
  verbatim. It never abstains.

Each returns an :class:`~cuvee.docs.answer.AskResult`, so one scorer reads all three."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace

from cuvee.docs.answer import AskResult, Generate, build_messages, is_abstention
from cuvee.docs.extract import QUESTION_WORDS, answer_type, language
from cuvee.docs.retrieval import Hit
from cuvee.docs.textnorm import sentence_spans, terms
from cuvee.docs.verify import Citation, split_answer


def plain(question: str, hits: list[Hit], generate: Generate | None, collection: str) -> AskResult:
    lang = language(question)
    result = AskResult(question, collection, "", True, retrieval=hits, language=lang)
    if not hits or generate is None:
        return result
    text = generate(build_messages(question, hits, lang)).strip()
    result.generated = result.answer = text
    claims = [c for c, _ in split_answer(text) if c and not is_abstention(c)]
    result.abstained = not claims
    result.wording = "model"
    cited = sorted({n for _, marks in split_answer(text) for n in marks if 1 <= n <= len(hits)})
    result.citations = [Citation.of(hits[n - 1], n) for n in cited]
    return result


def extractive(question: str, hits: list[Hit], generate: Generate | None, collection: str):
    result = AskResult(question, collection, "", True, retrieval=hits, language=language(question))
    wanted = {t for t in terms(question) if t not in QUESTION_WORDS}
    numeric = answer_type(question) == "number"
    best: tuple[int, Hit, int, int] | None = None
    for hit in hits:
        for a, b in sentence_spans(hit.text):
            sentence = hit.text[a:b]
            if numeric and not re.search(r"\d", sentence):
                continue
            shared = len(wanted & set(terms(sentence)))
            if best is None or shared > best[0]:
                best = (shared, hit, a, b)
    if best is None:
        return result
    _, hit, a, b = best
    quote = hit.text[a:b]
    result.answer = f"{quote} [1]"
    result.abstained = False
    result.wording = "quote"
    window = replace(hit, start=hit.start + a, end=hit.start + b, text=quote)
    result.citations.append(Citation.of(window, 1))
    return result


Baseline = Callable[[str, list[Hit], Generate | None, str], AskResult]
BASELINES: dict[str, Baseline] = {"plain": plain, "extractive": extractive}
