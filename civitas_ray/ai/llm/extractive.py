"""Answers without a language model: quoted sentences from the passages, and the facts.

Used when no model is configured (or as the configured fallback). Nothing is
generated: the answer quotes the passage sentences that share most terms with the task,
each with its passage id, then lists the structured facts. Every answer starts with a
label saying so, so no reader mistakes it for a model's words.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import re
import time
from collections.abc import Mapping, Sequence
from typing import Any

from civitas_ray.ai.llm.base import LLM, Completion, Passage, validate_request
from civitas_ray.ai.llm.prompt import estimate_tokens

LABEL = "[extractive: no language model configured]"
FALLBACK_LABEL = "[extractive: the configured language model is unavailable]"

MAX_SENTENCES = 6
MAX_FACTS = 40
_OFFLOAD_CHARS = 100_000  # above this, score in a worker thread

_SENTENCE_END = re.compile(r"(?<=[.!?;])\s+|\n\s*\n|\n(?=\s*[-*\u2022])")
_WORD = re.compile(r"\w+", re.UNICODE)
STOPWORDS = frozenset(re.findall(r"\w+", """
a an and are as at be been but by can could did do does for from had has have how i if in
into is it its may me more most my no not of on or our out over own same should so some such
than that the their them then there these they this those to too under up very was we were
what when where which while who whom why will with would you your about above after again
all also any because before below between both during each few further here just now only
other per please show tell give list summarise summarize describe explain
"""))


def terms(text: str) -> set[str]:
    return {w for w in (m.lower() for m in _WORD.findall(text))
            if len(w) > 1 and w not in STOPWORDS}


def split_sentences(text: str) -> list[str]:
    return [s for s in (" ".join(part.split()) for part in _SENTENCE_END.split(text)) if s]


def _flatten(facts: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    for key, value in facts.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.extend(_flatten(value, name + "."))
        else:
            out.append((name, value))
    return out


def _fact_value(value: Any) -> str:
    if isinstance(value, list | tuple):
        return ", ".join(_fact_value(v) for v in value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return " ".join(str(value).split())


def select_sentences(task: str, passages: Sequence[Passage], *, token_budget: int,
                     limit: int = MAX_SENTENCES) -> list[tuple[str, str]]:
    """(passage id, sentence) pairs: best overlap with the task, shown in source order."""
    wanted = terms(task)
    scored: list[tuple[float, int, int, str, str]] = []
    for rank, p in enumerate(passages):
        for pos, sentence in enumerate(split_sentences(p.text)):
            have = terms(sentence)
            overlap = len(wanted & have)
            if overlap:
                # Overlap, damped by length so long sentences do not win by size alone,
                # and by retrieval rank as a tie-breaker.
                score = overlap / math.sqrt(len(have) + 1) + 0.01 / (rank + 1)
                scored.append((score, rank, pos, p.id, sentence))
    if not scored and passages:
        # No shared term: retrieval already ranked the first passage as the best match.
        first = split_sentences(passages[0].text)
        if first:
            scored.append((0.0, 0, 0, passages[0].id, first[0]))
    scored.sort(key=lambda s: (-s[0], s[1], s[2]))
    chosen: list[tuple[int, int, str, str]] = []
    used = 0
    for _, rank, pos, pid, sentence in scored:
        cost = estimate_tokens(sentence) + 4
        if len(chosen) >= limit or (chosen and used + cost > token_budget):
            break
        chosen.append((rank, pos, pid, sentence))
        used += cost
    chosen.sort()
    return [(pid, sentence) for _, _, pid, sentence in chosen]


class ExtractiveLLM(LLM):
    """No generation: quotes and facts, labelled `mode="extractive"` on every answer."""

    mode = "extractive"

    def __init__(self, *, name: str = "extractive", label: str = LABEL) -> None:
        self.name = name
        self.label = label

    async def health(self) -> dict[str, Any]:
        return {"ok": True, "backend": self.name, "mode": self.mode, "model": None,
                "latency_s": 0.0}

    async def complete(
        self, task: str, *, instructions: str, passages: Sequence[Passage] = (),
        facts: Mapping[str, Any] | None = None, max_tokens: int = 400,
        temperature: float = 0.2, timeout_s: float | None = None,
    ) -> Completion:
        validate_request(task, instructions=instructions, passages=passages, facts=facts,
                         max_tokens=max_tokens, temperature=temperature, timeout_s=timeout_s)
        started = time.monotonic()
        size = sum(len(p.text) for p in passages)
        if size > _OFFLOAD_CHARS:
            text, cited = await asyncio.to_thread(self._compose, task, passages, facts, max_tokens)
        else:
            text, cited = self._compose(task, passages, facts, max_tokens)
        latency = time.monotonic() - started
        audit = {
            "backend": self.name, "model": None, "mode": self.mode, "label": self.label,
            "passages_sent": [p.id for p in passages], "passages_dropped": [],
            "cited": cited, "facts": sorted(facts) if facts else [],
            "answer_sha256": hashlib.sha256(text.encode()).hexdigest(),
            "latency_s": round(latency, 4),
        }
        return Completion(text=text, backend=self.name, model="none", mode="extractive",
                          usage={"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
                          cited=cited, finish_reason="extractive", latency_s=latency,
                          audit=audit)

    def _compose(self, task: str, passages: Sequence[Passage],
                 facts: Mapping[str, Any] | None, max_tokens: int) -> tuple[str, list[str]]:
        lines = [self.label]
        items = _flatten(facts) if facts else []
        if items:
            lines.append("Facts:")
            lines.extend(f"- {k}: {_fact_value(v)}" for k, v in items[:MAX_FACTS])
            if len(items) > MAX_FACTS:
                lines.append(f"- ({len(items) - MAX_FACTS} more facts not shown)")
        budget = max(max_tokens - estimate_tokens("\n".join(lines)), 0)
        quotes = select_sentences(task, passages, token_budget=budget)
        if quotes:
            lines.append("From the sources:")
            lines.extend(f'- "{sentence}" [{pid}]' for pid, sentence in quotes)
        elif not items:
            lines.append("No passages or facts were given for this task.")
        cited = list(dict.fromkeys(pid for pid, _ in quotes))
        return "\n".join(lines), cited
