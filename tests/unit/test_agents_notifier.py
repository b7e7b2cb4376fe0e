"""Notifier decisions (roles, severity, zones, quiet hours, escalation, repeats) and the
runner's dispatch table: pure functions, no database."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import pytest

from civitas_ray.ai.agents import notifier as nt
from civitas_ray.ai.agents.runner import jobs_for, tenant_of
from civitas_ray.errors import ValidationFailed
from civitas_ray.realtime.events import StoredEvent

pytestmark = pytest.mark.unit
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ZONE = uuid.uuid4()
USERS = [{"id": str(uuid.uuid4()), "email": f"{r}@x.org", "role": r}
         for r in ("operator", "tenant_admin", "analyst", "viewer")]


def incident(severity: str = "minor", *, age_s: float = 0, status: str = "open",
             domain: str = "general", zone: uuid.UUID | None = ZONE) -> dict[str, object]:
    return {"id": str(uuid.uuid4()), "number": 7, "title": "Main break", "severity": severity,
            "status": status, "domain": domain, "zone_id": str(zone) if zone else None,
            "opened_at": (NOW - timedelta(seconds=age_s)).isoformat()}


def sent(decisions: list[dict[str, object]]) -> set[str]:
    return {str(d["role"]) for d in decisions if d["status"] == "send"}


def test_default_rules_route_by_severity_and_domain() -> None:
    p = nt.NotifyPolicy()
    assert sent(nt.decide(incident("minor"), USERS, p, NOW)) == {"operator"}
    assert sent(nt.decide(incident("major"), USERS, p, NOW)) == {"operator", "tenant_admin"}
    dq = incident("minor", domain="data_quality")
    assert sent(nt.decide(dq, USERS, p, NOW)) == {"operator", "analyst"}
    assert sent(nt.decide(incident("info"), USERS, p, NOW)) == set()


def test_escalation_reaches_the_next_role_while_unacknowledged() -> None:
    p = nt.NotifyPolicy(escalate_after_s=600)
    young, old = incident("minor", age_s=599), incident("minor", age_s=601)
    assert sent(nt.decide(young, USERS, p, NOW)) == {"operator"}
    d = nt.decide(old, USERS, p, NOW)
    assert sent(d) == {"operator", "tenant_admin"}
    assert next(x for x in d if x["role"] == "tenant_admin")["reason"] == "escalation:1"
    acked = incident("minor", age_s=6000, status="acknowledged")
    assert nt.escalation_level(acked, p, NOW) == 0


def test_quiet_hours_hold_back_all_but_the_override_severity() -> None:
    p = nt.NotifyPolicy.model_validate({"quiet_hours": {
        "start": "22:00", "end": "07:00", "tz": "UTC", "override_severity": "critical"}})
    night = NOW.replace(hour=23)
    d = nt.decide(incident("major"), USERS, p, night)
    assert {x["status"] for x in d} == {"quiet"}
    assert sent(nt.decide(incident("critical"), USERS, p, night)) == {"operator", "tenant_admin"}
    assert sent(nt.decide(incident("major"), USERS, p, NOW)) == {"operator", "tenant_admin"}


def test_user_preferences_and_repeats() -> None:
    op = USERS[0]
    other_zone = uuid.uuid4()
    p = nt.NotifyPolicy.model_validate({"users": {op["id"]: {"zones": [str(other_zone)]}}})
    d = nt.decide(incident("minor"), USERS, p, NOW)
    assert d[0]["status"] == "filtered" and "zones" in str(d[0]["why"])
    p2 = nt.NotifyPolicy()
    again = nt.decide(incident("minor"), USERS, p2, NOW, already={op["id"]})
    assert again[0]["status"] == "duplicate"


def test_invalid_settings_are_refused_with_where() -> None:
    with pytest.raises(ValidationFailed) as err:
        nt.load_policy({"notifications": {"channels": ["pigeon"]}})
    assert "channels" in str(err.value.errors)  # type: ignore[attr-defined]
    with pytest.raises(ValidationFailed):
        nt.load_policy({"notifications": {"quiet_hours": {"start": "22:00", "end": "07:00",
                                                          "tz": "Mars/Olympus"}}})


def test_runner_dispatch_table() -> None:
    iid, aid = str(uuid.uuid4()), str(uuid.uuid4())

    def agents(etype: str, data: dict[str, object]) -> list[str]:
        return [a for a, _ in jobs_for(StoredEvent("1-0", etype, "incidents", data))]

    assert agents("incident.opened", {"incident_id": iid}) == ["summarizer", "notifier"]
    assert agents("alert.fired", {"incident_id": iid, "asset_id": aid, "metric": "flow",
                                  "data": {"condition": "data_quality"}}) == [
        "summarizer", "notifier", "data_quality"]
    assert agents("incident.updated", {"incident_id": iid}) == ["summarizer"]
    assert agents("incident.updated", {"incident_id": iid, "origin": "agent:summarizer"}) == []
    assert agents("stream.quality", {"asset_id": aid, "metric": "flow"}) == ["data_quality"]
    assert agents("notification.created", {"incident_id": iid}) == []
    t = uuid.uuid4()
    assert tenant_of(f"civitas:{t}:events") == t and tenant_of("civitas:x:events") is None
