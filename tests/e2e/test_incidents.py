"""Incidents through the API like a control room would use them, plus alert de-duplication.

Lifecycle and timeline, illegal moves as 409 problem+json, assignment across tenants,
filters and paging, role checks, tenant isolation, and `open_or_update` called the way
the alert engine will call it: its own transaction per alert.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import datetime
from typing import Any

import httpx
import pytest
from geoalchemy2 import WKTElement

from civitas_ray.assets.models import Asset
from civitas_ray.audit.service import SYSTEM_ACTOR
from civitas_ray.db.session import tenant_session
from civitas_ray.errors import ValidationFailed
from civitas_ray.incidents import service as incidents
from civitas_ray.zones.models import Zone

pytestmark = pytest.mark.e2e

API = "/api/v1/incidents"
PROBLEM = "application/problem+json"


async def _zone_and_asset(tenant_id: uuid.UUID) -> tuple[str, str]:
    """Rows written straight through the ORM: this file must not depend on the zones API."""
    async with tenant_session(tenant_id) as s:
        zone = Zone(id=uuid.uuid4(), tenant_id=tenant_id, name="Midtown",
                    code="MID-" + uuid.uuid4().hex[:6],
                    geom=WKTElement("MULTIPOLYGON(((-73.99 40.75,-73.97 40.75,-73.97 40.77,"
                                    "-73.99 40.77,-73.99 40.75)))", srid=4326))
        s.add(zone)
        await s.flush()
        asset = Asset(id=uuid.uuid4(), tenant_id=tenant_id, name="Counter 1", kind="sensor",
                      zone_id=zone.id, geom=WKTElement("POINT(-73.98 40.76)", srid=4326))
        s.add(asset)
    return str(zone.id), str(asset.id)


async def _create(c: httpx.AsyncClient, headers: dict[str, str], **fields: Any) -> dict[str, Any]:
    r = await c.post(API, headers=headers, json={"title": "Water main break", **fields})
    assert r.status_code == 201, r.text
    return r.json()


async def _move(c: httpx.AsyncClient, headers: dict[str, str], incident_id: str, status: str,
                note: str | None = None) -> httpx.Response:
    return await c.post(f"{API}/{incident_id}/transition", headers=headers,
                        json={"status": status, "note": note})


async def _timeline(c: httpx.AsyncClient, headers: dict[str, str],
                    incident_id: str) -> list[dict[str, Any]]:
    r = await c.get(f"{API}/{incident_id}/timeline", headers=headers)
    assert r.status_code == 200, r.text
    return r.json()["items"]


async def _audit_actions(admin_sql: Any, tenant_id: uuid.UUID) -> list[str]:
    rows = await admin_sql("select action from audit_log where tenant_id = $1 and "
                           "target_type = 'incident' order by seq", tenant_id)
    return [r["action"] for r in rows]


async def test_lifecycle_stamps_times_and_records_timeline_and_audit(
        client: httpx.AsyncClient, make_tenant, admin_sql) -> None:
    t = await make_tenant(roles=["operator"], with_key=False)
    h = t.headers("operator")
    inc = await _create(client, h, description="Flooding at 5th Ave", severity="major",
                        domain="utilities", properties={"lanes_closed": 2})
    assert inc["status"] == "open" and isinstance(inc["number"], int)
    assert inc["created_by"] == str(t.users["operator"]["id"]) and inc["source"] == "manual"
    assert inc["properties"] == {"lanes_closed": 2}
    assert inc["acknowledged_at"] is inc["resolved_at"] is inc["closed_at"] is None

    for target, stamp in (("acknowledged", "acknowledged_at"), ("resolved", "resolved_at"),
                          ("closed", "closed_at")):
        r = await _move(client, h, inc["id"], target, note=f"now {target}")
        assert r.status_code == 200, r.text
        assert r.json()["status"] == target and r.json()[stamp] is not None
    final = r.json()
    stamps = [datetime.fromisoformat(final[k])
              for k in ("opened_at", "acknowledged_at", "resolved_at", "closed_at")]
    assert stamps == sorted(stamps)

    r = await _move(client, h, inc["id"], "open")
    assert r.status_code == 409 and r.headers["content-type"].startswith(PROBLEM)
    assert r.json()["allowed"] == [] and "final" in r.json()["detail"]

    events = await _timeline(client, h, inc["id"])
    assert [e["kind"] for e in events] == ["created"] + ["status_change"] * 3
    assert [e["data"] for e in events[1:]] == [
        {"from": "open", "to": "acknowledged"}, {"from": "acknowledged", "to": "resolved"},
        {"from": "resolved", "to": "closed"}]
    assert [e["body"] for e in events[1:]] == ["now acknowledged", "now resolved", "now closed"]
    assert {e["actor_id"] for e in events} == {str(t.users["operator"]["id"])}
    assert await _audit_actions(admin_sql, t.id) == ["incident.create"] + [
        "incident.transition"] * 3


async def test_illegal_moves_are_409_and_reopen_clears_later_stamps(
        client: httpx.AsyncClient, make_tenant) -> None:
    t = await make_tenant(roles=["operator"], with_key=False)
    h = t.headers("operator")
    inc = await _create(client, h)

    r = await _move(client, h, inc["id"], "closed")
    assert r.status_code == 409 and r.headers["content-type"].startswith(PROBLEM)
    body = r.json()
    assert body["type"].endswith("/conflict") and body["allowed"] == ["acknowledged", "resolved"]
    assert "acknowledged, resolved" in body["detail"]
    assert (await _move(client, h, inc["id"], "bogus")).status_code == 422

    assert (await _move(client, h, inc["id"], "acknowledged")).status_code == 200
    for illegal in ("open", "acknowledged", "closed"):
        r = await _move(client, h, inc["id"], illegal)
        assert r.status_code == 409 and r.json()["allowed"] == ["resolved"], illegal

    assert (await _move(client, h, inc["id"], "resolved")).status_code == 200
    r = await _move(client, h, inc["id"], "open", note="it flooded again")
    assert r.status_code == 200
    assert r.json()["status"] == "open"
    assert r.json()["acknowledged_at"] is None and r.json()["resolved_at"] is None

    r = await _move(client, h, inc["id"], "resolved")
    assert r.status_code == 200 and r.json()["acknowledged_at"] is None
    events = await _timeline(client, h, inc["id"])
    assert [(e["data"]["from"], e["data"]["to"]) for e in events[1:]] == [
        ("open", "acknowledged"), ("acknowledged", "resolved"), ("resolved", "open"),
        ("open", "resolved")]
    assert events[3]["body"] == "it flooded again"


async def test_assign_comment_and_update(client: httpx.AsyncClient, make_tenant,
                                         admin_sql) -> None:
    t = await make_tenant(roles=["tenant_admin", "operator", "viewer"], with_key=False)
    other = await make_tenant(roles=["operator"], with_key=False)
    h = t.headers("operator")
    zone_id, asset_id = await _zone_and_asset(t.id)
    other_zone, other_asset = await _zone_and_asset(other.id)

    inc = await _create(client, h, zone_id=zone_id, asset_id=asset_id, domain="utilities")
    assert inc["zone_id"] == zone_id and inc["asset_id"] == asset_id
    for bad in ({"zone_id": other_zone}, {"asset_id": other_asset},
                {"zone_id": str(uuid.uuid4())}):
        r = await client.post(API, headers=h, json={"title": "x", **bad})
        assert r.status_code == 422 and r.headers["content-type"].startswith(PROBLEM), bad

    url = f"{API}/{inc['id']}"
    operator_id = str(t.users["operator"]["id"])
    r = await client.post(f"{url}/assign", headers=h,
                          json={"assignee_id": operator_id, "note": "yours"})
    assert r.status_code == 200 and r.json()["assignee_id"] == operator_id
    r = await client.post(f"{url}/assign", headers=h, json={"assignee_id": operator_id})
    assert r.status_code == 200, "re-assigning the same user is a no-op"
    r = await client.post(f"{url}/assign", headers=h,
                          json={"assignee_id": str(other.users["operator"]["id"])})
    assert r.status_code == 422 and r.json()["type"].endswith("/validation-failed")
    viewer_id = t.users["viewer"]["id"]
    r = await client.delete(f"/api/v1/users/{viewer_id}", headers=t.headers("tenant_admin"))
    assert r.status_code == 200
    r = await client.post(f"{url}/assign", headers=h, json={"assignee_id": str(viewer_id)})
    assert r.status_code == 422, "a deleted user cannot be assigned"
    r = await client.post(f"{url}/assign", headers=h, json={"assignee_id": None})
    assert r.status_code == 200 and r.json()["assignee_id"] is None

    r = await client.post(f"{url}/comments", headers=h, json={"body": "Crew on site"})
    assert r.status_code == 201, r.text
    assert r.json()["kind"] == "comment" and r.json()["body"] == "Crew on site"
    assert r.json()["actor_id"] == operator_id
    assert (await client.post(f"{url}/comments", headers=h, json={"body": ""})).status_code == 422

    r = await client.patch(url, headers=h, json={"severity": "critical", "title": "Main break",
                                                 "domain": "utilities", "description": ""})
    assert r.status_code == 200 and r.json()["severity"] == "critical"
    for bad in ({"zone_id": other_zone}, {"title": None}, {"severity": "apocalyptic"}):
        r = await client.patch(url, headers=h, json=bad)
        assert r.status_code == 422, bad
    r = await client.patch(url, headers=h, json={"zone_id": None, "summary": "Valve closed"})
    assert r.status_code == 200 and r.json()["zone_id"] is None

    events = await _timeline(client, h, inc["id"])
    assert [e["kind"] for e in events] == [
        "created", "assignment", "assignment", "comment", "update", "update"]
    assert events[1]["data"] == {"from": None, "to": operator_id} and events[1]["body"] == "yours"
    assert events[4]["data"]["changed"] == {
        "severity": {"from": "minor", "to": "critical"},
        "title": {"from": "Water main break", "to": "Main break"}}
    assert set(events[5]["data"]["changed"]) == {"zone_id", "summary"}
    assert await _audit_actions(admin_sql, t.id) == [
        "incident.create", "incident.assign", "incident.assign", "incident.comment",
        "incident.update", "incident.update"]


async def test_filters_sort_and_pagination(client: httpx.AsyncClient, make_tenant,
                                           admin_sql) -> None:
    t = await make_tenant(roles=["operator"], with_key=False)
    h = t.headers("operator")
    zone_id, asset_id = await _zone_and_asset(t.id)
    a = await _create(client, h, title="Signal outage on Broadway", domain="mobility",
                      severity="minor", zone_id=zone_id)
    b = await _create(client, h, title="Gas leak", domain="safety", severity="critical",
                      description="Smell of gas, 100% sure")
    c = await _create(client, h, title="Air sensor drift", domain="environment",
                      severity="info", asset_id=asset_id)
    d = await _create(client, h, title="Jam at the bridge", domain="mobility",
                      severity="major", description="Backed up to BROADWAY")
    assert (await _move(client, h, b["id"], "acknowledged")).status_code == 200
    assert (await _move(client, h, c["id"], "resolved")).status_code == 200
    r = await client.post(f"{API}/{d['id']}/assign", headers=h,
                          json={"assignee_id": str(t.users["operator"]["id"])})
    assert r.status_code == 200

    async def titles(**params: Any) -> list[str]:
        r = await client.get(API, headers=h, params=params)
        assert r.status_code == 200, r.text
        return [i["title"] for i in r.json()["items"]]

    name = {x["title"]: k for k, x in zip("abcd", (a, b, c, d), strict=True)}

    async def keys(**params: Any) -> str:
        return "".join(name[x] for x in await titles(**params))

    assert await keys() == "dcba", "newest first by default"
    assert await keys(status="open") == "da"
    assert await keys(status=["open", "acknowledged"]) == "dba"
    assert await keys(severity="critical") == "b"
    assert await keys(domain="mobility") == "da"
    assert await keys(zone_id=zone_id) == "a"
    assert await keys(asset_id=asset_id) == "c"
    assert await keys(assignee_id=str(t.users["operator"]["id"])) == "d"
    assert await keys(q="broadway") == "da", "title or description, any case"
    assert await keys(q="100%") == "b" and await keys(q="%") == "b", "wildcards are literal"
    assert await keys(sort="-severity") == "bdac"
    assert await keys(sort="severity") == "cadb"
    assert await keys(sort="number") == "abcd" and await keys(sort="-number") == "dcba"
    assert await keys(sort="opened_at") == "abcd"
    assert await keys(opened_since=b["opened_at"]) == "dcb"
    assert await keys(opened_until=b["opened_at"]) == "a"
    assert (await client.get(API, headers=h, params={"sort": "title"})).status_code == 422

    first = (await client.get(API, headers=h, params={"limit": 3})).json()
    assert first["total"] == 4 and len(first["items"]) == 3 and first["next_offset"] == 3
    last = (await client.get(API, headers=h, params={"limit": 3, "offset": 3})).json()
    assert [i["id"] for i in last["items"]] == [a["id"]] and last["next_offset"] is None

    r = await client.delete(f"{API}/{a['id']}", headers=h)
    assert r.status_code == 200 and r.json()["deleted_at"] is not None
    assert await keys() == "dcb"
    assert await keys(include_deleted=True) == "dcba"
    assert (await client.get(f"{API}/{a['id']}", headers=h)).status_code == 404
    assert (await client.delete(f"{API}/{a['id']}", headers=h)).status_code == 404
    r = await client.post(f"{API}/{a['id']}/restore", headers=h)
    assert r.status_code == 200 and r.json()["deleted_at"] is None
    assert (await client.get(f"{API}/{a['id']}", headers=h)).status_code == 200
    actions = await _audit_actions(admin_sql, t.id)
    assert actions[-2:] == ["incident.delete", "incident.restore"]


async def test_viewer_and_analyst_read_but_cannot_write(client: httpx.AsyncClient,
                                                        make_tenant) -> None:
    t = await make_tenant(roles=["operator", "analyst", "viewer"], with_key=False)
    inc = await _create(client, t.headers("operator"))
    url = f"{API}/{inc['id']}"
    for role in ("viewer", "analyst"):
        h = t.headers(role)
        assert (await client.get(API, headers=h)).json()["total"] == 1
        assert (await client.get(url, headers=h)).status_code == 200
        assert (await client.get(f"{url}/timeline", headers=h)).status_code == 200
        writes = [
            client.post(API, headers=h, json={"title": "nope"}),
            client.patch(url, headers=h, json={"title": "nope"}),
            client.delete(url, headers=h),
            client.post(f"{url}/restore", headers=h),
            client.post(f"{url}/assign", headers=h, json={"assignee_id": None}),
            client.post(f"{url}/comments", headers=h, json={"body": "nope"}),
            client.post(f"{url}/transition", headers=h, json={"status": "acknowledged"}),
        ]
        for request in writes:
            r = await request
            assert r.status_code == 403, (role, r.request.method, r.request.url)
            assert r.headers["content-type"].startswith(PROBLEM)
    r = await client.get(url, headers=t.headers("operator"))
    assert r.json()["title"] == inc["title"] and r.json()["status"] == "open"


async def test_another_tenant_gets_404_everywhere(client: httpx.AsyncClient,
                                                  make_tenant) -> None:
    a = await make_tenant(roles=["operator"], with_key=False)
    b = await make_tenant(roles=["operator"], with_key=False)
    inc = await _create(client, a.headers("operator"))
    url = f"{API}/{inc['id']}"
    h = b.headers("operator")
    calls = [
        client.get(url, headers=h), client.get(f"{url}/timeline", headers=h),
        client.patch(url, headers=h, json={"title": "mine now"}), client.delete(url, headers=h),
        client.post(f"{url}/restore", headers=h),
        client.post(f"{url}/assign", headers=h, json={"assignee_id": None}),
        client.post(f"{url}/comments", headers=h, json={"body": "hi"}),
        client.post(f"{url}/transition", headers=h, json={"status": "resolved"}),
    ]
    for request in calls:
        r = await request
        assert r.status_code == 404, (r.request.method, r.request.url, r.text)
        assert r.headers["content-type"].startswith(PROBLEM)
    assert (await client.get(API, headers=h)).json()["total"] == 0
    r = await client.get(url, headers=a.headers("operator"))
    assert r.json()["title"] == inc["title"] and r.json()["deleted_at"] is None
    assert len(await _timeline(client, a.headers("operator"), inc["id"])) == 1


async def _alert(tenant_id: uuid.UUID, key: str, severity: str,
                 **kw: Any) -> tuple[str, bool]:
    """One alert in its own transaction, the way the alert engine sends them."""
    async with tenant_session(tenant_id) as s:
        inc, created = await incidents.open_or_update(
            session=s, tenant_id=tenant_id, dedup_key=key, title="PM2.5 above limit",
            severity=severity, domain="environment", source="rule", actor=SYSTEM_ACTOR, **kw)
        return str(inc.id), created


async def test_open_or_update_deduplicates_until_resolved(client: httpx.AsyncClient,
                                                          make_tenant, admin_sql) -> None:
    t = await make_tenant(roles=["operator"], with_key=False)
    h = t.headers("operator")
    key = "rule:pm25:" + uuid.uuid4().hex[:6]
    first, created = await _alert(t.id, key, "minor", data={"value": 61.2})
    assert created
    again, created = await _alert(t.id, key, "major", data={"value": 80.5})
    assert again == first and not created

    inc = (await client.get(f"{API}/{first}", headers=h)).json()
    assert inc["severity"] == "major" and inc["source"] == "rule" and inc["dedup_key"] == key
    assert inc["created_by"] is None
    events = await _timeline(client, h, first)
    assert [e["kind"] for e in events] == ["created", "alert"]
    assert events[0]["data"]["alert"] == {"value": 61.2}
    assert events[1]["data"]["raised"] == {"from": "minor", "to": "major"}
    assert (await client.get(API, headers=h)).json()["total"] == 1

    assert (await _alert(t.id, key, "info"))[0] == first
    inc = (await client.get(f"{API}/{first}", headers=h)).json()
    assert inc["severity"] == "major", "a milder alert never lowers the severity"
    assert (await _move(client, h, first, "acknowledged")).status_code == 200
    assert (await _alert(t.id, key, "minor")) == (first, False), "acknowledged still absorbs"

    assert (await _move(client, h, first, "resolved")).status_code == 200
    fresh, created = await _alert(t.id, key, "minor")
    assert created and fresh != first
    r = await _move(client, h, first, "open")
    assert r.status_code == 409 and "already tracks" in r.json()["detail"]

    with pytest.raises(ValidationFailed):
        await _alert(t.id, "rule:other", "minor", zone_id=uuid.uuid4())
    with pytest.raises(ValidationFailed):
        await _alert(t.id, "rule:other", "apocalyptic")

    actions = await _audit_actions(admin_sql, t.id)
    assert actions.count("incident.create") == 2 and actions.count("incident.alert") == 3
    assert actions.count("incident.transition") == 2


async def test_concurrent_alerts_for_one_key_open_one_incident(make_tenant) -> None:
    t = await make_tenant(roles=["viewer"], with_key=False)
    n = 6
    # Every transaction holds its connection before any alert is sent, so all race.
    ready = asyncio.Barrier(n)

    async def one(i: int) -> tuple[uuid.UUID, bool]:
        async with tenant_session(t.id) as s:
            await ready.wait()
            inc, created = await incidents.open_or_update(
                session=s, tenant_id=t.id, dedup_key="rule:burst", title="Burst",
                severity="minor", domain="utilities", source="rule", data={"i": i},
                actor=SYSTEM_ACTOR)
            return inc.id, created

    results = await asyncio.gather(*(one(i) for i in range(n)))
    assert len({incident_id for incident_id, _ in results}) == 1
    assert sum(created for _, created in results) == 1


async def test_changes_are_published_on_the_incidents_channel(client, make_tenant) -> None:
    from civitas_ray.realtime.events import replay

    t = await make_tenant(roles=["operator"])
    h = t.headers("operator")
    r = await client.post("/api/v1/incidents", headers=h, json={
        "title": "Signal dark at 5th/42nd", "severity": "major", "domain": "mobility"})
    iid = r.json()["id"]
    await client.post(f"/api/v1/incidents/{iid}/transition", headers=h,
                      json={"status": "acknowledged"})
    await client.post(f"/api/v1/incidents/{iid}/comments", headers=h, json={"body": "crew sent"})
    await client.post(f"/api/v1/incidents/{iid}/transition", headers=h,
                      json={"status": "resolved"})
    await client.post(f"/api/v1/incidents/{iid}/transition", headers=h, json={"status": "open"})
    # A refused transition publishes nothing.
    await client.post(f"/api/v1/incidents/{iid}/transition", headers=h, json={"status": "closed"})
    events = await replay(t.id, "0-0", channels={"incidents"})
    assert [e.type for e in events] == ["incident.opened", "incident.acknowledged",
                                        "incident.commented", "incident.resolved",
                                        "incident.reopened"]
    assert all(e.data["id"] == iid for e in events)
