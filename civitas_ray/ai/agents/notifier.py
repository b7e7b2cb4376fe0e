"""Notifier: decides who must know about an incident, and tells them once.

Who: the tenant's routing rules (roles by severity, domain and zone) from
`tenant.settings["notifications"]`, narrowed by each user's preferences (zones, minimum
severity, quiet hours, channels) kept in the same document under `users.<user id>`;
no migration needed. Quiet hours hold back everything below `override_severity`.
Escalation: an incident still `open` (unacknowledged) `escalate_after_s` after it
opened reaches the next role of the `escalation` chain, one more per period. Repeats:
one notification per incident, recipient and severity within `dedup_window_s`, claimed
atomically in Redis (SET NX), so concurrent runs never both send.

    gather -> analyse -> (anyone?) explain (the message) -> act (send through channels)
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime, time
from typing import Any, TypedDict
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from langgraph.graph import END
from langgraph.runtime import Runtime
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from sqlalchemy import select

from civitas_ray.ai.agents.base import AgentContext, RunResult, four_step_graph, run_agent
from civitas_ray.ai.agents.explain import ask
from civitas_ray.auth.models import AppUser
from civitas_ray.cache import get_redis
from civitas_ray.db.session import tenant_session
from civitas_ray.errors import ValidationFailed
from civitas_ray.incidents import service as incidents
from civitas_ray.incidents.schemas import SEVERITY_RANK, IncidentSeverity
from civitas_ray.notifications.channels import (
    DEFAULT_CHANNELS,
    Notification,
    get_channel,
    known_channels,
)
from civitas_ray.tenants.models import Tenant

log = logging.getLogger(__name__)

AGENT = "notifier"
INSTRUCTIONS = (
    "You write notifications for city control-room staff. In one or two sentences say what "
    "the incident is, how severe, where, and what is expected of the reader. Use only the "
    "facts given.")


class QuietHours(BaseModel):
    model_config = ConfigDict(extra="forbid")

    start: time
    end: time
    tz: str = "UTC"
    override_severity: IncidentSeverity = IncidentSeverity.CRITICAL

    @field_validator("tz")
    @classmethod
    def _known_tz(cls, v: str) -> str:
        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {v!r}") from None
        return v

    def holds(self, now: datetime) -> bool:
        local = now.astimezone(ZoneInfo(self.tz)).time()
        if self.start <= self.end:
            return self.start <= local < self.end
        return local >= self.start or local < self.end  # spans midnight


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")

    roles: list[str] = Field(min_length=1)
    min_severity: IncidentSeverity = IncidentSeverity.MINOR
    domains: list[str] | None = None
    zones: list[uuid.UUID] | None = None

    def matches(self, incident: dict[str, Any]) -> bool:
        if SEVERITY_RANK[incident["severity"]] < SEVERITY_RANK[self.min_severity]:
            return False
        if self.domains is not None and incident.get("domain") not in self.domains:
            return False
        zone = incident.get("zone_id")
        return self.zones is None or (zone is not None and uuid.UUID(str(zone)) in self.zones)


class UserPreference(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mute: bool = False
    min_severity: IncidentSeverity | None = None
    zones: list[uuid.UUID] | None = None
    quiet_hours: QuietHours | None = None
    channels: list[str] | None = None


class NotifyPolicy(BaseModel):
    """`tenant.settings["notifications"]`; every field has a working default."""

    model_config = ConfigDict(extra="forbid")

    rules: list[Rule] = Field(default_factory=lambda: [
        Rule(roles=["operator"], min_severity=IncidentSeverity.MINOR),
        Rule(roles=["tenant_admin"], min_severity=IncidentSeverity.MAJOR),
        Rule(roles=["analyst"], min_severity=IncidentSeverity.MINOR, domains=["data_quality"]),
    ])
    quiet_hours: QuietHours | None = None
    dedup_window_s: int = Field(1_800, ge=0, le=7 * 86_400)
    escalate_after_s: int = Field(900, ge=60)
    escalation: list[str] = Field(default_factory=lambda: ["operator", "tenant_admin"])
    channels: list[str] = Field(default_factory=lambda: list(DEFAULT_CHANNELS))
    users: dict[uuid.UUID, UserPreference] = Field(default_factory=dict)

    @field_validator("channels")
    @classmethod
    def _known_channels(cls, v: list[str]) -> list[str]:
        unknown = sorted(set(v) - set(known_channels()))
        if unknown:
            raise ValueError(f"unknown channel(s) {unknown}; known: {known_channels()}")
        return v


def load_policy(settings: dict[str, Any] | None) -> NotifyPolicy:
    try:
        return NotifyPolicy.model_validate((settings or {}).get("notifications") or {})
    except ValidationError as exc:
        raise ValidationFailed(
            "The tenant's notification settings are invalid; nobody was notified",
            errors=[{"loc": ["settings", "notifications", *e["loc"]], "msg": e["msg"]}
                    for e in exc.errors()]) from None


def escalation_level(incident: dict[str, Any], policy: NotifyPolicy, now: datetime) -> int:
    """0 while acknowledged or young; +1 per `escalate_after_s` an open incident waits."""
    if incident.get("status") != "open" or len(policy.escalation) < 2:
        return 0
    opened = datetime.fromisoformat(str(incident["opened_at"]))
    waited = (now - opened).total_seconds()
    return max(0, min(int(waited // policy.escalate_after_s), len(policy.escalation) - 1))


def dedup_key(tenant_id: uuid.UUID | str, incident_id: str, user_id: str, severity: str) -> str:
    return f"civitas:{tenant_id}:notify:{incident_id}:{user_id}:{severity}"


def decide(incident: dict[str, Any], users: list[dict[str, Any]], policy: NotifyPolicy,
           now: datetime, *, already: set[str] | frozenset[str] = frozenset(),
           ) -> list[dict[str, Any]]:
    """One decision per candidate user: `status` send | quiet | muted | filtered | duplicate.

    Pure: `already` lists users notified within the dedup window (read by `gather`).
    """
    sev = str(incident["severity"])
    level = escalation_level(incident, policy, now)
    reasons: dict[str, str] = {}
    for rule in policy.rules:
        if rule.matches(incident):
            for role in rule.roles:
                reasons.setdefault(role, "rule")
    for i, role in enumerate(policy.escalation[1: level + 1], start=1):
        reasons.setdefault(role, f"escalation:{i}")
    zone = incident.get("zone_id")
    out: list[dict[str, Any]] = []
    for u in users:
        reason = reasons.get(u["role"])
        if reason is None:
            continue
        pref = policy.users.get(uuid.UUID(str(u["id"]))) or UserPreference()
        d = {"user_id": str(u["id"]), "email": u["email"], "role": u["role"], "reason": reason,
             "channels": pref.channels or policy.channels, "status": "send", "why": None}
        quiet = pref.quiet_hours or policy.quiet_hours
        if pref.mute:
            d.update(status="muted", why="the user muted notifications")
        elif pref.min_severity and SEVERITY_RANK[sev] < SEVERITY_RANK[pref.min_severity]:
            d.update(status="filtered", why=f"below the user's minimum {pref.min_severity}")
        elif pref.zones is not None and (zone is None or uuid.UUID(str(zone)) not in pref.zones):
            d.update(status="filtered", why="outside the user's zones")
        elif quiet is not None and quiet.holds(now) \
                and SEVERITY_RANK[sev] < SEVERITY_RANK[quiet.override_severity]:
            d.update(status="quiet", why=f"quiet hours; only {quiet.override_severity} and "
                                         "above get through")
        elif str(u["id"]) in already:
            d.update(status="duplicate", why="already notified within the dedup window")
        out.append(d)
    return out


class NotifierState(TypedDict, total=False):
    incident_id: str
    now: str | None
    # gather
    incident: dict[str, Any]
    policy: dict[str, Any]
    users: list[dict[str, Any]]
    already: list[str]
    # analyse
    decisions: list[dict[str, Any]]
    escalation_level: int
    # explain
    message: str
    explanation: dict[str, Any]
    cited: list[dict[str, Any]]
    # act
    sent: list[dict[str, Any]]


def _now(state: NotifierState) -> datetime:
    raw = state.get("now")
    return datetime.fromisoformat(raw) if raw else datetime.now(UTC)


async def gather(state: NotifierState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    ctx = runtime.context
    async with tenant_session(ctx.tenant_id) as s:
        incident = await incidents.require(session=s, tenant_id=ctx.tenant_id,
                                           incident_id=uuid.UUID(state["incident_id"]))
        tenant = (await s.execute(select(Tenant).where(Tenant.id == ctx.tenant_id))).scalar_one()
        policy = load_policy(tenant.settings)
        users = (await s.execute(select(AppUser.id, AppUser.email, AppUser.role).where(
            AppUser.tenant_id == ctx.tenant_id, AppUser.deleted_at.is_(None),
            AppUser.is_active.is_(True)).order_by(AppUser.email))).all()
        snap = incidents.snapshot(incident)
    user_rows = [{"id": str(u.id), "email": u.email, "role": u.role} for u in users]
    already: list[str] = []
    if user_rows and policy.dedup_window_s:
        keys = [dedup_key(ctx.tenant_id, str(snap["id"]), u["id"], str(snap["severity"]))
                for u in user_rows]
        found = await get_redis().mget(keys)
        already = [u["id"] for u, hit in zip(user_rows, found, strict=True) if hit is not None]
    return {"incident": snap, "policy": policy.model_dump(mode="json"), "users": user_rows,
            "already": already}


async def analyse(state: NotifierState) -> dict[str, Any]:
    policy = NotifyPolicy.model_validate(state["policy"])
    now = _now(state)
    return {"decisions": decide(state["incident"], state["users"], policy, now,
                                already=set(state.get("already") or [])),
            "escalation_level": escalation_level(state["incident"], policy, now)}


def message_facts(incident: dict[str, Any]) -> dict[str, Any]:
    keep = ("number", "title", "severity", "status", "domain", "opened_at", "zone_id",
            "asset_id", "summary")
    return {k: incident[k] for k in keep if incident.get(k) is not None}


async def explain(state: NotifierState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    e = await ask(runtime.context, task="Write the notification for this incident.",
                  instructions=INSTRUCTIONS, facts=message_facts(state["incident"]),
                  max_tokens=120)
    return {"message": e.text.strip(), "cited": e.cited,
            "explanation": {"text": e.text, **e.provenance(), "usage": e.usage}}


async def act(state: NotifierState, runtime: Runtime[AgentContext]) -> dict[str, Any]:
    """Claim each recipient's dedup key, then send through the recipient's channels."""
    ctx = runtime.context
    policy = NotifyPolicy.model_validate(state["policy"])
    inc = state["incident"]
    redis = get_redis()
    decisions = [dict(d) for d in state["decisions"]]
    for d in decisions:
        if d["status"] != "send":
            continue
        if policy.dedup_window_s:
            key = dedup_key(ctx.tenant_id, str(inc["id"]), d["user_id"], str(inc["severity"]))
            claimed = await redis.set(key, "1", nx=True, ex=policy.dedup_window_s)
            if not claimed:
                d.update(status="duplicate", why="notified by a concurrent run")
                continue
        n = Notification(tenant_id=ctx.tenant_id, user_id=uuid.UUID(d["user_id"]),
                         email=d["email"], role=d["role"], incident_id=uuid.UUID(str(inc["id"])),
                         severity=str(inc["severity"]),
                         title=f"#{inc['number']} {inc['title']}"[:300],
                         body=state.get("message", ""), reason=d["reason"])
        deliveries = [await get_channel(name).send(n) for name in d["channels"]]
        d["deliveries"] = [{"channel": x.channel, "ok": x.ok, "detail": x.detail}
                           for x in deliveries]
        if not any(x.ok for x in deliveries):
            d.update(status="failed", why="no channel delivered")
    return {"decisions": decisions, "sent": [d for d in decisions if d["status"] == "send"]}


def _route(state: NotifierState) -> str:
    return "explain" if any(d["status"] == "send" for d in state["decisions"]) else END


def build_graph() -> Any:
    return four_step_graph(NotifierState, gather=gather, analyse=analyse, explain=explain,
                           act=act, route=_route)


GRAPH = build_graph()


def result_of(state: NotifierState, ctx: AgentContext) -> dict[str, Any]:
    llm = ctx.get_llm()
    ex = state.get("explanation") or {"model": None, "backend": llm.name, "mode": llm.mode}
    decisions = state.get("decisions", [])
    output = {"incident_id": state["incident_id"],
              "severity": state.get("incident", {}).get("severity"),
              "escalation_level": state.get("escalation_level", 0),
              "message": state.get("message"),
              "sent": [d["user_id"] for d in decisions if d["status"] == "send"],
              "decisions": decisions}
    return {"output": output, "cited": state.get("cited", []), "model": ex.get("model"),
            "backend": ex.get("backend"), "mode": ex.get("mode")}


async def run(ctx: AgentContext, *, incident_id: uuid.UUID, now: datetime | None = None,
              idempotency_key: str | None = None) -> RunResult:
    """Notify whoever must know about `incident_id` now (or as of `now`)."""
    inputs = {"incident_id": str(incident_id), "now": now.isoformat() if now else None}

    async def invoke(c: AgentContext) -> dict[str, Any]:
        state = await GRAPH.ainvoke(NotifierState(**inputs), context=c)  # type: ignore[typeddict-item]
        return result_of(state, c)

    return await run_agent(AGENT, ctx, invoke, inputs=inputs, subject_type="incident",
                           subject_id=str(incident_id), idempotency_key=idempotency_key)
