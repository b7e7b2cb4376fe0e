"""Uploaded bytes -> one normalised text with its sections, the frame every citation uses.

Each format is cut into segments (a Markdown heading and its body, an HTML heading and
its blocks, a PDF page, a JSONL line). Every segment is normalised the same way and the
segments are joined with a blank line, so each section's span in the full text is known
exactly and `text[start:end]` is that section. Parsing is pure and CPU-bound: run it in
a worker thread.
"""

from __future__ import annotations

import io
import json
import re
import unicodedata
from dataclasses import dataclass
from typing import Any

from civitas_ray.errors import CivitasError, ValidationFailed

SECTION_ID_MAX = 200  # document_chunk.section_id
SEPARATOR = "\n\n"
MAX_JSONL_ERRORS = 10


class UnsupportedFormat(CivitasError):
    status, title, type_slug = 415, "Unsupported media type", "unsupported-media-type"


class DocumentTooLarge(CivitasError):
    status, title, type_slug = 413, "Document too large", "document-too-large"


class InvalidDocument(ValidationFailed):
    title, type_slug = "Invalid document", "invalid-document"


@dataclass(frozen=True, slots=True)
class Section:
    """A span of the normalised text: `text[start:end]` is the whole section."""

    id: str | None
    title: str | None
    start: int
    end: int

    def as_dict(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "start": self.start, "end": self.end}

    @classmethod
    def of(cls, d: dict[str, Any]) -> Section:
        return cls(id=d["id"], title=d["title"], start=int(d["start"]), end=int(d["end"]))


@dataclass(frozen=True, slots=True)
class ParsedDocument:
    text: str
    sections: list[Section]
    title: str | None = None  # found in the content: first heading, <title>, PDF metadata


# ---- formats ---------------------------------------------------------------------------
FORMAT_TYPES = {"text": "text/plain", "markdown": "text/markdown", "html": "text/html",
                "pdf": "application/pdf", "jsonl": "application/jsonl"}
_BY_TYPE = {
    "text/plain": "text", "text/markdown": "markdown", "text/x-markdown": "markdown",
    "text/html": "html", "application/xhtml+xml": "html", "application/pdf": "pdf",
    "application/jsonl": "jsonl", "application/x-jsonlines": "jsonl",
    "application/jsonlines": "jsonl", "application/x-ndjson": "jsonl",
    "application/ndjson": "jsonl", "application/json-lines": "jsonl",
}
_BY_SUFFIX = {".txt": "text", ".text": "text", ".md": "markdown", ".markdown": "markdown",
              ".html": "html", ".htm": "html", ".pdf": "pdf", ".jsonl": "jsonl",
              ".ndjson": "jsonl"}
_GENERIC_TYPES = {"", "application/octet-stream", "binary/octet-stream"}


def split_content_type(content_type: str | None) -> tuple[str, dict[str, str]]:
    """('text/html', {'charset': 'latin-1'}) from a Content-Type header value."""
    if not content_type:
        return "", {}
    mime, *params = content_type.split(";")
    out = {}
    for p in params:
        name, _, value = p.partition("=")
        out[name.strip().lower()] = value.strip().strip('"')
    return mime.strip().lower(), out


def resolve_format(content_type: str | None, filename: str | None) -> str:
    """The parser for this upload: from its media type, or its file name when generic."""
    mime, _ = split_content_type(content_type)
    suffix = ""
    if filename and "." in filename:
        suffix = "." + filename.rsplit(".", 1)[1].lower()
    if mime in _GENERIC_TYPES or (mime == "text/plain" and suffix in (".md", ".markdown")):
        found = _BY_SUFFIX.get(suffix)
        if found:
            return found
    elif mime in _BY_TYPE:
        return _BY_TYPE[mime]
    raise UnsupportedFormat(
        f"{mime or 'An upload without a content type'} is not a supported document format; "
        "send text/plain, text/markdown, text/html, application/pdf or application/jsonl "
        "(or a file named .txt, .md, .html, .pdf or .jsonl)")


# ---- normalisation and assembly ---------------------------------------------------------
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_TRAILING_SPACE = re.compile(r"[ \t\u00a0]+\n")
_BLANK_LINES = re.compile(r"\n{3,}")


def normalize(text: str) -> str:
    """NFC, '\\n' line ends, no control characters or trailing blanks, at most one blank
    line in a row, no leading or trailing whitespace. Idempotent."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    text = _CONTROL.sub("", text).replace("\ufeff", "")
    text = _TRAILING_SPACE.sub("\n", text)
    return _BLANK_LINES.sub("\n\n", text).strip()


def assemble(segments: list[tuple[str | None, str | None, str]],
             title: str | None = None) -> ParsedDocument:
    """Join (section id, section title, text) segments into one text with exact spans."""
    parts: list[str] = []
    sections: list[Section] = []
    pos = 0
    for sid, stitle, body in segments:
        body = normalize(body)
        if not body:
            continue
        if parts:
            parts.append(SEPARATOR)
            pos += len(SEPARATOR)
        parts.append(body)
        sections.append(Section(id=sid, title=stitle, start=pos, end=pos + len(body)))
        pos += len(body)
    if not sections:
        raise InvalidDocument("The document has no text")
    return ParsedDocument(text="".join(parts), sections=sections, title=title)


def _decode(data: bytes, charset: str | None) -> str:
    try:
        if charset:
            return data.decode(charset)
        return data.decode("utf-8-sig")
    except LookupError:
        raise InvalidDocument(f"Unknown charset {charset!r}") from None
    except UnicodeDecodeError as exc:
        raise InvalidDocument(f"The text is not valid {charset or 'UTF-8'} (byte "
                              f"{exc.start}); send UTF-8 or name the charset") from None


class _Slugs:
    """GitHub-style heading anchors, made unique within one document."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def __call__(self, title: str) -> str:
        base = re.sub(r"[^\w\- ]", "", title.lower()).strip().replace(" ", "-")
        base = base[:SECTION_ID_MAX - 8] or "section"
        n = self.seen.get(base, 0)
        self.seen[base] = n + 1
        return base if n == 0 else f"{base}-{n}"


# ---- parsers ----------------------------------------------------------------------------
def parse_text(text: str) -> ParsedDocument:
    return assemble([(None, None, text)])


_FENCE = re.compile(r"^ {0,3}(`{3,}|~{3,})")
_ATX = re.compile(r"^ {0,3}(#{1,6})(?:[ \t]+(.*?))?(?:[ \t]+#+)?[ \t]*$")
_SETEXT = re.compile(r"^ {0,3}(=+|-+)[ \t]*$")
_MD_LINK = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")


def _inline_md(text: str) -> str:
    text = _MD_LINK.sub(r"\1", text)
    return re.sub(r"[*_`]+", "", text).strip()


def parse_markdown(text: str) -> ParsedDocument:
    """Sections start at ATX (`## x`) and setext headings outside fenced code."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    heads: list[tuple[int, int, str]] = []  # (first line, level, title)
    fence: str | None = None
    for i, line in enumerate(lines):
        m = _FENCE.match(line)
        if m:
            mark = m.group(1)
            if fence is None:
                fence = mark[0] * len(mark)
            elif mark.startswith(fence):
                fence = None
            continue
        if fence is not None:
            continue
        atx = _ATX.match(line)
        if atx:
            heads.append((i, len(atx.group(1)), _inline_md(atx.group(2) or "")))
            continue
        setext = _SETEXT.match(line)
        if setext and i > 0 and lines[i - 1].strip() and not _ATX.match(lines[i - 1]) \
                and not (heads and heads[-1][0] == i - 1) and not _SETEXT.match(lines[i - 1]):
            heads.append((i - 1, 1 if setext.group(1)[0] == "=" else 2,
                          _inline_md(lines[i - 1])))
    slugs = _Slugs()
    segments: list[tuple[str | None, str | None, str]] = []
    starts = [h[0] for h in heads]
    if not starts or starts[0] > 0:
        segments.append((None, None, "\n".join(lines[:starts[0] if starts else len(lines)])))
    for n, (first, _level, title) in enumerate(heads):
        last = starts[n + 1] if n + 1 < len(heads) else len(lines)
        segments.append((slugs(title) if title else None, title or None,
                         "\n".join(lines[first:last])))
    h1 = next((t for _, level, t in heads if level == 1 and t), None)
    return assemble(segments, title=h1)


_HEADINGS = {"h1", "h2", "h3", "h4", "h5", "h6"}
_DROP = {"script", "style", "noscript", "template", "svg", "head", "iframe", "object"}
_BLOCKS = {"p", "div", "section", "article", "header", "footer", "main", "aside", "nav",
           "ul", "ol", "li", "table", "thead", "tbody", "tfoot", "tr", "pre", "blockquote",
           "dl", "dt", "dd", "figure", "figcaption", "form", "address", "hr", "details",
           "summary", "caption", "body", "html"}
_WS = re.compile(r"\s+")


class _HtmlText:
    """Walks the DOM into blocks of text, starting a new segment at every heading."""

    def __init__(self) -> None:
        self.segments: list[tuple[str | None, str | None, list[str]]] = [(None, None, [])]
        self.line: list[str] = []
        self.slugs = _Slugs()
        self.first_h1: str | None = None

    def flush(self) -> None:
        text = "".join(self.line).strip()
        if text:
            self.segments[-1][2].append(text)
        self.line = []

    def walk(self, node: Any) -> None:
        from bs4 import Comment, NavigableString, Tag

        for child in node.children:
            if isinstance(child, Comment):
                continue
            if isinstance(child, NavigableString):
                if type(child) is NavigableString:
                    self.line.append(_WS.sub(" ", str(child)))
                continue
            if not isinstance(child, Tag) or child.name in _DROP:
                continue
            name = child.name
            if name in _HEADINGS:
                self.flush()
                title = _WS.sub(" ", child.get_text(" ")).strip()
                anchor = child.get("id")
                sid = (str(anchor)[:SECTION_ID_MAX] if anchor else
                       self.slugs(title) if title else None)
                if title and name == "h1" and self.first_h1 is None:
                    self.first_h1 = title
                self.segments.append((sid, title or None, [title] if title else []))
            elif name == "pre":
                self.flush()
                self.segments[-1][2].append(child.get_text())
            elif name == "br":
                self.line.append("\n")
            elif name in ("td", "th"):
                if self.line and "".join(self.line).strip():
                    self.line.append(" | ")
                self.walk(child)
            elif name in _BLOCKS:
                self.flush()
                if name == "li":
                    self.line.append("- ")
                self.walk(child)
                self.flush()
            else:
                self.walk(child)


def parse_html(text: str) -> ParsedDocument:
    try:
        from bs4 import BeautifulSoup
    except ImportError as exc:  # pragma: no cover - part of the `ai` extra
        raise UnsupportedFormat("HTML documents need beautifulsoup4 (the `ai` extra)") from exc
    soup = BeautifulSoup(text, "html.parser")
    page_title = soup.title.get_text(" ").strip() if soup.title else None
    walker = _HtmlText()
    walker.walk(soup)
    walker.flush()
    segments = [(sid, title, "\n\n".join(blocks)) for sid, title, blocks in walker.segments]
    return assemble(segments, title=page_title or walker.first_h1)


def parse_pdf(data: bytes) -> ParsedDocument:
    """One section per page (`page-3`), so citations name the page."""
    try:
        from pypdf import PdfReader
        from pypdf.errors import PyPdfError
    except ImportError as exc:  # pragma: no cover - part of the `ai` extra
        raise UnsupportedFormat("PDF documents need pypdf (the `ai` extra)") from exc
    if not data.startswith(b"%PDF-"):
        raise InvalidDocument("The body is not a PDF (it does not start with %PDF-)")
    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted and not reader.decrypt(""):
            raise InvalidDocument("The PDF is encrypted")
        pages = [page.extract_text() or "" for page in reader.pages]
        meta = reader.metadata
        title = str(meta.title).strip() if meta and meta.title else None
    except InvalidDocument:
        raise
    except (PyPdfError, ValueError, KeyError, TypeError, OSError) as exc:
        raise InvalidDocument(f"The PDF cannot be read: {exc}") from None
    if not any(p.strip() for p in pages):
        raise InvalidDocument("The PDF has no extractable text (scanned pages would need "
                              "OCR, which is not supported)")
    return assemble([(f"page-{i}", f"Page {i}", text) for i, text in enumerate(pages, 1)],
                    title=title or None)


def parse_jsonl(text: str) -> ParsedDocument:
    """One section per line: {"id", "title"?, "text"}; ids unique within the document."""
    segments: list[tuple[str | None, str | None, str]] = []
    errors: list[dict[str, Any]] = []
    seen: set[str] = set()

    def bad(line_no: int, msg: str) -> None:
        errors.append({"loc": ["body", "line", line_no], "msg": msg,
                       "type": "invalid_section"})

    for n, line in enumerate(text.splitlines(), 1):
        if len(errors) >= MAX_JSONL_ERRORS:
            break
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            bad(n, f"not JSON: {exc.msg}")
            continue
        if not isinstance(row, dict):
            bad(n, "each line must be a JSON object {id, title, text}")
            continue
        sid, title, body = row.get("id"), row.get("title"), row.get("text")
        if isinstance(sid, int) and not isinstance(sid, bool):
            sid = str(sid)
        if not isinstance(sid, str) or not sid.strip() or len(sid) > SECTION_ID_MAX:
            bad(n, f"'id' must be a non-empty string of at most {SECTION_ID_MAX} characters")
            continue
        if title is not None and not isinstance(title, str):
            bad(n, "'title' must be a string")
            continue
        if not isinstance(body, str):
            bad(n, "'text' must be a string")
            continue
        if sid in seen:
            bad(n, f"duplicate section id {sid!r}")
            continue
        seen.add(sid)
        heading = (title or "").strip()
        segments.append((sid, heading or None, f"{heading}\n\n{body}" if heading else body))
    if errors:
        raise InvalidDocument("The JSONL document has invalid lines", errors=errors)
    if not segments:
        raise InvalidDocument("The JSONL document has no sections")
    return assemble(segments)


def parse(data: bytes, *, fmt: str, charset: str | None = None) -> ParsedDocument:
    """Parse an upload of a format from `resolve_format`."""
    if not data:
        raise InvalidDocument("The document is empty")
    if fmt == "pdf":
        return parse_pdf(data)
    text = _decode(data, charset)
    if fmt == "markdown":
        return parse_markdown(text)
    if fmt == "html":
        return parse_html(text)
    if fmt == "jsonl":
        return parse_jsonl(text)
    if fmt == "text":
        return parse_text(text)
    raise UnsupportedFormat(f"Unknown format {fmt!r}")
