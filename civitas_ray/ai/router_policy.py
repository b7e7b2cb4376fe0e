"""/api/v1/ai/policy-check and /api/v1/ai/recommendations: the two agents on demand.

Both run as recorded agent runs (an `agent_run` row and an audit entry with the inputs,
the passages cited and the model that answered) under the caller's identity. The
request's own transaction only validates the subject; the run commits on its own, so
its record survives whatever happens to the response.
"""

from __future__ import annotations

import uuid

from fastapi import APIRouter

from civitas_ray.ai.agents import policy, recommender
from civitas_ray.ai.agents.base import AgentContext
from civitas_ray.auth.deps import AuthContext, AuthDep, needs
from civitas_ray.auth.permissions import Perm
from civitas_ray.errors import ServiceUnavailable
from civitas_ray.incidents import service as incidents
from civitas_ray.recommendations import service as recommendations
from civitas_ray.recommendations.schemas import (
    PolicyCheckRead,
    PolicyCheckRequest,
    RecommendationRead,
    RecommendRequest,
    RecommendRunRead,
)
from civitas_ray.zones import service as zones

router = APIRouter(prefix="/ai", tags=["ai"])


def _agent_context(ctx: AuthContext) -> AgentContext:
    user_id = ctx.principal.id if ctx.principal.kind == "user" else None
    return AgentContext(tenant_id=ctx.principal.tenant_id, actor=ctx.actor, user_id=user_id,
                        trigger="api")


@router.post("/policy-check", response_model=PolicyCheckRead,
             summary="Check a proposed action against the policy documents",
             description="Retrieves the tenant's policy passages (hybrid search), then judges: "
                         "`compliant`, `non_compliant` or `unclear`, with citations of the "
                         "passages relied on. An answer relying on none is `unclear`. "
                         "`mode` says whether a model or the extractive rules answered.",
             **needs(Perm.AI_RUN))
async def policy_check(ctx: AuthDep, body: PolicyCheckRequest) -> PolicyCheckRead:
    incident = None
    if body.incident_id is not None:
        found = await incidents.require(session=ctx.session, tenant_id=ctx.principal.tenant_id,
                                        incident_id=body.incident_id)
        incident = policy.incident_facts(found)
    result = await policy.run(_agent_context(ctx), action=body.action, incident=incident)
    if result.output is None:
        raise ServiceUnavailable(f"The policy check failed: {result.error}",
                                 run_id=str(result.run_id))
    out = result.output
    return PolicyCheckRead(run_id=result.run_id, status=result.status, verdict=out["verdict"],
                           rationale=out["rationale"], citations=out["citations"],
                           mode=out.get("mode"), model=out.get("model"),
                           backend=out.get("backend"), judged_by=out.get("judged_by"))


@router.post("/recommendations", response_model=RecommendRunRead,
             summary="Run the recommender for an incident, a zone or the whole tenant",
             description="Gathers open incidents, firing alerts and production forecasts in "
                         "scope, proposes actions by rule, checks each against policy, ranks "
                         "and explains them, and stores new `recommendation` rows (an open "
                         "one covering the same thing is listed under `duplicates` instead).",
             **needs(Perm.AI_RUN))
async def run_recommender(ctx: AuthDep, body: RecommendRequest) -> RecommendRunRead:
    tenant_id = ctx.principal.tenant_id
    if body.incident_id is not None:
        await incidents.require(session=ctx.session, tenant_id=tenant_id,
                                incident_id=body.incident_id)
    if body.zone_id is not None:
        await zones.require(session=ctx.session, tenant_id=tenant_id, zone_id=body.zone_id)
    result = await recommender.run(_agent_context(ctx), zone_id=body.zone_id,
                                   incident_id=body.incident_id)
    if result.output is None:
        raise ServiceUnavailable(f"The recommender failed: {result.error}",
                                 run_id=str(result.run_id))
    out = result.output
    created = []
    for rid in out.get("created", []):
        row = await recommendations.get(session=ctx.session, tenant_id=tenant_id,
                                        recommendation_id=uuid.UUID(rid))
        if row is not None:
            created.append(RecommendationRead.model_validate(row))
    return RecommendRunRead(run_id=result.run_id, status=result.status, mode=out.get("mode"),
                            model=out.get("model"), backend=out.get("backend"),
                            created=created,
                            duplicates=[uuid.UUID(d) for d in out.get("duplicates", [])],
                            cited=out.get("cited", []))
