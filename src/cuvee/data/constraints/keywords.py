"""IFEval's ``keywords`` instructions: words to use, words to avoid, how often a word appears,
and how often a letter appears."""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

from cuvee.data.constraints.base import Constraint, Kwargs, register
from cuvee.data.constraints.text import (
    _CODE_BLOCK_RE,
    _COMMON_WORDS,
    _check_relation,
    _plural,
    _spelled,
)

# fmt: off
# Request verbs and fillers of instructions ("Please explain briefly..."): forbidding one
# of them would be a pointless constraint.
_REQUEST_WORDS = frozenset({
    "answer", "brief", "briefly", "describe", "explain", "give", "help", "know", "list",
    "please", "provide", "question", "reply", "respond", "response", "short", "simple",
    "summarise", "summarize", "tell", "thanks", "write",
})
# Plausible words for keywords:forbidden_words when the instruction offers none: the fillers
# and clichés a writer is typically asked to do without.
_FILLER_WORDS = (
    "actually", "amazing", "basically", "crucial", "definitely", "essential", "example",
    "important", "interesting", "literally", "overall", "really", "simply", "thing", "things",
    "truly", "unique", "very",
)
# fmt: on


_CONTENT_WORD_RE = re.compile(r"\b[A-Za-z]{4,}\b")
_INLINE_CODE_RE = re.compile(r"`[^`\n]*`")
_URL_RE = re.compile(r"\S+://\S+")


def _prose(text: str) -> str:
    """The text without code and URLs, whose identifiers are not words of the answer."""
    return _URL_RE.sub(" ", _INLINE_CODE_RE.sub(" ", _CODE_BLOCK_RE.sub(" ", text)))


def _content_words(text: str) -> list[str]:
    """Distinct topic words of the prose, in order of first appearance.

    A word seen in lowercase anywhere is given in lowercase; one only ever capitalised
    ("Canberra") keeps its capital, so an instruction names it as the answer writes it.
    """
    forms: dict[str, str] = {}
    for word in _CONTENT_WORD_RE.findall(_prose(text)):
        key = word.lower()
        if key in _COMMON_WORDS:
            continue
        if word == key or key not in forms:
            forms[key] = word
    return list(forms.values())


def _whole_word_re(word: str) -> re.Pattern[str]:
    return re.compile(rf"\b{re.escape(word)}\b", re.IGNORECASE)


def _quoted_list(words: Sequence[str], conjunction: str) -> str:
    quoted = [f'"{w}"' for w in words]
    if len(quoted) == 1:
        return quoted[0]
    return f"{', '.join(quoted[:-1])} {conjunction} {quoted[-1]}"


def _times(n: int) -> str:
    return {1: "once", 2: "twice"}.get(n, f"{n} times")


_MAX_KEYWORDS = 3


@register("keywords:existence")
class KeywordsExistence(Constraint):
    """Keywords are words the response already uses, so the response is kept as it is.

    IFEval only looks for each keyword as a case-insensitive substring (and as a regex); the
    check here wants whole words, which implies IFEval's test for the alphabetic words used.
    """

    def phrasings(self, kwargs: Kwargs) -> list[str]:
        words = list(kwargs["keywords"])
        noun = _plural(len(words), "word")
        listed = _quoted_list(words, "and")
        return [
            f"Be sure to use the {noun} {listed} in your answer.",
            f"Include the {noun} {listed} somewhere in your response.",
            f"Please make sure your reply mentions {listed}.",
            f"Your answer must contain the {noun} {listed}.",
            f"Required {noun}: {listed}.",
        ]

    def sample_kwargs(self, response: str, rng: random.Random) -> Kwargs | None:
        words = _content_words(response)
        if not words:
            return None
        k = rng.randint(1, min(_MAX_KEYWORDS, len(words)))
        # Sorted as IFEval sorts them, so the description reads the same in both.
        return {"keywords": sorted(rng.sample(words, k))}

    def transform(self, response: str, kwargs: Kwargs) -> str:
        return response

    def check(self, response: str, kwargs: Kwargs) -> bool:
        words = list(kwargs["keywords"])
        return bool(words) and all(_whole_word_re(w).search(response) for w in words)


@register("keywords:forbidden_words")
class ForbiddenWords(Constraint):
    """Words the response does not use; preferably words of the instruction itself, which a
    writer would naturally reach for ("Summarise the doctor's advice" without "doctor"), and
    otherwise common fillers. The response is kept as it is."""

    needs_instruction = True

    def phrasings(self, kwargs: Kwargs) -> list[str]:
        words = list(kwargs["forbidden_words"])
        noun = _plural(len(words), "word")
        either = _quoted_list(words, "or")
        return [
            f"Do not use the {noun} {either} anywhere in your answer.",
            f"Avoid the {noun} {either} entirely.",
            f"Please reply without using {either}.",
            f"Your answer must not contain the {noun} {either}.",
            f"Off-limits {noun}: {_quoted_list(words, 'and')}.",
        ]

    def sample_kwargs(
        self, response: str, rng: random.Random, instruction: str | None = None
    ) -> Kwargs | None:
        if not response.strip():
            return None

        def absent(word: str) -> bool:
            return not _whole_word_re(word).search(response)

        from_instruction = [
            w.lower()
            for w in _content_words(instruction or "")
            if w.lower() not in _REQUEST_WORDS and absent(w)
        ]
        fillers = [w for w in _FILLER_WORDS if absent(w)]
        k = rng.randint(1, _MAX_KEYWORDS)
        chosen = rng.sample(from_instruction, min(k, len(from_instruction)))
        chosen += rng.sample(fillers, min(k - len(chosen), len(fillers)))
        return {"forbidden_words": sorted(set(chosen))} if chosen else None

    def transform(self, response: str, kwargs: Kwargs) -> str:
        return response

    def check(self, response: str, kwargs: Kwargs) -> bool:
        # IFEval's rule: no whole-word, case-insensitive occurrence.
        return not any(_whole_word_re(w).search(response) for w in kwargs["forbidden_words"])


def _keyword_counts(response: str, keyword: str) -> tuple[int, int]:
    """(whole-word count, substring count); IFEval counts substrings, so "art" in "start"."""
    substrings = len(re.findall(re.escape(keyword), response, flags=re.IGNORECASE))
    return len(_whole_word_re(keyword).findall(response)), substrings


@register("keywords:frequency")
class KeywordFrequency(Constraint):
    """A word of the response with a bound its current count meets; the response is kept.

    Only words whose whole-word and substring counts agree are chosen, and the check wants
    both counts to satisfy the bound, so it holds whichever way a scorer counts.
    """

    def phrasings(self, kwargs: Kwargs) -> list[str]:
        word, n = kwargs["keyword"], int(kwargs["frequency"])
        if kwargs["relation"] == "at least":
            return [
                f'Use the word "{word}" at least {_times(n)} in your answer.',
                f'The word "{word}" should appear {n} or more times in your reply.',
                f'Please mention "{word}" no fewer than {_times(n)}.',
                f'Your answer must contain the word "{word}" at least {_spelled(n)} '
                f"{_plural(n, 'time')}.",
                f'"{word}": at least {_times(n)}.',
            ]
        return [
            f'Use the word "{word}" fewer than {n} times in your answer.',
            f'The word "{word}" may appear in your reply, but fewer than {n} times.',
            f'Please keep the number of times you write "{word}" below {n}.',
            f'Your answer must contain the word "{word}" fewer than {_spelled(n)} times.',
            f'Fewer than {n} uses of the word "{word}".',
        ]

    def sample_kwargs(self, response: str, rng: random.Random) -> Kwargs | None:
        counts: dict[str, int] = {}
        for word in _content_words(response):
            whole, substrings = _keyword_counts(response, word)
            if whole == substrings:
                counts[word] = whole
        if not counts:
            return None
        # A word used repeatedly makes a bound that means something.
        repeated = [w for w, c in counts.items() if c >= 2]
        word = rng.choice(repeated or list(counts))
        count = counts[word]
        if rng.random() < 0.5:
            return {
                "keyword": word,
                "frequency": rng.randint(max(1, count - 1), count),
                "relation": "at least",
            }
        return {"keyword": word, "frequency": count + rng.randint(1, 2), "relation": "less than"}

    def transform(self, response: str, kwargs: Kwargs) -> str:
        return response

    def check(self, response: str, kwargs: Kwargs) -> bool:
        counts = _keyword_counts(response, str(kwargs["keyword"]).strip())
        return all(_check_relation(c, kwargs["relation"], int(kwargs["frequency"])) for c in counts)


# Letters that turn up at most this often make a bound a writer can actually keep track of.
_MAX_TRACKED_LETTERS = 20


@register("keywords:letter_frequency")
class LetterFrequency(Constraint):
    """A bound on one letter that the response already meets; the response is kept as it is."""

    def phrasings(self, kwargs: Kwargs) -> list[str]:
        letter, n = kwargs["letter"], int(kwargs["let_frequency"])
        if kwargs["let_relation"] == "at least":
            bound = f"at least {_times(n)}"
            others = [
                f'Use the letter "{letter}" {n} or more times, counting upper and lower case '
                "alike.",
                f'Please make sure "{letter}" occurs no fewer than {_times(n)} in your reply, '
                "in either case.",
                f'At least {_times(n)}: the letter "{letter}", capital or not.',
            ]
        else:
            bound = f"fewer than {n} times"
            others = [
                f'Use the letter "{letter}" fewer than {n} times, counting upper and lower case '
                "alike.",
                f'Please keep the letter "{letter}" to fewer than {_spelled(n)} occurrences in '
                "your reply, in either case.",
                f'Fewer than {n} of the letter "{letter}", capital or not.',
            ]
        return [
            f'The letter "{letter}" must appear {bound} in your answer '
            "(capital and small letters both count).",
            *others,
        ]

    def sample_kwargs(self, response: str, rng: random.Random) -> Kwargs | None:
        lowered = response.lower()
        counts = {ch: lowered.count(ch) for ch in "abcdefghijklmnopqrstuvwxyz"}
        present = [ch for ch, c in counts.items() if c >= 1]
        if not present:
            return None
        letter = rng.choice([ch for ch in present if counts[ch] <= _MAX_TRACKED_LETTERS] or present)
        count = counts[letter]
        if rng.random() < 0.5:
            return {
                "letter": letter,
                "let_frequency": rng.randint(max(1, count - 3), count),
                "let_relation": "at least",
            }
        return {
            "letter": letter,
            "let_frequency": count + rng.randint(1, 3),
            "let_relation": "less than",
        }

    def transform(self, response: str, kwargs: Kwargs) -> str:
        return response

    def check(self, response: str, kwargs: Kwargs) -> bool:
        # IFEval counts characters of the lowercased response, so "A" and "a" are both an "a".
        count = response.lower().count(str(kwargs["letter"]).lower())
        return _check_relation(count, kwargs["let_relation"], int(kwargs["let_frequency"]))
