"""The agents end to end: real PostgreSQL and Redis, real DAIAD telemetry, the API, the
audit trail, and the runner's at-least-once consumer group (extractive mode: the
product's answer when no model is configured)."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert

from civitas_ray.ai.agents.runner import GROUP, AgentRunner, RunnerConfig
from civitas_ray.cache import get_redis
from civitas_ray.db.session import tenant_session
from civitas_ray.realtime.events import Event, publish, replay, stream_key
from civitas_ray.streams.timebase import iso_one
from civitas_ray.telemetry.models import Telemetry
from tests.unit.test_agents_data_quality import real_register_drop

pytestmark = [pytest.mark.e2e, pytest.mark.db]


async def _runs(admin_sql: Any, tenant_id: uuid.UUID, agent: str) -> list[Any]:
    return list(await admin_sql(
        "select * from agent_run where tenant_id = $1 and agent = $2 order by created_at",
        tenant_id, agent))


async def _audits(admin_sql: Any, tenant_id: uuid.UUID, action: str) -> list[Any]:
    return list(await admin_sql(
        "select * from audit_log where tenant_id = $1 and action = $2", tenant_id, action))


async def test_data_quality_on_a_real_daiad_meter_opens_an_incident_when_it_persists(
        client: httpx.AsyncClient, make_tenant: Any, admin_sql: Any, data_dir: Path) -> None:
    t = await make_tenant(roles=["tenant_admin", "operator", "viewer"])
    r = await client.post("/api/v1/assets", headers=t.headers("tenant_admin"), json={
        "name": "Meter 12", "kind": "meter",
        "metrics": {"water": {"unit": "L", "cumulative": True}},
        "geometry": {"type": "Point", "coordinates": [21.73, 38.24]}})
    assert r.status_code == 201, r.text
    asset_id = uuid.UUID(r.json()["id"])
    ts, reg, at = real_register_drop(data_dir)
    restarted = reg.copy()
    restarted[at:] = reg[at:] - reg[at] + 1.0  # the meter's real increments, new register
    async with tenant_session(t.id) as s:
        await s.execute(insert(Telemetry), [
            {"tenant_id": t.id, "asset_id": asset_id, "metric": "water",
             "ts": datetime.fromtimestamp(int(u) / 1e6, UTC), "value": float(v)}
            for u, v in zip(ts.tolist(), restarted.tolist(), strict=True)])
    body = {"asset_id": str(asset_id), "metric": "water",
            "as_of": iso_one(int(ts[-1]) + 1_000_000)}
    h = t.headers("operator")
    assert (await client.post("/api/v1/ai/data-quality", headers=t.headers("viewer"),
                              json=body)).status_code == 403
    first = (await client.post("/api/v1/ai/data-quality", headers=h, json=body)).json()
    assert first["status"] == "succeeded", first
    assert first["mode"] == "extractive" and first["model"] == "none" and first["cited"] == []
    out = first["output"]
    assert out["issue"] == "reset" and out["proposal"]["action"] == "recalibrate"
    assert out["evidence"]["last"]["since"] == iso_one(int(ts[at]))
    assert out["incident"] is None and out["persistent"] is False  # one check is not enough
    second = (await client.post("/api/v1/ai/data-quality", headers=h, json=body)).json()
    inc = second["output"]["incident"]
    assert second["output"]["persistent"] is True and inc["created"] is True
    third = (await client.post("/api/v1/ai/data-quality", headers=h, json=body)).json()
    assert third["output"]["incident"] == {**inc, "created": False}  # the same incident
    got = (await client.get(f"/api/v1/incidents/{inc['id']}", headers=h)).json()
    assert got["domain"] == "data_quality" and got["asset_id"] == str(asset_id)
    runs = await _runs(admin_sql, t.id, "data_quality")
    assert [r["status"] for r in runs] == ["succeeded"] * 3
    assert runs[0]["mode"] == "extractive" and runs[0]["subject_id"] == f"{asset_id}/water"
    audits = await _audits(admin_sql, t.id, "agent.data_quality")
    assert len(audits) == 3 and {a["target_id"] for a in audits} == {
        str(r["id"]) for r in runs}
    listed = (await client.get("/api/v1/ai/runs?agent=data_quality",
                               headers=t.headers("tenant_admin"))).json()
    assert listed["total"] == 3
    unknown = await client.post("/api/v1/ai/data-quality", headers=h,
                                json={**body, "asset_id": str(uuid.uuid4())})
    assert unknown.status_code == 404 and len(await _runs(admin_sql, t.id, "data_quality")) == 3


async def _incident(client: httpx.AsyncClient, t: Any, severity: str = "major") -> str:
    r = await client.post("/api/v1/incidents", headers=t.headers("operator"), json={
        "title": "Water main break on 5th Avenue", "severity": severity,
        "domain": "utilities", "description": "Flooding at 5th Ave and W 42nd St."})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def test_summary_and_notifications_through_the_api(
        client: httpx.AsyncClient, make_tenant: Any, admin_sql: Any) -> None:
    t = await make_tenant(roles=["tenant_admin", "operator", "analyst"])
    iid = await _incident(client, t)
    h = t.headers("operator")
    r = (await client.post(f"/api/v1/ai/incidents/{iid}/summary", headers=h)).json()
    assert r["status"] == "succeeded" and r["mode"] == "extractive" and "model" in r
    got = (await client.get(f"/api/v1/incidents/{iid}", headers=h)).json()
    assert got["summary"] == r["output"]["summary"] and "Water main break" in got["summary"]
    assert got["properties"]["ai_summary"]["mode"] == "extractive"
    events = (await client.get(f"/api/v1/incidents/{iid}/timeline", headers=h)).json()["items"]
    assert events[-1]["kind"] == "update" and "summary" in events[-1]["data"]["changed"]
    assert len(await _audits(admin_sql, t.id, "agent.summarizer")) == 1

    before = await get_redis().xrevrange(stream_key(t.id), count=1)
    after_id = str(before[0][0]) if before else "0-0"
    n1 = (await client.post("/api/v1/ai/notify", headers=h, json={"incident_id": iid})).json()
    assert n1["status"] == "succeeded" and n1["mode"] == "extractive"
    roles = {d["role"]: d["status"] for d in n1["output"]["decisions"]}
    assert roles == {"operator": "send", "tenant_admin": "send"}  # major; analyst not routed
    sent = set(n1["output"]["sent"])
    notes = [e for e in await replay(t.id, after_id) if e.type == "notification.created"]
    assert {e.data["user_id"] for e in notes} == sent and all(
        e.data["incident_id"] == iid for e in notes)
    n2 = (await client.post("/api/v1/ai/notify", headers=h, json={"incident_id": iid})).json()
    assert n2["output"]["sent"] == [] and {d["status"] for d in n2["output"]["decisions"]} == {
        "duplicate"}
    assert len(await _audits(admin_sql, t.id, "agent.notifier")) == 2
    run = (await client.get(f"/api/v1/ai/runs/{n1['run_id']}",
                            headers=t.headers("analyst"))).json()
    assert run["agent"] == "notifier" and run["inputs"]["incident_id"] == iid


async def test_runner_records_each_run_once_and_acks_after(
        client: httpx.AsyncClient, make_tenant: Any, admin_sql: Any) -> None:
    t = await make_tenant(roles=["operator", "tenant_admin"])
    iid = await _incident(client, t, severity="minor")
    redis = get_redis()
    key = stream_key(t.id)
    runner = AgentRunner(RunnerConfig(block_ms=200), consumer=f"test-{uuid.uuid4().hex[:6]}")
    await publish(t.id, [Event("zone.state", f"zone:{uuid.uuid4()}", {})])  # stream exists
    assert key in await runner.discover()
    await runner.read_once(block_ms=10)  # everything before our event (the incident's own)
    await runner.drain()
    base = {a: len(await _runs(admin_sql, t.id, a)) for a in ("summarizer", "notifier")}
    [eid] = await publish(t.id, [Event("incident.opened", "incidents",
                                       {"incident_id": iid, "created": True})])
    assert await runner.read_once(block_ms=1000) >= 1
    await runner.drain()
    runs = {a: await _runs(admin_sql, t.id, a) for a in ("summarizer", "notifier")}
    for agent in runs:
        mine = [r for r in runs[agent] if r["idempotency_key"] == f"{agent}:{eid}"]
        assert len(mine) == 1 and mine[0]["trigger"] == "event", agent
    pending = await redis.xpending(key, GROUP)
    assert pending["pending"] == 0  # acked once recorded

    # Delivered twice (a consumer died after running, before acking): still one run each.
    fields = (await redis.xrange(key, eid, eid))[0][1]
    assert await runner.handle(key, eid, fields) is True
    for agent in runs:
        again = await _runs(admin_sql, t.id, agent)
        assert len(again) == len(runs[agent]), agent
    assert runner.stats.duplicates >= 2

    # A consumer that read an event and died: another takes it over with XAUTOCLAIM.
    [eid2] = await publish(t.id, [Event("incident.updated", "incidents", {"incident_id": iid})])
    dead = await redis.xreadgroup(GROUP, "dead-consumer", {key: ">"}, count=10)
    assert any(str(e[0]) == eid2 for _, es in dead for e in es)
    other = AgentRunner(RunnerConfig(), consumer="survivor")
    await other.discover()
    assert await other.reclaim(min_idle_s=0) >= 1
    await other.drain()
    summ = await _runs(admin_sql, t.id, "summarizer")
    assert [r["idempotency_key"] for r in summ].count(f"summarizer:{eid2}") == 1
    assert (await redis.xpending(key, GROUP))["pending"] == 0
    assert base["summarizer"] <= len(summ)


@pytest.fixture(scope="module")
async def local_llm() -> Any:
    """The real local model behind the OpenAI-compatible backend (no fake, no skip)."""
    from civitas_ray.ai.llm import OpenAICompatLLM
    from civitas_ray.ai.llm.local import LocalServer

    async with LocalServer() as srv:
        llm = OpenAICompatLLM(name="local", base_url=srv.url, timeout_s=500.0,
                              context_tokens=2048)
        yield llm
        await llm.aclose()


async def _local_ctx(t: Any, llm: Any) -> Any:
    from civitas_ray.ai.agents.base import AgentContext
    from civitas_ray.audit.service import SYSTEM_ACTOR

    # Short answers: the CPU model on a shared 2-core machine writes ~2 tokens a second.
    return AgentContext(tenant_id=t.id, actor=SYSTEM_ACTOR, llm=llm,
                        extras={"max_tokens": 48})


async def _assert_generative_run(admin_sql: Any, t: Any, agent: str, result: Any) -> None:
    assert result.status == "succeeded", (agent, result.error)
    [row] = await _runs(admin_sql, t.id, agent)
    assert row["mode"] == "generative" and row["backend"] == "local" and row["model"]
    assert json.loads(row["cited"]) == []  # facts only: no documents in this tenant
    [audit] = await _audits(admin_sql, t.id, f"agent.{agent}")
    assert audit["target_id"] == str(row["id"])
    after = json.loads(audit["after"])
    assert after["model"] == row["model"] and after["mode"] == "generative"


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_summarizer_with_the_real_local_model(
        client: httpx.AsyncClient, make_tenant: Any, admin_sql: Any, local_llm: Any) -> None:
    from civitas_ray.ai.agents import summarizer

    t = await make_tenant(roles=["operator"])
    iid = uuid.UUID(await _incident(client, t))
    s = await summarizer.run(await _local_ctx(t, local_llm), incident_id=iid, force=True)
    await _assert_generative_run(admin_sql, t, "summarizer", s)
    assert s.output and s.output["written"] and s.output["summary"]


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_notifier_with_the_real_local_model(
        client: httpx.AsyncClient, make_tenant: Any, admin_sql: Any, local_llm: Any) -> None:
    from civitas_ray.ai.agents import notifier

    t = await make_tenant(roles=["operator"])
    iid = uuid.UUID(await _incident(client, t))
    n = await notifier.run(await _local_ctx(t, local_llm), incident_id=iid)
    await _assert_generative_run(admin_sql, t, "notifier", n)
    assert n.output and n.output["message"] and len(n.output["sent"]) == 1


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_data_quality_with_the_real_local_model(
        client: httpx.AsyncClient, make_tenant: Any, admin_sql: Any, data_dir: Path,
        local_llm: Any) -> None:
    from civitas_ray.ai.agents import data_quality

    t = await make_tenant(roles=["tenant_admin"])
    r = await client.post("/api/v1/assets", headers=t.headers("tenant_admin"), json={
        "name": "Meter", "kind": "meter",
        "metrics": {"water": {"unit": "L", "cumulative": True}},
        "geometry": {"type": "Point", "coordinates": [21.73, 38.24]}})
    asset_id = uuid.UUID(r.json()["id"])
    ts, reg, _ = real_register_drop(data_dir)
    async with tenant_session(t.id) as sess:
        await sess.execute(insert(Telemetry), [
            {"tenant_id": t.id, "asset_id": asset_id, "metric": "water",
             "ts": datetime.fromtimestamp(int(u) / 1e6, UTC), "value": float(v)}
            for u, v in zip(ts.tolist(), reg.tolist(), strict=True)])
    d = await data_quality.run(await _local_ctx(t, local_llm), asset_id=asset_id,
                               metric="water",
                               as_of=datetime.fromtimestamp(int(ts[-1]) / 1e6 + 1, UTC))
    await _assert_generative_run(admin_sql, t, "data_quality", d)
    assert d.output and d.output["issue"] == "reset" and d.output["explanation"]
