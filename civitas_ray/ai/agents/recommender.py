"""Recommender: forecasts, incidents and policy turned into ranked, explained recommendations.

The graph is gather -> candidates -> policy -> rank -> explain -> store. Candidates come
from rules over what was gathered (a crew for a severe open incident, pre-positioning
for a forecast that crosses a rule's threshold, a data-quality fix), never from the
model; each is checked with the PolicyComplianceAgent's graph, scored from severity,
forecast risk and the policy verdict, explained (model or extractive), then stored as
`recommendation` rows with their evidence, skipping any that repeats an open one.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta
from typing import Any, TypedDict, cast

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from sqlalchemy import or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from civitas_ray.ai.agents import policy
from civitas_ray.ai.agents.base import AgentContext, RunResult, run_agent
from civitas_ray.ai.llm.base import Passage
from civitas_ray.alerts.models import Alert, AlertRule
from civitas_ray.assets.models import Asset
from civitas_ray.db.session import tenant_session
from civitas_ray.errors import CivitasError, NotFound
from civitas_ray.incidents.models import Incident
from civitas_ray.recommendations import service as recommendations

log = logging.getLogger(__name__)

AGENT = "recommender"
OPEN_STATUSES = ("open", "acknowledged")
MAX_INCIDENTS = 25
MAX_ALERTS = 25
MAX_FORECASTS = 5
MAX_CANDIDATES = 8
FORECAST_HORIZON = timedelta(hours=24)
PEAK_RATIO = 1.3  # a forecast peak this far above its own mean is worth preparing for

SEVERITY_WEIGHT = {"critical": 1.0, "major": 0.75, "minor": 0.4, "info": 0.15}
KIND_PRIOR = {"dispatch_crew": 1.0, "preposition": 0.8, "data_quality_fix": 0.6,
              "assign_owner": 0.4}
POLICY_FACTOR = {"compliant": 1.0, "unclear": 0.85, "non_compliant": 0.4}
WEIGHTS = {"severity": 0.55, "forecast": 0.3, "kind": 0.15}

# The field work each incident domain calls for, worded as the policy check reads it: the
# work itself, in the words of street and public-space rules, not the incident's story.
_FIELD_WORK = {
    "mobility": "Place temporary barriers and close lanes of the public street to clear a "
                "traffic hazard",
    "utilities": "Make a cut or trench in the public street to repair a damaged water or gas "
                 "main",
    "infrastructure": "Remove the obstruction from the street and repair the damaged paving",
    "safety": "Secure the area and remove obstructions from the public street and sidewalks",
    "environment": "Contain the hazard in the public space and remove the material from the "
                   "street",
}
_DEFAULT_FIELD_WORK = "Send a field crew to assess and resolve the incident on site"


class RecommenderState(TypedDict, total=False):
    zone_id: str | None
    incident_id: str | None
    incidents: list[dict[str, Any]]
    alerts: list[dict[str, Any]]
    forecasts: list[dict[str, Any]]
    notes: list[str]
    candidates: list[dict[str, Any]]
    duplicates: list[str]
    ranked: list[dict[str, Any]]
    created: list[str]
    output: dict[str, Any]


# --- gather ----------------------------------------------------------------------------

def _incident_doc(i: Incident) -> dict[str, Any]:
    return {"id": str(i.id), "number": i.number, "title": i.title, "domain": i.domain,
            "severity": i.severity, "status": i.status,
            "zone_id": str(i.zone_id) if i.zone_id else None,
            "asset_id": str(i.asset_id) if i.asset_id else None,
            "assignee_id": str(i.assignee_id) if i.assignee_id else None,
            "opened_at": i.opened_at.isoformat()}


async def _incidents(s: AsyncSession, tenant_id: uuid.UUID, zone_id: uuid.UUID | None,
                     incident_id: uuid.UUID | None) -> list[Incident]:
    q = select(Incident).where(Incident.tenant_id == tenant_id, Incident.deleted_at.is_(None))
    if incident_id is not None:
        q = q.where(Incident.id == incident_id)
    else:
        q = q.where(Incident.status.in_(OPEN_STATUSES))
        if zone_id is not None:
            q = q.where(Incident.zone_id == zone_id)
    rows = (await s.execute(q.order_by(Incident.opened_at.desc()).limit(MAX_INCIDENTS))).scalars()
    return list(rows)


async def _alerts(s: AsyncSession, tenant_id: uuid.UUID,
                  zone_id: uuid.UUID | None) -> list[dict[str, Any]]:
    q = (select(Alert, AlertRule.condition).outerjoin(AlertRule, AlertRule.id == Alert.rule_id)
         .where(Alert.tenant_id == tenant_id, Alert.status == "firing"))
    if zone_id is not None:
        in_zone = select(Asset.id).where(Asset.tenant_id == tenant_id, Asset.zone_id == zone_id)
        q = q.where((Alert.zone_id == zone_id) | Alert.asset_id.in_(in_zone))
    rows = (await s.execute(q.order_by(Alert.fired_at.desc()).limit(MAX_ALERTS))).all()
    return [{"id": str(a.id), "dedup_key": a.dedup_key, "severity": a.severity,
             "metric": a.metric, "message": a.message, "value": a.value,
             "asset_id": str(a.asset_id) if a.asset_id else None,
             "zone_id": str(a.zone_id) if a.zone_id else None,
             "incident_id": str(a.incident_id) if a.incident_id else None,
             "condition_type": (cond or {}).get("type"), "fired_at": a.fired_at.isoformat()}
            for a, cond in rows]


def first_crossing(points: list[dict[str, Any]], op: str,
                   threshold: float) -> dict[str, Any] | None:
    """The first forecast point on the wrong side of a rule's threshold."""
    compare = {">": float.__gt__, ">=": float.__ge__, "<": float.__lt__, "<=": float.__le__}
    fn = compare.get(op)
    if fn is None:
        return None
    for p in points:
        if fn(float(p["value"]), float(threshold)):
            return p
    return None


def forecast_risk(points: list[dict[str, Any]],
                  rules: list[dict[str, Any]]) -> dict[str, Any]:
    """Risk in [0, 1] of one forecast: 1 when it crosses a rule's threshold (sooner is not
    scored higher: within the horizon is what counts), else how far its peak stands above
    its own mean, or 0 for a flat forecast."""
    values = [float(p["value"]) for p in points]
    if not values:
        return {"risk": 0.0}
    peak_at = max(range(len(values)), key=values.__getitem__)
    mean = sum(values) / len(values)
    out: dict[str, Any] = {"peak": {"ts": points[peak_at]["ts"], "value": values[peak_at]},
                           "mean": mean, "risk": 0.0}
    for rule in rules:
        cond = rule.get("condition") or {}
        if cond.get("type") not in ("threshold", "forecast") or "threshold" not in cond:
            continue
        hit = first_crossing(points, str(cond.get("op", ">")), float(cond["threshold"]))
        if hit is not None:
            out.update(risk=1.0, crossing={"rule_id": rule["id"], "rule": rule["name"],
                                           "op": cond.get("op", ">"),
                                           "threshold": float(cond["threshold"]),
                                           "ts": hit["ts"], "value": float(hit["value"])})
            return out
    if mean > 0 and values[peak_at] / mean >= PEAK_RATIO:
        out["risk"] = round(min(1.0, (values[peak_at] / mean - 1.0) / 2.0) * 0.6, 4)
    return out


async def _forecasts(s: AsyncSession, tenant_id: uuid.UUID, zone_id: uuid.UUID | None,
                     notes: list[str]) -> list[dict[str, Any]]:
    """Forecasts of the production zone and stream models in scope, with their risk."""
    try:
        from civitas_ray.ml import data, forecasts
        from civitas_ray.ml.registry_models import ModelVersion
    except ImportError as exc:  # the `ml` extra is optional
        notes.append(f"forecasts unavailable: {exc}")
        return []
    q = select(ModelVersion).where(ModelVersion.tenant_id == tenant_id,
                                   ModelVersion.stage == "production")
    if zone_id is not None:
        assets = [str(a) for a in (await s.execute(select(Asset.id).where(
            Asset.tenant_id == tenant_id, Asset.zone_id == zone_id))).scalars()]
        keys = [ModelVersion.subject_key.startswith(f"zone:{zone_id}:")]
        keys += [ModelVersion.subject_key.startswith(f"asset:{a}:") for a in assets]
        q = q.where(or_(*keys))
    rows = list((await s.execute(q.order_by(ModelVersion.promoted_at.desc())
                                 .limit(MAX_FORECASTS))).scalars())
    out: list[dict[str, Any]] = []
    for row in rows:
        subj = row.subject or {}
        try:
            subject = data.Subject.of(
                asset_id=uuid.UUID(subj["asset_id"]) if subj.get("asset_id") else None,
                zone_id=uuid.UUID(subj["zone_id"]) if subj.get("zone_id") else None,
                metric=str(subj.get("metric")))
            fc = await forecasts.forecast(s, tenant_id, subject, horizon=FORECAST_HORIZON)
        except (CivitasError, KeyError, ValueError) as exc:
            notes.append(f"no forecast for {row.subject_key}: {exc}")
            continue
        rq = select(AlertRule).where(AlertRule.tenant_id == tenant_id,
                                     AlertRule.deleted_at.is_(None),
                                     AlertRule.enabled.is_(True),
                                     AlertRule.metric == subject.metric)
        rq = rq.where(AlertRule.zone_id == subject.zone_id if subject.zone_id
                      else AlertRule.asset_id == subject.asset_id)
        rules = [{"id": str(r.id), "name": r.name, "condition": r.condition}
                 for r in (await s.execute(rq)).scalars()]
        points = [{"ts": p["ts"].isoformat() if isinstance(p["ts"], datetime) else str(p["ts"]),
                   "value": float(p["value"]), "lower": float(p["lower"]),
                   "upper": float(p["upper"])} for p in fc["points"]]
        out.append({"subject_key": subject.key, "metric": subject.metric,
                    "zone_id": str(subject.zone_id) if subject.zone_id else None,
                    "asset_id": str(subject.asset_id) if subject.asset_id else None,
                    "model": fc["model"], "version": fc["version"],
                    "model_version_id": str(fc["model_version_id"]),
                    "served_by": fc["served_by"], "points": points,
                    **forecast_risk(points, rules)})
    return out


async def gather(state: RecommenderState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    ctx = runtime.context
    zone_id = uuid.UUID(state["zone_id"]) if state.get("zone_id") else None
    incident_id = uuid.UUID(state["incident_id"]) if state.get("incident_id") else None
    notes: list[str] = []
    async with tenant_session(ctx.tenant_id) as s:
        incidents = await _incidents(s, ctx.tenant_id, zone_id, incident_id)
        if incident_id is not None:
            if not incidents:
                raise NotFound(f"Incident {incident_id} not found")
            zone_id = incidents[0].zone_id
        alerts = await _alerts(s, ctx.tenant_id, zone_id)
        if incident_id is not None:
            alerts = [a for a in alerts if a["incident_id"] == str(incident_id)]
        fcs = [] if incident_id is not None and zone_id is None else await _forecasts(
            s, ctx.tenant_id, zone_id, notes)
    return {"incidents": [_incident_doc(i) for i in incidents], "alerts": alerts,
            "forecasts": fcs, "notes": notes,
            "zone_id": str(zone_id) if zone_id else state.get("zone_id")}


# --- candidates ------------------------------------------------------------------------

def _where(incident: dict[str, Any]) -> str:
    return f"incident #{incident['number']} ({incident['title']})"


def propose(*, incidents: list[dict[str, Any]], alerts: list[dict[str, Any]],
            forecasts: list[dict[str, Any]], zone_id: str | None) -> list[dict[str, Any]]:
    """Rule-based candidate actions, each with its dedup key, action text and evidence."""
    out: list[dict[str, Any]] = []
    covered_alerts: set[str] = set()
    for inc in incidents:
        sev = inc["severity"]
        alert_ids = [a["id"] for a in alerts if a["incident_id"] == inc["id"]]
        covered_alerts.update(alert_ids)
        base = {"incident_id": inc["id"], "zone_id": inc["zone_id"] or zone_id,
                "severity": sev, "forecast_risk": 0.0,
                "evidence": {"incident_ids": [inc["id"]], "incident": inc,
                             "alert_ids": alert_ids}}
        if inc["domain"] == "data_quality":
            out.append({**base, "kind": "data_quality_fix",
                        "key": f"data_quality_fix:incident:{inc['id']}",
                        "title": f"Inspect and recalibrate the sensor behind {_where(inc)}",
                        "action": f"Send a technician to inspect and recalibrate the sensor "
                                  f"of {_where(inc)} and quarantine its readings until fixed"})
        elif sev in ("critical", "major"):
            out.append({**base, "kind": "dispatch_crew",
                        "key": f"dispatch_crew:incident:{inc['id']}",
                        "title": f"Dispatch a field crew to {_where(inc)}"[:300],
                        "action": _FIELD_WORK.get(inc["domain"], _DEFAULT_FIELD_WORK)})
        elif sev == "minor" and not inc["assignee_id"]:
            out.append({**base, "kind": "assign_owner",
                        "key": f"assign_owner:incident:{inc['id']}",
                        "title": f"Assign an operator to {_where(inc)}"[:300],
                        "action": f"Assign an operator to follow up {_where(inc)}"})
    for a in alerts:
        if a["condition_type"] == "data_quality" and a["id"] not in covered_alerts:
            subject = a["asset_id"] or a["zone_id"] or a["dedup_key"]
            out.append({"kind": "data_quality_fix",
                        "key": f"data_quality_fix:alert:{a['dedup_key']}", "incident_id": None,
                        "zone_id": a["zone_id"] or zone_id,
                        "severity": a["severity"], "forecast_risk": 0.0,
                        "title": f"Check the data quality of {a['metric'] or 'the stream'} "
                                 f"from {subject}"[:300],
                        "action": f"Send a technician to inspect the sensor {subject} and "
                                  f"quarantine its {a['metric'] or ''} readings until fixed",
                        "evidence": {"incident_ids": [], "alert_ids": [a["id"]], "alert": a}})
    for fc in forecasts:
        if fc.get("risk", 0.0) <= 0.0:
            continue
        crossing = fc.get("crossing")
        peak = crossing or fc["peak"]
        where = f"zone {fc['zone_id']}" if fc.get("zone_id") else f"asset {fc['asset_id']}"
        what = (f"{fc['metric']} forecast to cross {crossing['op']} {crossing['threshold']:g} "
                f"at {crossing['ts']}" if crossing
                else f"{fc['metric']} forecast to peak at {peak['value']:.4g} at {peak['ts']}")
        out.append({"kind": "preposition", "key": f"preposition:{fc['subject_key']}",
                    "incident_id": None, "zone_id": fc.get("zone_id") or zone_id,
                    "severity": "major" if crossing else "minor",
                    "forecast_risk": float(fc["risk"]),
                    "title": f"Pre-position crews for {where}: {what}"[:300],
                    "action": f"Pre-position a field crew and temporary traffic control "
                              f"equipment near {where} ahead of the forecast peak of "
                              f"{fc['metric']}",
                    "evidence": {"incident_ids": [], "alert_ids": [], "forecast": {
                        k: fc[k] for k in ("subject_key", "model", "version",
                                           "model_version_id", "served_by", "peak", "mean",
                                           "risk") if k in fc}
                        | {"crossing": crossing, "points": fc["points"][:48]}}})
    return out


def prescore(c: dict[str, Any]) -> float:
    return (WEIGHTS["severity"] * SEVERITY_WEIGHT.get(c["severity"], 0.15)
            + WEIGHTS["forecast"] * c["forecast_risk"]
            + WEIGHTS["kind"] * KIND_PRIOR.get(c["kind"], 0.3))


async def candidates(state: RecommenderState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    ctx = runtime.context
    proposed = propose(incidents=state.get("incidents") or [], alerts=state.get("alerts") or [],
                       forecasts=state.get("forecasts") or [], zone_id=state.get("zone_id"))
    async with tenant_session(ctx.tenant_id) as s:
        open_rows = await recommendations.open_by_key(
            session=s, tenant_id=ctx.tenant_id, keys=[c["key"] for c in proposed])
    fresh = [c for c in proposed if c["key"] not in open_rows]
    fresh.sort(key=lambda c: (-prescore(c), c["key"]))
    return {"candidates": fresh[:MAX_CANDIDATES],
            "duplicates": [str(r.id) for r in open_rows.values()]}


# --- policy, rank, explain, store ------------------------------------------------------

async def check_policy(state: RecommenderState,
                       runtime: Runtime[AgentContext]) -> dict[str, Any]:
    """Each candidate through the PolicyComplianceAgent's own graph."""
    ctx = runtime.context
    checked: list[dict[str, Any]] = []
    for c in state.get("candidates") or []:
        incident = (c.get("evidence") or {}).get("incident")
        final = await policy.GRAPH.ainvoke({"action": c["action"], "incident": incident},
                                           context=ctx)
        out = final["output"]
        relied = {p.id: p for p in final.get("passages") or []
                  if p.id in set(final.get("relied_on") or [])}
        checked.append({**c, "policy": {k: out[k] for k in (
            "verdict", "rationale", "citations", "model", "mode", "judged_by")},
            "passages": list(relied.values())})
    return {"candidates": checked}


def score(c: dict[str, Any]) -> tuple[float, dict[str, float]]:
    """Severity, forecast risk and kind, weighted, then scaled by the policy verdict."""
    parts = {"severity": SEVERITY_WEIGHT.get(c["severity"], 0.15),
             "forecast": float(c["forecast_risk"]), "kind": KIND_PRIOR.get(c["kind"], 0.3)}
    base = sum(WEIGHTS[k] * v for k, v in parts.items())
    factor = POLICY_FACTOR.get(c.get("policy", {}).get("verdict", "unclear"), 0.85)
    parts["policy_factor"] = factor
    return round(base * factor, 4), parts


def rank_candidates(cands: list[dict[str, Any]]) -> list[dict[str, Any]]:
    ranked = []
    for c in cands:
        s, parts = score(c)
        ranked.append({**c, "score": s, "score_parts": parts})
    ranked.sort(key=lambda c: (-c["score"], c["key"]))
    for i, c in enumerate(ranked, start=1):
        c["rank"] = i
    return ranked


async def rank(state: RecommenderState) -> dict[str, Any]:
    return {"ranked": rank_candidates(state.get("candidates") or [])}


_EXPLAIN = ("Explain to a control-room operator, in two or three sentences, why the "
            "recommended action is worth taking now, using the facts and citing the policy "
            "passages as [id]. Do not invent facts.")


def _reason(c: dict[str, Any]) -> str:
    parts = []
    inc = (c.get("evidence") or {}).get("incident")
    if inc:
        parts.append(f"Incident #{inc['number']} is {inc['severity']} and {inc['status']}.")
    fc = (c.get("evidence") or {}).get("forecast")
    if fc and fc.get("crossing"):
        x = fc["crossing"]
        parts.append(f"The {fc['model']} v{fc['version']} forecast crosses rule "
                     f"'{x['rule']}' ({x['op']} {x['threshold']:g}) at {x['ts']}.")
    elif fc:
        parts.append(f"The {fc['model']} v{fc['version']} forecast peaks at "
                     f"{fc['peak']['value']:.4g} at {fc['peak']['ts']}.")
    pol = c["policy"]
    sections = ", ".join(str(x.get("section_id")) for x in pol["citations"]) or "no passage"
    parts.append(f"Policy check: {pol['verdict']} ({sections}).")
    return " ".join(parts)


async def explain(state: RecommenderState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    llm = runtime.context.get_llm()
    out = []
    for c in state.get("ranked") or []:
        facts = {"recommendation": c["title"], "kind": c["kind"], "severity": c["severity"],
                 "score": c["score"], "policy_verdict": c["policy"]["verdict"]}
        ev = c.get("evidence") or {}
        if ev.get("incident"):
            facts["incident"] = {k: ev["incident"][k] for k in
                                 ("number", "title", "domain", "severity", "status")}
        if ev.get("forecast"):
            facts["forecast"] = {k: ev["forecast"].get(k) for k in ("model", "peak", "crossing")}
        passages: list[Passage] = c.get("passages") or []
        completion = await llm.complete(f"Why should operators: {c['title']}?",
                                        instructions=_EXPLAIN, passages=passages,
                                        facts=facts, max_tokens=200)
        model = completion.model if completion.mode == "generative" else completion.backend
        out.append({**c, "body": f"{_reason(c)}\n\n{completion.text.strip()}",
                    "explained_by": {"model": model, "backend": completion.backend,
                                     "mode": completion.mode,
                                     "cited": list(completion.cited)}})
    return {"ranked": out}


async def store(state: RecommenderState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    """Insert the ranked rows, re-checking open duplicates under per-key locks."""
    ctx = runtime.context
    ranked = state.get("ranked") or []
    created: list[str] = []
    duplicates = list(state.get("duplicates") or [])
    async with tenant_session(ctx.tenant_id) as s:
        taken = await recommendations.open_by_key(session=s, tenant_id=ctx.tenant_id,
                                                  keys=[c["key"] for c in ranked])
        rank_no = 0
        for c in ranked:
            if c["key"] in taken:
                duplicates.append(str(taken[c["key"]].id))
                continue
            rank_no += 1
            evidence = {**(c.get("evidence") or {}), "kind": c["kind"], "key": c["key"],
                        "action": c["action"], "score_parts": c["score_parts"],
                        "policy": c["policy"], "explained_by": c["explained_by"],
                        "agent": AGENT}
            row = await recommendations.create(
                session=s, tenant_id=ctx.tenant_id, title=c["title"], body=c["body"],
                rank=rank_no, score=c["score"], evidence=evidence,
                model=c["explained_by"]["model"],
                incident_id=uuid.UUID(c["incident_id"]) if c.get("incident_id") else None,
                zone_id=uuid.UUID(c["zone_id"]) if c.get("zone_id") else None,
                actor=ctx.actor)
            created.append(str(row.id))
    return {"created": created, "duplicates": list(dict.fromkeys(duplicates))}


async def finish(state: RecommenderState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    llm = runtime.context.get_llm()
    ranked = state.get("ranked") or []
    cited: dict[tuple[Any, ...], dict[str, Any]] = {}
    for c in ranked:
        for x in c["policy"]["citations"]:
            cited.setdefault((x.get("document_id"), x.get("section_id"), x.get("char_start")),
                             {k: v for k, v in x.items() if k != "quote"})
    models = [c["explained_by"] for c in ranked]
    first = models[0] if models else {"model": llm.name if llm.mode == "extractive"
                                      else None, "backend": llm.name, "mode": llm.mode}
    output = {"created": state.get("created") or [], "duplicates": state.get("duplicates") or [],
              "candidates": len(ranked), "incidents": len(state.get("incidents") or []),
              "alerts": len(state.get("alerts") or []),
              "forecasts": [{k: f.get(k) for k in ("subject_key", "model", "version", "risk")}
                            for f in state.get("forecasts") or []],
              "notes": state.get("notes") or [], "scope": {
                  "zone_id": state.get("zone_id"), "incident_id": state.get("incident_id")},
              "model": first["model"], "backend": first["backend"], "mode": first["mode"],
              "cited": list(cited.values())}
    return {"output": output}


def build_graph() -> Any:
    g: StateGraph[RecommenderState, AgentContext, RecommenderState, RecommenderState] = (
        StateGraph(RecommenderState, context_schema=AgentContext))
    for name, fn in (("gather", gather), ("candidates", candidates), ("policy", check_policy),
                     ("rank", rank), ("explain", explain), ("store", store),
                     ("finish", finish)):
        g.add_node(name, fn)
    g.add_edge(START, "gather")
    for a, b in (("gather", "candidates"), ("candidates", "policy"), ("policy", "rank"),
                 ("rank", "explain"), ("explain", "store"), ("store", "finish")):
        g.add_edge(a, b)
    g.add_edge("finish", END)
    return g.compile()


GRAPH = build_graph()


async def run(ctx: AgentContext, *, zone_id: uuid.UUID | None = None,
              incident_id: uuid.UUID | None = None,
              idempotency_key: str | None = None) -> RunResult:
    """One recorded, audited recommender run over an incident, a zone or the tenant."""
    if zone_id is not None and incident_id is not None:
        raise ValueError("give zone_id or incident_id, not both")

    async def invoke(c: AgentContext) -> dict[str, Any]:
        final = await GRAPH.ainvoke({"zone_id": str(zone_id) if zone_id else None,
                                     "incident_id": str(incident_id) if incident_id else None},
                                    context=c)
        out = cast(dict[str, Any], final["output"])
        return {"output": out, "cited": out["cited"], "model": out["model"],
                "backend": out["backend"], "mode": out["mode"]}

    subject_type, subject_id = (("incident", str(incident_id)) if incident_id else
                                ("zone", str(zone_id)) if zone_id else (None, None))
    return await run_agent(AGENT, ctx, invoke,
                           inputs={"zone_id": str(zone_id) if zone_id else None,
                                   "incident_id": str(incident_id) if incident_id else None},
                           subject_type=subject_type, subject_id=subject_id,
                           idempotency_key=idempotency_key)


__all__ = ["AGENT", "GRAPH", "first_crossing", "forecast_risk", "propose", "rank_candidates",
           "run", "score"]
