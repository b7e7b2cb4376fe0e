"""Parsing and chunking on the real policy texts: every chunk is an exact span of the
normalised text, stays inside its section, overlaps its neighbour, and together the
chunks cover every section."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from civitas_ray.documents import parsing
from civitas_ray.documents.chunking import ChunkSizes, chunk_document, split_section
from civitas_ray.documents.parsing import (
    InvalidDocument,
    ParsedDocument,
    Section,
    UnsupportedFormat,
)

pytestmark = pytest.mark.unit


def make_pdf(pages: list[list[str]], *, title: str | None = None) -> bytes:
    """A minimal valid PDF (Helvetica text lines, one list per page), written by hand."""
    objects: list[bytes] = []

    def add(body: bytes) -> int:
        objects.append(body)
        return len(objects)

    def esc(s: str) -> str:
        return s.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")

    font = add(b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>")
    pages_id = len(objects) + 1 + 2 * len(pages)  # after every page and content object
    kids = []
    for lines in pages:
        ops = ["BT", "/F1 11 Tf", "14 TL", "72 760 Td"]
        ops += [f"({esc(line)}) Tj T*" for line in lines]
        ops.append("ET")
        stream = "\n".join(ops).encode("latin-1")
        content = add(b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream")
        kids.append(add(b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 612 792] "
                        b"/Resources << /Font << /F1 %d 0 R >> >> /Contents %d 0 R >>"
                        % (pages_id, font, content)))
    assert add(b"<< /Type /Pages /Kids [%s] /Count %d >>" % (
        b" ".join(b"%d 0 R" % k for k in kids), len(kids))) == pages_id
    catalog = add(b"<< /Type /Catalog /Pages %d 0 R >>" % pages_id)
    info = add(b"<< /Title (%s) >>" % esc(title).encode("latin-1")) if title else None
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % n + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    trailer = b"<< /Size %d /Root %d 0 R" % (len(objects) + 1, catalog)
    if info:
        trailer += b" /Info %d 0 R" % info
    out += b"trailer\n" + trailer + b" >>\nstartxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def check_chunks(doc: ParsedDocument, sizes: ChunkSizes) -> None:
    chunks = chunk_document(doc, sizes)
    assert chunks, "a document with text has chunks"
    assert [c.ordinal for c in chunks] == list(range(len(chunks)))
    by_section: dict[int, list] = {}
    overlaps: list[int] = []
    for c in chunks:
        assert doc.text[c.char_start:c.char_end] == c.text
        assert c.text == c.text.strip() and c.text
        assert len(c.text) <= sizes.max_chars
        [idx] = [i for i, s in enumerate(doc.sections) if s.id == c.section_id
                 and s.start <= c.char_start and c.char_end <= s.end]  # never crosses
        by_section.setdefault(idx, []).append(c)
    for idx, section in enumerate(doc.sections):
        parts = by_section[idx]
        covered = set()
        for c in parts:
            covered.update(range(c.char_start, c.char_end))
        body = doc.text[section.start:section.end]
        missing = [i for i in range(section.start, section.end)
                   if i not in covered and not doc.text[i].isspace()]
        assert not missing, f"section {section.id!r} loses text at {missing[:5]}"
        for a, b in itertools.pairwise(parts):
            assert a.char_start < b.char_start, "chunks move forward"
            overlap = a.char_end - b.char_start
            assert overlap <= 0.5 * len(a.text)
            overlaps.append(max(overlap, 0))
        if len(body) > sizes.max_chars:
            assert len(parts) >= 2
            # Cut near the target, not in crumbs (the last two share what is left).
            assert all(len(c.text) >= 0.7 * sizes.target_chars for c in parts[:-2])
    if overlaps:  # neighbours repeat about `overlap` of a chunk (less where no word breaks)
        mean = sum(overlaps) / len(overlaps)
        wanted = sizes.overlap * sizes.target_chars
        assert 0.5 * wanted <= mean <= wanted + 1


def test_dc_code_jsonl_chunks_are_exact_spans(data_dir: Path) -> None:
    raw = (data_dir / "policy" / "dc_code_title9.jsonl").read_bytes()
    rows = [json.loads(line) for line in raw.decode().splitlines() if line.strip()]
    doc = parsing.parse(raw, fmt="jsonl")
    assert [s.id for s in doc.sections] == [r["id"] for r in rows]
    for s, r in zip(doc.sections, rows, strict=False):
        section_text = doc.text[s.start:s.end]
        assert section_text.startswith(parsing.normalize(r["title"]))
        assert parsing.normalize(r["text"]) in section_text
    check_chunks(doc, ChunkSizes())
    long_ones = [s for s in doc.sections if s.end - s.start > 5000]
    assert long_ones, "the real code has long sections, cut into many chunks"


@pytest.mark.parametrize("sizes", [ChunkSizes(), ChunkSizes(300, 400, 0.2),
                                   ChunkSizes(800, 1200, 0.0)])
def test_gtfs_markdown_chunks_follow_headings(data_dir: Path, sizes: ChunkSizes) -> None:
    files = sorted((data_dir / "policy" / "gtfs_spec").glob("*.md"))
    assert files
    for path in files:
        doc = parsing.parse(path.read_bytes(), fmt="markdown")
        ids = [s.id for s in doc.sections if s.id]
        assert len(ids) == len(set(ids)), "section anchors are unique"
        for s in doc.sections:
            lines = doc.text[s.start:s.end].split("\n")
            if s.title:  # a section starts at its heading line (ATX or setext)
                assert lines[0].lstrip().startswith("#") or \
                    (len(lines) > 1 and set(lines[1].strip()) in ({"="}, {"-"}))
        check_chunks(doc, sizes)


def test_markdown_structure() -> None:
    md = ("Intro line.\n\n# Title\n\nText.\n\n```\n# not a heading\n```\n\n"
          "## Fees & Fines\n\nA.\n\nSetext Part\n-----------\n\nB.\n\n## Fees & Fines\n\nC.\n")
    doc = parsing.parse(md.encode(), fmt="markdown")
    assert [(s.id, s.title) for s in doc.sections] == [
        (None, None), ("title", "Title"), ("fees--fines", "Fees & Fines"),
        ("setext-part", "Setext Part"), ("fees--fines-1", "Fees & Fines")]
    assert doc.title == "Title"
    assert "# not a heading" in doc.text[doc.sections[1].start:doc.sections[1].end]
    for s in doc.sections:
        assert doc.text[s.start:s.end] == doc.text[s.start:s.end].strip()


def test_html_sections_and_dropped_markup() -> None:
    html = ("<html><head><title>Snow Plan</title><style>p{}</style></head><body>"
            "<script>alert(1)</script><p>Before   the\nplan.</p>"
            "<h2 id='routes'>Priority routes</h2><ul><li>Main St</li><li>Oak Ave</li></ul>"
            "<h2>Salt &amp; sand</h2><table><tr><td>Salt</td><td>40 t</td></tr></table>"
            "<pre>keep   spacing</pre></body></html>")
    doc = parsing.parse(html.encode(), fmt="html")
    assert doc.title == "Snow Plan"
    assert "alert" not in doc.text and "p{}" not in doc.text
    assert [(s.id, s.title) for s in doc.sections] == [
        (None, None), ("routes", "Priority routes"), ("salt--sand", "Salt & sand")]
    assert doc.text[doc.sections[0].start:doc.sections[0].end] == "Before the plan."
    routes = doc.text[doc.sections[1].start:doc.sections[1].end]
    assert routes == "Priority routes\n\n- Main St\n\n- Oak Ave"
    assert "Salt | 40 t" in doc.text and "keep   spacing" in doc.text


def test_pdf_pages_are_sections() -> None:
    pdf = make_pdf([["Page one says hello."], ["Second page", "about snow routes."]],
                   title="Tiny Plan")
    doc = parsing.parse(pdf, fmt="pdf")
    assert doc.title == "Tiny Plan"
    assert [(s.id, s.title) for s in doc.sections] == [("page-1", "Page 1"),
                                                        ("page-2", "Page 2")]
    assert "hello" in doc.text[doc.sections[0].start:doc.sections[0].end]
    assert "snow routes" in doc.text[doc.sections[1].start:doc.sections[1].end]


def test_bad_input_is_refused_clearly() -> None:
    with pytest.raises(UnsupportedFormat):
        parsing.resolve_format("image/png", "x.png")
    with pytest.raises(UnsupportedFormat):
        parsing.resolve_format("application/octet-stream", "x.docx")
    assert parsing.resolve_format("application/octet-stream", "plan.MD") == "markdown"
    assert parsing.resolve_format("text/plain", "notes.md") == "markdown"
    assert parsing.resolve_format("application/x-ndjson; charset=utf-8", None) == "jsonl"
    with pytest.raises(InvalidDocument) as e:
        parsing.parse(b'{"id": "a", "text": "x"}\nnot json\n{"id": "a", "text": "y"}\n[1]\n',
                      fmt="jsonl")
    assert [err["loc"][-1] for err in e.value.errors or []] == [2, 3, 4]
    with pytest.raises(InvalidDocument):
        parsing.parse(b"", fmt="text")
    with pytest.raises(InvalidDocument):
        parsing.parse(b" \n\t\n", fmt="text")
    with pytest.raises(InvalidDocument):
        parsing.parse(b"\xff\xfe\x00bad", fmt="text")
    with pytest.raises(InvalidDocument):
        parsing.parse(b"hello, not a pdf", fmt="pdf")
    with pytest.raises(InvalidDocument):
        parsing.parse(b"%PDF-1.4\ngarbage", fmt="pdf")
    assert parsing.parse("caf\xe9".encode("latin-1"), fmt="text", charset="latin-1").text \
        == "café"


def test_normalize_is_idempotent_and_spans_hold() -> None:
    raw = "  a\r\nb \t\r\n\r\n\r\n\r\nc\x00d\u0065\u0301  \n"
    once = parsing.normalize(raw)
    assert once == "a\nb\n\ncdé" and parsing.normalize(once) == once
    doc = parsing.assemble([("s1", "One", "  x \n"), ("s2", None, ""), ("s3", "Three", "y")])
    assert doc.text == "x\n\ny"
    assert [(s.id, doc.text[s.start:s.end]) for s in doc.sections] == [("s1", "x"), ("s3", "y")]


def test_unbroken_text_is_cut_hard_but_exactly() -> None:
    text = "x" * 2500
    spans = split_section(text, Section(None, None, 0, len(text)), ChunkSizes(1000, 1200, 0.15))
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(e - s <= 1200 for s, e in spans)
    assert all(b[0] < a[1] for a, b in itertools.pairwise(spans))
