"""Tenant isolation through the API: nothing of tenant A is visible or changeable from B.

Item routes are found in the OpenAPI schema; each collection that has item routes must
have a builder here, so a new collection without an isolation check fails this test.
"""

from __future__ import annotations

import csv
import io
import re
import uuid
import zipfile
from collections.abc import Awaitable, Callable

import httpx
import pytest

from tests.conftest import TenantFixture

pytestmark = pytest.mark.e2e

MANHATTAN_SQUARE = {"type": "Polygon", "coordinates": [[
    [-73.99, 40.75], [-73.97, 40.75], [-73.97, 40.77], [-73.99, 40.77], [-73.99, 40.75]]]}

Builder = Callable[[httpx.AsyncClient, TenantFixture], Awaitable[str]]


async def _user(c: httpx.AsyncClient, t: TenantFixture) -> str:
    return str(t.users["viewer"]["id"])


async def _api_key(c: httpx.AsyncClient, t: TenantFixture) -> str:
    r = await c.post("/api/v1/api-keys", headers=t.headers("tenant_admin"), json={"name": "k"})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def _zone(c: httpx.AsyncClient, t: TenantFixture) -> str:
    r = await c.post("/api/v1/zones", headers=t.headers("tenant_admin"), json={
        "name": "Midtown", "code": "MID-" + uuid.uuid4().hex[:4], "geometry": MANHATTAN_SQUARE})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def _asset(c: httpx.AsyncClient, t: TenantFixture) -> str:
    r = await c.post("/api/v1/assets", headers=t.headers("tenant_admin"), json={
        "name": "Counter 1", "kind": "sensor",
        "geometry": {"type": "Point", "coordinates": [-73.98, 40.76]}})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def _incident(c: httpx.AsyncClient, t: TenantFixture) -> str:
    r = await c.post("/api/v1/incidents", headers=t.headers("operator"), json={
        "title": "Water main break", "severity": "major", "domain": "utilities"})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def _tenant(c: httpx.AsyncClient, t: TenantFixture) -> str:
    return str(t.id)


async def _alert_rule(c: httpx.AsyncClient, t: TenantFixture) -> str:
    asset_id = await _asset(c, t)
    r = await c.post("/api/v1/alert-rules", headers=t.headers("operator"), json={
        "asset_id": asset_id, "metric": "level", "condition": {"op": ">", "threshold": 3}})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


async def _file(c: httpx.AsyncClient, t: TenantFixture) -> str:
    # Signed-URL routes: a bearer token of any tenant is no signature, so B gets 403.
    from civitas_ray.storage import tenant_key

    return tenant_key(t.id, "isolation", "report.txt")


async def _document(c: httpx.AsyncClient, t: TenantFixture) -> str:
    r = await c.post("/api/v1/documents", headers={
        **t.headers("tenant_admin"), "Content-Type": "text/plain"},
        params={"title": "Snow routes"}, content=b"Snow emergency routes are cleared first.")
    assert r.status_code == 202, r.text
    return str(r.json()["id"])


async def _feed(c: httpx.AsyncClient, t: TenantFixture) -> str:
    r = await c.post("/api/v1/mobility/feeds", headers=t.headers("tenant_admin"),
                     json={"name": "caltrain-" + uuid.uuid4().hex[:6]})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


_GTFS_IMPORTED: set[uuid.UUID] = set()


async def _gtfs_first(c: httpx.AsyncClient, t: TenantFixture, file: str, column: str) -> str:
    """The first id of a GTFS file of the real Caltrain feed, imported for A."""
    from tests.conftest import DATA_DIR

    zip_path = DATA_DIR / "gtfs" / "caltrain" / "caltrain_gtfs_20230922.zip"
    if t.id not in _GTFS_IMPORTED:  # once per tenant: two feeds would make ids ambiguous
        feed_id = await _feed(c, t)
        r = await c.post(f"/api/v1/mobility/feeds/{feed_id}/static",
                         headers=t.headers("tenant_admin"), files={
                             "file": ("caltrain.zip", zip_path.read_bytes(), "application/zip")})
        assert r.status_code == 201, r.text
        _GTFS_IMPORTED.add(t.id)
    with zipfile.ZipFile(zip_path) as z:
        first = next(csv.DictReader(io.TextIOWrapper(z.open(file), "utf-8-sig")))
    return str(first[column])


async def _trip(c: httpx.AsyncClient, t: TenantFixture) -> str:
    return await _gtfs_first(c, t, "trips.txt", "trip_id")


async def _stop(c: httpx.AsyncClient, t: TenantFixture) -> str:
    return await _gtfs_first(c, t, "stops.txt", "stop_id")


async def _row(t: TenantFixture, row: object) -> str:
    """Rows no route creates synchronously (registry versions, jobs, agent runs)."""
    from civitas_ray.db.session import tenant_session

    async with tenant_session(t.id) as s:
        s.add(row)
        await s.flush()
        return str(row.id)  # type: ignore[attr-defined]


async def _model_version(c: httpx.AsyncClient, t: TenantFixture) -> str:
    from civitas_ray.ml.registry_models import ModelVersion

    return await _row(t, ModelVersion(tenant_id=t.id, name="traffic", kind="traffic",
                                      subject_key=f"asset:{uuid.uuid4()}:volume", version=1,
                                      stage="candidate", metrics={"beats_seasonal_naive": True}))


async def _ml_job(c: httpx.AsyncClient, t: TenantFixture) -> str:
    from civitas_ray.ml.registry_models import MlJob

    return await _row(t, MlJob(tenant_id=t.id, kind="train", status="queued", request={}))


async def _agent_run(c: httpx.AsyncClient, t: TenantFixture) -> str:
    from civitas_ray.ai.agents.models import AgentRun

    return await _row(t, AgentRun(tenant_id=t.id, agent="summarizer", trigger="api",
                                  status="succeeded", inputs={}))


async def _recommendation(c: httpx.AsyncClient, t: TenantFixture) -> str:
    from civitas_ray.recommendations.models import Recommendation

    return await _row(t, Recommendation(tenant_id=t.id, title="Send a crew", body="",
                                        rank=1, score=0.5, status="proposed"))


BUILDERS: dict[str, Builder] = {
    "/api/v1/users": _user, "/api/v1/api-keys": _api_key, "/api/v1/zones": _zone,
    "/api/v1/assets": _asset, "/api/v1/incidents": _incident, "/api/v1/tenants": _tenant,
    "/api/v1/alert-rules": _alert_rule, "/api/v1/streams": _asset, "/api/v1/files": _file,
    "/api/v1/documents": _document, "/api/v1/recommendations": _recommendation,
    "/api/v1/ml/models": _model_version, "/api/v1/ml/jobs": _ml_job,
    "/api/v1/ai/runs": _agent_run, "/api/v1/ai/incidents": _incident,
    "/api/v1/forecasts/zones": _zone,
    "/api/v1/mobility/feeds": _feed, "/api/v1/mobility/trips": _trip,
    "/api/v1/mobility/stops": _stop,
}
# Item routes that act on another collection's object (a forecast of a zone, a summary
# of an incident): isolation is checked on them, but they are no resource to list.
ACTIONS = {"/api/v1/ai/incidents", "/api/v1/forecasts/zones"}


def _collection(path: str) -> str | None:
    """The collection of an item route, however deep: /api/v1/ml/models/{id} -> ml/models."""
    m = re.match(r"^(/api/v1(?:/[a-z0-9_.-]+)+?)/\{[^}]+\}", path)
    return m.group(1) if m else None


async def test_no_cross_tenant_reads_or_writes(client: httpx.AsyncClient, make_tenant) -> None:
    a = await make_tenant()
    b = await make_tenant()
    schema = (await client.get("/openapi.json")).json()
    item_ops = [(p, m) for p, item in schema["paths"].items() for m in item
                if m in {"get", "post", "patch", "put", "delete"} and _collection(p)]
    collections = {_collection(p) for p, _ in item_ops}
    unknown = collections - set(BUILDERS)
    assert not unknown, f"collections without an isolation builder: {unknown}"

    ids = {col: await BUILDERS[col](client, a) for col in collections if col}
    failures = []
    for path, method in item_ops:
        col = _collection(path)
        assert col
        url = re.sub(r"\{[^}]+\}", ids[col], path, count=1)
        url = re.sub(r"\{[^}]+\}", str(uuid.uuid4()), url)
        for role in ("tenant_admin", "operator", "viewer"):
            r = await client.request(method.upper(), url, headers=b.headers(role), json={})
            # 415/422: the body is refused before any lookup, so nothing is learnt either.
            if r.status_code not in (403, 404, 415, 422):
                failures.append(f"{role} of B: {method.upper()} {path} -> {r.status_code}")
    assert not failures, "\n".join(failures)

    # A's objects are still intact after B's attempts, and lists never leak them.
    item_paths = {p for p, m in item_ops if m == "get"}
    list_paths = {p for p, item in schema["paths"].items() if "get" in item}
    for col, obj_id in ids.items():
        if col in ("/api/v1/tenants", "/api/v1/streams", "/api/v1/files") or col in ACTIONS:
            continue
        if any(re.fullmatch(re.escape(col) + r"/\{[^}]+\}", p) for p in item_paths):
            r = await client.get(f"{col}/{obj_id}", headers=a.headers("tenant_admin"))
            assert r.status_code == 200, (col, r.text)
        if col not in list_paths:
            continue
        listing = await client.get(col, headers=b.headers("tenant_admin"),
                                   params={"limit": 500})
        assert listing.status_code == 200, (col, listing.text)
        # Pages, plain lists and GeoJSON collections alike: A's id appears nowhere in B's.
        assert obj_id not in listing.text, (col, obj_id)


async def test_platform_admin_sees_all_tenants_others_only_their_own(
        client: httpx.AsyncClient, make_tenant) -> None:
    a = await make_tenant(roles=["platform_admin", "tenant_admin"])
    b = await make_tenant(roles=["tenant_admin"])
    r = await client.get("/api/v1/tenants", headers=a.headers("platform_admin"),
                         params={"limit": 500})
    assert r.status_code == 200
    total = r.json()["total"]
    assert total >= 2
    r = await client.get(f"/api/v1/tenants/{b.id}", headers=a.headers("platform_admin"))
    assert r.status_code == 200 and r.json()["slug"] == b.slug
    r = await client.get(f"/api/v1/tenants/{b.id}", headers=a.headers("tenant_admin"))
    assert r.status_code == 404
    r = await client.get("/api/v1/tenants/current", headers=b.headers("tenant_admin"))
    assert r.json()["id"] == str(b.id)


