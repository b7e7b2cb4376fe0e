"""Tenant isolation through the API: nothing of tenant A is visible or changeable from B.

Item routes are found in the OpenAPI schema; each collection that has item routes must
have a builder here, so a new collection without an isolation check fails this test.
"""

from __future__ import annotations

import re
import uuid
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


BUILDERS: dict[str, Builder] = {
    "/api/v1/users": _user, "/api/v1/api-keys": _api_key, "/api/v1/zones": _zone,
    "/api/v1/assets": _asset, "/api/v1/incidents": _incident, "/api/v1/tenants": _tenant,
    "/api/v1/alert-rules": _alert_rule, "/api/v1/streams": _asset, "/api/v1/files": _file,
}


def _collection(path: str) -> str | None:
    m = re.match(r"^(/api/v1/[a-z0-9_-]+)/\{[^}]+\}", path)
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
            if r.status_code not in (403, 404, 422):
                failures.append(f"{role} of B: {method.upper()} {path} -> {r.status_code}")
    assert not failures, "\n".join(failures)

    # A's objects are still intact after B's attempts, and lists never leak them.
    item_paths = {p for p, m in item_ops if m == "get"}
    for col, obj_id in ids.items():
        if col in ("/api/v1/tenants", "/api/v1/streams", "/api/v1/files"):
            continue
        if any(p.startswith(col + "/{") and p.count("{") == 1 for p in item_paths):
            r = await client.get(f"{col}/{obj_id}", headers=a.headers("tenant_admin"))
            assert r.status_code == 200, (col, r.text)
        listing = await client.get(col, headers=b.headers("tenant_admin"),
                                   params={"limit": 500})
        assert listing.status_code == 200
        assert obj_id not in {item["id"] for item in listing.json()["items"]}


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


