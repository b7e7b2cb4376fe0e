"""What every agent shares: its context (tenant, LLM, search, actor) and run recording.

An agent is a LangGraph `StateGraph` over a TypedDict state, compiled once per process.
`run_agent` wraps one invocation: it claims an `agent_run` row (idempotent per key, so
an event redelivered by the Redis consumer group runs once), invokes the graph, then
stores the output, the passages cited and the model that answered, and appends an
audit entry with the same, all in the tenant's context.

Contracts the agents rely on (other modules implement them):
- `civitas_ray.ai.llm.get_llm() -> LLM` with `await llm.complete(task, instructions=...,
  passages=[Passage], facts={...}) -> Completion(text, backend, model, mode, usage,
  cited, finish_reason, latency_s)`; mode "extractive" when no model is configured.
- `civitas_ray.documents.search.search(session, tenant_id, q, limit=..., mode=...)`
  -> hits with `.text` and `.citation` ({document_id, title, section_id,
  section_title, char_start, char_end, url}).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from civitas_ray.ai.agents.models import AgentRun
from civitas_ray.audit import service as audit
from civitas_ray.audit.service import Actor
from civitas_ray.db.session import tenant_session

log = logging.getLogger(__name__)


@dataclass(slots=True)
class AgentContext:
    """Per-run context handed to an agent's nodes."""

    tenant_id: uuid.UUID
    actor: Actor
    llm: Any = None  # civitas_ray.ai.llm.LLM; resolved lazily by `get_llm` when None
    user_id: uuid.UUID | None = None
    trigger: str = "api"
    extras: dict[str, Any] = field(default_factory=dict)

    def get_llm(self) -> Any:
        if self.llm is None:
            from civitas_ray.ai.llm import get_llm

            self.llm = get_llm()
        return self.llm


def four_step_graph(state: type, *, gather: Any, analyse: Any, explain: Any, act: Any,
                    route: Any) -> Any:
    """gather -> analyse -> (route: explain -> act, or stop): the shape of the
    event-driven agents, compiled once with AgentContext as the runtime context."""
    from langgraph.graph import END, START, StateGraph

    g: Any = StateGraph(state, context_schema=AgentContext)
    g.add_node("gather", gather)
    g.add_node("analyse", analyse)
    g.add_node("explain", explain)
    g.add_node("act", act)
    g.add_edge(START, "gather")
    g.add_edge("gather", "analyse")
    g.add_conditional_edges("analyse", route, ["explain", END])
    g.add_edge("explain", "act")
    g.add_edge("act", END)
    return g.compile()


@dataclass(slots=True)
class RunResult:
    run_id: uuid.UUID
    status: str  # succeeded | failed | duplicate
    output: dict[str, Any] | None
    error: str | None = None


class AgentOutput(dict[str, Any]):
    """What a graph returns to `run_agent`: the output document plus provenance.

    Keys read by `run_agent`: `output` (dict), `cited` (list of citation dicts),
    `model`, `backend`, `mode`.
    """


async def run_agent(
    agent: str, ctx: AgentContext, invoke: Callable[[AgentContext], Awaitable[dict[str, Any]]],
    *, inputs: dict[str, Any], subject_type: str | None = None,
    subject_id: str | None = None, idempotency_key: str | None = None,
) -> RunResult:
    """Run `invoke(ctx)` as one recorded, audited agent run (once per idempotency key)."""
    started = time.perf_counter()
    try:
        async with tenant_session(ctx.tenant_id) as s:
            run = AgentRun(tenant_id=ctx.tenant_id, agent=agent, trigger=ctx.trigger,
                           idempotency_key=idempotency_key, status="running",
                           subject_type=subject_type, subject_id=subject_id, inputs=inputs,
                           created_by=ctx.user_id)
            s.add(run)
            await s.flush()
            run_id = run.id
    except IntegrityError:
        async with tenant_session(ctx.tenant_id) as s:
            prior = (await s.execute(select(AgentRun).where(
                AgentRun.tenant_id == ctx.tenant_id,
                AgentRun.idempotency_key == idempotency_key))).scalar_one()
            return RunResult(prior.id, "duplicate", prior.output, prior.error)
    try:
        result = await invoke(ctx)
    except Exception as exc:
        log.exception("agent run failed", extra={"agent": agent, "run_id": str(run_id)})
        async with tenant_session(ctx.tenant_id) as s:
            failed = await s.get(AgentRun, run_id)
            assert failed is not None
            failed.status, failed.error = "failed", repr(exc)
            failed.finished_at = datetime.now(UTC)
            failed.latency_s = time.perf_counter() - started
            await audit.record(session=s, actor=ctx.actor, action=f"agent.{agent}.failed",
                               tenant_id=ctx.tenant_id, target_type="agent_run",
                               target_id=run_id, after={"inputs": inputs, "error": repr(exc)})
        return RunResult(run_id, "failed", None, repr(exc))
    output = dict(result.get("output") or {})
    cited = list(result.get("cited") or [])
    async with tenant_session(ctx.tenant_id) as s:
        done = await s.get(AgentRun, run_id)
        assert done is not None
        run = done
        run.status, run.output, run.cited = "succeeded", output, cited
        run.model, run.backend, run.mode = (result.get("model"), result.get("backend"),
                                            result.get("mode"))
        run.finished_at = datetime.now(UTC)
        run.latency_s = time.perf_counter() - started
        await audit.record(session=s, actor=ctx.actor, action=f"agent.{agent}",
                           tenant_id=ctx.tenant_id, target_type="agent_run", target_id=run_id,
                           after={"inputs": inputs, "cited": cited, "model": run.model,
                                  "backend": run.backend, "mode": run.mode,
                                  "subject": f"{subject_type}:{subject_id}"
                                  if subject_type else None})
    return RunResult(run_id, "succeeded", output)
