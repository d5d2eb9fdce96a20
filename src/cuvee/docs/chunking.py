"""Text to chunks that follow the document's structure.

A chunk never crosses a heading: each section (the text from one heading to the next) is cut
on its own, so every chunk has one section path (``Install > On Windows``). Inside a section,
sentences are packed up to ``size`` characters, preferring to break between paragraphs; the
next chunk starts with the previous chunk's last sentences, up to ``overlap`` characters, so a
fact cut at a boundary is whole in at least one chunk. Every chunk is ``text[start:end]`` of
the document: offsets are kept, never recomputed from a modified copy."""

from __future__ import annotations

import re
from dataclasses import dataclass

from cuvee.docs.loaders import Extracted
from cuvee.docs.textnorm import sentence_spans

DEFAULT_SIZE = 900
DEFAULT_OVERLAP = 150


@dataclass(frozen=True)
class Chunk:
    start: int
    end: int
    section: str
    text: str


@dataclass(frozen=True)
class _Unit:
    start: int
    end: int
    paragraph: int


def _sections(extracted: Extracted) -> list[tuple[int, int, str]]:
    text = extracted.text
    bounds: list[tuple[int, str]] = [(0, "")]
    stack: list[tuple[int, str]] = []
    for heading in sorted(extracted.headings, key=lambda h: h.offset):
        while stack and stack[-1][0] >= heading.level:
            stack.pop()
        stack.append((heading.level, heading.title))
        bounds.append((heading.offset, " > ".join(title for _, title in stack)))
    out = []
    for i, (start, path) in enumerate(bounds):
        end = bounds[i + 1][0] if i + 1 < len(bounds) else len(text)
        if end > start and text[start:end].strip():
            out.append((start, end, path))
    return out


_PARAGRAPH_BREAK = re.compile(r"\n[ \t]*\n")


def _units(text: str, start: int, end: int, size: int) -> list[_Unit]:
    units: list[_Unit] = []
    cursor = start
    breaks = [(m.start(), m.end()) for m in _PARAGRAPH_BREAK.finditer(text, start, end)]
    for paragraph, (a, b) in enumerate([*breaks, (end, end)]):
        for s, e in sentence_spans(text, cursor, a):
            # a "sentence" longer than a chunk (a table, a run-on line): cut at whitespace
            while e - s > size:
                cut = text.rfind(" ", s + size // 2, s + size)
                cut = cut if cut > s else s + size
                units.append(_Unit(s, cut, paragraph))
                s = cut
                while s < e and text[s].isspace():
                    s += 1
            if e > s:
                units.append(_Unit(s, e, paragraph))
        cursor = b
    return units


def check_settings(size: int, overlap: int) -> None:
    if size < 100:
        raise ValueError("chunk size must be at least 100 characters")
    if not 0 <= overlap < size // 2:
        raise ValueError("overlap must be between 0 and half the chunk size")


def chunk(
    extracted: Extracted, size: int = DEFAULT_SIZE, overlap: int = DEFAULT_OVERLAP
) -> list[Chunk]:
    check_settings(size, overlap)
    text = extracted.text
    chunks: list[Chunk] = []
    for sec_start, sec_end, path in _sections(extracted):
        units = _units(text, sec_start, sec_end, size)
        i = 0
        while i < len(units):
            j = i
            while j + 1 < len(units) and units[j + 1].end - units[i].start <= size:
                j += 1
            if j + 1 < len(units) and units[j + 1].paragraph == units[j].paragraph:
                # prefer a paragraph boundary if one leaves the chunk at least half full
                for k in range(j - 1, i - 1, -1):
                    if units[k + 1].paragraph != units[k].paragraph:
                        if units[k].end - units[i].start >= size // 2:
                            j = k
                        break
            start, end = units[i].start, units[j].end
            chunks.append(Chunk(start, end, path, text[start:end]))
            if j + 1 >= len(units):
                break
            following = j + 1
            for k in range(j, i, -1):
                if units[j].end - units[k].start > overlap:
                    break
                following = k
            if units[j + 1].end - units[following].start > size:
                following = j + 1  # the overlap leaves no room for anything new: no overlap
            i = following
    return chunks
