"""Files to text: a registry from file suffix to a loader.

Each loader returns the document's plain text, a title, and its headings as (offset, level,
title) so chunking can follow the document's structure. For .txt and .md files the text is the file
itself, decoded, with Windows line ends normalised to ``\n`` (and a UTF-8 byte-order mark
dropped); for .html, .pdf and .docx it is the text extracted from them (the only text there is
to quote). That text is stored in the index next to the chunks, and every offset a citation
gives points into it."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from cuvee.errors import DocsError


@dataclass
class Heading:
    offset: int
    level: int
    title: str


@dataclass
class Extracted:
    text: str
    title: str
    headings: list[Heading] = field(default_factory=list)


Loader = Callable[[Path], Extracted]
LOADERS: dict[str, Loader] = {}


def loader(*suffixes: str):
    def register(fn: Loader) -> Loader:
        for suffix in suffixes:
            LOADERS[suffix] = fn
        return fn

    return register


def supported(path: Path) -> bool:
    return path.suffix.lower() in LOADERS


def load(path: Path) -> Extracted:
    """The text of one file; a clear :class:`DocsError` naming the file when it cannot be
    read (so `docs add` reports it and indexes nothing from it)."""
    fn = LOADERS.get(path.suffix.lower())
    if fn is None:
        known = ", ".join(sorted(LOADERS))
        raise DocsError(f"{path}: unsupported file type {path.suffix!r} (supported: {known})")
    try:
        extracted = fn(path)
    except DocsError:
        raise
    except Exception as exc:  # a parser's own error, whatever its class: name the file
        raise DocsError(f"{path}: cannot read it as {path.suffix}: {exc}") from exc
    extracted.text = extracted.text.replace("\r\n", "\n").replace("\r", "\n")
    return extracted


# Control characters other than tab, line ends and form feed: a few are tolerated (stray bytes
# in old files), more than this share means the bytes are not text in any encoding.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
_MAX_CONTROL_SHARE = 0.01


def _read_text(path: Path) -> str:
    raw = path.read_bytes()
    for encoding in ("utf-8-sig", "cp1252"):
        try:
            text = raw.decode(encoding)
        except UnicodeDecodeError:
            continue
        # Windows-1252 decodes almost any byte string: binary data would be indexed as noise.
        if "\x00" in text or len(_CONTROL.findall(text)) > _MAX_CONTROL_SHARE * len(text):
            break
        return text
    raise DocsError(
        f"{path}: not text (neither UTF-8 nor Windows-1252)",
        hint="convert it to UTF-8 text, or remove it from the folder",
    )


def _first_line_title(text: str, path: Path) -> str:
    for line in text.splitlines():
        line = line.strip().lstrip("#").strip()
        if line:
            return line[:200]
    return path.stem


@loader(".txt")
def load_txt(path: Path) -> Extracted:
    text = _read_text(path).replace("\r\n", "\n")
    return Extracted(text=text, title=_first_line_title(text, path))


_MD_HEADING = re.compile(r"^(#{1,6})[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
_MD_FENCE = re.compile(r"^(```|~~~)", re.MULTILINE)


@loader(".md", ".markdown")
def load_markdown(path: Path) -> Extracted:
    text = _read_text(path).replace("\r\n", "\n")
    fenced = _fenced_ranges(text)
    headings = [
        Heading(m.start(), len(m.group(1)), m.group(2).strip())
        for m in _MD_HEADING.finditer(text)
        if not any(a <= m.start() < b for a, b in fenced)
    ]
    title = next((h.title for h in headings if h.level == 1), None)
    return Extracted(text=text, title=title or _first_line_title(text, path), headings=headings)


def _fenced_ranges(text: str) -> list[tuple[int, int]]:
    """Code blocks: a ``# comment`` inside one is not a heading."""
    marks = [m.start() for m in _MD_FENCE.finditer(text)]
    return [(marks[i], marks[i + 1]) for i in range(0, len(marks) - 1, 2)]


class _HTMLText(HTMLParser):
    """Visible text, one block element per paragraph, headings recorded at their offsets."""

    _BLOCK_TAGS = """p div section article header footer li ul ol table tr blockquote pre br hr
    h1 h2 h3 h4 h5 h6 title dt dd figcaption main aside nav"""
    BLOCKS = frozenset(_BLOCK_TAGS.split())
    SKIP = frozenset({"script", "style", "noscript", "template", "svg"})

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.length = 0
        self.headings: list[Heading] = []
        self.title = ""
        self._skip = 0
        self._heading: tuple[int, int, list[str]] | None = None
        self._in_title = False

    def _break(self) -> None:
        if self.parts and not self.parts[-1].endswith("\n\n"):
            piece = "\n\n" if not self.parts[-1].endswith("\n") else "\n"
            self.parts.append(piece)
            self.length += len(piece)

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in self.SKIP:
            self._skip += 1
        elif tag == "title":
            self._in_title = True
        elif tag in self.BLOCKS:
            self._break()
            if len(tag) == 2 and tag[0] == "h" and tag[1].isdigit():
                self._heading = (self.length, int(tag[1]), [])

    def handle_endtag(self, tag: str) -> None:
        if tag in self.SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag == "title":
            self._in_title = False
        elif tag in self.BLOCKS:
            if self._heading and len(tag) == 2 and tag[0] == "h":
                offset, level, words = self._heading
                title = " ".join("".join(words).split())
                if title:
                    self.headings.append(Heading(offset, level, title))
                self._heading = None
            self._break()

    def handle_data(self, data: str) -> None:
        if self._skip:
            return
        if self._in_title:
            self.title += data
            return
        text = re.sub(r"\s+", " ", data)
        if not text.strip() and (not self.parts or self.parts[-1].endswith("\n")):
            return
        if not self.parts or self.parts[-1].endswith("\n"):
            text = text.lstrip()
        self.parts.append(text)
        self.length += len(text)
        if self._heading:
            self._heading[2].append(text)


@loader(".html", ".htm")
def load_html(path: Path) -> Extracted:
    parser = _HTMLText()
    parser.feed(_read_text(path))
    parser.close()
    text = "".join(parser.parts).strip("\n") + "\n"
    title = " ".join(parser.title.split()) or next(
        (h.title for h in parser.headings), _first_line_title(text, path)
    )
    return Extracted(text=text, title=title, headings=parser.headings)


@loader(".pdf")
def load_pdf(path: Path) -> Extracted:
    from pypdf import PdfReader

    reader = PdfReader(str(path))
    pages = [(page.extract_text() or "").strip() for page in reader.pages]
    text = "\n\n".join(p for p in pages if p) + "\n"
    if not text.strip():
        raise DocsError(f"{path}: the PDF has no extractable text (scanned images need OCR)")
    meta_title = (reader.metadata.title if reader.metadata else None) or ""
    return Extracted(text=text, title=meta_title.strip() or _first_line_title(text, path))


# A .docx is a zip archive that python-docx reads into memory whole: a small file whose parts
# expand to gigabytes (a zip bomb) must be refused from the sizes its directory declares, before
# anything is decompressed. zipfile never yields more than a member's declared size.
MAX_DOCX_UNCOMPRESSED = 256 * 1024 * 1024


def check_docx_archive(path: Path, limit: int = MAX_DOCX_UNCOMPRESSED) -> None:
    """Refuse a .docx that is not a zip archive, or whose parts would expand beyond ``limit``
    bytes, naming the file and the sizes."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError) as exc:
        raise DocsError(f"{path}: not a .docx (Word) file: {exc}") from exc
    total = sum(member.file_size for member in members)
    if total > limit:
        packed = sum(member.compress_size for member in members)
        raise DocsError(
            f"{path}: its parts expand to {total / 2**20:,.0f} MiB from {packed / 2**20:,.1f} "
            f"MiB, over the {limit / 2**20:.0f} MiB a .docx may hold; not read "
            "(a damaged file or a zip bomb)",
            hint="open and re-save it in a word processor, or remove it from the folder",
        )


@loader(".docx")
def load_docx(path: Path) -> Extracted:
    import docx

    check_docx_archive(path)
    document = docx.Document(str(path))
    parts: list[str] = []
    headings: list[Heading] = []
    length = 0
    for paragraph in document.paragraphs:
        content = paragraph.text.strip()
        if not content:
            continue
        style = (paragraph.style.name or "") if paragraph.style is not None else ""
        match = re.match(r"(?:Heading|Titre)\s*(\d)", style)
        if match or style == "Title":
            headings.append(Heading(length, int(match.group(1)) if match else 1, content))
        parts.append(content + "\n\n")
        length += len(content) + 2
    text = "".join(parts)
    title = (document.core_properties.title or "").strip()
    return Extracted(
        text=text,
        title=title or next((h.title for h in headings), _first_line_title(text, path)),
        headings=headings,
    )
