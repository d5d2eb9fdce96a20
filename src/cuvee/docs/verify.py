"""Checking an answer against its sources, sentence by sentence.

A sentence of a generated answer is *supported* by a retrieved chunk when one window of that
chunk (one sentence, or two consecutive ones, read with the chunk's title and section)

1. contains every number in the sentence (``42``, ``3,5``, ``1 000``, ``2024``) and every name
   (a capitalised word, or a first word the passages never use),
2. contains at least ``min_support`` of its content terms (normalised by :mod:`textnorm`:
   case, accents, elisions, stopwords, light stemming), and
3. has the same polarity: a negation on one side only is the opposite claim.

The check is lexical on purpose: cheap, explainable ("the answer says 2019, the source says
2021") and not swayed by fluent wording. It has limits: a paraphrase sharing few words with its
source is rejected (a cost in recall), and a claim that rearranges a window's own words into a
different statement ("A approves B" from "B approves A") can pass; what passes is always
*found* in the source, which is what the quote shows. A sentence is checked first against the
chunks it cites, then against the other retrieved chunks (its citation is then corrected and
the sentence marked ``reattributed``). Its quote is the supporting window itself: a slice of the
stored document text, given by offsets into it."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from cuvee.docs.retrieval import Hit
from cuvee.docs.textnorm import STOPWORDS, fold, sentence_spans, stem, terms, ungroup, words

DEFAULT_MIN_SUPPORT = 0.7

# Words a model wraps a claim in ("the text says that ...") that no source needs to contain.
FRAMING = frozenset(
    [
        "only",
        "say",
        "says",
        "said",
        "state",
        "states",
        "stated",
        "text",
        "document",
        "source",
        "mention",
        "mentions",
        "mentioned",
        "according",
        "indique",
        "selon",
        "texte",
    ]
)


def claim_terms_of(claim: str) -> list[str]:
    return [t for t in terms(claim) if t not in FRAMING and t not in _FRAMING_STEMS]


_CITATION = re.compile(r"\[(\d+(?:\s*[,;]\s*\d+)*)\]")
_NUMBER = re.compile(r"\d+(?:[.,:/-]\d+)*")
_CAPITALISED = re.compile(r"(?<![\w'’])([A-ZÀ-ÖØ-Þ][\w'’-]*)")


@dataclass
class Citation:
    n: int
    doc: str
    title: str
    section: str
    start: int
    end: int
    quote: str
    chunk_id: int

    @classmethod
    def of(cls, hit: Hit, n: int) -> Citation:
        """A citation of the whole of ``hit`` (a chunk, or a window of one whose offsets and
        text are the window's): its text is the quote."""
        return cls(n, hit.doc, hit.title, hit.section, hit.start, hit.end, hit.text, hit.chunk_id)

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class SentenceVerdict:
    text: str
    verdict: str  # supported | unsupported | no_claim | off_topic (true, but not asked about)
    cited: list[int] = field(default_factory=list)  # what the model cited (1-based hits)
    support: float = 0.0
    missing: list[str] = field(default_factory=list)  # numbers and names absent from the source
    reattributed: bool = False
    citation: Citation | None = None

    def as_dict(self) -> dict:
        out = asdict(self)
        out["citation"] = self.citation.as_dict() if self.citation else None
        return out


def numbers_in(text: str) -> set[str]:
    """Every number of ``text``, normalised: grouping separators dropped (``1,000`` and the
    French ``1 000`` are ``1000``), a decimal comma read as a point, and each run of digits of
    a compound number (``2024-05-01``, ``10:00``) counted on its own too."""
    flat = ungroup(text)
    out = {m.replace(",", ".") for m in _NUMBER.findall(flat)}
    out.update(re.findall(r"\d+", flat))
    return out


def key_facts(claim: str, vocabulary: set[str] | None = None) -> list[str]:
    """Numbers and names in a sentence: each must occur in the source. A name is a capitalised
    word that does not start the sentence; the first word counts too when ``vocabulary`` (the
    folded words of the passages) lacks it, so "Jane approves ..." cannot pass on the strength
    of the other words."""
    flat = ungroup(claim)
    facts = [m.group(0) for m in _NUMBER.finditer(flat)]
    stripped = claim.lstrip(" \"'«(*-•")
    offset = len(claim) - len(stripped)
    for match in _CAPITALISED.finditer(claim):
        # a possessive names its owner: "Forsyth's" is the fact "Forsyth"
        word = re.sub(r"['’]s$", "", match.group(1)).rstrip("'’-")
        folded = fold(word)
        if folded in STOPWORDS or not any(c.isalpha() for c in word):
            continue
        if match.start() == offset and (vocabulary is None or set(words(word)) <= vocabulary):
            continue  # the sentence's first word: capitalised anyway
        facts.append(word)
    return list(dict.fromkeys(facts))


def facts_missing(facts: list[str], source: str) -> list[str]:
    numbers = numbers_in(source)
    source_stems = {stem(w) for w in words(source)}
    missing = []
    for fact in facts:
        if fact[0].isdigit():
            if fact.replace(",", ".") not in numbers:
                missing.append(fact)
        elif not {stem(w) for w in words(fact)} <= source_stems:
            missing.append(fact)
    return missing


def _windows(hit: Hit) -> list[tuple[int, int]]:
    """Runs of one or two consecutive sentences of a chunk, as offsets into its text."""
    spans = sentence_spans(hit.text)
    out = list(spans)
    out += [(spans[i][0], spans[i + 1][1]) for i in range(len(spans) - 1)]
    return out or [(0, len(hit.text))]


_FRAMING_STEMS = frozenset(stem(w) for w in FRAMING)

_NEGATIONS = frozenset(
    [
        "not",
        "no",
        "never",
        "none",
        "nobody",
        "nothing",
        "neither",
        "nor",
        "cannot",
        "without",
        "pas",
        "jamais",
        "aucun",
        "aucune",
        "rien",
        "ni",
        "sans",
    ]
)


def negated(text: str) -> bool:
    folded = fold(text)
    return "n't" in folded or bool(_NEGATIONS & set(words(folded)))


def _check(
    claim: str, claim_terms: list[str], hit: Hit, vocabulary: set[str], min_support: float
) -> tuple[float, list[str], tuple[int, int]]:
    """(support, what is missing, window) for the best window of ``hit``: one or two
    consecutive sentences that must hold the claim's terms, every number and name, and its
    polarity. Checking one window rather than the whole chunk is what stops a claim from
    borrowing its number from one sentence and its words from another ("up to 27 unused days
    may be carried over" when the chunk says 27 days of leave, and 5 days carried over)."""
    context = f"{hit.title}\n{hit.section}\n"
    facts = key_facts(claim, vocabulary)
    claim_negated = negated(claim)
    best: tuple[tuple, float, list[str], tuple[int, int]] | None = None
    for a, b in _windows(hit):
        window = hit.text[a:b]
        have = set(terms(context + window))
        support = sum(1 for t in claim_terms if t in have) / len(claim_terms)
        missing = facts_missing(facts, context + window)
        if claim_negated != negated(window):
            # "X is not Y" shares every word with "X is Y": opposite polarity is the opposite
            # claim, whatever the overlap
            missing.append("(negation)" if claim_negated else "(the source negates it)")
        ok = support >= min_support and not missing
        key = (ok, support, -len(missing), -(b - a))
        if best is None or key > best[0]:
            best = (key, support, missing, (a, b))
    assert best is not None
    return best[1], best[2], best[3]


def _only_headings(claim_terms: list[str], hits: list[Hit]) -> bool:
    """A sentence made only of a source's title and section words ("Leave policy > Annual
    leave") restates where a passage sits, not what it says."""
    return any(set(claim_terms) <= set(terms(f"{h.title} {h.section}")) for h in hits)


def split_answer(answer: str) -> list[tuple[str, list[int]]]:
    """(claim text without citation marks, cited numbers) per sentence. A citation placed
    after the sentence's full stop (``... in 2021. [2]``) belongs to that sentence."""
    out: list[tuple[str, list[int]]] = []
    for a, b in sentence_spans(answer):
        sentence = answer[a:b]
        cited = [int(n) for group in _CITATION.findall(sentence) for n in re.split(r"[,;]", group)]
        claim = re.sub(r"\s+([.,;:!?…])", r"\1", " ".join(_CITATION.sub(" ", sentence).split()))
        if not re.search(r"\w", claim) and out:
            out[-1][1].extend(cited)  # a lone "[2]" split off after a full stop
            continue
        out.append((claim, cited))
    return out


def verify(
    answer: str, hits: list[Hit], min_support: float = DEFAULT_MIN_SUPPORT
) -> list[SentenceVerdict]:
    verdicts: list[SentenceVerdict] = []
    vocabulary = {w for h in hits for w in words(f"{h.title} {h.section} {h.text}")}
    for claim, cited in split_answer(answer):
        claim_terms = claim_terms_of(claim)
        verdict = SentenceVerdict(text=claim, verdict="no_claim", cited=cited)
        verdicts.append(verdict)
        if not claim_terms or claim.lstrip().startswith("#") or _only_headings(claim_terms, hits):
            continue  # no content, or a copied heading: nothing is asserted
        valid = [n for n in cited if 1 <= n <= len(hits)]
        order = valid + [n for n in range(1, len(hits) + 1) if n not in valid]
        best: tuple[float, int, tuple[int, int]] | None = None
        closest: tuple[float, list[str]] | None = None
        for n in order:
            support, missing, window = _check(
                claim, claim_terms, hits[n - 1], vocabulary, min_support
            )
            ok = support >= min_support and not missing
            if ok and (best is None or n in valid or support > best[0] + 1e-9):
                best = (support, n, window)
                if n in valid:
                    break
            if closest is None or support > closest[0]:
                closest = (support, missing)  # the nearest miss explains the verdict
        if best is None:
            verdict.verdict = "unsupported"
            if closest is not None:
                verdict.support, verdict.missing = closest
            continue
        support, n, (a, b) = best
        hit = hits[n - 1]
        start, end = hit.start + a, hit.start + b
        verdict.verdict = "supported"
        verdict.support = round(support, 3)
        verdict.missing = []
        verdict.reattributed = n not in valid
        verdict.citation = Citation(
            n=n,
            doc=hit.doc,
            title=hit.title,
            section=hit.section,
            start=start,
            end=end,
            quote=hit.text[start - hit.start : end - hit.start],
            chunk_id=hit.chunk_id,
        )
    for verdict in verdicts:
        verdict.support = round(verdict.support, 3)
    return verdicts
