"""Verifiable IFEval-style output constraints, for augmenting training pairs and scoring outputs."""

from __future__ import annotations

import bisect
import json
import random
import re
import zlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, TypeVar

__all__ = [
    "CONSTRAINTS",
    "Constraint",
    "augment_pair",
    "check_constraint",
    "count_words",
    "get_constraint",
    "register",
]

Kwargs = dict[str, Any]
Variant = tuple[str, str, str, Kwargs]

CONSTRAINTS: dict[str, type[Constraint]] = {}

_C = TypeVar("_C", bound="type[Constraint]")


def register(constraint_id: str) -> Callable[[_C], _C]:
    """Class decorator adding a constraint to CONSTRAINTS under an IFEval instruction id."""

    def decorate(cls: _C) -> _C:
        if constraint_id in CONSTRAINTS:
            raise ValueError(f"constraint id {constraint_id!r} is registered twice")
        cls.id = constraint_id
        CONSTRAINTS[constraint_id] = cls
        return cls

    return decorate


class Constraint(ABC):
    """One verifiable output constraint; stateless, all parameters travel in `kwargs`.

    `kwargs` keys are IFEval's, so (instruction_id, kwargs) pairs produced here can be scored by
    IFEval and IFEval prompts can be scored by `check`.
    """

    id: ClassVar[str] = ""
    # Constraints about the request itself (repeat it, avoid its words) set this, and then
    # `augment_pair` passes the original instruction to `sample_kwargs` as `instruction=`.
    # The others keep the two-argument call, so they need not know the hook exists.
    needs_instruction: ClassVar[bool] = False

    def describe(self, kwargs: Kwargs) -> str:
        """The sentence appended to an instruction to impose this constraint: the first of
        `phrasings`. A subclass defines `phrasings`, or only `describe` for a single wording."""
        if type(self).phrasings is Constraint.phrasings:
            raise NotImplementedError(
                f"{type(self).__name__} defines neither describe nor phrasings"
            )
        return self.phrasings(kwargs)[0]

    def phrasings(self, kwargs: Kwargs) -> list[str]:
        """Distinct wordings of exactly this requirement with these parameters, `describe`'s
        first. `augment_pair` picks one per variant so that training does not tie the rule to
        one fixed sentence."""
        return [self.describe(kwargs)]

    @abstractmethod
    def sample_kwargs(self, response: str, rng: random.Random) -> Kwargs | None:
        """Parameters that `transform` can satisfy for this response, or None if it cannot."""

    @abstractmethod
    def transform(self, response: str, kwargs: Kwargs) -> str:
        """Rewrite `response` to satisfy the constraint while keeping its content."""

    @abstractmethod
    def check(self, response: str, kwargs: Kwargs) -> bool:
        """Whether `response` satisfies the constraint (never relies on `transform`)."""


def get_constraint(constraint_id: str) -> Constraint:
    try:
        cls = CONSTRAINTS[constraint_id]
    except KeyError:
        known = " ".join(sorted(CONSTRAINTS))
        raise KeyError(f"unknown constraint id {constraint_id!r}; known ids: {known}") from None
    return cls()


def check_constraint(constraint_id: str, response: str, kwargs: Kwargs) -> bool:
    return get_constraint(constraint_id).check(response, kwargs)


def augment_pair(
    instruction: str,
    response: str,
    rng: random.Random,
    ids: Sequence[str] | None = None,
) -> list[Variant]:
    """One (new_instruction, new_response, constraint_id, kwargs) variant per applicable id.

    Ids are tried in the given order (default: registration order) so a seeded `rng` gives
    reproducible output, including which of the constraint's phrasings is appended.
    Constraints with `needs_instruction` also see `instruction` as it is here, without the
    constraint sentence.
    """
    # Resolve every id first so a typo fails loudly instead of silently producing fewer variants.
    constraints = [get_constraint(i) for i in (list(CONSTRAINTS) if ids is None else ids)]
    # A multi-line instruction (e.g. one that embeds a document) reads better with the
    # constraint as its own paragraph than glued to the end of its last line.
    joiner = "\n\n" if "\n" in instruction.strip() else " "
    variants: list[Variant] = []
    for constraint in constraints:
        if constraint.needs_instruction:
            kwargs = constraint.sample_kwargs(response, rng, instruction=instruction)
        else:
            kwargs = constraint.sample_kwargs(response, rng)
        if kwargs is None:
            continue
        new_response = constraint.transform(response, kwargs)
        # Defensive: a training example that violates its own instruction is worse than none.
        if not new_response.strip() or not constraint.check(new_response, kwargs):
            continue
        sentence = rng.choice(constraint.phrasings(kwargs))
        new_instruction = instruction.rstrip() + joiner + sentence
        variants.append((new_instruction, new_response, constraint.id, dict(kwargs)))
    return variants


# --- text analysis shared by several constraints -------------------------------------------

# Same tokenizer as IFEval's `count_words` (nltk RegexpTokenizer(r"\w+")), without nltk:
# "don't" is two words and "7,000" is two. Sentences and the words of capital_word_frequency
# are counted differently (a punkt model, NLTK's Treebank tokenizer); for those the
# constraints below ask the eval's own checker helpers, see `_ifeval_util`.
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


# --- constraints ------------------------------------------------------------------------------


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


_END_PHRASES = (
    "Any other questions?",
    "Is there anything else I can help with?",
    "Let me know if you have additional questions.",
    "Hope this helps.",
    "That is all for now.",
    "I hope this answers your question.",
)


@register("startend:end_checker")
class EndChecker(Constraint):
    def phrasings(self, kwargs: Kwargs) -> list[str]:
        phrase = kwargs["end_phrase"]
        return [
            f"Finish your response with this exact phrase {phrase}. "
            "No other words should follow this phrase.",
            f'The very last words of your answer must be "{phrase}", exactly as written here, '
            "with nothing after them.",
            f"Please close with this precise phrase and let nothing follow it: {phrase}",
            f'Make "{phrase}" the final phrase of your reply, word for word, and add nothing '
            "after it.",
            f'End on exactly "{phrase}" and stop there.',
        ]

    def sample_kwargs(self, response: str, rng: random.Random) -> Kwargs | None:
        return {"end_phrase": rng.choice(_END_PHRASES)} if response.strip() else None

    def transform(self, response: str, kwargs: Kwargs) -> str:
        body = response.rstrip()
        phrase = str(kwargs["end_phrase"]).strip()
        return body if body.endswith(phrase) else f"{body}\n\n{phrase}"

    def check(self, response: str, kwargs: Kwargs) -> bool:
        # Case-sensitive, unlike IFEval: the instruction says "this exact phrase".
        phrase = str(kwargs["end_phrase"]).strip()
        return bool(phrase) and response.rstrip().endswith(phrase)


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
_CODE_BLOCK_RE = re.compile(r"(```|~~~).*?(\1|\Z)", re.DOTALL)
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


# Commas between digits that are followed by exactly three digits are thousands separators.
_THOUSANDS_COMMA_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
# A comma followed by whitespace (or ending the text) is clause or list punctuation.
_PROSE_COMMA_RE = re.compile(r",(?=\s|$)")


def _strip_commas(text: str) -> str:
    text = _THOUSANDS_COMMA_RE.sub("", text)
    return _PROSE_COMMA_RE.sub("", text)


@register("punctuation:no_comma")
class NoComma(Constraint):
    """Commas are deleted rather than replaced.

    English stays readable without them ("In 2023 the city of Paris France welcomed 47000000
    visitors"), whereas substitutes misfire: "; " wrecks "However, we", " and " wrecks
    "Paris, France", " - " reads as a list in disguise. Thousands separators are removed too.
    Responses with other commas (code, "1,2" coordinates, CSV) are skipped since deleting those
    changes meaning.
    """

    def phrasings(self, kwargs: Kwargs) -> list[str]:
        return [
            "In your entire response, refrain from the use of any commas.",
            "Do not put a single comma anywhere in the answer.",
            "Please write your reply without any commas at all.",
            "Your answer must contain zero commas, so write large numbers as 5000 rather "
            "than 5,000.",
            "No commas, anywhere.",
        ]

    def sample_kwargs(self, response: str, rng: random.Random) -> Kwargs | None:
        if _has_code_block(response) or "," in _strip_commas(response):
            return None
        return {} if response.strip() else None

    def transform(self, response: str, kwargs: Kwargs) -> str:
        # The last replace only matters for text sample_kwargs rejects; it keeps the output valid.
        return _strip_commas(response).replace(",", " ")

    def check(self, response: str, kwargs: Kwargs) -> bool:
        return "," not in response


_RELATIONS = ("less than", "at least")
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


@register("startend:quotation")
class Quotation(Constraint):
    def phrasings(self, kwargs: Kwargs) -> list[str]:
        return [
            "Wrap your entire response with double quotation marks.",
            'Put the whole reply inside double quotes, so that it begins and ends with a " '
            "character.",
            "Please enclose the complete answer in one pair of double quotation marks.",
            "Your answer must start with a double quotation mark and end with one.",
            "All of it in double quotes, from start to finish.",
        ]

    def sample_kwargs(self, response: str, rng: random.Random) -> Kwargs | None:
        return {} if response.strip() else None

    def transform(self, response: str, kwargs: Kwargs) -> str:
        text = response.strip()
        return text if self.check(text, kwargs) else f'"{text}"'

    def check(self, response: str, kwargs: Kwargs) -> bool:
        text = response.strip()
        return len(text) > 1 and text[0] == '"' and text[-1] == '"'


_POSTSCRIPT_MARKERS = ("P.S.", "P.P.S")
_POSTSCRIPT_NOTES = (
    "Let me know if you would like more detail on any part of this.",
    "Feel free to ask if anything here is unclear.",
    "I am happy to expand on any of these points.",
    "If you have a follow-up question just ask.",
)


def _postscript_pattern(marker: str) -> re.Pattern[str]:
    marker = marker.strip().lower()
    # IFEval's spellings for its two standard markers: "p.s." and "p. p. s" variants.
    if marker == "p.s.":
        body = r"p\.\s?s\."
    elif marker == "p.p.s":
        body = r"p\.\s?p\.\s?s"
    else:
        body = re.escape(marker)
    # Stricter than IFEval: the marker must open a line (bold or italic allowed) and be
    # followed by some text, not merely appear somewhere.
    return re.compile(r"^[ \t*_>]*" + body + r"[^\n]*\w", flags=re.MULTILINE)


@register("detectable_content:postscript")
class Postscript(Constraint):
    def phrasings(self, kwargs: Kwargs) -> list[str]:
        marker = kwargs["postscript_marker"]
        return [
            "At the end of your response, please explicitly add a postscript starting with "
            f"{marker}",
            f'After the main answer, add a postscript on a new line that opens with "{marker}".',
            f'Please finish with a short extra note beginning with "{marker}" on its own line.',
            f'Your answer must close with a postscript introduced by "{marker}".',
            f'Add a "{marker}" note at the very end.',
        ]

    def sample_kwargs(self, response: str, rng: random.Random) -> Kwargs | None:
        return {"postscript_marker": rng.choice(_POSTSCRIPT_MARKERS)} if response.strip() else None

    def transform(self, response: str, kwargs: Kwargs) -> str:
        if self.check(response, kwargs):
            return response
        # Chosen from the text rather than an rng so transform stays a pure function of kwargs.
        note = _POSTSCRIPT_NOTES[zlib.crc32(response.encode()) % len(_POSTSCRIPT_NOTES)]
        return f"{response.rstrip()}\n\n{kwargs['postscript_marker']} {note}"

    def check(self, response: str, kwargs: Kwargs) -> bool:
        return bool(_postscript_pattern(kwargs["postscript_marker"]).search(response.lower()))


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


# --- word, letter and sentence counts -------------------------------------------------------


def _ifeval_util() -> Any:
    """if-verifiable's helper module exactly as the eval runs it (sentences split by nupunkt,
    words by NLTK's Treebank tokenizer). Counting through it rather than re-implementing the
    counts means a variant passes here only if it also passes the eval's scorer. Imported on
    first use: the checkers pull in nltk and langdetect, which the other constraints never need.
    """
    from if_verifiable.ifeval import instructions_util

    from cuvee.eval.instructions import offline_checkers

    offline_checkers()  # routes instructions_util's sentence splitting to nupunkt
    return instructions_util


def _count_sentences(text: str) -> int:
    return int(_ifeval_util().count_sentences(text))


def _count_capital_words(text: str) -> int:
    # IFEval's rule: Treebank tokens for which str.isupper holds, so "I", a sentence-initial
    # "A", "U.S." and the "N'T" of "DON'T" all count, while "x-RAY" and "42" do not.
    return sum(token.isupper() for token in _ifeval_util().nltk.word_tokenize(text))


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


def _check_relation(count: int, relation: str, threshold: int) -> bool:
    if relation == "less than":
        return count < threshold
    if relation == "at least":
        return count >= threshold
    raise ValueError(f"relation must be one of {_RELATIONS}, got {relation!r}")


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


# Longer requests (an embedded document) would make the repetition most of the answer.
_MAX_REPEATED_WORDS = 60


@register("combination:repeat_prompt")
class RepeatPrompt(Constraint):
    """The answer opens with the request, verbatim, then a blank line and the original answer.
    `prompt_to_repeat` is the instruction without the constraint sentence, as in IFEval."""

    needs_instruction = True

    def phrasings(self, kwargs: Kwargs) -> list[str]:
        return [
            "Before you answer, copy the request above exactly as written, word for word, and "
            "only then give your answer. Write nothing before the copied request, and leave "
            "this sentence out of the copy.",
            "Start your reply by restating the request above verbatim, without this sentence, "
            "then answer it; put nothing in front of the restated request.",
            "Please begin with an exact copy of the request (not including this instruction) "
            "and follow it with your answer, with nothing ahead of the copy.",
            "Your response must open with the request repeated word for word, minus this "
            "sentence, and only after that give the answer itself.",
            "Request first, copied verbatim and without this sentence; then your answer.",
        ]

    def sample_kwargs(
        self, response: str, rng: random.Random, instruction: str | None = None
    ) -> Kwargs | None:
        prompt = (instruction or "").strip()
        if not prompt or not response.strip() or _has_code_block(prompt):
            return None
        if count_words(prompt) > _MAX_REPEATED_WORDS:
            return None
        return {"prompt_to_repeat": prompt}

    def transform(self, response: str, kwargs: Kwargs) -> str:
        prompt = str(kwargs["prompt_to_repeat"]).strip()
        if self.check(response, kwargs):
            return response
        return f"{prompt}\n\n{response.strip()}"

    def check(self, response: str, kwargs: Kwargs) -> bool:
        # IFEval's rule (case-insensitive prefix), and stricter: an answer must follow.
        text, prompt = response.strip().lower(), str(kwargs["prompt_to_repeat"]).strip().lower()
        return bool(prompt) and text.startswith(prompt) and bool(text[len(prompt) :].strip())


# A square-bracketed field to fill in ("[Your Name]", "[date]"); not "[1]" citations, not
# "[text](url)" links, not "[x]" checkboxes.
_PLACEHOLDER_RE = re.compile(r"\[[A-Za-z][^\[\]\n]{1,40}\](?!\()")
_MAX_PLACEHOLDERS = 6


@register("detectable_content:number_placeholders")
class NumberPlaceholders(Constraint):
    """Only for responses that are already templates: the bound is met by their own
    placeholders. Turning the names and dates of a real answer into placeholders would
    contradict instructions that state them ("Reply to Sam...").

    Stricter than IFEval, which counts every "[...]" including links and citations.
    """

    def phrasings(self, kwargs: Kwargs) -> list[str]:
        n = int(kwargs["num_placeholders"])
        noun = _plural(n, "placeholder")
        return [
            f"Leave at least {n} {noun} in square brackets, such as [date], for details to be "
            "filled in later.",
            f"Use {n} or more fill-in fields written in square brackets, like [company name].",
            f"Please keep at least {_spelled(n)} bracketed {noun}, for example [address], for "
            "details that are not known yet.",
            f"Your answer must contain at least {n} {noun} of the form [field].",
            f"At least {_spelled(n)} [square-bracket] {noun}.",
        ]

    def sample_kwargs(self, response: str, rng: random.Random) -> Kwargs | None:
        most = min(len(_PLACEHOLDER_RE.findall(response)), _MAX_PLACEHOLDERS)
        if most == 0:
            return None
        return {"num_placeholders": rng.randint(max(1, most - 2), most)}

    def transform(self, response: str, kwargs: Kwargs) -> str:
        return response

    def check(self, response: str, kwargs: Kwargs) -> bool:
        return len(_PLACEHOLDER_RE.findall(response)) >= int(kwargs["num_placeholders"])
