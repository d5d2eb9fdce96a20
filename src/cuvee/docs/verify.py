"""Checking an answer against its sources, sentence by sentence.

A sentence of a generated answer is *supported* by a retrieved chunk when

1. every number in it (``42``, ``3,5``, ``2024-05-01``) and every name (a capitalised word
   that does not start the sentence, or an acronym) occurs in that chunk, and
2. at least ``min_support`` of its content terms (normalised by :mod:`textnorm`: case,
   accents, elisions, stopwords, light stemming) occur in that chunk.

The check is lexical on purpose: it is cheap, explainable ("the answer says 2019, the source
says 2021") and cannot be talked round by fluent wording; paraphrases with no shared words are
rejected, which costs recall, never faithfulness. A sentence is checked first against the
chunks it cites, then against the other retrieved chunks (its citation is then corrected and
the sentence marked ``reattributed``). Its quote is the shortest run of one to three sentences
of the supporting chunk that covers the most of its terms: a verbatim slice of the document,
given by offsets into it."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from cuvee.docs.retrieval import Hit
from cuvee.docs.textnorm import STOPWORDS, fold, sentence_spans, stem, terms, words

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

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class SentenceVerdict:
    text: str
    verdict: str  # supported | unsupported | no_claim
    cited: list[int] = field(default_factory=list)  # what the model cited (1-based hits)
    support: float = 0.0
    missing: list[str] = field(default_factory=list)  # numbers and names absent from the source
    reattributed: bool = False
    citation: Citation | None = None

    def as_dict(self) -> dict:
        out = asdict(self)
        out["citation"] = self.citation.as_dict() if self.citation else None
        return out


def _norm_number(text: str) -> str:
    return text.replace(",", ".")


def key_facts(claim: str) -> list[str]:
    """Numbers and names in a sentence: each must occur in the source."""
    facts = [m.group(0) for m in _NUMBER.finditer(claim)]
    stripped = claim.lstrip(" \"'«(*-•")
    offset = len(claim) - len(stripped)
    for match in _CAPITALISED.finditer(claim):
        if match.start() == offset:  # the sentence's first word: capitalised anyway
            continue
        word = match.group(1).rstrip("'’-")
        folded = fold(word)
        if folded in STOPWORDS or not any(c.isalpha() for c in word):
            continue
        facts.append(word)
    return list(dict.fromkeys(facts))


def _facts_missing(facts: list[str], source: str) -> list[str]:
    numbers = {_norm_number(m) for m in _NUMBER.findall(source)}
    source_words = set(words(source))
    missing = []
    for fact in facts:
        if fact[0].isdigit():
            if _norm_number(fact) not in numbers:
                missing.append(fact)
        elif not set(words(fact)) <= source_words:
            missing.append(fact)
    return missing


def _best_quote(claim_terms: set[str], hit: Hit) -> tuple[int, int]:
    """Offsets (in the document) of the shortest window of 1-3 sentences of the chunk covering
    the most claim terms."""
    spans = sentence_spans(hit.text)
    best: tuple[int, int, int, int] | None = None  # (-matched, length, a, b)
    for i in range(len(spans)):
        for j in range(i, min(i + 3, len(spans))):
            a, b = spans[i][0], spans[j][1]
            matched = len(claim_terms & set(terms(hit.text[a:b])))
            key = (-matched, b - a, a, b)
            if best is None or key < best:
                best = key
    if best is None:
        return hit.start, hit.end
    return hit.start + best[2], hit.start + best[3]


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


def _check(claim: str, claim_terms: list[str], hit: Hit) -> tuple[float, list[str]]:
    source = f"{hit.title}\n{hit.section}\n{hit.text}"
    have = set(terms(source))
    support = sum(1 for t in claim_terms if t in have) / len(claim_terms)
    missing = _facts_missing(key_facts(claim), source)
    if negated(claim) and not negated(hit.text):
        # "X is not Y" shares every word with "X is Y": a negation the source lacks is the
        # opposite claim, whatever the overlap
        missing.append("(negation)")
    return support, missing


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
    for claim, cited in split_answer(answer):
        claim_terms = claim_terms_of(claim)
        verdict = SentenceVerdict(text=claim, verdict="no_claim", cited=cited)
        verdicts.append(verdict)
        if not claim_terms or claim.lstrip().startswith("#") or _only_headings(claim_terms, hits):
            continue  # no content, or a copied heading: nothing is asserted
        valid = [n for n in cited if 1 <= n <= len(hits)]
        order = valid + [n for n in range(1, len(hits) + 1) if n not in valid]
        best: tuple[float, int, list[str]] | None = None
        for n in order:
            support, missing = _check(claim, claim_terms, hits[n - 1])
            ok = support >= min_support and not missing
            if ok and (best is None or n in valid or support > best[0] + 1e-9):
                best = (support, n, missing)
                if n in valid:
                    break
            if best is None and n in valid:
                verdict.support, verdict.missing = support, missing
        if best is None:
            verdict.verdict = "unsupported"
            if not valid:
                verdict.support, verdict.missing = _best_failure(claim, claim_terms, hits)
            continue
        support, n, _ = best
        hit = hits[n - 1]
        start, end = _best_quote(set(claim_terms), hit)
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


def _best_failure(claim: str, claim_terms: list[str], hits: list[Hit]) -> tuple[float, list[str]]:
    if not hits:
        return 0.0, key_facts(claim)
    results = [_check(claim, claim_terms, hit) for hit in hits]
    return max(results, key=lambda r: (r[0], -len(r[1])))
