"""IFEval's checkers (the ``if-verifiable`` package) made to run offline and deterministically,
for the two parts of cuvee that count text as IFEval does: the training constraints
(``cuvee.data.constraints``, whose sentence and capital-word counts must agree with the eval's)
and the ``instructions`` eval suite (``cuvee.eval.instructions``, which scores with them).

It lives here, beside both and inside neither, because data sits below eval in the pipeline
(data < train < export < engine < eval): data may not import eval, and eval has no reason to
own what data needs. Neither package's modules are imported here.

Two things change in the upstream helpers, once per process: sentence splitting, which they take
from NLTK's punkt data (a download), is routed to the ``nupunkt`` package's shipped model, so
nothing is fetched and no count depends on what happens to be installed in ``nltk_data``; and
language detection is seeded (langdetect is random unless seeded). The heavy packages (nltk,
langdetect, the checkers) are imported on first use only."""

from __future__ import annotations

from types import ModuleType
from typing import Any

_offline_ready = False


class _NupunktSentences:
    """Stands in for NLTK's punkt tokenizer object: ``tokenize(text) -> sentences``."""

    def tokenize(self, text: str) -> list[str]:
        import nupunkt

        return nupunkt.sent_tokenize(text)


class _OfflineNltk:
    """The ``nltk`` module as if-verifiable's helpers see it, with ``word_tokenize`` splitting
    sentences with nupunkt (NLTK's own would load punkt data) and then words with NLTK's
    Treebank tokenizer, which needs no data; every other attribute is NLTK's."""

    def __init__(self, nltk: Any) -> None:
        self._nltk = nltk
        self._words = nltk.tokenize.NLTKWordTokenizer()
        self._sentences = _NupunktSentences()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._nltk, name)

    def word_tokenize(
        self, text: str, language: str = "english", preserve_line: bool = False
    ) -> list[str]:
        sentences = [text] if preserve_line else self._sentences.tokenize(text)
        return [token for sentence in sentences for token in self._words.tokenize(sentence)]


def offline_checkers() -> dict[str, type]:
    """IFEval's instruction registry (id -> checker class), with sentence splitting routed to
    nupunkt and language detection made deterministic (langdetect is random unless seeded)."""
    global _offline_ready
    import langdetect
    import nltk
    from if_verifiable.ifeval import instructions_util
    from if_verifiable.ifeval.instructions_registry import INSTRUCTION_DICT

    if not _offline_ready:
        sentences = _NupunktSentences()
        instructions_util._get_sentence_tokenizer = lambda: sentences
        instructions_util.nltk = _OfflineNltk(nltk)
        langdetect.DetectorFactory.seed = 0
        _offline_ready = True
    return INSTRUCTION_DICT


def offline_instructions_util() -> ModuleType:
    """if-verifiable's helper module (``count_sentences``, ``nltk.word_tokenize``...) exactly as
    the checkers run it: sentences split by nupunkt, words by NLTK's Treebank tokenizer. Counting
    through it rather than re-implementing the counts means a constraint's verdict agrees with
    the eval's scorer."""
    from if_verifiable.ifeval import instructions_util

    offline_checkers()  # routes instructions_util's sentence splitting to nupunkt
    return instructions_util
