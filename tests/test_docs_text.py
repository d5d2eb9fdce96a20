"""Loading, normalising and chunking documents: offsets stay verbatim, French folds well."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from cuvee.docs import chunking, loaders
from cuvee.docs.textnorm import fold, fts_query, sentence_spans, terms
from cuvee.errors import DocsError


def test_french_accents_and_elisions_fold_to_the_same_terms() -> None:
    assert terms("L'équipe d’été") == terms("equipe ete")
    assert terms("Qu'il s'agisse de l'indemnité") == terms("agisse indemnite")
    assert fold("Élysée") == "elysee"
    # plural and singular meet; stopwords of both languages go
    assert terms("the documents") == terms("document")
    assert terms("les indemnités du salarié") == terms("indemnité salarié")


def test_fts_query_quotes_every_term_and_survives_fts_syntax() -> None:
    query = fts_query('NEAR(a b) OR "x" AND leave*')
    assert query is not None and all(part.startswith('"') for part in query.split(" OR "))
    assert fts_query("the of a") is None


def test_sentence_spans_are_offsets_into_the_text() -> None:
    text = "First one. Second one!  Third?\n\n- item one\n- item two"
    spans = sentence_spans(text)
    pieces = [text[a:b] for a, b in spans]
    assert pieces == ["First one.", "Second one!", "Third?", "- item one", "- item two"]


def _md(tmp_path: Path, text: str) -> loaders.Extracted:
    path = tmp_path / "doc.md"
    path.write_text(text, encoding="utf-8")
    return loaders.load(path)


def test_chunks_follow_headings_and_keep_verbatim_offsets(tmp_path: Path) -> None:
    body = " ".join(f"Sentence {i} talks about the install step number {i}." for i in range(40))
    text = f"# Guide\n\nIntro text.\n\n## Install\n\n{body}\n\n## Usage\n\nRun it.\n"
    extracted = _md(tmp_path, text)
    chunks = chunking.chunk(extracted, size=300, overlap=80)
    assert all(text[c.start : c.end] == c.text for c in chunks)
    assert chunks[0].section == "Guide" and chunks[-1].section == "Guide > Usage"
    install = [c for c in chunks if c.section == "Guide > Install"]
    assert len(install) >= 4 and all(len(c.text) <= 300 for c in install)
    # no chunk crosses a heading
    assert not any("## Usage" in c.text and "Sentence" in c.text for c in chunks)
    # consecutive chunks of a section overlap, by whole sentences
    for first, second in itertools.pairwise(install):
        assert second.start < first.end
        assert text[second.start : first.end].rstrip().endswith(".")


def test_a_giant_paragraph_is_cut_and_nothing_is_lost(tmp_path: Path) -> None:
    text = "word " * 2000
    chunks = chunking.chunk(_md(tmp_path, text), size=500, overlap=0)
    assert all(len(c.text) <= 500 for c in chunks)
    covered = "".join(c.text + " " for c in chunks).split()
    assert len(covered) == 2000


def test_bad_chunk_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        chunking.check_settings(50, 0)
    with pytest.raises(ValueError):
        chunking.check_settings(400, 300)


def test_markdown_headings_inside_code_fences_are_not_headings(tmp_path: Path) -> None:
    extracted = _md(tmp_path, "# Real\n\n```sh\n# not a heading\n```\n")
    assert [h.title for h in extracted.headings] == ["Real"]


def test_html_text_skips_scripts_and_records_headings(tmp_path: Path) -> None:
    path = tmp_path / "page.html"
    path.write_text(
        "<html><head><title>The page</title><style>p{}</style></head><body>"
        "<h1>Main</h1><p>First &amp; only <b>paragraph</b>.</p>"
        "<script>var hidden = 1;</script><h2>Next</h2><p>More.</p></body></html>",
        encoding="utf-8",
    )
    extracted = loaders.load(path)
    assert extracted.title == "The page"
    assert "hidden" not in extracted.text and "p{}" not in extracted.text
    assert "First & only paragraph." in extracted.text
    assert [(h.level, h.title) for h in extracted.headings] == [(1, "Main"), (2, "Next")]
    assert extracted.text[extracted.headings[1].offset :].startswith("Next")


def test_docx_paragraphs_and_heading_styles(tmp_path: Path) -> None:
    docx = pytest.importorskip("docx")
    document = docx.Document()
    document.add_heading("Policy", level=1)
    document.add_paragraph("Staff get 27 days.")
    document.add_heading("Détails", level=2)
    document.add_paragraph("L'indemnité est de 35 euros.")
    path = tmp_path / "policy.docx"
    document.save(str(path))
    extracted = loaders.load(path)
    assert "Staff get 27 days." in extracted.text and "35 euros" in extracted.text
    assert [(h.level, h.title) for h in extracted.headings] == [(1, "Policy"), (2, "Détails")]
    chunks = chunking.chunk(extracted)
    assert chunks[-1].section == "Policy > Détails"


def write_pdf(path: Path, lines: list[str]) -> None:
    """A minimal one-page PDF with a text layer (Helvetica, one line per string)."""
    ops = ["BT", "/F1 12 Tf", "14 TL", "72 720 Td"]
    for line in lines:
        escaped = line.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
        ops.append(f"({escaped}) Tj T*")
    ops.append("ET")
    stream = "\n".join(ops).encode("latin-1")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for number, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (
        len(objects) + 1,
        xref,
    )
    path.write_bytes(bytes(out))


def test_pdf_text_is_extracted(tmp_path: Path) -> None:
    path = tmp_path / "spec.pdf"
    write_pdf(path, ["Cumulus C2 specification", "It draws 38 watts when idle."])
    extracted = loaders.load(path)
    assert "38 watts" in extracted.text
    assert extracted.title == "Cumulus C2 specification"


def test_unreadable_and_unsupported_files_are_named(tmp_path: Path) -> None:
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"not a pdf at all")
    with pytest.raises(DocsError, match=r"broken\.pdf"):
        loaders.load(broken)
    other = tmp_path / "data.xlsx"
    other.write_bytes(b"x")
    with pytest.raises(DocsError, match="unsupported file type"):
        loaders.load(other)


def test_windows_1252_text_files_are_read(tmp_path: Path) -> None:
    path = tmp_path / "old.txt"
    path.write_bytes("Résumé of the café\r\nSecond line".encode("cp1252"))
    extracted = loaders.load(path)
    assert extracted.text.startswith("Résumé of the café\nSecond")


def test_numbered_list_items_stay_whole_and_plurals_meet() -> None:
    text = "Steps:\n1. Fill in the form.\n2. Send it to HR."
    assert [text[a:b] for a, b in sentence_spans(text)] == [
        "Steps:",
        "1. Fill in the form.",
        "2. Send it to HR.",
    ]
    assert terms("policies") == terms("policy")
    assert terms("1,000 euros") == terms("1000 euro") == terms("1 000 euros")
