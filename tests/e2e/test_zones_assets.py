"""Zones and assets through the API, on real polygons: NYC boroughs, Montreal districts.

Points used (checked against the borough polygons): Times Square, the Empire State
Building and Central Park are in Manhattan, Prospect Park in Brooklyn, Yankee Stadium in
the Bronx; Hoboken is across the Hudson, in no borough.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from shapely.geometry import MultiPolygon, Polygon, shape

from civitas_ray.audit.service import SYSTEM_ACTOR
from civitas_ray.db.session import tenant_session
from tests.conftest import TenantFixture

pytestmark = pytest.mark.e2e

API = "/api/v1"
PROBLEM = "application/problem+json"

TIMES_SQUARE = (-73.9855, 40.7580)
EMPIRE_STATE = (-73.9857, 40.7484)
CENTRAL_PARK = (-73.9654, 40.7829)
PROSPECT_PARK = (-73.9690, 40.6602)
YANKEE_STADIUM = (-73.9262, 40.8296)
HOBOKEN = (-74.0324, 40.7440)

# A box around Times Square (not the Empire State Building), well inside Manhattan.
MIDTOWN = {"type": "Polygon", "coordinates": [[
    [-73.99, 40.75], [-73.98, 40.75], [-73.98, 40.765], [-73.99, 40.765], [-73.99, 40.75]]]}

MakeTenant = Callable[..., Awaitable[TenantFixture]]


@pytest.fixture(scope="module")
def boroughs(data_dir: Path) -> dict[str, dict[str, Any]]:
    """BoroName -> GeoJSON geometry of the five NYC boroughs."""
    fc = json.loads((data_dir / "geo" / "nyc_boroughs.geojson").read_text())
    return {f["properties"]["BoroName"]: f["geometry"] for f in fc["features"]}


@pytest.fixture(scope="module")
def montreal(data_dir: Path) -> list[dict[str, Any]]:
    fc = json.loads((data_dir / "geo" / "montreal_electoral_districts_2013.geojson")
                    .read_text())
    return fc["features"]


def point(lon_lat: tuple[float, float]) -> dict[str, Any]:
    return {"type": "Point", "coordinates": list(lon_lat)}


class City:
    """A tenant seen through the API as its tenant_admin."""

    def __init__(self, client: httpx.AsyncClient, tenant: TenantFixture) -> None:
        self.client = client
        self.tenant = tenant
        self.h = tenant.headers("tenant_admin")

    async def zone(self, name: str, geometry: dict[str, Any], code: str | None = None,
                   **extra: Any) -> dict[str, Any]:
        body = {"name": name, "code": code or name.replace(" ", "-").upper(),
                "geometry": geometry, **extra}
        r = await self.client.post(f"{API}/zones", json=body, headers=self.h)
        assert r.status_code == 201, r.text
        return r.json()

    async def asset(self, name: str, lon_lat: tuple[float, float], kind: str = "sensor",
                    **extra: Any) -> dict[str, Any]:
        body = {"name": name, "kind": kind, "geometry": point(lon_lat), **extra}
        r = await self.client.post(f"{API}/assets", json=body, headers=self.h)
        assert r.status_code == 201, r.text
        return r.json()

    async def get(self, path: str, **params: Any) -> Any:
        r = await self.client.get(f"{API}{path}", params=params, headers=self.h)
        assert r.status_code == 200, r.text
        return r.json()

    async def zone_of(self, asset: dict[str, Any]) -> str | None:
        return (await self.get(f"/assets/{asset['id']}"))["zone_id"]

    async def names(self, path: str, **params: Any) -> list[str]:
        return [i["name"] for i in (await self.get(path, **params))["items"]]


@pytest.fixture
async def city(client: httpx.AsyncClient, make_tenant: MakeTenant) -> City:
    return City(client, await make_tenant(roles=["tenant_admin", "viewer"], with_key=False))


async def test_assets_land_in_their_borough_and_follow_moves(
        city: City, boroughs: dict[str, dict[str, Any]]) -> None:
    zones = {n: await city.zone(n, boroughs[n], kind="borough")
             for n in ("Manhattan", "Brooklyn", "Bronx")}
    assert zones["Manhattan"]["geometry"]["type"] == "MultiPolygon"
    times = await city.asset("Times Square", TIMES_SQUARE)
    park = await city.asset("Prospect Park", PROSPECT_PARK, kind="weather_station")
    yankee = await city.asset("Yankee Stadium", YANKEE_STADIUM, kind="camera")
    hoboken = await city.asset("Hoboken", HOBOKEN)
    assert times["zone_id"] == zones["Manhattan"]["id"]
    assert park["zone_id"] == zones["Brooklyn"]["id"]
    assert yankee["zone_id"] == zones["Bronx"]["id"]
    assert hoboken["zone_id"] is None
    assert await city.names(f"/zones/{zones['Brooklyn']['id']}/assets") == ["Prospect Park"]

    # Across the East River: Manhattan -> Brooklyn, then out of the city altogether.
    r = await city.client.patch(f"{API}/assets/{times['id']}", headers=city.h,
                                json={"geometry": point((-73.9442, 40.6782))})
    assert r.status_code == 200, r.text
    assert r.json()["zone_id"] == zones["Brooklyn"]["id"]
    assert await city.names(f"/zones/{zones['Brooklyn']['id']}/assets") == [
        "Prospect Park", "Times Square"]
    assert await city.names(f"/zones/{zones['Manhattan']['id']}/assets") == []
    r = await city.client.patch(f"{API}/assets/{times['id']}", headers=city.h,
                                json={"geometry": point(HOBOKEN), "name": "Drifter"})
    assert r.json()["zone_id"] is None and r.json()["name"] == "Drifter"
    assert await city.names("/assets", zone_id=zones["Brooklyn"]["id"]) == ["Prospect Park"]


async def test_zone_changes_reassign_assets(city: City, boroughs: dict[str, dict[str, Any]],
                                            admin_sql: Callable[..., Awaitable[Any]]) -> None:
    manhattan = await city.zone("Manhattan", boroughs["Manhattan"])
    times = await city.asset("Times Square", TIMES_SQUARE)
    empire = await city.asset("Empire State", EMPIRE_STATE)
    park = await city.asset("Prospect Park", PROSPECT_PARK)
    assert await city.zone_of(times) == manhattan["id"]

    # A smaller zone inside Manhattan wins the assets it covers, and only those.
    midtown = await city.zone("Midtown", MIDTOWN, kind="neighbourhood")
    assert await city.zone_of(times) == midtown["id"]
    assert await city.zone_of(empire) == manhattan["id"]

    # Deleting it hands them back to the next smallest zone; restoring takes them again.
    r = await city.client.delete(f"{API}/zones/{midtown['id']}", headers=city.h)
    assert r.status_code == 200 and r.json()["deleted_at"] is not None
    assert await city.zone_of(times) == manhattan["id"]
    r = await city.client.post(f"{API}/zones/{midtown['id']}/restore", headers=city.h)
    assert r.status_code == 200 and r.json()["deleted_at"] is None
    assert await city.zone_of(times) == midtown["id"]

    # Reshaping "Midtown" onto Brooklyn: Times Square goes back, Prospect Park comes in.
    far_box = {"type": "Polygon", "coordinates": [[
        [-73.98, 40.65], [-73.96, 40.65], [-73.96, 40.67], [-73.98, 40.67], [-73.98, 40.65]]]}
    r = await city.client.patch(f"{API}/zones/{midtown['id']}", headers=city.h,
                                json={"geometry": far_box})
    assert r.status_code == 200, r.text
    assert shape(r.json()["geometry"]).equals(shape(far_box))
    assert await city.zone_of(times) == manhattan["id"]
    assert await city.zone_of(park) == midtown["id"]

    # Without Manhattan, its assets belong nowhere; restored, they come back.
    await city.client.delete(f"{API}/zones/{manhattan['id']}", headers=city.h)
    assert await city.zone_of(times) is None and await city.zone_of(empire) is None
    assert await city.names("/assets", within=midtown["id"]) == ["Prospect Park"]
    await city.client.post(f"{API}/zones/{manhattan['id']}/restore", headers=city.h)
    assert await city.zone_of(empire) == manhattan["id"]

    rows = await admin_sql(
        "select action, detail, after->'geometry'->>'type' as geom from audit_log "
        "where tenant_id = $1 and target_id = $2 order by seq", city.tenant.id, midtown["id"])
    assert [r["action"] for r in rows] == ["zone.create", "zone.delete", "zone.restore",
                                           "zone.update"]
    assert [r["detail"] for r in rows] == ["1 asset(s) changed zone"] * 3 + [
        "2 asset(s) changed zone"]
    assert {r["geom"] for r in rows} == {"MultiPolygon"}  # a digest, not the coordinates


async def test_spatial_filters(city: City, boroughs: dict[str, dict[str, Any]]) -> None:
    manhattan = await city.zone("Manhattan", boroughs["Manhattan"])
    brooklyn = await city.zone("Brooklyn", boroughs["Brooklyn"])
    midtown = await city.zone("Midtown", MIDTOWN)
    for name, where in (("Times Square", TIMES_SQUARE), ("Empire State", EMPIRE_STATE),
                        ("Central Park", CENTRAL_PARK), ("Prospect Park", PROSPECT_PARK),
                        ("Hoboken", HOBOKEN)):
        await city.asset(name, where)

    midtown_box = "-73.99,40.745,-73.98,40.76"
    assert await city.names("/assets", bbox=midtown_box) == ["Empire State", "Times Square"]
    assert await city.names("/zones", bbox=midtown_box) == ["Manhattan", "Midtown"]
    assert await city.names("/zones", bbox="-74.2,40.0,-74.1,40.1") == []
    # Inside the polygon, whatever their zone (Times Square is assigned to Midtown).
    assert await city.names("/assets", within=manhattan["id"]) == [
        "Central Park", "Empire State", "Times Square"]
    assert await city.names("/assets", zone_id=manhattan["id"]) == [
        "Central Park", "Empire State"]
    assert await city.names("/assets", within=brooklyn["id"]) == ["Prospect Park"]

    # near: latitude first; nearest first; each item carries its distance.
    near = f"{TIMES_SQUARE[1]},{TIMES_SQUARE[0]}"
    page = await city.get("/assets", near=near, radius=1500)
    assert [i["name"] for i in page["items"]] == ["Times Square", "Empire State"]
    assert page["items"][0]["distance_m"] == pytest.approx(0, abs=0.01)
    assert 1000 < page["items"][1]["distance_m"] < 1120  # about 1.07 km down 7th/5th Ave
    page = await city.get("/assets", near=near, radius=3500)
    assert [i["name"] for i in page["items"]] == ["Times Square", "Empire State",
                                                  "Central Park"]
    assert (await city.get("/assets"))["items"][0]["distance_m"] is None
    zones_near = await city.get("/zones", near=near, radius=5)
    assert [(z["name"], z["distance_m"]) for z in zones_near["items"]] == [
        ("Manhattan", 0.0), ("Midtown", 0.0)]
    assert await city.names(f"/zones/{midtown['id']}/assets") == ["Times Square"]

    # The GeoJSON variant takes the same filters.
    r = await city.client.get(f"{API}/assets.geojson", params={"bbox": midtown_box},
                              headers=city.h)
    assert r.status_code == 200 and r.headers["content-type"] == "application/geo+json"
    fc = r.json()
    assert fc["type"] == "FeatureCollection" and fc["total"] == 2
    assert [f["properties"]["name"] for f in fc["features"]] == ["Empire State", "Times Square"]
    assert fc["features"][1]["geometry"] == point(TIMES_SQUARE)


async def test_montreal_sorting_paging_and_geojson_round_trip(
        city: City, montreal: list[dict[str, Any]]) -> None:
    districts = montreal[:12]
    sent = {}
    for f in districts:
        number, _, name = f["properties"]["district"].partition("-")
        sent[number] = f["geometry"]
        await city.zone(name, f["geometry"], code=f"D{number}", kind="electoral_district",
                        properties={"district": f["properties"]["district"]})
    names = sorted(f["properties"]["district"].partition("-")[2] for f in districts)

    assert await city.names("/zones", limit=500) == names
    assert await city.names("/zones", sort="-name") == names[::-1]
    codes = [z["code"] for z in (await city.get("/zones", sort="code"))["items"]]
    assert codes == sorted(codes) and len(codes) == 12
    created = await city.names("/zones", sort="created_at")
    assert created == [f["properties"]["district"].partition("-")[2] for f in districts]
    assert await city.names("/zones", sort="-created_at") == created[::-1]

    first = await city.get("/zones", limit=5)
    assert (first["total"], first["next_offset"]) == (12, 5)
    last = await city.get("/zones", limit=5, offset=10)
    assert [z["name"] for z in last["items"]] == names[10:] and last["next_offset"] is None
    assert await city.names("/zones", q="saint") == sorted(
        n for n in names if "saint" in n.lower())

    r = await city.client.get(f"{API}/zones.geojson", params={"limit": 500}, headers=city.h)
    assert r.status_code == 200 and r.headers["content-type"] == "application/geo+json"
    fc = r.json()
    assert fc["type"] == "FeatureCollection" and len(fc["features"]) == 12
    for feature in fc["features"]:
        assert feature["type"] == "Feature" and feature["geometry"]["type"] == "MultiPolygon"
        assert "geometry" not in feature["properties"]
        original = shape(sent[feature["properties"]["code"][1:]])
        if isinstance(original, Polygon):
            original = MultiPolygon([original])  # how polygons are stored
        returned = shape(feature["geometry"])
        # Same vertices exactly (only ring orientation may be normalised).
        assert returned.normalize().equals_exact(original.normalize(), tolerance=0)
        assert feature["properties"]["properties"]["district"].endswith(
            feature["properties"]["name"])


async def test_validation_errors_are_problem_details(city: City) -> None:
    bow_tie = {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}
    cases: list[tuple[dict[str, Any], str]] = [
        (bow_tie, "geometry_invalid"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1]]]},
         "ring_not_closed"),
        ({"type": "Polygon", "coordinates": [[[0, 0], [200, 0], [1, 1], [0, 0]]]},
         "coordinate_out_of_range"),
        ({"type": "Point", "coordinates": [0, 0]}, "geometry_type"),
    ]
    for geometry, error_type in cases:
        r = await city.client.post(f"{API}/zones", headers=city.h,
                                   json={"name": "Bad", "code": "BAD", "geometry": geometry})
        assert r.status_code == 422, r.text
        assert r.headers["content-type"].startswith(PROBLEM)
        body = r.json()
        assert body["status"] == 422 and body["type"].endswith("/validation-failed")
        assert body["errors"][0]["type"] == error_type
        assert body["errors"][0]["loc"][:2] == ["body", "geometry"]
    r = await city.client.post(f"{API}/zones", headers=city.h,
                               json={"name": "Bad", "code": "BAD", "geometry": bow_tie})
    assert "Self-intersection" in r.json()["errors"][0]["msg"]

    # NaN is not JSON, but Python's parser accepts it: it must still be refused.
    raw = '{"name": "x", "kind": "sensor", "geometry": {"type": "Point", "coordinates": [NaN, 1]}}'
    r = await city.client.post(f"{API}/assets", content=raw,
                               headers={**city.h, "Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["errors"][0]["type"] == "coordinate_not_finite"

    zone = await city.zone("Midtown", MIDTOWN)
    r = await city.client.post(f"{API}/assets", headers=city.h, json={
        "name": "x", "kind": "sensor", "geometry": point(TIMES_SQUARE), "zone_id": zone["id"]})
    assert r.status_code == 422 and "derived" in r.json()["errors"][0]["msg"]
    r = await city.client.post(f"{API}/assets", headers=city.h, json={
        "name": "x", "kind": "toaster", "geometry": point(TIMES_SQUARE)})
    assert r.status_code == 422 and r.json()["errors"][0]["loc"] == ["body", "kind"]
    r = await city.client.post(f"{API}/assets", headers=city.h, json={
        "name": "x", "kind": "meter", "geometry": point(TIMES_SQUARE),
        "metrics": {"flow": {"unit": "l/min", "min": 10, "max": 1}}})
    assert r.status_code == 422
    r = await city.client.patch(f"{API}/zones/{zone['id']}", headers=city.h,
                                json={"geometry": None})
    assert r.status_code == 422 and "cannot be null" in r.json()["errors"][0]["msg"]

    for params in ({"bbox": "1,2,3"}, {"bbox": "-73,40,-74,41"}, {"near": "-122.4,37.8"},
                   {"near": "40.7,-73.9", "radius": 0}, {"limit": 501}, {"sort": "geom"}):
        r = await city.client.get(f"{API}/assets", params=params, headers=city.h)
        assert r.status_code == 422, params
        assert r.headers["content-type"].startswith(PROBLEM)
        assert r.json()["errors"][0]["loc"][0] == "query"


async def test_conflicts_soft_delete_and_restore(city: City) -> None:
    zone = await city.zone("Midtown", MIDTOWN)
    r = await city.client.post(f"{API}/zones", headers=city.h,
                               json={"name": "Again", "code": "MIDTOWN", "geometry": MIDTOWN})
    assert r.status_code == 409 and r.headers["content-type"].startswith(PROBLEM)
    sensor = await city.asset("Loop 1", TIMES_SQUARE, external_id="LD-1",
                              metrics={"speed": {"unit": "km/h", "min": 0, "max": 160}})
    assert sensor["metrics"] == {"speed": {"unit": "km/h", "min": 0.0, "max": 160.0}}
    r = await city.client.post(f"{API}/assets", headers=city.h, json={
        "name": "Loop 1 bis", "kind": "sensor", "external_id": "LD-1",
        "geometry": point(EMPIRE_STATE)})
    assert r.status_code == 409

    r = await city.client.delete(f"{API}/assets/{sensor['id']}", headers=city.h)
    assert r.status_code == 200 and r.json()["deleted_at"]
    r = await city.client.get(f"{API}/assets/{sensor['id']}", headers=city.h)
    assert r.status_code == 404
    assert await city.names("/assets") == []
    assert await city.names("/assets", include_deleted=True) == ["Loop 1"]
    # Its external id is free again while it is deleted; restoring it then conflicts.
    twin = await city.asset("Loop 1 twin", EMPIRE_STATE, external_id="LD-1")
    r = await city.client.post(f"{API}/assets/{sensor['id']}/restore", headers=city.h)
    assert r.status_code == 409
    r = await city.client.patch(f"{API}/assets/{twin['id']}", headers=city.h,
                                json={"external_id": None})
    assert r.status_code == 200 and r.json()["external_id"] is None
    r = await city.client.post(f"{API}/assets/{sensor['id']}/restore", headers=city.h)
    assert r.status_code == 200 and r.json()["deleted_at"] is None
    assert r.json()["zone_id"] == zone["id"]

    r = await city.client.delete(f"{API}/zones/{zone['id']}", headers=city.h)
    assert (await city.get("/zones", include_deleted=True))["total"] == 1
    assert (await city.get("/zones"))["total"] == 0
    await city.zone("Midtown again", MIDTOWN, code="MIDTOWN")
    r = await city.client.post(f"{API}/zones/{zone['id']}/restore", headers=city.h)
    assert r.status_code == 409


async def test_viewer_reads_only_and_tenants_are_isolated(
        city: City, client: httpx.AsyncClient, make_tenant: MakeTenant) -> None:
    zone = await city.zone("Midtown", MIDTOWN)
    asset = await city.asset("Times Square", TIMES_SQUARE)
    viewer = city.tenant.headers("viewer")
    assert (await client.get(f"{API}/zones/{zone['id']}", headers=viewer)).status_code == 200
    assert (await client.get(f"{API}/assets", headers=viewer)).json()["total"] == 1
    for method, path, body in (
            ("POST", "/zones", {"name": "x", "code": "X", "geometry": MIDTOWN}),
            ("PATCH", f"/zones/{zone['id']}", {"name": "y"}),
            ("DELETE", f"/zones/{zone['id']}", None),
            ("POST", "/assets", {"name": "x", "kind": "sensor", "geometry": point(HOBOKEN)}),
            ("PATCH", f"/assets/{asset['id']}", {"name": "y"}),
            ("POST", f"/assets/{asset['id']}/restore", None)):
        r = await client.request(method, f"{API}{path}", json=body, headers=viewer)
        assert r.status_code == 403, (method, path)
        assert r.headers["content-type"].startswith(PROBLEM)

    other = await make_tenant(roles=["tenant_admin"], with_key=False)
    h = other.headers("tenant_admin")
    for method, path, body in (
            ("GET", f"/zones/{zone['id']}", None),
            ("PATCH", f"/zones/{zone['id']}", {"name": "stolen"}),
            ("DELETE", f"/zones/{zone['id']}", None),
            ("POST", f"/zones/{zone['id']}/restore", None),
            ("GET", f"/zones/{zone['id']}/assets", None),
            ("GET", f"/assets/{asset['id']}", None),
            ("PATCH", f"/assets/{asset['id']}", {"geometry": point(HOBOKEN)}),
            ("DELETE", f"/assets/{asset['id']}", None),
            ("GET", f"/assets?within={zone['id']}", None)):
        r = await client.request(method, f"{API}{path}", json=body, headers=h)
        assert r.status_code == 404, (method, path, r.text)
    assert (await client.get(f"{API}/zones", headers=h)).json()["total"] == 0
    # The other tenant's own zone over the same spot does not capture this tenant's asset.
    r = await client.post(f"{API}/zones", headers=h,
                          json={"name": "Mine", "code": "MIDTOWN", "geometry": MIDTOWN})
    assert r.status_code == 201  # codes are unique per tenant only
    assert await city.zone_of(asset) == zone["id"]
    assert (await client.get(f"{API}/zones/{zone['id']}", headers=city.h)).json()["name"] == (
        "Midtown")


async def test_service_contract_for_seeders(make_tenant: MakeTenant,
                                            boroughs: dict[str, dict[str, Any]]) -> None:
    """The keyword-only services work without HTTP, and rows loaded in the session see
    re-assignments made by set-based updates."""
    from civitas_ray.assets import service as assets
    from civitas_ray.assets.schemas import AssetCreate, AssetKind
    from civitas_ray.zones import service as zones
    from civitas_ray.zones.schemas import ZoneCreate

    tenant = await make_tenant(roles=["viewer"], with_key=False)
    async with tenant_session(tenant.id) as s:
        asset = await assets.create(session=s, tenant_id=tenant.id, actor=SYSTEM_ACTOR,
                                    data=AssetCreate(name="Bronx cam", kind=AssetKind.CAMERA,
                                                     geometry=point(YANKEE_STADIUM)))
        assert asset.zone_id is None
        bronx = await zones.create(session=s, tenant_id=tenant.id, actor=SYSTEM_ACTOR,
                                   data=ZoneCreate(name="Bronx", code="BX",
                                                   geometry=boroughs["Bronx"]))
        assert asset.zone_id == bronx.id
        hits, total = await assets.list_(session=s, tenant_id=tenant.id, limit=10, offset=0,
                                         within=bronx.id)
        assert total == 1 and hits == [(asset, None)]
        missing = uuid.uuid4()
        assert await zones.get(session=s, tenant_id=tenant.id, zone_id=missing) is None
