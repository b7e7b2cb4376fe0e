"""Structure-aware chunking: sections cut into overlapping, citable pieces.

A chunk never crosses a section. A section that fits in `max_chars` is one chunk; a
longer one is cut near `target_chars` at the strongest boundary available (a blank line,
then a line end, then a sentence end, then a space), and the next chunk starts about
`overlap` of a chunk earlier, at a word or sentence start, so a passage cut in two is
still whole in one of them. Every chunk is a span: `text[char_start:char_end]` is exactly
its text, which is what makes citations checkable.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from civitas_ray.documents.parsing import ParsedDocument, Section

# Boundaries by strength: where a cut reads best. Each match's end is the cut position.
_BOUNDARIES = (
    re.compile(r"\n[ \t]*\n"),         # paragraph
    re.compile(r"\n"),                 # line
    re.compile(r"[.!?;:][\"')\]]?\s"),  # sentence or clause
    re.compile(r"\s"),                 # word
)


@dataclass(frozen=True, slots=True)
class Chunk:
    ordinal: int
    section_id: str | None
    section_title: str | None
    char_start: int
    char_end: int
    text: str


@dataclass(frozen=True, slots=True)
class ChunkSizes:
    target_chars: int = 1000
    max_chars: int = 1200
    overlap: float = 0.15

    def __post_init__(self) -> None:
        if not 50 <= self.target_chars <= self.max_chars:
            raise ValueError("need 50 <= target_chars <= max_chars")
        if not 0.0 <= self.overlap <= 0.5:
            raise ValueError("overlap is a share of a chunk between 0 and 0.5")


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _best_cut(text: str, lo: int, hi: int, aim: int) -> int:
    """The cut in [lo, hi] at the strongest boundary, nearest `aim`; `hi` if none."""
    window = text[lo:hi]
    for pattern in _BOUNDARIES:
        cuts = [lo + m.end() for m in pattern.finditer(window)]
        if cuts:
            return min(cuts, key=lambda c: abs(c - aim))
    return hi


def _next_start(text: str, lo: int, hi: int, min_overlap: int) -> int:
    """Where the next chunk starts in [lo, hi): the first sentence start that still
    repeats `min_overlap` characters, else the first word start."""
    window = text[lo:hi]
    limit = len(window) - min_overlap
    starts = [m.end() for p in _BOUNDARIES[:3] for m in [p.search(window, 0, max(limit, 0))]
              if m is not None and 0 < m.end() <= limit]
    if starts:
        return lo + min(starts)
    m = _BOUNDARIES[3].search(window)
    if m is not None and m.end() < len(window):
        return lo + m.end()
    return lo


def split_section(text: str, section: Section, sizes: ChunkSizes) -> list[tuple[int, int]]:
    """(start, end) spans covering one section, in order, overlapping by about `overlap`."""
    start, end = _trim(text, section.start, section.end)
    spans: list[tuple[int, int]] = []
    pos = start
    while pos < end:
        remaining = end - pos
        if remaining <= sizes.max_chars:
            spans.append((pos, end))
            break
        overlap = int(sizes.target_chars * sizes.overlap)
        # Two chunks left: share the rest evenly rather than leave a small last one.
        aim_len = sizes.target_chars
        if remaining < 2 * sizes.target_chars:
            aim_len = max(sizes.target_chars // 2, (remaining + overlap) // 2)
        aim = pos + aim_len
        lo = pos + max(1, int(aim_len * 0.75))
        hi = min(pos + sizes.max_chars, end)
        cut = _best_cut(text, lo, hi, aim)
        c_start, c_end = _trim(text, pos, cut)
        if c_end > c_start:
            spans.append((c_start, c_end))
        if overlap <= 0:
            nxt = cut
        else:
            back = max(pos + 1, cut - overlap)
            # Start at the first sentence (else word) start after `back`, before the cut.
            nxt = _next_start(text, back, cut, overlap // 2)
            if nxt <= pos:
                nxt = cut
        pos = _trim(text, nxt, end)[0]
    return spans


def chunk_document(doc: ParsedDocument, sizes: ChunkSizes | None = None) -> list[Chunk]:
    """Every section of `doc` cut into chunks, numbered in document order."""
    sizes = sizes or ChunkSizes()
    chunks: list[Chunk] = []
    for section in doc.sections:
        for c_start, c_end in split_section(doc.text, section, sizes):
            chunks.append(Chunk(ordinal=len(chunks), section_id=section.id,
                                section_title=section.title, char_start=c_start,
                                char_end=c_end, text=doc.text[c_start:c_end]))
    return chunks
