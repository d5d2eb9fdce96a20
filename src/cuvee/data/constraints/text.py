"""The text toolkit the constraint types share: words, sentences, paragraphs and chunks of a
response, number words, the case-safety test, relations ("less than", "at least"), and the
counts taken through IFEval's own helpers (``cuvee.ifeval_checkers``) where a re-implementation
would disagree with the eval's scorer.

Names keep their leading underscore: they are internal to ``cuvee.data.constraints``, imported
by its group modules, and no part of cuvee's API except ``count_words``."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from cuvee.ifeval_checkers import offline_instructions_util

# Same tokenizer as IFEval's `count_words` (nltk RegexpTokenizer(r"\w+")), without nltk:
# "don't" is two words and "7,000" is two. Sentences and the words of capital_word_frequency
# are counted differently (a punkt model, NLTK's Treebank tokenizer); for those the
# constraints ask IFEval's own helpers, see `_count_sentences` and `_count_capital_words`.
_WORD_RE = re.compile(r"\w+")
_LIST_ITEM_RE = re.compile(r"^(?P<indent>[ \t]*)(?:[-*+•]|\d{1,3}[.)])[ \t]+(?P<body>\S.*)$")
# Lines that make a block more than running prose: list items, headings, tables, quotes.
_STRUCTURE_RE = re.compile(r"^\s*(?:[-*+•]\s|\d{1,3}[.)]\s|#|\||>)")
_BLOCK_SPLIT_RE = re.compile(r"\n[ \t]*\n")
_SENTENCE_FINAL_RE = re.compile(r"[.!?][\"'”’)\]*_]*\s*$")
# fmt: off
_ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "vs", "etc", "e.g", "i.e", "u.s", "u.k",
    "approx", "fig", "no", "inc", "ltd", "co", "cf", "al",
})
# fmt: on


# fmt: off
_NUMBER_WORDS = (
    "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen",
    "nineteen", "twenty",
)
# fmt: on


def _spelled(n: int) -> str:
    """A small count in words ("three"), larger ones in digits, as a writer would put them."""
    return _NUMBER_WORDS[n] if 0 <= n < len(_NUMBER_WORDS) else str(n)


def _plural(n: int, noun: str) -> str:
    return noun if n == 1 else f"{noun}s"


def count_words(text: str) -> int:
    return len(_WORD_RE.findall(text))


def _has_code_block(text: str) -> bool:
    return "```" in text or "~~~" in text


def _blocks(text: str) -> list[str]:
    return [b.strip() for b in _BLOCK_SPLIT_RE.split(text.strip()) if b.strip()]


def _is_sentence_prose(text: str) -> bool:
    """Only plain sentences: no list, heading or table lines, and no line left unterminated
    (which is how letters, addresses and poems look), so re-flowing sentences is safe."""
    lines = [line for line in text.splitlines() if line.strip()]
    return bool(lines) and all(
        not _STRUCTURE_RE.match(line) and _SENTENCE_FINAL_RE.search(line) for line in lines
    )


def _is_abbreviation(token: str) -> bool:
    core = token.rstrip(".").lstrip("(\"'“‘").lower()
    # A lone letter before a period is almost always an initial ("J. K. Rowling").
    return core in _ABBREVIATIONS or (len(core) == 1 and core.isalpha())


def _sentence_ends(text: str) -> list[int]:
    """Offsets just past each sentence-final token, for splitting or cutting at sentences."""
    tokens = list(re.finditer(r"\S+", text))
    ends: list[int] = []
    for i, token in enumerate(tokens):
        word = token.group().rstrip("\"'”’)]*_")
        if not word or word[-1] not in ".!?":
            continue
        if i + 1 < len(tokens):
            following = tokens[i + 1].group()[0]
            # Requiring a capital, digit or opener next avoids splitting "3 p.m. today".
            if not (following.isupper() or following.isdigit() or following in "\"'“‘([*"):
                continue
            if word[-1] == "." and _is_abbreviation(word):
                continue
        ends.append(token.end())
    return ends


def _split_sentences(text: str) -> list[str]:
    sentences: list[str] = []
    start = 0
    for end in [*_sentence_ends(text), len(text)]:
        piece = " ".join(text[start:end].split())
        if piece:
            sentences.append(piece)
        start = end
    return sentences


def _group(items: Sequence[str], n: int) -> list[list[str]]:
    """Split items into n contiguous groups whose sizes differ by at most one."""
    size, extra = divmod(len(items), n)
    groups: list[list[str]] = []
    start = 0
    for i in range(n):
        stop = start + size + (1 if i < extra else 0)
        groups.append(list(items[start:stop]))
        start = stop
    return groups


_MIN_PARAGRAPH_WORDS = 8


def _paragraphs(text: str) -> list[str]:
    """Blank-line blocks, with fragments (headings, salutations, sign-offs) joined to the next
    block, or to the previous one at the end, so that each can stand as a paragraph alone."""
    paragraphs: list[str] = []
    pending: list[str] = []
    for block in _blocks(text):
        pending.append(block)
        if count_words(block) >= _MIN_PARAGRAPH_WORDS:
            paragraphs.append("\n\n".join(pending))
            pending = []
    if pending and paragraphs:
        paragraphs[-1] = "\n\n".join([paragraphs[-1], *pending])
    elif pending:
        paragraphs.append("\n\n".join(pending))
    return paragraphs


def _chunks(response: str, n: int) -> list[str] | None:
    """Exactly n non-empty chunks of the response, or None when that would mangle it.

    Existing paragraphs are kept whole; a single paragraph of plain sentences is divided
    between sentences. Nothing else (lists, tables, letters) is ever split mid-structure.
    """
    if n < 1:
        return None
    paragraphs = _paragraphs(response)
    if len(paragraphs) >= n and (len(paragraphs) > 1 or n == 1):
        return ["\n\n".join(group) for group in _group(paragraphs, n)]
    if len(paragraphs) == 1 and _is_sentence_prose(paragraphs[0]):
        sentences = _split_sentences(paragraphs[0])
        if len(sentences) >= n:
            return [" ".join(group) for group in _group(sentences, n)]
    return None


_MAX_CHUNKS = 8


def _sample_chunk_count(response: str, rng: random.Random) -> int | None:
    """A chunk count `_chunks` can honour, biased towards the response's own paragraphs."""
    if _has_code_block(response):
        return None
    paragraphs = _paragraphs(response)
    if 2 <= len(paragraphs) <= _MAX_CHUNKS:
        return len(paragraphs)
    if len(paragraphs) > _MAX_CHUNKS:
        return rng.randint(4, _MAX_CHUNKS)
    if len(paragraphs) == 1 and _is_sentence_prose(paragraphs[0]):
        # A sentence per chunk is enough: short answers (most of an instruction set has two or
        # three sentences) would otherwise never teach paragraphs, sections or dividers.
        most = min(4, len(_split_sentences(paragraphs[0])))
        if most >= 2:
            return rng.randint(2, most)
    return None


def _looks_english(text: str) -> bool:
    # IFEval also runs langdetect; we only rule out mostly non-Latin text, which is where
    # case changes stop making sense (and many scripts have no case at all).
    letters = [ch for ch in text if ch.isalpha()]
    return bool(letters) and sum(ch.isascii() for ch in letters) >= 0.9 * len(letters)


def _case_change_safe(response: str) -> bool:
    # Code, inline identifiers and URL paths are case-sensitive: changing case corrupts them.
    return _looks_english(response) and "`" not in response and "://" not in response


# Fenced code blocks (``` or ~~~), unterminated ones running to the end of the text.
_CODE_BLOCK_RE = re.compile(r"(```|~~~).*?(\1|\Z)", re.DOTALL)


# Frequent words that say nothing about a response's topic, so they make poor keywords; all
# of at least four letters, since shorter words are never candidates anyway.
# fmt: off
_COMMON_WORDS = frozenset({
    "about", "above", "across", "after", "again", "against", "also", "although", "always",
    "among", "another", "anyone", "anything", "around", "because", "been", "before", "being",
    "below", "between", "both", "cannot", "could", "does", "doing", "done", "down", "during",
    "each", "either", "else", "even", "ever", "every", "everyone", "everything", "from",
    "further", "have", "having", "here", "however", "instead", "into", "itself", "just", "like",
    "made", "make", "many", "might", "more", "most", "much", "must", "neither", "never", "next",
    "often", "once", "only", "onto", "other", "others", "over", "quite", "rather", "really",
    "same", "shall", "should", "since", "some", "someone", "something", "still", "such", "than",
    "that", "their", "theirs", "them", "then", "there", "these", "they", "this", "those",
    "through", "thus", "together", "under", "until", "upon", "usually", "very", "want", "well",
    "were", "what", "whatever", "when", "where", "whether", "which", "while", "whom", "whose",
    "will", "with", "within", "without", "would", "your", "yours", "yourself",
})
# fmt: on


# --- relations and counts as IFEval takes them ------------------------------------------

_RELATIONS = ("less than", "at least")


def _check_relation(count: int, relation: str, threshold: int) -> bool:
    if relation == "less than":
        return count < threshold
    if relation == "at least":
        return count >= threshold
    raise ValueError(f"relation must be one of {_RELATIONS}, got {relation!r}")


def _count_sentences(text: str) -> int:
    return int(offline_instructions_util().count_sentences(text))


def _count_capital_words(text: str) -> int:
    # IFEval's rule: Treebank tokens for which str.isupper holds, so "I", a sentence-initial
    # "A", "U.S." and the "N'T" of "DON'T" all count, while "x-RAY" and "42" do not.
    return sum(token.isupper() for token in offline_instructions_util().nltk.word_tokenize(text))
