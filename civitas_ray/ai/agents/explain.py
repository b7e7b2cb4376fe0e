"""The agents' one LLM step: retrieve context, ask the model, keep what it cited.

Retrieved text reaches the model only as quoted `Passage` data (the LLM layer escapes
it into data blocks); structured facts go as `facts`. What comes back is labelled with
the backend, model and mode that answered, and the citations of the passages it used,
so `run_agent` can audit them.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Literal

from civitas_ray.ai.agents.base import AgentContext
from civitas_ray.db.session import tenant_session

log = logging.getLogger(__name__)

# Full-text search: no embedding model loads in the agent's process; hybrid search is
# the documents API's job when Serve runs the embedder.
SEARCH_MODE: Literal["text"] = "text"


@dataclass(slots=True)
class Explanation:
    text: str
    model: str | None
    backend: str | None
    mode: str | None
    cited: list[dict[str, Any]] = field(default_factory=list)
    usage: dict[str, int] = field(default_factory=dict)

    def provenance(self) -> dict[str, Any]:
        return {"model": self.model, "backend": self.backend, "mode": self.mode}


async def retrieve(ctx: AgentContext, query: str, *, limit: int = 3) -> list[Any]:
    """Passages from the tenant's documents for `query`; none when search is unavailable.

    Retrieval adds context; an agent must still act without it (no documents yet, the
    documents schema not migrated), so a failure is logged, not raised.
    """
    from civitas_ray.ai.llm import Passage

    if ctx.extras.get("search") is False:  # the caller wants facts only
        return []
    try:
        from civitas_ray.documents.search import search
    except ImportError:
        return []
    try:
        async with tenant_session(ctx.tenant_id) as s:
            hits = await search(s, ctx.tenant_id, query, limit=limit, mode=SEARCH_MODE)
    except Exception as exc:
        log.warning("document search failed; continuing without passages",
                    extra={"tenant_id": str(ctx.tenant_id), "error": repr(exc)})
        return []
    out: list[Passage] = []
    for i, hit in enumerate(hits, start=1):
        citation = dict(getattr(hit, "citation", None) or {})
        out.append(Passage(id=f"d{i}", text=str(hit.text), title=citation.get("title"),
                           citation=citation))
    return out


async def ask(ctx: AgentContext, *, task: str, instructions: str, facts: dict[str, Any],
              passages: list[Any] | None = None, max_tokens: int = 300) -> Explanation:
    """One completion; `cited` holds the citations of the passages the answer used."""
    llm = ctx.get_llm()
    # A caller may cap the answer (a small CPU model, a latency budget).
    max_tokens = int(ctx.extras.get("max_tokens", max_tokens))
    sent = list(passages or [])
    done = await llm.complete(task, instructions=instructions, passages=sent, facts=facts,
                              max_tokens=max_tokens)
    by_id = {p.id: p for p in sent}
    cited = [{"passage_id": pid, **by_id[pid].citation} for pid in done.cited if pid in by_id]
    return Explanation(text=done.text, model=done.model, backend=done.backend, mode=done.mode,
                       cited=cited, usage=dict(done.usage))
