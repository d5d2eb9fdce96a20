"""One text normalisation for search and for checking answers, so both agree on what a "word"
is. English and French alike: case and accents are folded (``Élysée`` -> ``elysee``), French
elisions are cut (``l'équipe`` -> ``equipe``, with either apostrophe), frequent function words
of both languages are dropped, and a light suffix stemmer maps plurals and common endings
together. The same function serves the FTS5 column, the FTS5 query and the support check."""

from __future__ import annotations

import re
import unicodedata

_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})
_ELISION = re.compile(r"\b(?:qu|jusqu|lorsqu|puisqu|quoiqu|[cdjlmnst])'(?=\w)", re.IGNORECASE)
_WORD = re.compile(r"\w+(?:[.,]\d+)*", re.UNICODE)

_ENGLISH = """a an and are as at be been but by can could did do does for from had has have how i
if in into is it its may might me my no not of on or our shall should so than that the their them
then there these they this those to was we were what when where which who whom whose why will with
would you your about after all also any before between both each more most other over same some
such only own just very"""
# French, after accent folding and elision cutting
_FRENCH = """au aux avec ce ces cet cette dans de des du elle elles en est et etre eu il ils je la
le les leur leurs lui ma mais me meme mes moi mon ne nos notre nous on ont ou par pas
pour qu que quel quelle quelles quels qui sa se ses son sont sur ta te tes toi ton tu
un une vos votre vous y a ete etait sera sans comme plus tres fait faire peut quoi
dont donc ni si"""
STOPWORDS = frozenset(_ENGLISH.split()) | frozenset(_FRENCH.split())


def fold(text: str) -> str:
    """Lower case without accents, apostrophes unified; same length is NOT guaranteed."""
    decomposed = unicodedata.normalize("NFKD", text.translate(_APOSTROPHES))
    return "".join(c for c in decomposed if not unicodedata.combining(c)).lower()


def stem(word: str) -> str:
    """A deliberately light stemmer for English and French: enough to match ``documents``
    with ``document`` and ``sécurisées`` with ``sécurisé``, never so aggressive that two
    different names collapse. Numbers are left alone."""
    if word[:1].isdigit() or len(word) <= 3:
        return word
    if word.endswith("ies") and len(word) > 4:
        return word[:-3] + "y"  # policies -> policy
    for suffix in (
        "ements",
        "ement",
        "ations",
        "ation",
        "ings",
        "ing",
        "ies",
        "ees",
        "es",
        "ee",
        "ed",
        "s",
        "x",
        "e",
    ):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            return word[: -len(suffix)]
    return word


# a thousands separator: ",", a space or a narrow/no-break space between digit groups of three
_GROUPED = re.compile(r"(?<=\d)[,\u00a0\u202f ](?=\d{3}(?!\d))")


def ungroup(text: str) -> str:
    """``1,000`` and the French ``25 000`` written as ``1000`` and ``25000``."""
    return _GROUPED.sub("", text)


def words(text: str) -> list[str]:
    """Folded words with elisions cut and numbers ungrouped, stopwords kept."""
    return _WORD.findall(_ELISION.sub("", fold(ungroup(text))))


def terms(text: str) -> list[str]:
    """Content terms: folded, elisions cut, stopwords dropped, stemmed."""
    return [stem(w) for w in words(text) if w not in STOPWORDS]


def search_text(text: str) -> str:
    """What goes into the FTS5 column: the terms, space separated."""
    return " ".join(terms(text))


def fts_query(text: str) -> str | None:
    """An FTS5 query OR-ing the question's terms, each quoted so no user text is ever read as
    FTS5 syntax; None when the question has no content term."""
    unique = list(dict.fromkeys(terms(text)))
    if not unique:
        return None
    return " OR ".join('"' + t.replace('"', "") + '"' for t in unique)


_SENTENCE_END = re.compile(r"(?<=[.!?…])[\"'»)\]]*\s+|\n\s*\n|\n(?=\s*(?:[-*•]|\d+[.)])\s)")


def sentence_spans(text: str, start: int = 0, end: int | None = None) -> list[tuple[int, int]]:
    """Sentences of ``text[start:end]`` as (start, end) offsets into ``text``, trimmed of
    surrounding whitespace. Ends at ., !, ?, … followed by space, at blank lines and before
    list items. Abbreviations may split a sentence in two: harmless for both chunking and
    checking, which work on spans."""
    end = len(text) if end is None else end
    spans: list[tuple[int, int]] = []
    cursor = start
    for match in _SENTENCE_END.finditer(text, start, end):
        spans.append((cursor, match.start()))
        cursor = match.end()
    spans.append((cursor, end))
    out: list[tuple[int, int]] = []
    for a, b in spans:
        while a < b and text[a].isspace():
            a += 1
        while b > a and text[b - 1].isspace():
            b -= 1
        if b <= a:
            continue
        if out and _ORDINAL.match(text[out[-1][0] : out[-1][1]]):
            out[-1] = (out[-1][0], b)  # "1." of a numbered list belongs to its item
        else:
            out.append((a, b))
    return out


_ORDINAL = re.compile(r"^\(?\d{1,3}[.)]$")
