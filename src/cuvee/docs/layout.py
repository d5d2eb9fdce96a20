"""The shape of a document's text that answering reads beside its words: a table (its header
row, the rule under it, its rows), a bulleted or numbered list, a heading, a labelled line.

- :mod:`cuvee.docs.extract` cuts a table's rows into units of their own and reads a row with
  its table's header (:func:`table_header`): "| HEPA filter | every 3 months |" answers "how
  often is the filter replaced" because its column is "Replace";
- a question that asks for several things gets the whole list its window is in
  (:func:`list_span`): "the two meeting rooms of the 5th floor" are two items, and the window
  holding the first is half the answer;
- a quoted window reads as prose (:func:`prose`): a row with its header's names, no heading
  marks or bullets; the citation keeps the verbatim text."""

from __future__ import annotations

import re

from cuvee.docs.textnorm import fold

# A table's rule under its header row: "|---|:--:|".
RULE = re.compile(r"\|?(?:\s*:?-{3,}:?\s*\|)+\s*:?(?:-{3,}:?)?\s*")
# A line of a bulleted or numbered list.
ITEM = re.compile(r"[ \t]*(?:[-*•]|\d{1,2}[.)])[ \t]+\S")
# A line's label: "Opened:", "Customer :", "Effective from:".
_LABEL_HEAD = r"[A-ZÀ-Þ][\w'’ /().-]{0,40}?\s?:"
LABEL = re.compile(_LABEL_HEAD + r"(?:\s|$)")
# Text that starts as a table row, a list item, a heading or a labelled line.
LABELLED = re.compile(r"^\s*(?:[|#>*-]|" + _LABEL_HEAD + ")")
# A question that asks for several things: the plural "quels"/"quelles", "which rooms are",
# "what are the four ...", "what does the kit contain".
_LIST_QUESTION = re.compile(
    r"\bquel(?:le)?s\b|\blesquel(?:le)?s\b|\b(?:what|which)\b(?:\s+[\w'-]+){0,3}?\s+(?:are|were)\b"
    r"|\b(?:contains?|includes?|comprend|contient|comportent?|list|name the)\b"
)
# The longest list (characters) a window grows to; a longer one is quoted as found.
LIST_REACH = 800
# A letter of any alphabet: a header cell without one names no column.
_WORD = re.compile(r"[^\W\d_]")


def cells(row: str) -> list[str]:
    return [cell.strip() for cell in row.strip().strip("|").split("|")]


def table_header(text: str, at: int) -> str:
    """The header row of the table whose row starts at offset ``at`` of ``text`` (its first
    row, when a rule follows it), or "" when ``at`` is in no table or is the header itself."""
    line_start = text.rfind("\n", 0, at) + 1
    if not text.startswith("|", line_start):
        return ""
    first = line_start
    while first > 0:
        previous = text.rfind("\n", 0, first - 1) + 1
        if not text.startswith("|", previous):
            break
        first = previous
    header_end = text.find("\n", first)
    rule_end = text.find("\n", header_end + 1) if header_end != -1 else -1
    rule = text[header_end + 1 : rule_end if rule_end != -1 else len(text)]
    if first == line_start or header_end == -1 or not RULE.fullmatch(rule.strip()):
        return ""
    return text[first:header_end]


def asks_list(question: str) -> bool:
    return _LIST_QUESTION.search(" ".join(fold(question).split())) is not None


def list_span(question: str, start: int, end: int, text: str) -> tuple[int, int]:
    """The span of ``text`` to quote for the window ``start:end``: for a question that asks
    for several things, a window in a bulleted or numbered list grows to the whole list (up to
    ``LIST_REACH`` characters; the list ends at the text's end); else the window itself."""
    if not asks_list(question):
        return start, end
    lines = [(m.start(), m.end()) for m in re.finditer(r"[^\n]+", text)]
    inside = [n for n, (a, b) in enumerate(lines) if a < end and start < b]
    items = [n for n in inside if ITEM.match(text, lines[n][0])]
    if not items:
        return start, end
    first, last = items[0], items[-1]
    while first > 0 and ITEM.match(text, lines[first - 1][0]) and _next(text, lines, first - 1):
        first -= 1
    while (
        last + 1 < len(lines) and ITEM.match(text, lines[last + 1][0]) and _next(text, lines, last)
    ):
        last += 1
    grown = min(start, lines[first][0]), max(end, lines[last][1])
    return (start, end) if grown[1] - grown[0] > LIST_REACH else grown


def _next(text: str, lines: list[tuple[int, int]], n: int) -> bool:
    """Whether line ``n + 1`` follows line ``n`` directly (no blank line between)."""
    return text.count("\n", lines[n][1], lines[n + 1][0]) == 1


def prose(text: str, start: int, end: int) -> str:
    """``text[start:end]`` as an answer's prose, on one line: a table's row read with its
    header's names ("Part: HEPA filter; Replace: every 3 months"), heading marks and list
    bullets left out, each heading, row and item ended."""
    found, at = [], start
    for line in text[start:end].split("\n"):
        found.append((at, line.strip()))
        at += len(line) + 1
    lines = [(at, line) for at, line in found if not RULE.fullmatch(line)]
    parts = []
    for n, (at, line) in enumerate(lines):
        if not line:
            continue
        # a heading, a row or an item ends where the next line starts one or a blank line
        # follows; prose wrapped over lines goes on
        after = lines[n + 1][1] if n + 1 < len(lines) else "x"
        ends = not after or bool(LABELLED.match(after) or ITEM.match(after))
        if line.startswith("|"):
            row = cells(line)
            header = table_header(text, at)
            names = cells(header) if header else []
            if len(row) == len(names):
                # a column headed by no word ("#", an empty cell) names nothing: "3", not "#: 3"
                pairs = zip(names, row, strict=True)
                line = "; ".join(
                    f"{name}: {cell}" if _WORD.search(name) else cell
                    for name, cell in pairs
                    if cell
                )
            else:
                line = ", ".join(cell for cell in row if cell)
            ends = True
        elif line.startswith("#"):
            line, ends = line.lstrip("#").strip(), True
        else:
            line = re.sub(r"^[-*•]\s+", "", line)
        if ends and line and line[-1] not in ".!?…;:,":
            line += "."
        parts.append(line)
    return " ".join(" ".join(parts).split())
