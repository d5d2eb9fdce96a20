"""IFEval's ``detectable_format`` instructions: bullet lists, JSON, a title, numbered sections
and highlighted (italic) phrases."""

from __future__ import annotations

import json
import random
import re
from collections.abc import Sequence
from typing import Any

from cuvee.data.constraints.base import Constraint, Kwargs, register
from cuvee.data.constraints.text import (
    _CODE_BLOCK_RE,
    _LIST_ITEM_RE,
    _STRUCTURE_RE,
    _chunks,
    _group,
    _has_code_block,
    _is_sentence_prose,
    _plural,
    _sample_chunk_count,
    _sentence_ends,
    _spelled,
    _split_sentences,
    count_words,
)

_MIN_PROSE_BULLETS = 2
_BULLET_LIKE_RE = re.compile(r"^\s*(?:\*[^*]|-)")
_MAX_BULLETS = 10


@register("detectable_format:number_bullet_lists")
class NumberBulletLists(Constraint):
    def phrasings(self, kwargs: Kwargs) -> list[str]:
        n = int(kwargs["num_bullets"])
        return [
            f"Your answer must contain exactly {n} bullet points. "
            "Use the markdown bullet points such as:\n* This is point 1.\n* This is point 2",
            f"Present the answer as exactly {n} markdown bullet points, each on its own line "
            'beginning with "* ".',
            f"Please give exactly {_spelled(n)} bullet points in markdown, no more and no fewer, "
            "for example:\n* A first point.\n* A second point.",
            f"Use precisely {n} markdown bullets (lines that start with an asterisk and a space) "
            "in your answer.",
            f"Exactly {_spelled(n)} markdown bullet points, written as * item.",
        ]

    def sample_kwargs(self, response: str, rng: random.Random) -> Kwargs | None:
        if _has_code_block(response):
            return None
        lines = response.splitlines()
        items = [line for line in lines if _LIST_ITEM_RE.match(line)]
        if items:
            # Other lines that scorers count as bullets ("*italic* text", "---") would make
            # the count wrong.
            if any(_BULLET_LIKE_RE.match(line) and not _LIST_ITEM_RE.match(line) for line in lines):
                return None
            # An existing list keeps its own length; regrouping items would merge unrelated ones.
            return {"num_bullets": len(items)} if 2 <= len(items) <= _MAX_BULLETS else None
        if not _is_sentence_prose(response):
            return None
        sentences = _split_sentences(response)
        if len(sentences) < _MIN_PROSE_BULLETS:
            return None
        return {"num_bullets": rng.randint(_MIN_PROSE_BULLETS, min(len(sentences), 6))}

    def transform(self, response: str, kwargs: Kwargs) -> str:
        n = int(kwargs["num_bullets"])
        lines = response.strip().splitlines()
        if any(_LIST_ITEM_RE.match(line) for line in lines):
            # Lines around the list (an intro, a closing remark) stay as they are.
            out = []
            for line in lines:
                match = _LIST_ITEM_RE.match(line)
                out.append(f"{match['indent']}* {match['body']}" if match else line)
            return "\n".join(out)
        sentences = _split_sentences(response)
        if len(sentences) < n or n < 1:
            return response
        return "\n".join("* " + " ".join(group) for group in _group(sentences, n))

    def check(self, response: str, kwargs: Kwargs) -> bool:
        # IFEval's patterns: "* x" and "- x" lines count, "**bold**" lines do not.
        stars = re.findall(r"^\s*\*[^\*].*$", response, flags=re.MULTILINE)
        dashes = re.findall(r"^\s*-.*$", response, flags=re.MULTILINE)
        return len(stars) + len(dashes) == int(kwargs["num_bullets"])


_JSON_FENCE_RE = re.compile(r"```(?:json)?[ \t]*\n?(?P<body>.*?)\n?```", re.DOTALL | re.IGNORECASE)


def _parse_json_document(text: str) -> Any:
    text = text.strip()
    fence = _JSON_FENCE_RE.fullmatch(text)
    if fence:
        text = fence["body"].strip()
    return json.loads(text)


@register("detectable_format:json_format")
class JsonFormat(Constraint):
    def phrasings(self, kwargs: Kwargs) -> list[str]:
        return [
            "Entire output should be wrapped in JSON format. "
            "You can use markdown ticks such as ```.",
            "Format the whole reply as JSON; a markdown code fence (```) around it is allowed.",
            "Please return nothing but JSON, optionally inside a ```json code block.",
            "Your complete answer has to be a JSON document, which may be fenced with ```.",
            "JSON only, with or without ``` fences around it.",
        ]

    def sample_kwargs(self, response: str, rng: random.Random) -> Kwargs | None:
        return {} if response.strip() else None

    def transform(self, response: str, kwargs: Kwargs) -> str:
        if self.check(response, kwargs):
            return response.strip()
        return json.dumps({"answer": response.strip()}, ensure_ascii=False, indent=2)

    def check(self, response: str, kwargs: Kwargs) -> bool:
        # Stricter than IFEval, which accepts any JSON value: a bare "42" or "true" is not
        # an answer "wrapped in JSON", so only objects and arrays pass.
        try:
            value = _parse_json_document(response)
        except (ValueError, RecursionError):
            return False
        return isinstance(value, dict | list)


_TITLE_MAX_WORDS = 7
# Words a title should neither end with nor capitalise (unless first).
# fmt: off
_MINOR_WORDS = frozenset({
    "a", "about", "an", "and", "are", "as", "at", "be", "but", "by", "for", "from", "in", "into",
    "is", "it", "its", "of", "on", "or", "so", "than", "that", "the", "to", "was", "which",
    "with",
})
# fmt: on
_HEADING_RE = re.compile(r"^#{1,6}[ \t]+(?P<text>.+?)[ \t#]*$")
_BOLD_LINE_RE = re.compile(r"^\*\*(?P<text>[^*\n]+?):?\*\*:?[ \t]*$")


_GREETING_RE = re.compile(
    r"^\s*(?:hi|hello|hey|dear|good (?:morning|afternoon|evening))\b[^\n]*,\s*$", re.IGNORECASE
)
_SUBJECT_RE = re.compile(r"^(?:subject|title)[ \t]*:[ \t]*(?P<text>\S.*)$", re.IGNORECASE)


def _title_case(words: list[str]) -> str:
    out = []
    for i, word in enumerate(words):
        # Leave words with capitals alone so "iPhone" or "NASA" survive.
        if word.islower() and (i == 0 or word not in _MINOR_WORDS):
            word = word[0].upper() + word[1:]
        out.append(word)
    return " ".join(out)


def _clean_title(text: str) -> str:
    return " ".join(re.sub(r"[*_`<>]", "", text).split())


def _derive_title(response: str) -> tuple[str, str]:
    """(title, body) for a response.

    A markdown heading or a bold first line becomes the title and leaves the body; otherwise
    the title is an email subject or the opening words of the first clause (of the first
    sentence when that clause is too short to say anything) and the body is everything.
    """
    text = response.strip()
    first_line, _, rest = text.partition("\n")
    heading = _HEADING_RE.match(first_line) or _BOLD_LINE_RE.match(first_line)
    if heading and _clean_title(heading["text"]) and rest.strip():
        return _clean_title(heading["text"]), rest.strip()
    subject = _SUBJECT_RE.match(first_line)
    if subject:
        return _clean_title(subject["text"]), text
    # Code and greetings ("Hi Sam,") say nothing about the topic; start after them.
    prose_lines = [
        line
        for line in _CODE_BLOCK_RE.sub("", text).splitlines()
        if line.strip() and not _GREETING_RE.match(line)
    ]
    if not prose_lines:
        return "", text
    opening = _STRUCTURE_RE.sub("", prose_lines[0], count=1)
    ends = _sentence_ends(opening)
    sentence = opening[: ends[0]] if ends else opening
    clause = re.split(r"[;:](?:\s|$)|[()—–]", sentence, maxsplit=1)[0]
    words = re.findall(r"\w[\w'’-]*", clause.split(",", 1)[0])
    if len(words) < 3:
        words = re.findall(r"\w[\w'’-]*", clause)
    words = words[:_TITLE_MAX_WORDS]
    while len(words) > 1 and words[-1].lower() in _MINOR_WORDS:
        words.pop()
    return _title_case(words), text


@register("detectable_format:title")
class Title(Constraint):
    def phrasings(self, kwargs: Kwargs) -> list[str]:
        return [
            "Your answer must contain a title, wrapped in double angular brackets, "
            "such as <<poem of joy>>.",
            "Add a title to your answer and enclose it in double angle brackets, for example "
            "<<a quiet harbour>>.",
            "Please include a title written between << and >>, as in <<notes on spring>>.",
            "Put a title in your reply using double angle brackets around it, e.g. "
            "<<the long road>>.",
            "A title in double angle brackets, like <<my title>>, is required.",
        ]

    def sample_kwargs(self, response: str, rng: random.Random) -> Kwargs | None:
        # A title on a one-line answer would be longer than the answer itself.
        if count_words(response) < 4:
            return None
        title, body = _derive_title(response)
        return {} if title and body else None

    def transform(self, response: str, kwargs: Kwargs) -> str:
        title, body = _derive_title(response)
        if not title:
            return response
        return f"<<{title}>>\n\n{body}" if body else f"<<{title}>>"

    def check(self, response: str, kwargs: Kwargs) -> bool:
        return any(t.strip("<>").strip() for t in re.findall(r"<<[^\n]+>>", response))


_SECTION_SPLITTERS = ("Section", "SECTION")


@register("detectable_format:multiple_sections")
class MultipleSections(Constraint):
    """Stricter than IFEval, which counts "Section N" anywhere and accepts >= N sections:
    here headers must open a line (markdown "#"/"**" allowed) and the count must be exact."""

    def phrasings(self, kwargs: Kwargs) -> list[str]:
        splitter, n = kwargs["section_spliter"], int(kwargs["num_sections"])
        return [
            f"Your response must have {n} sections. Mark the beginning of "
            f"each section with {splitter} X, such as:\n{splitter} 1\n[content of section 1]\n"
            f"{splitter} 2\n[content of section 2]",
            f"Divide your answer into exactly {n} sections, opening each one with a line "
            f'"{splitter} X" where X is its number.',
            f"Please organise the answer in exactly {_spelled(n)} sections, each headed "
            f"{splitter} X (so the first starts with {splitter} 1).",
            f"Your reply needs exactly {n} sections, headed {splitter} 1, {splitter} 2 and so on.",
            f'Exactly {_spelled(n)} sections, each beginning with "{splitter} X", X being '
            "its number.",
        ]

    def sample_kwargs(self, response: str, rng: random.Random) -> Kwargs | None:
        # Existing "section 3" mentions would be miscounted by IFEval-style scorers.
        if re.search(r"section\s?\d", response, flags=re.IGNORECASE):
            return None
        n = _sample_chunk_count(response, rng)
        if n is None:
            return None
        return {"section_spliter": rng.choice(_SECTION_SPLITTERS), "num_sections": n}

    def transform(self, response: str, kwargs: Kwargs) -> str:
        chunks = _chunks(response, int(kwargs["num_sections"]))
        if chunks is None:
            return response
        splitter = kwargs["section_spliter"]
        return "\n\n".join(f"{splitter} {i}\n{chunk}" for i, chunk in enumerate(chunks, 1))

    def check(self, response: str, kwargs: Kwargs) -> bool:
        splitter = re.escape(str(kwargs["section_spliter"]).strip())
        headers = re.findall(rf"^[ \t#*_]*{splitter}[ \t]?\d+", response, flags=re.MULTILINE)
        return len(headers) == int(kwargs["num_sections"])


_MAX_HIGHLIGHTS = 4
_HIGHLIGHT_MAX_WORDS = 14
# Where a sentence's first clause ends: punctuation followed by a space, so "7,000" and
# "10:30" stay whole.
_CLAUSE_END_RE = re.compile(r"[,;:](?=\s|$)|[()—–]|\s-\s")
# Characters that would interfere with markdown emphasis or quoting around a phrase.
_UNHIGHLIGHTABLE = set('*_`[]<>|#"“”')
# A finished sentence, or the colon introducing a list; unterminated lines are mostly
# salutations, sign-offs and names, which are no phrases to emphasise.
_TERMINATED_RE = re.compile(r"[.!?:][\"'”’)]*\s*$")


def _highlight_spans(response: str) -> list[tuple[int, int]]:
    """(start, end) offsets of phrases that can be wrapped in *...*: the first clause of each
    sentence of prose lines and list items; headings, tables and quotes are left alone."""
    spans: list[tuple[int, int]] = []
    for line in re.finditer(r"[^\n]+", response):
        text = line.group()
        if re.match(r"\s*[#|>]", text):
            continue
        item = _LIST_ITEM_RE.match(text)
        body_start = item.start("body") if item else len(text) - len(text.lstrip())
        body = text[body_start:]
        ends = _sentence_ends(body)
        for start in [0, *(e for e in ends if e < len(body))]:
            start += len(body[start:]) - len(body[start:].lstrip())
            sentence = body[start : next((e for e in ends if e > start), len(body))]
            # Code and URLs must not end up inside, or cut by, the asterisks.
            if (
                not (item or _TERMINATED_RE.search(sentence))
                or "`" in sentence
                or "://" in sentence
            ):
                continue
            clause = _CLAUSE_END_RE.split(sentence, maxsplit=1)[0]
            clause = clause.rstrip().rstrip(".!?…").rstrip()
            n_words = count_words(clause)
            if (
                2 <= n_words <= _HIGHLIGHT_MAX_WORDS
                and clause[0].isalnum()
                and clause[-1].isalnum()
                and not _UNHIGHLIGHTABLE.intersection(clause)
            ):
                offset = line.start() + body_start + start
                spans.append((offset, offset + len(clause)))
    return spans


def _spread(items: Sequence[Any], n: int) -> list[Any]:
    """n items spread evenly over the sequence (one from the middle of each n-th part)."""
    return [items[(2 * i + 1) * len(items) // (2 * n)] for i in range(n)]


@register("detectable_format:number_highlighted_sections")
class NumberHighlightedSections(Constraint):
    """Wraps the opening clause of n sentences, spread over the response, in *italics*.

    IFEval counts every non-empty *...* and **...** on one line, so bold counts too, and a
    "* item" bullet followed by another asterisk on its line miscounts. Responses that already
    use asterisks are therefore skipped, and the check counts as IFEval does.
    """

    def phrasings(self, kwargs: Kwargs) -> list[str]:
        n = int(kwargs["num_highlights"])
        phrases = "one key phrase" if n == 1 else f"{n} key phrases"
        return [
            f"Emphasise at least {phrases} by wrapping each in single asterisks, "
            "like *this phrase*.",
            f"Italicise {n} or more important phrases with markdown asterisks, as in *an example*.",
            f"Please mark at least {_spelled(n)} {_plural(n, 'phrase')} in italics by putting "
            "an asterisk on each side, e.g. *a phrase*.",
            f"Your answer must set at least {n} {_plural(n, 'phrase')} in markdown italics "
            "(*like so*).",
            f"At least {_spelled(n)} *italicised* {_plural(n, 'phrase')}.",
        ]

    def sample_kwargs(self, response: str, rng: random.Random) -> Kwargs | None:
        if "*" in response or _has_code_block(response):
            return None
        spans = _highlight_spans(response)
        if not spans:
            return None
        return {"num_highlights": rng.randint(1, min(_MAX_HIGHLIGHTS, len(spans)))}

    def transform(self, response: str, kwargs: Kwargs) -> str:
        spans = _highlight_spans(response)
        n = int(kwargs["num_highlights"])
        if not 1 <= n <= len(spans):
            return response
        out = response
        for start, end in reversed(_spread(spans, n)):
            out = f"{out[:start]}*{out[start:end]}*{out[end:]}"
        return out

    def check(self, response: str, kwargs: Kwargs) -> bool:
        singles = re.findall(r"\*[^\n*]*\*", response)
        doubles = re.findall(r"\*\*[^\n*]*\*\*", response)
        count = sum(bool(h.strip("*").strip()) for h in singles)
        count += sum(bool(h[2:-2].strip()) for h in doubles)
        return count >= int(kwargs["num_highlights"])
