"""IFEval's ``length_constraints`` instructions: bounds on words and sentences, an exact number
of paragraphs (divided by ``***``), and the first word of the nth blank-line paragraph."""

from __future__ import annotations

import bisect
import random
import re

from cuvee.data.constraints.base import Constraint, Kwargs, register
from cuvee.data.constraints.text import (
    _MAX_CHUNKS,
    _RELATIONS,
    _WORD_RE,
    _blocks,
    _check_relation,
    _chunks,
    _count_sentences,
    _has_code_block,
    _is_abbreviation,
    _is_sentence_prose,
    _plural,
    _sample_chunk_count,
    _sentence_ends,
    _spelled,
    count_words,
)

# Word limits people actually write in instructions.
_ROUND_COUNTS = (5, 10, 15, 20, 25, 30, 40, 50, 60, 80, 100, 150, 200, 250, 300, 400, 500, 600)
_ROUND_COUNTS += tuple(range(800, 5001, 200))
# Only long answers are truncated, and only when most of the answer survives.
_TRUNCATE_MIN_WORDS = 80
_TRUNCATE_MIN_KEPT = 0.6


def _truncate_words(text: str, limit: int) -> str:
    """Longest prefix with fewer than `limit` words, cut at a sentence or line end if any fits."""
    starts = [m.start() for m in _WORD_RE.finditer(text)]
    if len(starts) < limit:
        return text
    cuts = sorted({*_sentence_ends(text), *(m.start() for m in re.finditer(r"\n", text))})
    best = 0
    for cut in cuts:
        if bisect.bisect_left(starts, cut) < limit:
            best = cut
        else:
            break
    if best == 0:
        # No sentence fits: cut mid-sentence after limit - 1 words and mark the elision.
        words = list(_WORD_RE.finditer(text))[: max(limit - 1, 0)]
        return (text[: words[-1].end()] + "...") if words else ""
    return text[:best].rstrip()


@register("length_constraints:number_words")
class NumberWords(Constraint):
    """IFEval semantics: "less than" N means count < N, "at least" N means count >= N."""

    def phrasings(self, kwargs: Kwargs) -> list[str]:
        relation, n = kwargs["relation"], int(kwargs["num_words"])
        first = f"Answer with {relation} {n} words."
        if relation == "at least":
            return [
                first,
                f"Write no fewer than {n} words.",
                f"Please make your answer at least {n} words long.",
                f"Your answer must run to {n} words or more.",
                f"A minimum of {n} words.",
            ]
        return [
            first,
            f"Keep your answer under {n} words.",
            f"Please use fewer than {n} words in total.",
            f"Your answer must be shorter than {n} words.",
            f"Stay below {n} words.",
        ]

    def sample_kwargs(self, response: str, rng: random.Random) -> Kwargs | None:
        n = count_words(response)
        if n == 0:
            return None
        relation = rng.choice(_RELATIONS)
        if relation == "at least":
            below = [c for c in _ROUND_COUNTS if c <= n]
            if below:
                # Close to the real length, so the constraint is not vacuous.
                return {"relation": relation, "num_words": rng.choice(below[-2:])}
        if n >= _TRUNCATE_MIN_WORDS and not _has_code_block(response) and rng.random() < 0.5:
            viable = [
                c
                for c in _ROUND_COUNTS
                if c < n and count_words(_truncate_words(response, c)) >= _TRUNCATE_MIN_KEPT * n
            ]
            if viable:
                return {"relation": "less than", "num_words": rng.choice(viable)}
        above = [c for c in _ROUND_COUNTS if c > n] or [(n // 1000 + 1) * 1000]
        return {"relation": "less than", "num_words": rng.choice(above[:2])}

    def transform(self, response: str, kwargs: Kwargs) -> str:
        # "at least" cannot be met by inventing words; sample_kwargs only asks what already holds.
        if kwargs["relation"] == "less than":
            return _truncate_words(response, int(kwargs["num_words"]))
        return response

    def check(self, response: str, kwargs: Kwargs) -> bool:
        n, limit = count_words(response), int(kwargs["num_words"])
        if kwargs["relation"] == "less than":
            return n < limit
        if kwargs["relation"] == "at least":
            return n >= limit
        raise ValueError(f"relation must be one of {_RELATIONS}, got {kwargs['relation']!r}")


@register("length_constraints:number_paragraphs")
class NumberParagraphs(Constraint):
    def phrasings(self, kwargs: Kwargs) -> list[str]:
        n = int(kwargs["num_paragraphs"])
        return [
            f"There should be {n} paragraphs. "
            "Paragraphs are separated with the markdown divider: ***",
            f"Write exactly {n} paragraphs and put the markdown divider *** between each "
            "paragraph and the next.",
            f"Please split your answer into exactly {_spelled(n)} paragraphs, using *** on a "
            "line of its own to separate them.",
            f"Your answer must consist of exactly {n} paragraphs divided by the markdown "
            "separator ***.",
            f"Exactly {_spelled(n)} paragraphs, with *** between them.",
        ]

    def sample_kwargs(self, response: str, rng: random.Random) -> Kwargs | None:
        # "***" already in the text (a divider, bold italics) would be counted as a separator.
        if "***" in response:
            return None
        n = _sample_chunk_count(response, rng)
        return None if n is None else {"num_paragraphs": n}

    def transform(self, response: str, kwargs: Kwargs) -> str:
        chunks = _chunks(response, int(kwargs["num_paragraphs"]))
        return response if chunks is None else "\n\n***\n\n".join(chunks)

    def check(self, response: str, kwargs: Kwargs) -> bool:
        # IFEval's rule: exact count, empty leading/trailing pieces ignored, empty inner fails.
        paragraphs = re.split(r"\s?\*\*\*\s?", response)
        count = len(paragraphs)
        for index, paragraph in enumerate(paragraphs):
            if not paragraph.strip():
                if index in (0, len(paragraphs) - 1):
                    count -= 1
                else:
                    return False
        return count == int(kwargs["num_paragraphs"])


@register("length_constraints:number_sentences")
class NumberSentences(Constraint):
    """A sentence bound the response meets with a margin of one, since sentence splitters
    disagree on abbreviations, list items and headings. Sentences are counted as the eval
    counts them; the response is kept as it is."""

    def phrasings(self, kwargs: Kwargs) -> list[str]:
        n = int(kwargs["num_sentences"])
        noun = _plural(n, "sentence")
        if kwargs["relation"] == "at least":
            return [
                f"Your answer should be at least {n} {noun} long.",
                f"Write no fewer than {_spelled(n)} {noun}.",
                f"Please use {n} or more sentences in your reply.",
                f"Your response must contain at least {n} {noun}.",
                f"A minimum of {_spelled(n)} {noun}.",
            ]
        return [
            f"Keep your answer to fewer than {n} {noun}.",
            f"Use fewer than {_spelled(n)} {noun} in total.",
            f"Please keep the reply under {n} {noun}.",
            f"Your answer must be shorter than {n} {noun}.",
            f"Fewer than {n} {noun}, please.",
        ]

    def sample_kwargs(self, response: str, rng: random.Random) -> Kwargs | None:
        if _has_code_block(response) or not response.strip():
            return None
        count = _count_sentences(response)
        # "At least one sentence" would ask for nothing, so "at least" starts at two.
        if count >= 3 and rng.random() < 0.5:
            return {
                "relation": "at least",
                "num_sentences": rng.randint(max(2, count - 3), count - 1),
            }
        return {"relation": "less than", "num_sentences": rng.randint(count + 2, count + 4)}

    def transform(self, response: str, kwargs: Kwargs) -> str:
        return response

    def check(self, response: str, kwargs: Kwargs) -> bool:
        return _check_relation(
            _count_sentences(response), kwargs["relation"], int(kwargs["num_sentences"])
        )


_ORDINALS = ("first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth")
# IFEval reads a paragraph's first word up to the first of these characters.
_FIRST_WORD_STOPS = ".,?!'\""
# A first word IFEval reads exactly as written: letters, then at most closing punctuation.
_PLAIN_FIRST_WORD_RE = re.compile(r"[A-Za-z]+[.,?!]?")


def _plain_first_word(paragraph: str) -> bool:
    """Whether IFEval reads the paragraph's first word as a writer would: letters, then at
    most closing punctuation, and no abbreviation ("Dr." would have to be asked for as "dr")."""
    token = paragraph.split()[0]
    return bool(_PLAIN_FIRST_WORD_RE.fullmatch(token)) and not (
        token.endswith(".") and _is_abbreviation(token)
    )


def _ifeval_first_word(paragraph: str) -> str:
    """IFEval's reading of a paragraph's first word: leading quotes dropped, cut at the first
    punctuation mark, lowercased ("Don't" -> "don", "**Bold**" -> "**bold**")."""
    words = paragraph.split()
    if not words:
        return ""
    word = words[0].lstrip("'").lstrip('"')
    for i, ch in enumerate(word):
        if ch in _FIRST_WORD_STOPS:
            return word[:i].lower()
    return word.lower()


def _blank_line_paragraphs(response: str, n: int | None = None) -> list[str] | None:
    """The response's paragraphs when written with exactly one blank line between them.

    With n given, a single paragraph of plain sentences may be divided into n; otherwise
    (and for any response with two blocks or more) the response's own paragraphs are used.
    """
    if _has_code_block(response):
        return None
    blocks = _blocks(response)
    if len(blocks) >= 2 and (n is None or n == len(blocks)):
        return blocks
    if len(blocks) == 1 and n is not None and n >= 2:
        return _chunks(blocks[0], n) if _is_sentence_prose(blocks[0]) else None
    return None


@register("length_constraints:nth_paragraph_first_word")
class NthParagraphFirstWord(Constraint):
    """The response's own paragraphs (one blank line between them) with the first word the nth
    one already has, or a single paragraph of sentences divided into 2-4.

    IFEval splits on "\\n\\n" exactly, so blank-line runs are normalised to one, and it compares
    the first word only up to its first punctuation mark, so paragraphs opening with anything
    but a plain word ("Don't", "1.", "##") are never the nth.
    """

    def phrasings(self, kwargs: Kwargs) -> list[str]:
        n, nth = int(kwargs["num_paragraphs"]), int(kwargs["nth_paragraph"])
        which = _ORDINALS[nth - 1] if nth <= len(_ORDINALS) else f"number {nth}"
        word = kwargs["first_word"]
        return [
            f"Write exactly {n} paragraphs, with a blank line between one paragraph and the "
            f'next, and begin the {which} paragraph with the word "{word}".',
            f"Your answer must have exactly {n} paragraphs separated by blank lines, and its "
            f'{which} paragraph must open with "{word}".',
            f"Please write exactly {_spelled(n)} paragraphs, one empty line between each, and "
            f'start paragraph {nth} with the word "{word}".',
            f"Split the reply into exactly {n} paragraphs divided by blank lines; the first "
            f'word of the {which} one has to be "{word}".',
            f"Exactly {_spelled(n)} blank-line-separated paragraphs, the {which} starting "
            f'with "{word}".',
        ]

    def sample_kwargs(self, response: str, rng: random.Random) -> Kwargs | None:
        paragraphs = _blank_line_paragraphs(response)
        if paragraphs is None:
            n = _sample_chunk_count(response, rng)
            paragraphs = None if n is None else _blank_line_paragraphs(response, n)
        if paragraphs is None or not 2 <= len(paragraphs) <= _MAX_CHUNKS:
            return None
        usable = [i for i, p in enumerate(paragraphs, 1) if _plain_first_word(p)]
        if not usable:
            return None
        nth = rng.choice(usable)
        return {
            "num_paragraphs": len(paragraphs),
            "nth_paragraph": nth,
            "first_word": _ifeval_first_word(paragraphs[nth - 1]),
        }

    def transform(self, response: str, kwargs: Kwargs) -> str:
        paragraphs = _blank_line_paragraphs(response, int(kwargs["num_paragraphs"]))
        return response if paragraphs is None else "\n\n".join(paragraphs)

    def check(self, response: str, kwargs: Kwargs) -> bool:
        # IFEval's rule, quirks included: empty pieces lower the count but still take an index.
        pieces = response.split("\n\n")
        count = sum(1 for p in pieces if p.strip())
        nth = int(kwargs["nth_paragraph"])
        if not 1 <= nth <= count or not pieces[nth - 1].strip():
            return False
        return (
            count == int(kwargs["num_paragraphs"])
            and _ifeval_first_word(pieces[nth - 1].strip()) == str(kwargs["first_word"]).lower()
        )
