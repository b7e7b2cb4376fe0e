"""GTFS static import through the API: counts, zones, atomic activation, errors, isolation.

Every expected figure is computed here from the zip with the csv module, independently of
the importer.
"""

from __future__ import annotations

import asyncio
import csv
import io
import statistics
import uuid
import zipfile
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from civitas_ray.config import get_settings

pytestmark = [pytest.mark.e2e, pytest.mark.db]

API = "/api/v1"
CALTRAIN = Path("gtfs/caltrain/caltrain_gtfs_20230922.zip")
CAIRNS = Path("gtfs/cairns/cairns_gtfs_2014.zip")
NYC = Path("gtfs/nyc_subway/nyc_subway_gtfs_routes1-2_20241215.zip")


def _rows(data: bytes, name: str) -> list[dict[str, str]]:
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        if name not in z.namelist():
            return []
        text = z.read(name).decode("utf-8-sig")
    return [{k.strip(): (v or "").strip() for k, v in r.items()}
            for r in csv.DictReader(io.StringIO(text))]


def _seconds(hms: str) -> int:
    h, m, s = (int(x) for x in hms.split(":"))
    return h * 3600 + m * 60 + s


def _expected_counts(data: bytes) -> dict[str, int]:
    shapes = _rows(data, "shapes.txt")
    return {"agency": len(_rows(data, "agency.txt")), "routes": len(_rows(data, "routes.txt")),
            "stops": len(_rows(data, "stops.txt")), "trips": len(_rows(data, "trips.txt")),
            "stop_times": len(_rows(data, "stop_times.txt")),
            "calendar": len(_rows(data, "calendar.txt")),
            "calendar_dates": len(_rows(data, "calendar_dates.txt")),
            "shapes": len({r["shape_id"] for r in shapes}), "shape_points": len(shapes)}


def _rezip(data: bytes, *, drop: tuple[str, ...] = (),
           edit: dict[str, Callable[[str], str]] | None = None) -> bytes:
    """A copy of the zip with files dropped or their text changed."""
    out = io.BytesIO()
    with zipfile.ZipFile(io.BytesIO(data)) as src, zipfile.ZipFile(out, "w") as dst:
        for name in src.namelist():
            if name in drop:
                continue
            content = src.read(name)
            if edit and name in edit:
                content = edit[name](content.decode("utf-8-sig")).encode()
            dst.writestr(name, content)
    return out.getvalue()


class Transit:
    def __init__(self, client: httpx.AsyncClient, headers: dict[str, str]) -> None:
        self.client, self.h = client, headers

    async def feed(self, name: str) -> str:
        r = await self.client.post(f"{API}/mobility/feeds", json={"name": name},
                                   headers=self.h)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    async def upload(self, feed_id: str, data: bytes, **params: Any) -> httpx.Response:
        return await self.client.post(
            f"{API}/mobility/feeds/{feed_id}/static", params=params, headers=self.h,
            files={"file": ("feed.zip", data, "application/zip")})

    async def get(self, path: str, **params: Any) -> Any:
        r = await self.client.get(f"{API}{path}", params=params, headers=self.h)
        assert r.status_code == 200, r.text
        return r.json()


async def _zone(client: httpx.AsyncClient, headers: dict[str, str], code: str,
                lat_lo: float, lat_hi: float) -> str:
    ring = [[-123.5, lat_lo], [-121.0, lat_lo], [-121.0, lat_hi], [-123.5, lat_hi],
            [-123.5, lat_lo]]
    r = await client.post(f"{API}/zones", headers=headers, json={
        "name": code, "code": code, "geometry": {"type": "Polygon", "coordinates": [ring]}})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


@pytest.fixture
async def operator(make_tenant: Callable[..., Awaitable[Any]],
                   client: httpx.AsyncClient) -> tuple[Any, Transit]:
    t = await make_tenant(roles=["tenant_admin", "operator", "viewer"], with_key=False)
    return t, Transit(client, t.headers("operator"))


async def test_caltrain_import_counts_zones_and_reads(
        operator: tuple[Any, Transit], client: httpx.AsyncClient, data_dir: Path) -> None:
    tenant, api = operator
    data = (data_dir / CALTRAIN).read_bytes()
    stops = _rows(data, "stops.txt")
    split = statistics.median(float(s["stop_lat"]) for s in stops)
    north = await _zone(client, tenant.headers("tenant_admin"), "north", split, 38.5)
    south = await _zone(client, tenant.headers("tenant_admin"), "south", 36.5, split)

    feed_id = await api.feed("caltrain")
    r = await api.upload(feed_id, data)
    assert r.status_code == 201, r.text
    version = r.json()
    assert version["status"] == "ready" and version["active"] is True
    assert version["errors"] == []
    expected = _expected_counts(data)
    assert {k: version["counts"][k] for k in expected} == expected
    assert version["agency_timezone"] == _rows(data, "agency.txt")[0]["agency_timezone"]
    info = _rows(data, "feed_info.txt")[0]
    assert version["feed_version"] == info["feed_version"]

    # Every stop lands in the zone whose polygon covers it (the split line is in both:
    # ST_Covers includes the boundary, and the smaller zone wins).
    want = {s["stop_id"]: (north if float(s["stop_lat"]) > split else south) for s in stops
            if float(s["stop_lat"]) != split}
    fc = await api.get("/mobility/stops", feed="caltrain", limit=10_000)
    assert fc["type"] == "FeatureCollection" and fc["total"] == len(stops)
    got = {f["properties"]["stop_id"]: f["properties"]["zone_id"] for f in fc["features"]}
    assert {k: got[k] for k in want} == want
    assert version["counts"]["stops_in_zones"] == len(stops)
    first = next(s for s in stops if s["stop_id"] == fc["features"][0]["properties"]["stop_id"])
    assert fc["features"][0]["geometry"]["coordinates"] == pytest.approx(
        [float(first["stop_lon"]), float(first["stop_lat"])])
    in_north = await api.get("/mobility/stops", zone_id=north, limit=10_000)
    assert in_north["total"] == sum(1 for v in want.values() if v == north)
    lats = sorted(float(s["stop_lat"]) for s in stops)
    box = f"-123.5,{lats[0] - 1e-6},-121,{lats[9] + 1e-6}"
    assert (await api.get("/mobility/stops", bbox=box))["total"] == 10

    trips = _rows(data, "trips.txt")
    per_route = Counter(t["route_id"] for t in trips)
    routes = await api.get("/mobility/routes", feed="caltrain")
    assert {r["route_id"]: r["trips"] for r in routes} == {
        r["route_id"]: per_route.get(r["route_id"], 0) for r in _rows(data, "routes.txt")}

    trip = trips[len(trips) // 2]
    st = sorted((r for r in _rows(data, "stop_times.txt") if r["trip_id"] == trip["trip_id"]),
                key=lambda r: int(r["stop_sequence"]))
    body = await api.get(f"/mobility/trips/{trip['trip_id']}", feed="caltrain")
    assert body["route_id"] == trip["route_id"]
    assert [(s["stop_id"], s["arrival_s"], s["departure_s"]) for s in body["stop_times"]] == [
        (r["stop_id"], _seconds(r["arrival_time"]), _seconds(r["departure_time"])) for r in st]

    feeds = await api.get("/mobility/feeds")
    assert [(f["name"], f["active_version_id"]) for f in feeds["items"]] == [
        ("caltrain", version["id"])]
    viewer = Transit(client, tenant.headers("viewer"))
    assert (await viewer.get("/mobility/feeds"))["total"] == 1
    r = await client.post(f"{API}/mobility/feeds", json={"name": "x"},
                          headers=tenant.headers("viewer"))
    assert r.status_code == 403


@pytest.mark.parametrize("feed_path", [CAIRNS, NYC], ids=["cairns", "nyc"])
async def test_other_feeds_import_with_counts_and_late_times(
        operator: tuple[Any, Transit], data_dir: Path, feed_path: Path) -> None:
    _, api = operator
    data = (data_dir / feed_path).read_bytes()
    feed_id = await api.feed(feed_path.parent.name)
    r = await api.upload(feed_id, data)
    assert r.status_code == 201, r.text
    version = r.json()
    expected = _expected_counts(data)
    assert {k: version["counts"][k] for k in expected} == expected
    assert version["errors"] == []
    # A trip running past midnight keeps times beyond 24:00:00 as seconds > 86400.
    late = [r for r in _rows(data, "stop_times.txt")
            if r["arrival_time"] and _seconds(r["arrival_time"]) >= 86400]
    sample = late[0] if late else _rows(data, "stop_times.txt")[-1]
    body = await api.get(f"/mobility/trips/{sample['trip_id']}", feed=feed_path.parent.name)
    got = {s["stop_sequence"]: s for s in body["stop_times"]}[int(sample["stop_sequence"])]
    assert got["arrival_s"] == _seconds(sample["arrival_time"])
    assert got["arrival_time"] == sample["arrival_time"].zfill(8)


async def test_second_import_activates_atomically(
        operator: tuple[Any, Transit], data_dir: Path) -> None:
    tenant, api = operator
    v1_data = (data_dir / CALTRAIN).read_bytes()
    v2_data = _rezip(v1_data, edit={"stops.txt": lambda t: t.replace(
        "San Francisco Caltrain", "SF Caltrain v2")})
    feed_id = await api.feed("caltrain")
    v1 = (await api.upload(feed_id, v1_data)).json()

    async def names() -> set[str]:
        fc = await api.get("/mobility/stops", feed="caltrain", limit=10_000)
        return {f["properties"]["name"] for f in fc["features"]}

    before = await names()
    assert any("San Francisco Caltrain" in n for n in before)
    # Hold the feed row the way a slow writer would: the import loads everything, then
    # waits to flip the active version; readers must keep the old schedule meanwhile.
    lock = await asyncpg.connect(get_settings().database.admin_dsn)
    tx = lock.transaction()
    await tx.start()
    await lock.execute("select 1 from transit_feed where id = $1 for no key update",
                       uuid.UUID(feed_id))
    try:
        r = await api.upload(feed_id, v2_data, wait_s=0)
        assert r.status_code == 202, r.text
        v2 = r.json()
        assert v2["status"] == "importing" and r.headers["location"].endswith(v2["id"])
        for _ in range(100):  # until the import waits on the lock (its load is done)
            waiting = await lock.fetchval(
                "select count(*) from pg_stat_activity "
                "where pg_backend_pid() = any(pg_blocking_pids(pid))")
            if waiting:
                break
            await asyncio.sleep(0.1)
        assert waiting == 1
        assert await names() == before
        versions = await api.get(f"/mobility/feeds/{feed_id}/versions")
        assert [(v["version"], v["status"], v["active"]) for v in versions["items"]] == [
            (2, "importing", False), (1, "ready", True)]
    finally:
        await tx.rollback()
        await lock.close()
    for _ in range(100):
        v2 = await api.get(f"/mobility/feeds/{feed_id}/versions/{v2['id']}")
        if v2["status"] != "importing":
            break
        await asyncio.sleep(0.1)
    assert v2["status"] == "ready" and v2["active"] is True
    after = await names()
    assert any("SF Caltrain v2" in n for n in after) and after != before
    versions = await api.get(f"/mobility/feeds/{feed_id}/versions")
    assert [(v["version"], v["status"]) for v in versions["items"]] == [
        (2, "ready"), (1, "retired")]
    # The retired version's rows are gone; its record (counts) stays.
    admin = await asyncpg.connect(get_settings().database.admin_dsn)
    try:
        left = await admin.fetchval("select count(*) from gtfs_stop_time where version_id = $1",
                                    uuid.UUID(v1["id"]))
    finally:
        await admin.close()
    assert left == 0 and versions["items"][1]["counts"]["stop_times"] > 0
    assert tenant.slug


async def test_broken_rows_are_listed_and_fatal_feeds_refused(
        operator: tuple[Any, Transit], data_dir: Path) -> None:
    _, api = operator
    good = (data_dir / CALTRAIN).read_bytes()
    stops, stop_times = _rows(good, "stops.txt"), _rows(good, "stop_times.txt")
    stop_cols = list(stops[0])
    st_cols = list(stop_times[0])

    def stop_line(**values: str) -> str:
        return ",".join(values.get(c, "") for c in stop_cols) + "\n"

    def add_stops(t: str) -> str:
        return (t.rstrip("\n") + "\n" + stop_line(stop_name="no id", stop_lat="37.5",
                                                  stop_lon="-122.2")
                + stop_line(stop_id="BAD_LAT", stop_lat="95.0", stop_lon="-122.2"))

    def add_stop_time(t: str) -> str:
        row = dict(stop_times[0], stop_id="NO_SUCH_STOP", stop_sequence="999")
        return t.rstrip("\n") + "\n" + ",".join(row[c] for c in st_cols) + "\n"

    broken = _rezip(good, edit={"stops.txt": add_stops, "stop_times.txt": add_stop_time})
    feed_id = await api.feed("caltrain")
    r = await api.upload(feed_id, broken)
    assert r.status_code == 201, r.text
    version = r.json()
    n_stops, n_st = len(stops), len(stop_times)
    assert version["errors"] == [
        {"file": "stops.txt", "row": n_stops + 2, "field": "stop_id",
         "message": "required field 'stop_id' is empty"},
        {"file": "stops.txt", "row": n_stops + 3, "field": "stop_lat",
         "message": "bad latitude: 95.0 is outside -90..90"},
        {"file": "stop_times.txt", "row": n_st + 2, "field": "stop_id",
         "message": "unknown stop_id 'NO_SUCH_STOP'"},
    ]
    assert version["counts"]["stops"] == n_stops
    assert version["counts"]["stop_times"] == n_st
    assert version["counts"]["errors"] == 3

    # Fatal: a required file is missing -> 422 with the reason; the active version stays.
    r = await api.upload(feed_id, _rezip(good, drop=("stop_times.txt",)))
    assert r.status_code == 422, r.text
    problem = r.json()
    assert {"file": "stop_times.txt", "row": None, "field": None,
            "message": "required file is missing"} in problem["errors"]
    r = await api.upload(feed_id, b"this is not a zip")
    assert r.status_code == 422 and "zip" in r.json()["detail"]
    versions = (await api.get(f"/mobility/feeds/{feed_id}/versions"))["items"]
    assert [(v["version"], v["status"], v["active"]) for v in versions] == [
        (3, "failed", False), (2, "failed", False), (1, "ready", True)]
    assert versions[1]["errors"][0]["file"] == "stop_times.txt"
    fc = await api.get("/mobility/stops", feed="caltrain", limit=10_000)
    assert fc["total"] == n_stops


async def test_feeds_are_isolated_between_tenants(
        make_tenant: Callable[..., Awaitable[Any]], client: httpx.AsyncClient,
        data_dir: Path) -> None:
    a = await make_tenant(roles=["operator"], with_key=False)
    b = await make_tenant(roles=["operator"], with_key=False)
    api_a, api_b = Transit(client, a.headers("operator")), Transit(client, b.headers("operator"))
    data = (data_dir / CALTRAIN).read_bytes()
    feed_a = await api_a.feed("caltrain")
    assert (await api_a.upload(feed_a, data)).status_code == 201
    trip_id = _rows(data, "trips.txt")[0]["trip_id"]

    assert (await api_b.get("/mobility/feeds"))["items"] == []
    assert (await api_b.get("/mobility/stops"))["total"] == 0
    assert await api_b.get("/mobility/routes") == []
    for path in (f"/mobility/feeds/{feed_a}/versions", f"/mobility/trips/{trip_id}"):
        r = await client.get(f"{API}{path}", headers=api_b.h)
        assert r.status_code == 404, (path, r.text)
    assert (await api_b.upload(feed_a, data)).status_code == 404
    # The same name is free in another tenant, and its import stays its own.
    feed_b = await api_b.feed("caltrain")
    assert (await api_b.upload(feed_b, data)).status_code == 201
    assert (await api_a.get("/mobility/stops", feed="caltrain"))["total"] == len(
        _rows(data, "stops.txt"))
    dup = await client.post(f"{API}/mobility/feeds", json={"name": "caltrain"},
                            headers=api_a.h)
    assert dup.status_code == 409
