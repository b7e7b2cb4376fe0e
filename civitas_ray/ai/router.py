"""/api/v1/ai: run the agents on demand and read the recorded runs.

Routes stay thin: check the subject exists in the caller's tenant, hand over to the
agent (which records and audits its own run), and answer with the run's provenance
(`mode`, `model`, `cited`) whatever the outcome.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any

from fastapi import APIRouter, Query
from sqlalchemy import func, select

from civitas_ray.ai.agents import data_quality, notifier, summarizer
from civitas_ray.ai.agents.base import AgentContext, RunResult
from civitas_ray.ai.agents.models import AgentRun
from civitas_ray.ai.schemas import (
    AgentName,
    AgentRunRead,
    AgentRunResult,
    DataQualityRequest,
    NotifyRequest,
    RunStatus,
)
from civitas_ray.assets.models import Asset
from civitas_ray.auth.deps import AuthContext, AuthDep, needs
from civitas_ray.auth.permissions import Perm
from civitas_ray.errors import NotFound
from civitas_ray.incidents import service as incidents
from civitas_ray.schemas import PROBLEM_RESPONSES, Page, page_of

router = APIRouter(prefix="/ai", tags=["ai"], responses=PROBLEM_RESPONSES)


def _context(ctx: AuthContext) -> AgentContext:
    p = ctx.principal
    return AgentContext(tenant_id=p.tenant_id, actor=ctx.actor,
                        user_id=p.id if p.kind == "user" else None, trigger="api")


async def _answer(ctx: AuthContext, agent: str, result: RunResult) -> AgentRunResult:
    """The run as recorded (a duplicate answers with the original run's provenance)."""
    run = await ctx.session.get(AgentRun, result.run_id)
    return AgentRunResult(
        run_id=result.run_id, agent=agent, status=result.status,
        mode=run.mode if run else None, model=run.model if run else None,
        backend=run.backend if run else None, cited=list(run.cited) if run else [],
        output=result.output, error=result.error)


@router.post("/data-quality", response_model=AgentRunResult, summary="Check a stream's data",
             description="Classify what is wrong with the stream's recent readings (stuck, "
                         "gap, drift, reset...), propose quarantine or recalibration, explain "
                         "it, and open a data-quality incident when the issue persists.",
             **needs(Perm.AI_RUN))
async def check_data_quality(ctx: AuthDep, body: DataQualityRequest) -> AgentRunResult:
    found = (await ctx.session.execute(select(Asset.id).where(
        Asset.id == body.asset_id, Asset.tenant_id == ctx.principal.tenant_id,
        Asset.deleted_at.is_(None)))).first()
    if found is None:
        raise NotFound(f"Asset {body.asset_id} not found")
    result = await data_quality.run(_context(ctx), asset_id=body.asset_id, metric=body.metric,
                                    as_of=body.as_of)
    return await _answer(ctx, data_quality.AGENT, result)


@router.post("/incidents/{incident_id}/summary", response_model=AgentRunResult,
             summary="Summarize an incident",
             description="Summarize the incident's timeline, alerts and telemetry now and "
                         "write it to `incident.summary` (with an `update` timeline event).",
             **needs(Perm.AI_RUN))
async def summarize_incident(ctx: AuthDep, incident_id: uuid.UUID) -> AgentRunResult:
    await incidents.require(session=ctx.session, tenant_id=ctx.principal.tenant_id,
                            incident_id=incident_id)
    result = await summarizer.run(_context(ctx), incident_id=incident_id, force=True)
    return await _answer(ctx, summarizer.AGENT, result)


@router.post("/notify", response_model=AgentRunResult, summary="Notify about an incident",
             description="Decide who must know (role, zone, severity, quiet hours, "
                         "escalation) and send once per recipient within the dedup window.",
             **needs(Perm.AI_RUN))
async def notify(ctx: AuthDep, body: NotifyRequest) -> AgentRunResult:
    await incidents.require(session=ctx.session, tenant_id=ctx.principal.tenant_id,
                            incident_id=body.incident_id)
    result = await notifier.run(_context(ctx), incident_id=body.incident_id)
    return await _answer(ctx, notifier.AGENT, result)


@router.get("/runs", response_model=Page[AgentRunRead], summary="List agent runs",
            description="Newest first.", **needs(Perm.AI_READ))
async def list_runs(
    ctx: AuthDep, agent: AgentName | None = None, status: RunStatus | None = None,
    subject_id: Annotated[str | None, Query(max_length=200)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50, offset: Annotated[int, Query(ge=0)] = 0,
) -> dict[str, Any]:
    stmt = select(AgentRun).where(AgentRun.tenant_id == ctx.principal.tenant_id)
    if agent is not None:
        stmt = stmt.where(AgentRun.agent == agent)
    if status is not None:
        stmt = stmt.where(AgentRun.status == status)
    if subject_id is not None:
        stmt = stmt.where(AgentRun.subject_id == subject_id)
    total = (await ctx.session.execute(
        select(func.count()).select_from(stmt.subquery()))).scalar_one()
    rows = (await ctx.session.execute(stmt.order_by(AgentRun.created_at.desc(),
                                                    AgentRun.id.desc())
                                      .limit(limit).offset(offset))).scalars()
    return page_of([AgentRunRead.model_validate(r) for r in rows], total=int(total),
                   limit=limit, offset=offset)


@router.get("/runs/{run_id}", response_model=AgentRunRead, summary="One agent run",
            **needs(Perm.AI_READ))
async def get_run(ctx: AuthDep, run_id: uuid.UUID) -> AgentRunRead:
    run = (await ctx.session.execute(select(AgentRun).where(
        AgentRun.id == run_id, AgentRun.tenant_id == ctx.principal.tenant_id)))\
        .scalar_one_or_none()
    if run is None:
        raise NotFound(f"Agent run {run_id} not found")
    return AgentRunRead.model_validate(run)
