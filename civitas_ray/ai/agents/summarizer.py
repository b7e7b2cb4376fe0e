"""IncidentSummarizer: keeps an incident's summary true to its timeline, alerts and telemetry.

The graph gathers the incident, its timeline, the alerts that fed it and the telemetry
of the streams involved around it; hands them to the LLM as structured facts (plus the
tenant's documents on the subject as quoted passages); and writes `incident.summary`
through the incidents service, which appends the `update` event and the audit row. A
fingerprint of what the summary was written from is kept in the incident's
`properties.ai_summary`, so an event that brings nothing new (the summarizer's own
update among them) ends the run before the LLM is asked again.

    gather -> analyse -> (changed?) explain -> act
"""

from __future__ import annotations

import hashlib
import logging
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

import orjson
from langgraph.graph import END
from langgraph.runtime import Runtime
from sqlalchemy import func, select

from civitas_ray.ai.agents.base import AgentContext, RunResult, four_step_graph, run_agent
from civitas_ray.ai.agents.explain import ask, retrieve
from civitas_ray.alerts.models import Alert
from civitas_ray.db.session import tenant_session
from civitas_ray.incidents import service as incidents
from civitas_ray.incidents.models import IncidentEvent
from civitas_ray.incidents.schemas import IncidentUpdate
from civitas_ray.realtime import relay
from civitas_ray.realtime.events import Event
from civitas_ray.telemetry.models import Telemetry

log = logging.getLogger(__name__)

AGENT = "summarizer"
ORIGIN = f"agent:{AGENT}"
INSTRUCTIONS = (
    "You write incident summaries for a city control room. In at most five sentences say "
    "what happened, when, what the alerts and telemetry show, and the current status. "
    "State only what the facts show; cite passages you rely on.")
TIMELINE_LIMIT = 200
FACT_EVENTS = 25  # newest timeline events handed to the model
TELEMETRY_BEFORE = timedelta(hours=1)
MAX_STREAMS = 5


class SummarizerState(TypedDict, total=False):
    incident_id: str
    force: bool
    trigger_event: str | None
    # gather
    incident: dict[str, Any]
    timeline: list[dict[str, Any]]
    alerts: list[dict[str, Any]]
    telemetry: list[dict[str, Any]]
    previous: dict[str, Any]
    # analyse
    facts: dict[str, Any]
    fingerprint: str
    changed: bool
    # explain
    summary: str
    explanation: dict[str, Any]
    cited: list[dict[str, Any]]
    # act
    written: bool


def _iso(v: datetime | None) -> str | None:
    return v.isoformat() if v else None


def is_own_update(event: dict[str, Any]) -> bool:
    """An `update` event that only rewrote the summary (our own write, or a person's)."""
    changed = (event.get("data") or {}).get("changed") or {}
    return event.get("kind") == "update" and bool(changed) and set(changed) <= {
        "summary", "properties"}


def _short(value: Any, limit: int = 300) -> Any:
    if isinstance(value, str):
        return value if len(value) <= limit else value[: limit - 1] + "\u2026"
    if isinstance(value, dict):
        return {k: _short(v, limit) for k, v in list(value.items())[:12]}
    if isinstance(value, list):
        return [_short(v, limit) for v in value[:12]]
    return value


def build_facts(incident: dict[str, Any], timeline: list[dict[str, Any]],
                alerts: list[dict[str, Any]], telemetry: list[dict[str, Any]]) -> dict[str, Any]:
    """What the summary may say, as data: the model is handed nothing else."""
    events = [e for e in timeline if not is_own_update(e)]
    keep = ("number", "title", "description", "domain", "severity", "status", "opened_at",
            "acknowledged_at", "resolved_at", "closed_at", "asset_id", "zone_id")
    return {
        "incident": {k: _short(incident.get(k)) for k in keep if incident.get(k) is not None},
        "timeline": [{"at": e["created_at"], "kind": e["kind"], "body": _short(e["body"]),
                      "data": _short(e.get("data") or {}, 120)}
                     for e in events[-FACT_EVENTS:]],
        "timeline_events_total": len(events),
        "alerts": [_short(a, 200) for a in alerts],
        "telemetry": telemetry,
    }


def fingerprint(facts: dict[str, Any]) -> str:
    """Stable hash of the facts: equal facts, equal summary; no need to ask again."""
    return hashlib.sha256(orjson.dumps(facts, option=orjson.OPT_SORT_KEYS,
                                       default=str)).hexdigest()[:32]


# ---- nodes --------------------------------------------------------------------------------

async def gather(state: SummarizerState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    ctx = runtime.context
    incident_id = uuid.UUID(state["incident_id"])
    async with tenant_session(ctx.tenant_id) as s:
        incident = await incidents.require(session=s, tenant_id=ctx.tenant_id,
                                           incident_id=incident_id)
        events = (await s.execute(
            select(IncidentEvent).where(IncidentEvent.incident_id == incident.id,
                                        IncidentEvent.tenant_id == ctx.tenant_id)
            .order_by(IncidentEvent.created_at.desc(), IncidentEvent.id.desc())
            .limit(TIMELINE_LIMIT))).scalars().all()
        alerts = (await s.execute(
            select(Alert).where(Alert.incident_id == incident.id,
                                Alert.tenant_id == ctx.tenant_id)
            .order_by(Alert.fired_at).limit(50))).scalars().all()
        streams: dict[tuple[uuid.UUID, str | None], None] = {}
        for a in alerts:
            if a.asset_id is not None:
                streams[(a.asset_id, a.metric)] = None
        if incident.asset_id is not None and not any(k[0] == incident.asset_id for k in streams):
            streams[(incident.asset_id, None)] = None
        start = incident.opened_at - TELEMETRY_BEFORE
        end = incident.resolved_at or datetime.now(UTC)
        telemetry: list[dict[str, Any]] = []
        for asset_id, metric in list(streams)[:MAX_STREAMS]:
            q = (select(Telemetry.asset_id, Telemetry.metric, func.count(),
                        func.min(Telemetry.value), func.max(Telemetry.value),
                        func.avg(Telemetry.value), func.min(Telemetry.ts), func.max(Telemetry.ts))
                 .where(Telemetry.tenant_id == ctx.tenant_id, Telemetry.asset_id == asset_id,
                        Telemetry.ts >= start, Telemetry.ts <= end)
                 .group_by(Telemetry.asset_id, Telemetry.metric))
            if metric is not None:
                q = q.where(Telemetry.metric == metric)
            for row in (await s.execute(q)).all():
                telemetry.append({"asset_id": str(row[0]), "metric": row[1], "readings": row[2],
                                  "min": row[3], "max": row[4],
                                  "mean": round(float(row[5]), 6), "from": _iso(row[6]),
                                  "to": _iso(row[7])})
        snap = incidents.snapshot(incident)
        previous = dict((incident.properties or {}).get("ai_summary") or {})
    return {
        "incident": snap,
        "timeline": [incidents.event_snapshot(e) for e in reversed(events)],
        "alerts": [{"message": a.message, "severity": a.severity, "status": a.status,
                    "metric": a.metric, "value": a.value, "threshold": a.threshold,
                    "fired_at": _iso(a.fired_at), "resolved_at": _iso(a.resolved_at),
                    "condition": (a.data or {}).get("condition")} for a in alerts],
        "telemetry": telemetry,
        "previous": previous,
    }


async def analyse(state: SummarizerState) -> dict[str, Any]:
    f = build_facts(state["incident"], state["timeline"], state["alerts"], state["telemetry"])
    fp = fingerprint(f)
    changed = bool(state.get("force")) or fp != state.get("previous", {}).get("fingerprint")
    return {"facts": f, "fingerprint": fp, "changed": changed}


async def explain(state: SummarizerState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    ctx = runtime.context
    passages = await retrieve(ctx, str(state["incident"].get("title") or ""))
    e = await ask(ctx, task="Summarize this incident for the operators on duty.",
                  instructions=INSTRUCTIONS, facts=state["facts"], passages=passages,
                  max_tokens=350)
    return {"summary": e.text.strip(), "cited": e.cited,
            "explanation": {"text": e.text, **e.provenance(), "usage": e.usage}}


async def act(state: SummarizerState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    """Write the summary and its provenance in one incident update (one event, one audit)."""
    ctx = runtime.context
    ex = state["explanation"]
    async with tenant_session(ctx.tenant_id) as s:
        incident = await incidents.require(session=s, tenant_id=ctx.tenant_id,
                                           incident_id=uuid.UUID(state["incident_id"]))
        props = dict(incident.properties or {})
        props["ai_summary"] = {
            "fingerprint": state["fingerprint"], "model": ex.get("model"),
            "backend": ex.get("backend"), "mode": ex.get("mode"),
            "at": datetime.now(UTC).isoformat(), "events": len(state["timeline"]),
            "cited": state.get("cited", []), "trigger_event": state.get("trigger_event")}
        incident = await incidents.update(
            session=s, incident=incident, actor=ctx.actor,
            data=IncidentUpdate(summary=state["summary"][:20_000], properties=props))
        data = incidents.snapshot(incident)
    await relay.send(ctx.tenant_id, [Event(
        type="incident.updated", channel="incidents",
        data={**data, "incident_id": data["id"], "created": False, "origin": ORIGIN})])
    return {"written": True}


def _route(state: SummarizerState) -> str:
    return "explain" if state.get("changed") else END


def build_graph() -> Any:
    return four_step_graph(SummarizerState, gather=gather, analyse=analyse, explain=explain,
                           act=act, route=_route)


GRAPH = build_graph()


def result_of(state: SummarizerState, ctx: AgentContext) -> dict[str, Any]:
    ex = state.get("explanation")
    if ex is None:  # nothing new: the summary on record stands
        prev = state.get("previous") or {}
        ex = {"model": prev.get("model"), "backend": prev.get("backend"),
              "mode": prev.get("mode") or ctx.get_llm().mode}
    output = {"incident_id": state["incident_id"], "changed": bool(state.get("changed")),
              "written": bool(state.get("written")),
              "summary": state.get("summary") or state.get("incident", {}).get("summary"),
              "fingerprint": state.get("fingerprint"),
              "timeline_events": len(state.get("timeline", [])),
              "alerts": len(state.get("alerts", [])),
              "telemetry_streams": len(state.get("telemetry", []))}
    return {"output": output, "cited": state.get("cited", []), "model": ex.get("model"),
            "backend": ex.get("backend"), "mode": ex.get("mode")}


async def run(ctx: AgentContext, *, incident_id: uuid.UUID, force: bool = False,
              trigger_event: str | None = None,
              idempotency_key: str | None = None) -> RunResult:
    """Summarize (or re-summarize, when something changed or `force`) one incident."""
    inputs = {"incident_id": str(incident_id), "force": force, "trigger_event": trigger_event}

    async def invoke(c: AgentContext) -> dict[str, Any]:
        state = await GRAPH.ainvoke(SummarizerState(**inputs), context=c)  # type: ignore[typeddict-item]
        return result_of(state, c)

    return await run_agent(AGENT, ctx, invoke, inputs=inputs, subject_type="incident",
                           subject_id=str(incident_id), idempotency_key=idempotency_key)
