"""DataQualityAgent: explains what is wrong with a stream's data and what to do about it.

The graph reads the stream's recent readings from the telemetry table (it does not need
Ray: the same `QualityMonitor` the stream actors run is replayed over those rows, so the
flags match what the live actor raised), classifies the issue from the data itself
(stuck, gap, drift, reset, out_of_range, spike), proposes quarantine or recalibration,
asks the LLM to explain it with the tenant's procedures as quoted context, and opens a
`data_quality` incident once the issue persists (over `persist_checks` checks, or for
longer than `persist_s`). The incident's dedup key makes repeats update it.

    gather -> analyse -> (issue?) explain -> act
"""

from __future__ import annotations

import logging
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypedDict

import numpy as np
from langgraph.graph import END
from langgraph.runtime import Runtime
from sqlalchemy import select

from civitas_ray.ai.agents.base import AgentContext, RunResult, four_step_graph, run_agent
from civitas_ray.ai.agents.explain import ask, retrieve
from civitas_ray.ai.agents.models import AgentRun
from civitas_ray.assets.models import Asset
from civitas_ray.db.session import tenant_session
from civitas_ray.errors import NotFound
from civitas_ray.incidents import service as incidents
from civitas_ray.incidents.service import snapshot
from civitas_ray.realtime import relay
from civitas_ray.realtime.events import Event
from civitas_ray.streams.quality import FlagEvent, FlagId, MetricSpec, QualityMonitor
from civitas_ray.streams.timebase import US_PER_S, iso_one
from civitas_ray.telemetry.models import Telemetry

log = logging.getLogger(__name__)

AGENT = "data_quality"
INSTRUCTIONS = (
    "You review sensor data quality for a city control room. Explain in two or three "
    "sentences what the facts show is wrong with this stream, why the proposed action "
    "fits, and cite any procedure passage you rely on.")

# The order in which a current problem outranks another when several hold at once.
PRIORITY = ("stuck", "gap", "reset", "out_of_range", "drift", "spike")
PROPOSALS = {
    "stuck": ("quarantine", "Readings since the value froze are not measurements; hold "
                            "them out of aggregates and models until the sensor is checked."),
    "gap": ("inspect", "The stream is silent; check power and connectivity before trusting "
                       "aggregates over the gap."),
    "reset": ("recalibrate", "The register dropped: rebaseline consumption from the new "
                             "register value and confirm the meter was replaced or reset."),
    "out_of_range": ("quarantine", "Values outside the metric's physical range; hold them "
                                   "out until the sensor is checked."),
    "drift": ("recalibrate", "The level moved steadily away from its baseline; compare with "
                             "a reference instrument and recalibrate."),
    "spike": ("quarantine", "A single reading jumped and came back; drop that reading."),
}
SEVERITY = {"stuck": "major", "gap": "minor", "reset": "minor", "out_of_range": "major",
            "drift": "minor", "spike": "info"}


@dataclass(frozen=True, slots=True)
class DataQualityConfig:
    window_readings: int = 500  # newest readings judged per check
    persist_checks: int = 2  # consecutive checks with the same issue that open an incident
    persist_s: float = 3_600.0  # or an issue lasting this long
    lookback_s: float = 24 * 3_600.0  # prior checks counted within this window
    drift_min_readings: int = 48
    drift_rho: float = 0.5  # and a monotonic trend over the window (Spearman)


CONFIG = DataQualityConfig()


class DataQualityState(TypedDict, total=False):
    asset_id: str
    metric: str
    as_of: str | None
    # gather
    asset_name: str
    spec: dict[str, Any]
    ts_us: list[int]
    values: list[float]
    prior: list[str | None]  # issues found by earlier checks, newest first
    # analyse
    analysis: dict[str, Any]
    issue: str | None
    proposal: dict[str, Any] | None
    persistent: bool
    # explain
    explanation: dict[str, Any]
    cited: list[dict[str, Any]]
    # act
    incident: dict[str, Any] | None


def subject(asset_id: uuid.UUID | str, metric: str) -> str:
    return f"{asset_id}/{metric}"


# ---- pure analysis ------------------------------------------------------------------------

def median_interval_s(ts_us: np.ndarray) -> float | None:
    if ts_us.size < 3:
        return None
    d = np.diff(ts_us)
    d = d[d > 0]
    return float(np.median(d)) / US_PER_S if d.size else None


def _spearman(x: np.ndarray, y: np.ndarray) -> float:
    rx = np.argsort(np.argsort(x, kind="stable"), kind="stable").astype(float)
    ry = np.argsort(np.argsort(y, kind="stable"), kind="stable").astype(float)
    sx, sy = rx.std(), ry.std()
    if sx == 0 or sy == 0:
        return 0.0
    return float(((rx - rx.mean()) * (ry - ry.mean())).mean() / (sx * sy))


def drift(ts_us: np.ndarray, values: np.ndarray, cfg: DataQualityConfig) -> dict[str, Any] | None:
    """A steady move of the level out of its baseline range: the last quarter's median lies
    beyond every value of the first quarter, along a monotonic trend over the window (a
    daily cycle stays within its range, a step change has no steady trend)."""
    n = values.size
    if n < cfg.drift_min_readings:
        return None
    base, recent = values[: n // 4], values[-(n // 4):]
    level = float(np.median(recent))
    rho = _spearman(ts_us.astype(float), values)
    outside = level > float(base.max()) or level < float(base.min())
    shift = level - float(np.median(base))
    if not outside or abs(rho) < cfg.drift_rho or np.sign(rho) != np.sign(shift):
        return None
    mad = float(np.median(np.abs(base - np.median(base)))) * 1.4826
    return {"baseline_median": float(np.median(base)), "recent_median": level,
            "baseline_range": [float(base.min()), float(base.max())], "shift": shift,
            "shift_z": round(shift / mad, 3) if mad > 0 else None, "trend_rho": round(rho, 3),
            "since": iso_one(int(ts_us[n // 4]))}


def analyse_series(ts_us: np.ndarray, values: np.ndarray, spec: MetricSpec, *, now_us: int,
                   cfg: DataQualityConfig = CONFIG) -> dict[str, Any]:
    """Replay the stream's quality monitor over the readings and classify what it saw.

    Returns {"issue", "flags" (every raise, oldest first), "active", "evidence",
    "duration_s", "readings", "interval_s"}; `issue` is None when the data looks sound.
    """
    out: dict[str, Any] = {"readings": int(values.size), "interval_s": None, "flags": [],
                           "active": [], "issue": None, "evidence": {}, "duration_s": 0.0}
    if values.size == 0:
        return out
    order = np.argsort(ts_us, kind="stable")
    ts_us, values = ts_us[order], values[order]
    interval = median_interval_s(ts_us)
    out["interval_s"] = interval
    mon = QualityMonitor(spec)
    raised: list[FlagEvent] = []
    cleared: list[FlagEvent] = []
    upd = mon.update(ts_us, values, interval_s=interval)
    raised += upd.raised
    cleared += upd.cleared
    raised += mon.check_gap(now_us, interval_s=interval).raised
    out["flags"] = [e.to_dict() for e in raised]
    out["active"] = sorted(str(f) for f in mon.active)
    found: dict[str, dict[str, Any]] = {}

    def since_s(ev: FlagEvent, until_us: int) -> float:
        return round((until_us - ev.since_us) / US_PER_S, 3)

    for flag, name in ((FlagId.STUCK, "stuck"), (FlagId.GAP, "gap"),
                       (FlagId.OUT_OF_RANGE, "out_of_range")):
        if flag in mon.active:
            ev = mon.active[flag]
            found[name] = {**ev.to_dict(), "duration_s": since_s(ev, now_us)}
    resets = [e for e in raised if e.flag == FlagId.COUNTER_RESET]
    outcomes = {e.since_us: e.detail.get("outcome") for e in cleared
                if e.flag == FlagId.COUNTER_RESET}
    if resets:
        # "reset": the register restarted; "reverted": one bad reading, the register came
        # back; "pending": the next reading has not told yet.
        last = resets[-1]
        outcome = outcomes.get(last.since_us) or "pending"
        found["reset"] = {"count": len(resets), "last": last.to_dict(), "outcome": outcome,
                          "outcomes": [outcomes.get(e.since_us) or "pending" for e in resets],
                          # an event, not a state: it persists only by repeated checks
                          "age_s": since_s(last, now_us), "duration_s": 0.0}
    if not spec.cumulative:
        d = drift(ts_us, values, cfg)
        if d is not None:
            found["drift"] = {**d, "duration_s": round(
                (now_us - int(ts_us[values.size // 4])) / US_PER_S, 3)}
    spikes = [e for e in raised if e.flag == FlagId.SPIKE]
    if spikes:
        found["spike"] = {"count": len(spikes), "last": spikes[-1].to_dict(),
                          "duration_s": 0.0}
    for name in PRIORITY:
        if name in found:
            out["issue"] = name
            out["evidence"] = found[name]
            out["duration_s"] = float(found[name].get("duration_s") or 0.0)
            break
    out["also"] = sorted(set(found) - {out["issue"]})
    return out


def propose(issue: str | None, evidence: dict[str, Any]) -> dict[str, Any] | None:
    if issue is None:
        return None
    action, why = PROPOSALS[issue]
    if issue == "reset" and evidence.get("outcome") == "reverted":
        action, why = "quarantine", ("The register dropped for one reading and came back: "
                                     "drop that reading; consumption is measured across it.")
    out: dict[str, Any] = {"action": action, "why": why}
    if action == "quarantine":
        out["from"] = evidence.get("since") or (evidence.get("last") or {}).get("since")
        if issue == "reset":
            out["readings"] = [(evidence.get("last") or {}).get("since")]
    return out


def persists(issue: str | None, prior: list[str | None], duration_s: float,
             cfg: DataQualityConfig = CONFIG) -> bool:
    """The same issue over `persist_checks` consecutive checks (this one included), or
    lasting `persist_s` by the data itself."""
    if issue is None:
        return False
    streak = 1
    for earlier in prior:
        if earlier != issue:
            break
        streak += 1
    return streak >= cfg.persist_checks or duration_s >= cfg.persist_s


# ---- nodes --------------------------------------------------------------------------------

def _as_of(state: DataQualityState) -> datetime:
    raw = state.get("as_of")
    return datetime.fromisoformat(raw) if raw else datetime.now(UTC)


async def gather(state: DataQualityState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    ctx = runtime.context
    asset_id = uuid.UUID(state["asset_id"])
    metric = state["metric"]
    as_of = _as_of(state)
    async with tenant_session(ctx.tenant_id) as s:
        asset = (await s.execute(select(Asset).where(
            Asset.id == asset_id, Asset.tenant_id == ctx.tenant_id,
            Asset.deleted_at.is_(None)))).scalar_one_or_none()
        if asset is None:
            raise NotFound(f"Asset {asset_id} not found")
        rows = (await s.execute(
            select(Telemetry.ts, Telemetry.value).where(
                Telemetry.tenant_id == ctx.tenant_id, Telemetry.asset_id == asset_id,
                Telemetry.metric == metric, Telemetry.ts <= as_of)
            .order_by(Telemetry.ts.desc()).limit(CONFIG.window_readings))).all()
        since = datetime.now(UTC) - timedelta(seconds=CONFIG.lookback_s)
        prior = (await s.execute(
            select(AgentRun.output).where(
                AgentRun.tenant_id == ctx.tenant_id, AgentRun.agent == AGENT,
                AgentRun.subject_id == subject(asset_id, metric),
                AgentRun.status == "succeeded", AgentRun.created_at >= since)
            .order_by(AgentRun.created_at.desc()).limit(CONFIG.persist_checks + 5))).scalars()
        prior_issues = [(o or {}).get("issue") for o in prior]
    rows = rows[::-1]
    return {"asset_name": asset.name, "spec": dict((asset.metrics or {}).get(metric) or {}),
            "ts_us": [int(r.ts.timestamp() * US_PER_S) for r in rows],
            "values": [float(r.value) for r in rows], "prior": prior_issues}


async def analyse(state: DataQualityState) -> dict[str, Any]:
    ts = np.asarray(state["ts_us"], dtype=np.int64)
    vals = np.asarray(state["values"], dtype=np.float64)
    now_us = int(_as_of(state).timestamp() * US_PER_S)
    a = analyse_series(ts, vals, MetricSpec.from_dict(state.get("spec")), now_us=now_us)
    issue = a["issue"]
    return {"analysis": a, "issue": issue, "proposal": propose(issue, a["evidence"]),
            "persistent": persists(issue, state.get("prior") or [], a["duration_s"])}


def facts(state: DataQualityState) -> dict[str, Any]:
    a = state["analysis"]
    return {"asset": state.get("asset_name"), "asset_id": state["asset_id"],
            "metric": state["metric"], "issue": state.get("issue"),
            "evidence": a["evidence"], "other_issues": a.get("also", []),
            "readings_checked": a["readings"], "usual_interval_s": a["interval_s"],
            "proposal": state.get("proposal"), "persistent": state.get("persistent"),
            "earlier_checks": state.get("prior", [])[:5]}


async def explain(state: DataQualityState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    ctx = runtime.context
    issue = state.get("issue")
    passages = await retrieve(ctx, f"{issue} sensor {state['metric']} data quality procedure")
    e = await ask(ctx, task=f"Explain the {issue} data-quality issue on this stream and the "
                            f"proposed action.", instructions=INSTRUCTIONS,
                  facts=facts(state), passages=passages)
    return {"explanation": {"text": e.text, **e.provenance(), "usage": e.usage},
            "cited": e.cited}


async def act(state: DataQualityState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    """Open (or add to) the stream's data-quality incident once the issue persists."""
    if not state.get("persistent"):
        return {"incident": None}
    ctx = runtime.context
    issue = str(state.get("issue"))
    asset_id = uuid.UUID(state["asset_id"])
    title = f"Data quality: {issue} on {state.get('asset_name')} {state['metric']}"
    async with tenant_session(ctx.tenant_id) as s:
        incident, created = await incidents.open_or_update(
            session=s, tenant_id=ctx.tenant_id,
            dedup_key=f"dq:{asset_id}:{state['metric']}:{issue}", title=title,
            severity=SEVERITY[issue], domain="data_quality", source="agent", asset_id=asset_id,
            data={"agent": AGENT, "issue": issue, "evidence": state["analysis"]["evidence"],
                  "proposal": state.get("proposal"),
                  "explanation": (state.get("explanation") or {}).get("text", "")[:2000]},
            actor=ctx.actor)
        data = snapshot(incident)
    event = "incident.opened" if created else "incident.updated"
    await relay.send(ctx.tenant_id, [Event(type=event, channel="incidents",
                                           data={**data, "incident_id": data["id"],
                                                 "created": created, "origin": f"agent:{AGENT}"})])
    return {"incident": {"id": data["id"], "number": data["number"], "created": created}}


def _route(state: DataQualityState) -> str:
    return "explain" if state.get("issue") else END


def build_graph() -> Any:
    return four_step_graph(DataQualityState, gather=gather, analyse=analyse, explain=explain,
                           act=act, route=_route)


GRAPH = build_graph()


def unused_llm(ctx: AgentContext) -> dict[str, Any]:
    """Provenance of a run that needed no answer: the backend it would have asked."""
    llm = ctx.get_llm()
    return {"model": None, "backend": llm.name, "mode": llm.mode}


def result_of(state: DataQualityState, ctx: AgentContext) -> dict[str, Any]:
    """The recorded output: the finding, its evidence, the proposal and the provenance."""
    a = state.get("analysis") or {}
    ex = state.get("explanation") or unused_llm(ctx)
    output = {"asset_id": state["asset_id"], "metric": state["metric"],
              "issue": state.get("issue"), "evidence": a.get("evidence", {}),
              "other_issues": a.get("also", []), "active_flags": a.get("active", []),
              "flags": a.get("flags", [])[-20:], "readings": a.get("readings", 0),
              "proposal": state.get("proposal"), "persistent": bool(state.get("persistent")),
              "incident": state.get("incident"), "explanation": ex.get("text")}
    return {"output": output, "cited": state.get("cited", []), "model": ex.get("model"),
            "backend": ex.get("backend"), "mode": ex.get("mode")}


async def run(ctx: AgentContext, *, asset_id: uuid.UUID, metric: str,
              as_of: datetime | None = None, idempotency_key: str | None = None) -> RunResult:
    """Check one stream now (or as of a past instant) as a recorded, audited run."""
    inputs = {"asset_id": str(asset_id), "metric": metric,
              "as_of": as_of.isoformat() if as_of else None}

    async def invoke(c: AgentContext) -> dict[str, Any]:
        state = await GRAPH.ainvoke(DataQualityState(**inputs), context=c)  # type: ignore[typeddict-item]
        return result_of(state, c)

    return await run_agent(AGENT, ctx, invoke, inputs=inputs, subject_type="stream",
                           subject_id=subject(asset_id, metric), idempotency_key=idempotency_key)
