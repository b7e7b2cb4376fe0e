"""The policy and recommender agents on the real DC Code Title 9, like a control room uses them.

The code is ingested through the documents API into one tenant per module; incidents are
opened through the API; the zone forecast comes from a small LightGBM model trained on
the real I-94 series. Extractive mode (no model configured) throughout: assertions are on
verdicts, cited sections and their spans, stored rows and audit records, not on prose.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import PASSWORD, ROLES, TenantFixture

pytestmark = pytest.mark.e2e

PERMIT_SECTIONS = {"DC Code § 9-431.01", "DC Code § 9-433.01"}  # same text, two chapters
PARKS_SECTION = "DC Code § 9-1201.06"
PROHIBITED = ("Dig a trench in the public highway on 5th Street to reach a broken water main, "
              "without a permit from the Mayor")
WITH_PERMIT = ("Dig a trench in the public highway on 5th Street to reach a broken water main, "
               "with a permit from the Mayor")
PARK = "Set apart part of the avenue as a park with shade trees and walks"
# Away from SQUARE, so the counter joins this zone and no other.
CORRIDOR = {"type": "Polygon", "coordinates": [[
    [-93.21, 44.95], [-93.19, 44.95], [-93.19, 44.97], [-93.21, 44.97], [-93.21, 44.95]]]}
SQUARE = {"type": "Polygon", "coordinates": [[
    [-73.99, 40.75], [-73.97, 40.75], [-73.97, 40.77], [-73.99, 40.77], [-73.99, 40.75]]]}


async def _new_tenant(client: httpx.AsyncClient) -> TenantFixture:
    """A tenant with a signed-in user per role (module-scoped, so not `make_tenant`)."""
    from civitas_ray.audit.service import SYSTEM_ACTOR
    from civitas_ray.db.session import set_context, tenant_session
    from civitas_ray.tenants import service as tenants
    from civitas_ray.tenants.schemas import TenantCreate
    from civitas_ray.users import service as users
    from civitas_ray.users.schemas import ApiKeyCreate, UserCreate

    slug = "t-" + uuid.uuid4().hex[:10]
    async with tenant_session(None, system=True) as s:
        t = await tenants.create(session=s, data=TenantCreate(slug=slug, name=slug),
                                 actor=SYSTEM_ACTOR)
        fx = TenantFixture(id=t.id, slug=slug)
        await set_context(s, tenant_id=t.id)
        for role in ROLES:
            email = f"{role}.{slug}@example.org"
            u = await users.create(session=s, tenant_id=t.id, actor=SYSTEM_ACTOR,
                                   data=UserCreate(email=email, password=PASSWORD, role=role))
            fx.users[role] = {"id": u.id, "email": email}
        _, fx.api_key = await users.create_api_key(
            session=s, tenant_id=t.id, data=ApiKeyCreate(name="devices"), actor=SYSTEM_ACTOR,
            created_by=None)
    for info in fx.users.values():
        r = await client.post("/api/v1/auth/token",
                              data={"username": info["email"], "password": PASSWORD})
        assert r.status_code == 200, r.text
        info.update(r.json())
    return fx


async def _ingest(client: httpx.AsyncClient, t: TenantFixture, path: Path) -> str:
    r = await client.post("/api/v1/documents", headers={
        **t.headers("analyst"), "Content-Type": "application/x-ndjson"},
        params={"title": "DC Code Title 9", "tags": "policy", "filename": path.name},
        content=path.read_bytes())
    assert r.status_code == 202, r.text
    doc_id = r.json()["id"]
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        r = await client.get(f"/api/v1/documents/{doc_id}", headers=t.headers("analyst"))
        if r.json()["status"] in ("ready", "failed"):
            break
        await asyncio.sleep(0.5)
    assert r.json()["status"] == "ready", r.text
    return str(doc_id)


@pytest.fixture(scope="module")
async def city(app: Any, data_dir: Path) -> AsyncIterator[dict[str, Any]]:
    """One tenant holding the real DC Code Title 9, and its HTTP client."""
    transport = httpx.ASGITransport(app=app, client=("10.9.0.7", 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver",
                                 timeout=300) as c:
        t = await _new_tenant(c)
        doc_id = await _ingest(c, t, data_dir / "policy" / "dc_code_title9.jsonl")
        source = await c.get(f"/api/v1/documents/{doc_id}/source", headers=t.headers("analyst"))
        assert source.status_code == 200, source.text
        yield {"client": c, "tenant": t, "document_id": doc_id, "source": source.text}


async def _check(city: dict[str, Any], action: str, role: str = "operator",
                 **extra: Any) -> httpx.Response:
    t: TenantFixture = city["tenant"]
    return await city["client"].post("/api/v1/ai/policy-check", headers=t.headers(role),
                                     json={"action": action, **extra})


def _norm(s: str) -> str:
    return " ".join(s.split())


def _assert_spans(city: dict[str, Any], citations: list[dict[str, Any]]) -> None:
    """Each citation points into the stored text, and its quote is inside that span."""
    for c in citations:
        assert c["document_id"] == city["document_id"]
        span = city["source"][c["char_start"]:c["char_end"]]
        assert span and c["url"].endswith(f"#chars={c['char_start']}-{c['char_end']}")
        if c.get("quote"):
            assert _norm(c["quote"]) in _norm(span)


async def test_prohibited_action_is_non_compliant_and_cites_the_permit_section(
        city: dict[str, Any], admin_sql: Any) -> None:
    r = await _check(city, PROHIBITED)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["verdict"] == "non_compliant"
    assert body["mode"] == "extractive" and body["judged_by"] == "rules"
    assert body["citations"], body
    assert {c["section_id"] for c in body["citations"]} <= PERMIT_SECTIONS
    assert all(c["section_title"] == "Permit required; exceptions." for c in body["citations"])
    _assert_spans(city, body["citations"])

    t: TenantFixture = city["tenant"]
    [run] = await admin_sql("select * from agent_run where id = $1", uuid.UUID(body["run_id"]))
    assert run["tenant_id"] == t.id and run["agent"] == "policy_compliance"
    assert run["status"] == "succeeded" and run["mode"] == "extractive"
    assert run["model"] == body["model"] and run["created_by"] == t.users["operator"]["id"]
    import json

    cited = json.loads(run["cited"])
    assert [c["section_id"] for c in cited] == [c["section_id"] for c in body["citations"]]
    assert json.loads(run["inputs"])["action"] == PROHIBITED
    [audit] = await admin_sql(
        "select * from audit_log where tenant_id = $1 and action = 'agent.policy_compliance' "
        "and target_id = $2", t.id, body["run_id"])
    after = json.loads(audit["after"])
    assert after["inputs"]["action"] == PROHIBITED and after["mode"] == "extractive"
    assert {c["section_id"] for c in after["cited"]} <= PERMIT_SECTIONS
    assert audit["actor_id"] == str(t.users["operator"]["id"])


async def test_permitted_actions_are_compliant_with_their_sections(
        city: dict[str, Any]) -> None:
    r = await _check(city, WITH_PERMIT)
    assert r.status_code == 200, r.text
    assert r.json()["verdict"] == "compliant"
    assert {c["section_id"] for c in r.json()["citations"]} <= PERMIT_SECTIONS
    r = await _check(city, PARK)
    body = r.json()
    assert body["verdict"] == "compliant", body
    assert [c["section_id"] for c in body["citations"]] == [PARKS_SECTION]
    _assert_spans(city, body["citations"])
    # Without saying whether a permit is held, the permit section leaves it open.
    r = await _check(city, "Dig a trench in the public highway on 5th Street")
    assert r.json()["verdict"] == "unclear"
    assert {c["section_id"] for c in r.json()["citations"]} <= PERMIT_SECTIONS


async def test_policy_check_input_roles_and_isolation(city: dict[str, Any],
                                                      make_tenant: Any,
                                                      client: httpx.AsyncClient) -> None:
    t: TenantFixture = city["tenant"]
    c = city["client"]
    assert (await _check(city, PROHIBITED, role="analyst")).status_code == 403
    bad = await _check(city, "   ")
    assert bad.status_code == 422 and bad.headers["content-type"].startswith(
        "application/problem+json")
    assert (await _check(city, "x" * 2001)).status_code == 422
    missing = await _check(city, PROHIBITED, incident_id=str(uuid.uuid4()))
    assert missing.status_code == 404
    r = await c.post("/api/v1/incidents", headers=t.headers("operator"), json={
        "title": "Water main break on 5th Street", "domain": "utilities",
        "severity": "critical"})
    inc = r.json()
    r = await _check(city, PROHIBITED, incident_id=inc["id"])
    assert r.status_code == 200 and r.json()["verdict"] == "non_compliant"
    # Another tenant has no documents: nothing to rely on, so nothing is decided.
    other = await make_tenant(roles=["operator"])
    r = await client.post("/api/v1/ai/policy-check", headers=other.headers("operator"),
                          json={"action": PROHIBITED})
    assert r.status_code == 200, r.text
    assert r.json()["verdict"] == "unclear" and r.json()["citations"] == []
    r = await client.post("/api/v1/ai/policy-check", headers=other.headers("operator"),
                          json={"action": PROHIBITED, "incident_id": inc["id"]})
    assert r.status_code == 404


async def _incident(c: httpx.AsyncClient, h: dict[str, str], **fields: Any) -> dict[str, Any]:
    r = await c.post("/api/v1/incidents", headers=h, json=fields)
    assert r.status_code == 201, r.text
    return dict(r.json())


async def test_recommender_ranks_explains_stores_and_operators_decide(
        city: dict[str, Any], admin_sql: Any, make_tenant: Any,
        client: httpx.AsyncClient) -> None:
    import json

    t: TenantFixture = city["tenant"]
    c: httpx.AsyncClient = city["client"]
    op = t.headers("operator")
    r = await c.post("/api/v1/zones", headers=t.headers("tenant_admin"), json={
        "name": "Fifth Street", "code": "Z" + uuid.uuid4().hex[:6], "geometry": SQUARE})
    assert r.status_code == 201, r.text
    zone = r.json()["id"]
    main = await _incident(c, op, title="Water main break on 5th Street", domain="utilities",
                           severity="critical", zone_id=zone)
    crash = await _incident(c, op, title="Collision blocking two lanes", domain="mobility",
                            severity="major", zone_id=zone)
    minor = await _incident(c, op, title="Streetlight flickering", domain="infrastructure",
                            severity="minor", zone_id=zone)
    stuck = await _incident(c, op, title="Counter reports a constant value",
                            domain="data_quality", severity="minor", zone_id=zone)
    elsewhere = await _incident(c, op, title="Pothole elsewhere", severity="critical")

    assert (await c.post("/api/v1/ai/recommendations", headers=t.headers("analyst"),
                         json={"zone_id": zone})).status_code == 403
    r = await c.post("/api/v1/ai/recommendations", headers=op, json={"zone_id": zone})
    assert r.status_code == 200, r.text
    run = r.json()
    assert run["status"] == "succeeded" and run["mode"] == "extractive"
    rows = run["created"]
    assert [x["rank"] for x in rows] == list(range(1, len(rows) + 1))
    assert [x["score"] for x in rows] == sorted((x["score"] for x in rows), reverse=True)
    by_incident = {x["incident_id"]: x for x in rows}
    assert set(by_incident) == {main["id"], crash["id"], minor["id"], stuck["id"]}
    assert elsewhere["id"] not in by_incident
    kinds = {i: by_incident[i]["evidence"]["kind"] for i in by_incident}
    assert kinds == {main["id"]: "dispatch_crew", crash["id"]: "dispatch_crew",
                     minor["id"]: "assign_owner", stuck["id"]: "data_quality_fix"}
    assert by_incident[main["id"]]["rank"] < by_incident[minor["id"]]["rank"]
    for x in rows:
        ev = x["evidence"]
        assert x["zone_id"] == zone and x["status"] == "proposed"
        assert ev["incident_ids"] == [x["incident_id"]]
        assert ev["policy"]["verdict"] in ("compliant", "non_compliant", "unclear")
        assert ev["score_parts"]["policy_factor"] > 0
        assert x["body"].strip() and x["model"] == "extractive"
        _assert_spans(city, ev["policy"]["citations"])
    # The water main repair opens a cut in the street: the permit section applies.
    main_policy = by_incident[main["id"]]["evidence"]["policy"]
    assert {c_["section_id"] for c_ in main_policy["citations"]} & PERMIT_SECTIONS
    assert {c_["section_id"] for c_ in run["cited"]} >= {
        c_["section_id"] for c_ in main_policy["citations"]}

    [agent_run] = await admin_sql("select * from agent_run where id = $1",
                                  uuid.UUID(run["run_id"]))
    assert agent_run["agent"] == "recommender" and agent_run["subject_id"] == zone
    assert sorted(json.loads(agent_run["output"])["created"]) == sorted(x["id"] for x in rows)
    created_audit = await admin_sql(
        "select target_id from audit_log where tenant_id = $1 and "
        "action = 'recommendation.create'", t.id)
    assert {a["target_id"] for a in created_audit} >= {x["id"] for x in rows}

    # A second run proposes nothing new while these are open.
    r = await c.post("/api/v1/ai/recommendations", headers=op, json={"zone_id": zone})
    assert r.json()["created"] == [] and set(r.json()["duplicates"]) == {x["id"] for x in rows}

    api = "/api/v1/recommendations"
    r = await c.get(api, headers=t.headers("analyst"), params={"zone_id": zone})
    assert r.status_code == 200 and r.json()["total"] == len(rows)
    assert (await c.get(api, headers=t.headers("viewer"))).status_code == 403
    first, other_row = by_incident[main["id"]], by_incident[minor["id"]]
    assert (await c.post(f"{api}/{first['id']}/accept",
                         headers=t.headers("analyst"))).status_code == 403
    r = await c.post(f"{api}/{first['id']}/accept", headers=op, json={"note": "Crew 4"})
    assert r.status_code == 200 and r.json()["status"] == "accepted"
    assert r.json()["decided_by"] == str(t.users["operator"]["id"])
    assert (await c.post(f"{api}/{first['id']}/accept", headers=op)).status_code == 409
    assert (await c.post(f"{api}/{other_row['id']}/reject", headers=op,
                         json={"reason": " "})).status_code == 422
    r = await c.post(f"{api}/{other_row['id']}/reject", headers=op,
                     json={"reason": "Already on the night shift list"})
    assert r.status_code == 200 and r.json()["status"] == "rejected"
    assert (await c.post(f"{api}/{other_row['id']}/outcome", headers=op,
                         json={"result": "effective"})).status_code == 409
    r = await c.post(f"{api}/{first['id']}/outcome", headers=op,
                     json={"result": "effective", "notes": "Main repaired in 3 h"})
    assert r.status_code == 200 and r.json()["outcome"]["result"] == "effective"
    assert (await c.post(f"{api}/{first['id']}/outcome", headers=op,
                         json={"result": "maybe"})).status_code == 422
    r = await c.get(api, headers=t.headers("analyst"),
                    params={"status": "proposed", "zone_id": zone})
    assert {x["id"] for x in r.json()["items"]} == {x["id"] for x in rows} - {
        first["id"], other_row["id"]}
    r = await c.get(api, headers=t.headers("analyst"), params={"incident_id": main["id"]})
    assert [x["id"] for x in r.json()["items"]] == [first["id"]]

    audits = await admin_sql(
        "select action, target_id, detail, before, after from audit_log where tenant_id = $1 "
        "and action like 'recommendation.%' and action <> 'recommendation.create' "
        "order by seq", t.id)
    assert [(a["action"], a["target_id"]) for a in audits] == [
        ("recommendation.accept", first["id"]), ("recommendation.reject", other_row["id"]),
        ("recommendation.outcome", first["id"])]
    assert audits[1]["detail"] == "Already on the night shift list"
    assert json.loads(audits[2]["after"])["outcome"]["result"] == "effective"

    # The accepted one now has an outcome, so a new run may propose that action again;
    # the rejected one is closed too. The others stay duplicates.
    r = await c.post("/api/v1/ai/recommendations", headers=op, json={"incident_id": main["id"]})
    assert r.status_code == 200, r.text
    assert [x["incident_id"] for x in r.json()["created"]] == [main["id"]]

    # Isolation: another tenant sees none of it and cannot act on it.
    other = await make_tenant(roles=["operator"])
    oh = other.headers("operator")
    assert (await client.get(f"{api}/{first['id']}", headers=oh)).status_code == 404
    assert (await client.get(api, headers=oh)).json()["total"] == 0
    assert (await client.post(f"{api}/{rows[-1]['id']}/accept", headers=oh)).status_code == 404
    assert (await client.post("/api/v1/ai/recommendations", headers=oh,
                              json={"zone_id": zone})).status_code == 404
    r = await client.post("/api/v1/ai/recommendations", headers=oh, json={})
    assert r.status_code == 200 and r.json()["created"] == []


async def test_recommender_pre_positions_for_a_zone_forecast_crossing(
        city: dict[str, Any], data_dir: Path) -> None:
    from civitas_ray.audit.service import SYSTEM_ACTOR
    from civitas_ray.db.session import tenant_session
    from civitas_ray.ml import data, forecasts, registry
    from civitas_ray.ml.models import MODELS
    from tests.e2e.test_ml_api import load_i94

    t: TenantFixture = city["tenant"]
    c: httpx.AsyncClient = city["client"]
    h = t.headers("tenant_admin")
    r = await c.post("/api/v1/zones", headers=h, json={
        "name": "I-94 corridor", "code": "Z" + uuid.uuid4().hex[:6], "geometry": CORRIDOR})
    zone = r.json()["id"]
    r = await c.post("/api/v1/assets", headers=h, json={
        "name": "Counter", "kind": "sensor",
        "geometry": {"type": "Point", "coordinates": [-93.20, 44.96]}})
    asset = r.json()["id"]
    assert r.json()["zone_id"] == zone  # its own zone, not the module's other one
    await load_i94(c, t, asset, data_dir, datetime.now(UTC))
    subject = data.Subject.of(asset_id=None, zone_id=uuid.UUID(zone), metric="volume")
    now = datetime.now(UTC)
    y = await data.load_target(t.id, subject, start=now - timedelta(weeks=16), end=now)
    model = MODELS["traffic"](params={"n_estimators": 40}).fit(y.dropna().iloc[-24 * 42:])
    async with tenant_session(t.id) as s:
        row = await registry.create_version(
            s, tenant_id=t.id, name="traffic", kind="traffic", subject=subject.as_dict(),
            key=subject.key, model=model, metrics={"beats_seasonal_naive": True},
            training_start=None, training_end=None, created_by=None, actor=SYSTEM_ACTOR)
        await registry.promote(s, tenant_id=t.id, version_id=row.id, actor=SYSTEM_ACTOR)
    async with tenant_session(t.id) as s:
        expected = await forecasts.forecast(s, t.id, subject, horizon=timedelta(hours=24))
    values = [p["value"] for p in expected["points"]]
    threshold = (max(values) + min(values)) / 2  # crossed somewhere within the day
    first = next(p for p in expected["points"] if p["value"] > threshold)
    r = await c.post("/api/v1/alert-rules", headers=t.headers("operator"), json={
        "name": "Corridor volume high", "zone_id": zone, "metric": "volume",
        "condition": {"type": "threshold", "op": ">", "threshold": threshold}})
    assert r.status_code == 201, r.text

    r = await c.post("/api/v1/ai/recommendations", headers=t.headers("operator"),
                     json={"zone_id": zone})
    assert r.status_code == 200, r.text
    [rec] = r.json()["created"]
    ev = rec["evidence"]
    assert ev["kind"] == "preposition" and rec["incident_id"] is None and rec["zone_id"] == zone
    fc = ev["forecast"]
    assert fc["subject_key"] == subject.key and fc["model_version_id"] == str(row.id)
    assert fc["crossing"]["threshold"] == pytest.approx(threshold)
    assert datetime.fromisoformat(fc["crossing"]["ts"]) == first["ts"]
    assert fc["crossing"]["value"] == pytest.approx(first["value"])
    assert [p["value"] for p in fc["points"]] == pytest.approx(values[:48])
    assert ev["score_parts"]["forecast"] == 1.0


# --- the real local model (SmolLM2-135M-Instruct on llama.cpp, OpenAI-compatible) -------

@pytest.fixture(scope="module")
async def local_llm() -> AsyncIterator[Any]:
    """A real model server and the OpenAI-compatible backend pointed at it."""
    from civitas_ray.ai.llm import OpenAICompatLLM
    from civitas_ray.ai.llm.local import LocalServer, find_model_file

    find_model_file()  # fails clearly when the `ai` extra is missing
    server = LocalServer(n_ctx=4096, n_threads=2, startup_timeout_s=180)
    await server.start()
    llm = OpenAICompatLLM(name="local", base_url=server.url, context_tokens=4096,
                          timeout_s=180, max_retries=1)
    try:
        yield llm
    finally:
        await llm.aclose()
        await server.stop()


def _agent_ctx(t: TenantFixture, llm: Any) -> Any:
    from civitas_ray.ai.agents.base import AgentContext
    from civitas_ray.audit.service import Actor

    return AgentContext(tenant_id=t.id, llm=llm, user_id=t.users["operator"]["id"],
                        actor=Actor(type="user", id=str(t.users["operator"]["id"]),
                                    label=t.users["operator"]["email"]))


@pytest.mark.slow
async def test_policy_check_with_the_real_local_model(city: dict[str, Any], local_llm: Any,
                                                      admin_sql: Any) -> None:
    import json

    from civitas_ray.ai.agents import policy

    t: TenantFixture = city["tenant"]
    result = await policy.run(_agent_ctx(t, local_llm), action=PROHIBITED)
    assert result.status == "succeeded", result.error
    out = result.output
    assert out is not None and out["verdict"] in policy.VERDICTS
    assert out["mode"] == "generative" and out["backend"] == "local"
    assert out["model"] and out["model"] != policy.RULES_MODEL
    assert out["judged_by"] in ("llm-json", "llm-fallback")
    considered = {c["passage_id"] for c in out["considered"]}
    assert {c["passage_id"] for c in out["citations"]} <= considered
    assert out["verdict"] == "unclear" or out["citations"]
    _assert_spans(city, out["citations"])
    [run] = await admin_sql("select * from agent_run where id = $1", result.run_id)
    assert (run["model"], run["backend"], run["mode"]) == (out["model"], "local", "generative")
    assert json.loads(run["cited"]) == json.loads(json.dumps(out["citations"]))
    [audit] = await admin_sql("select after from audit_log where tenant_id = $1 and "
                              "action = 'agent.policy_compliance' and target_id = $2",
                              t.id, str(result.run_id))
    assert json.loads(audit["after"])["model"] == out["model"]


@pytest.mark.slow
async def test_recommender_with_the_real_local_model(city: dict[str, Any], local_llm: Any,
                                                     admin_sql: Any) -> None:
    import json

    from civitas_ray.ai.agents import recommender

    t: TenantFixture = city["tenant"]
    c: httpx.AsyncClient = city["client"]
    inc = await _incident(c, t.headers("operator"), title="Gas main leak on K Street",
                          domain="utilities", severity="critical")
    result = await recommender.run(_agent_ctx(t, local_llm), incident_id=uuid.UUID(inc["id"]))
    assert result.status == "succeeded", result.error
    out = result.output
    assert out is not None and out["mode"] == "generative" and out["backend"] == "local"
    [rid] = out["created"]
    [row] = await admin_sql("select * from recommendation where id = $1", uuid.UUID(rid))
    ev = json.loads(row["evidence"])
    assert row["incident_id"] == uuid.UUID(inc["id"]) and row["rank"] == 1
    assert row["model"] == out["model"] and ev["explained_by"]["mode"] == "generative"
    assert ev["policy"]["mode"] == "generative" and ev["kind"] == "dispatch_crew"
    assert row["body"].startswith(f"Incident #{inc['number']} is critical and open.")
    assert len(row["body"]) > len(f"Incident #{inc['number']} is critical and open.")
    _assert_spans(city, ev["policy"]["citations"])
    [run] = await admin_sql("select * from agent_run where id = $1", result.run_id)
    assert run["subject_id"] == inc["id"] and run["mode"] == "generative"
