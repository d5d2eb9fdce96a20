"""IFEval's ``change_case`` instructions: all lowercase, all capitals, and a bound on the
number of all-capital words."""

from __future__ import annotations

import random
import re

from cuvee.data.constraints.base import Constraint, Kwargs, register
from cuvee.data.constraints.text import (
    _COMMON_WORDS,
    _case_change_safe,
    _check_relation,
    _count_capital_words,
    _plural,
    _spelled,
)


@register("change_case:english_lowercase")
class EnglishLowercase(Constraint):
    def phrasings(self, kwargs: Kwargs) -> list[str]:
        return [
            "Your entire response should be in English, and in all lowercase letters. "
            "No capital letters are allowed.",
            "Reply in English using lowercase letters only, without a single capital anywhere.",
            "Please write your answer in English with every letter in lower case, even at the "
            "start of sentences and in names.",
            "Your answer must be in English and must not contain any uppercase letters.",
            "English, all lower case, no capitals at all.",
        ]

    def sample_kwargs(self, response: str, rng: random.Random) -> Kwargs | None:
        return {} if _case_change_safe(response) else None

    def transform(self, response: str, kwargs: Kwargs) -> str:
        return response.lower()

    def check(self, response: str, kwargs: Kwargs) -> bool:
        # str.islower also demands at least one cased character, as IFEval does. Unlike IFEval,
        # the "English" part is not verified: langdetect is not in the standard library.
        return response.islower()


@register("change_case:english_capital")
class EnglishCapital(Constraint):
    def phrasings(self, kwargs: Kwargs) -> list[str]:
        return [
            "Your entire response should be in English, and in all capital letters.",
            "Respond in English and put every letter of the response in upper case.",
            "Please answer in English using capital letters only, with no lowercase letters.",
            "Every letter of your English answer has to be a capital letter.",
            "In English and in all caps, from the first word to the last.",
        ]

    def sample_kwargs(self, response: str, rng: random.Random) -> Kwargs | None:
        return {} if _case_change_safe(response) else None

    def transform(self, response: str, kwargs: Kwargs) -> str:
        return response.upper()

    def check(self, response: str, kwargs: Kwargs) -> bool:
        return response.isupper()


_MAX_EMPHASISED = 4
# Lowercase words of five letters or more standing alone: uppercased, each stays one token.
# Words touching a double quote are left alone, being mostly JSON keys or quoted text.
_EMPHASIS_WORD_RE = re.compile(r"(?<![\w'’*\"-])[a-z]{5,}(?![\w'’*\"-])")


def _emphasis_words(response: str) -> list[re.Match[str]]:
    """The first occurrence of each topic word, most frequent and then longest first (long
    words tend to carry the topic); none in data (JSON, XML) or case-sensitive text (code,
    URLs), whose values must not change."""
    if not _case_change_safe(response) or response.lstrip()[:1] in ("{", "[", "<"):
        return []
    first: dict[str, re.Match[str]] = {}
    frequency: dict[str, int] = {}
    for match in _EMPHASIS_WORD_RE.finditer(response):
        word = match.group()
        if word in _COMMON_WORDS:
            continue
        first.setdefault(word, match)
        frequency[word] = frequency.get(word, 0) + 1
    ranked = sorted(first, key=lambda w: (-frequency[w], -len(w), first[w].start()))
    return [first[w] for w in ranked]


@register("change_case:capital_word_frequency")
class CapitalWordFrequency(Constraint):
    """For "at least N" the response's most frequent topic words are capitalised once each, as a
    writer would for emphasis; "less than N" keeps the response. Counted as IFEval counts (see
    `_count_capital_words`), which includes "I" and acronyms."""

    def phrasings(self, kwargs: Kwargs) -> list[str]:
        n = int(kwargs["capital_frequency"])
        if kwargs["capital_relation"] == "at least":
            words = "one word" if n == 1 else f"{n} words"
            return [
                f"Write at least {words} of your answer entirely in capital letters.",
                f"Put {n} or more words of your reply in full capitals, LIKE THIS.",
                f"Please write at least {_spelled(n)} {_plural(n, 'word')} in all caps.",
                f"Your answer must contain at least {n} {_plural(n, 'word')} whose letters are "
                "all uppercase.",
                f"At least {n} all-caps {_plural(n, 'word')}.",
            ]
        if n == 1:
            return [
                "Do not write any word of your answer entirely in capital letters.",
                "No word of your reply may be written in all caps.",
                "Please use no words in full capitals at all, not even the pronoun I.",
                "Your answer must not contain a single word whose letters are all uppercase.",
                "Zero all-caps words.",
            ]
        most = n - 1
        return [
            f"Write no more than {most} {_plural(most, 'word')} of your answer entirely in "
            "capital letters.",
            f"Fewer than {n} words of your reply may be written in all caps.",
            f"Please keep the count of words in full capitals below {_spelled(n)}.",
            f"Your answer must contain fewer than {n} words whose letters are all uppercase.",
            f"At most {most} all-caps {_plural(most, 'word')}.",
        ]

    def sample_kwargs(self, response: str, rng: random.Random) -> Kwargs | None:
        if not response.strip():
            return None
        count = _count_capital_words(response)
        candidates = _emphasis_words(response)
        if candidates and rng.random() < 0.5:
            added = rng.randint(1, min(_MAX_EMPHASISED, len(candidates)))
            return {"capital_relation": "at least", "capital_frequency": count + added}
        return {"capital_relation": "less than", "capital_frequency": count + rng.randint(1, 3)}

    def transform(self, response: str, kwargs: Kwargs) -> str:
        if kwargs["capital_relation"] != "at least":
            return response
        missing = int(kwargs["capital_frequency"]) - _count_capital_words(response)
        if missing <= 0:
            return response
        out = response
        # Right to left, so earlier offsets stay valid.
        for match in sorted(_emphasis_words(response)[:missing], key=lambda m: -m.start()):
            out = out[: match.start()] + match.group().upper() + out[match.end() :]
        return out

    def check(self, response: str, kwargs: Kwargs) -> bool:
        return _check_relation(
            _count_capital_words(response),
            kwargs["capital_relation"],
            int(kwargs["capital_frequency"]),
        )
