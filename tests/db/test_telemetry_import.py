"""`civitas telemetry import` on the real city files, against the real database.

Expected figures come from the files themselves, read with the csv module and zoneinfo,
never from the importer.
"""

from __future__ import annotations

import asyncio
import csv
import io
import itertools
import json
import uuid
import zipfile
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import pytest

from civitas_ray.config import get_settings
from civitas_ray.telemetry.importer import ColumnMap, ImportFailed, ImportSpec, run_import

pytestmark = pytest.mark.db

I94 = "timeseries/metro_interstate_traffic_volume_I94_2012-2018.csv"
TETOUAN = "timeseries/tetouan_city_power_consumption_10min_2017.csv"
DAIAD = "timeseries/daiad_smart_water_meter_trialA_hourly_2016-2017.zip"
TETOUAN_FORMAT = "%m/%d/%y %H:%M"
DAIAD_FORMAT = "%d/%m/%Y %H:%M:%S"

AdminSql = Callable[..., Awaitable[Any]]


@pytest.fixture
async def ingest_conn(migrated_db: str) -> AsyncIterator[asyncpg.Connection]:
    s = get_settings()
    conn = await asyncpg.connect(s.database.dsn_for(s.ingest.db_user, s.ingest.db_password))
    yield conn
    await conn.close()


async def _tenant(make_tenant: Any) -> uuid.UUID:
    fx = await make_tenant(roles=["tenant_admin"], with_key=False)
    return uuid.UUID(str(fx.id))


async def _assets(admin_sql: AdminSql, tenant_id: uuid.UUID, external_ids: list[str]
                  ) -> dict[str, uuid.UUID]:
    rows = await admin_sql(
        "insert into asset (tenant_id, name, kind, external_id, geom) "
        "select $1, 'meter ' || e, 'meter', e, ST_SetSRID(ST_MakePoint(23.7, 37.9), 4326) "
        "from unnest($2::text[]) e returning external_id, id", tenant_id, external_ids)
    return {r["external_id"]: r["id"] for r in rows}


async def _count(admin_sql: AdminSql, asset_id: uuid.UUID, metric: str | None = None) -> int:
    rows = await admin_sql("select count(*) n from telemetry where asset_id = $1 "
                           "and ($2::text is null or metric = $2)", asset_id, metric)
    return int(rows[0]["n"])


def _i94_expectations(path: Path) -> dict[str, int]:
    """Distinct hours, duplicate rows (and those disagreeing with the first), gaps."""
    first: dict[str, str] = {}
    dups = conflicting = 0
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            ts, value = row["date_time"], row["traffic_volume"]
            if ts in first:
                dups += 1
                conflicting += float(first[ts]) != float(value)
            else:
                first[ts] = value
    hours = sorted(datetime.strptime(t, "%Y-%m-%d %H:%M:%S") for t in first)
    steps = [(b - a) // timedelta(hours=1) for a, b in itertools.pairwise(hours)]
    return {"distinct": len(hours), "duplicates": dups, "conflicting": conflicting,
            "gaps": sum(1 for s in steps if s > 1),
            "missing": sum(s - 1 for s in steps if s > 1)}


async def test_i94_long_import_counts_duplicates_gaps_and_reimport(
        make_tenant: Any, admin_sql: AdminSql, ingest_conn: asyncpg.Connection,
        data_dir: Path) -> None:
    tid = await _tenant(make_tenant)
    asset_id = (await _assets(admin_sql, tid, ["I94-WB-301"]))["I94-WB-301"]
    path = data_dir / I94
    expected = _i94_expectations(path)
    assert expected["duplicates"] > 0 and expected["gaps"] > 0  # the file is messy
    spec = ImportSpec(path=path, time_col="date_time", value_col="traffic_volume",
                      metric="vehicle_count", asset="I94-WB-301", chunk_rows=20_000)

    report = await run_import(spec, conn=ingest_conn, tenant_id=tid)

    assert report.rows_read == report.readings == 48_204
    assert report.inserted == expected["distinct"]
    assert await _count(admin_sql, asset_id, "vehicle_count") == expected["distinct"]
    assert report.duplicates_in_file == expected["duplicates"]
    assert report.duplicates_conflicting == expected["conflicting"]
    assert report.already_stored == 0 and report.rejected == {}
    (stream,) = report.streams
    assert (stream.asset_id, stream.interval_s) == (asset_id, 3600.0)
    assert stream.gaps == expected["gaps"]
    assert stream.missing_intervals == expected["missing"]
    first = await admin_sql("select value from telemetry where asset_id = $1 and ts = $2",
                            asset_id, datetime(2012, 10, 2, 9, tzinfo=UTC))
    assert first[0]["value"] == 5545.0  # the file's first row

    again = await run_import(spec, conn=ingest_conn, tenant_id=tid)

    assert again.inserted == 0
    assert again.already_stored == expected["distinct"]
    assert again.duplicates_in_file == expected["duplicates"]
    assert await _count(admin_sql, asset_id) == expected["distinct"]


async def test_tetouan_wide_file_feeds_three_assets(
        make_tenant: Any, admin_sql: AdminSql, ingest_conn: asyncpg.Connection,
        data_dir: Path) -> None:
    tid = await _tenant(make_tenant)
    ids = await _assets(admin_sql, tid, ["TET-Z1", "TET-Z2", "TET-Z3"])
    path = data_dir / TETOUAN
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    spec = ImportSpec(
        path=path, time_col="DateTime", time_format=TETOUAN_FORMAT,
        columns=[ColumnMap.parse(f"Zone {i} Power Consumption=TET-Z{i}:power_kw")
                 for i in (1, 2, 3)] + [ColumnMap.parse("Temperature=TET-Z1:temperature_c")])

    report = await run_import(spec, conn=ingest_conn, tenant_id=tid)

    assert report.rows_read == len(rows)
    assert report.readings == 4 * len(rows)
    assert report.inserted == 4 * len(rows) and report.rejected == {}
    for i in (1, 2, 3):
        assert await _count(admin_sql, ids[f"TET-Z{i}"], "power_kw") == len(rows)
    assert await _count(admin_sql, ids["TET-Z1"], "temperature_c") == len(rows)
    assert await _count(admin_sql, ids["TET-Z2"]) == len(rows)  # only its power column
    last = rows[-1]
    ts = datetime.strptime(last["DateTime"], TETOUAN_FORMAT).replace(tzinfo=UTC)
    stored = await admin_sql("select value from telemetry where asset_id = $1 and "
                             "metric = 'power_kw' and ts = $2", ids["TET-Z3"], ts)
    assert stored[0]["value"] == pytest.approx(float(last["Zone 3 Power Consumption"]))
    assert {(s.asset, s.metric) for s in report.streams} == {
        ("TET-Z1", "power_kw"), ("TET-Z2", "power_kw"), ("TET-Z3", "power_kw"),
        ("TET-Z1", "temperature_c")}
    assert all(s.interval_s == 600.0 for s in report.streams)


@pytest.mark.slow
async def test_daiad_zip_maps_meters_by_external_id_and_reports_unknown(
        make_tenant: Any, admin_sql: AdminSql, ingest_conn: asyncpg.Connection,
        data_dir: Path) -> None:
    path = data_dir / DAIAD
    with zipfile.ZipFile(path) as zf, zf.open(zf.namelist()[0]) as raw:
        rows = list(csv.DictReader(io.TextIOWrapper(raw, "utf-8"), delimiter=";"))
    meters = sorted({r["user key"] for r in rows})
    known = meters[:10]
    per_meter: dict[str, set[str]] = {m: set() for m in known}
    unknown_rows: Counter[str] = Counter()
    for r in rows:
        if r["user key"] in per_meter:
            if r["diff"].strip():
                per_meter[r["user key"]].add(r["datetime"])
        else:
            unknown_rows[r["user key"]] += 1
    tid = await _tenant(make_tenant)
    ids = await _assets(admin_sql, tid, known)
    spec = ImportSpec(path=path, time_col="datetime", time_format=DAIAD_FORMAT,
                      asset_col="user key", value_col="diff", metric="water_l",
                      chunk_rows=200_000)

    report = await run_import(spec, conn=ingest_conn, tenant_id=tid)

    assert report.rows_read == len(rows)
    assert report.rejected["unknown asset"] == sum(unknown_rows.values())
    assert len(report.unknown_assets) == min(20, len(unknown_rows))
    for ref, n in report.unknown_assets.items():
        assert unknown_rows[ref] == n
    assert report.inserted == sum(len(v) for v in per_meter.values())
    for m in known[:3]:
        assert await _count(admin_sql, ids[m], "water_l") == len(per_meter[m])
    assert {s.asset for s in report.streams} <= set(known)


async def test_an_asset_of_another_tenant_is_refused(
        make_tenant: Any, admin_sql: AdminSql, ingest_conn: asyncpg.Connection,
        data_dir: Path) -> None:
    owner, intruder = await _tenant(make_tenant), await _tenant(make_tenant)
    theirs = (await _assets(admin_sql, owner, ["TET-Z1"]))["TET-Z1"]
    path = data_dir / TETOUAN
    by_id = ImportSpec(path=path, time_col="DateTime", time_format=TETOUAN_FORMAT,
                       value_col="Zone 1 Power Consumption", metric="power_kw",
                       asset=str(theirs))
    by_column = ImportSpec(path=path, time_col="DateTime", time_format=TETOUAN_FORMAT,
                           columns=[ColumnMap.parse(f"Zone 1 Power Consumption={theirs}:kw")])
    for spec in (by_id, by_column):
        with pytest.raises(ImportFailed, match="not found in tenant"):
            await run_import(spec, conn=ingest_conn, tenant_id=intruder)
    assert await _count(admin_sql, theirs) == 0


async def test_a_wrong_time_format_stops_before_writing(
        make_tenant: Any, admin_sql: AdminSql, ingest_conn: asyncpg.Connection,
        data_dir: Path) -> None:
    tid = await _tenant(make_tenant)
    asset_id = (await _assets(admin_sql, tid, ["TET-Z1"]))["TET-Z1"]
    spec = ImportSpec(path=data_dir / TETOUAN, time_col="DateTime", time_format=DAIAD_FORMAT,
                      value_col="Zone 1 Power Consumption", metric="power_kw", asset="TET-Z1")
    with pytest.raises(ImportFailed) as err:
        await run_import(spec, conn=ingest_conn, tenant_id=tid)
    message = str(err.value)
    assert "'DateTime'" in message and DAIAD_FORMAT in message and "'1/1/17 0:00'" in message
    assert await _count(admin_sql, asset_id) == 0


async def test_local_times_dst_folds_and_gaps_are_reported(
        make_tenant: Any, admin_sql: AdminSql, ingest_conn: asyncpg.Connection,
        data_dir: Path) -> None:
    tid = await _tenant(make_tenant)
    asset_id = (await _assets(admin_sql, tid, ["I94"]))["I94"]
    zone = ZoneInfo("America/Chicago")
    ambiguous = nonexistent = 0
    with (data_dir / I94).open(newline="") as f:
        for row in csv.DictReader(f):
            local = datetime.strptime(row["date_time"], "%Y-%m-%d %H:%M:%S")
            a, b = local.replace(tzinfo=zone), local.replace(tzinfo=zone, fold=1)
            if a.astimezone(UTC).astimezone(zone).replace(tzinfo=None) != local:
                nonexistent += 1
            elif a.utcoffset() != b.utcoffset():
                ambiguous += 1
    assert ambiguous > 0
    spec = ImportSpec(path=data_dir / I94, time_col="date_time", tz="America/Chicago",
                      value_col="traffic_volume", metric="vehicle_count", asset="I94",
                      ambiguous="drop", dry_run=True)

    report = await run_import(spec, conn=ingest_conn, tenant_id=tid)

    assert report.ambiguous_times == ambiguous
    assert report.nonexistent_times == nonexistent
    assert report.rejected.get("ambiguous local time (DST fold)") == ambiguous
    assert report.inserted > 0 and await _count(admin_sql, asset_id) == 0  # a dry run
    with pytest.raises(ImportFailed, match="ambiguous in America/Chicago"):
        await run_import(spec.model_copy(update={"ambiguous": "error"}), conn=ingest_conn,
                         tenant_id=tid)


def _tetouan_times(data_dir: Path) -> list[datetime]:
    with (data_dir / TETOUAN).open(newline="") as f:
        return [datetime.strptime(r["DateTime"], TETOUAN_FORMAT) for r in csv.DictReader(f)]


async def test_cli_imports_and_prints_a_json_report(
        make_tenant: Any, admin_sql: AdminSql, data_dir: Path) -> None:
    from typer.testing import CliRunner

    from civitas_ray.cli import app
    from civitas_ray.telemetry.commands import register

    register(app)
    fx = await make_tenant(roles=["tenant_admin"], with_key=False)
    ids = await _assets(admin_sql, fx.id, ["TET-Z2"])
    with (data_dir / TETOUAN).open(newline="") as f:
        n = sum(1 for _ in csv.DictReader(f))
    runner = CliRunner()
    args = ["telemetry", "import", str(data_dir / TETOUAN), "--tenant", fx.slug,
            "--time-col", "DateTime", "--time-format", TETOUAN_FORMAT,
            "--column", "Zone 2 Power Consumption=TET-Z2:power_kw", "--json"]

    dry = await asyncio.to_thread(runner.invoke, app, [*args, "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.stdout)["inserted"] == n
    assert await _count(admin_sql, ids["TET-Z2"]) == 0

    result = await asyncio.to_thread(runner.invoke, app, args)
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert (body["inserted"], body["already_stored"], body["dry_run"]) == (n, 0, False)
    assert body["streams"][0]["asset_id"] == str(ids["TET-Z2"])
    assert await _count(admin_sql, ids["TET-Z2"], "power_kw") == n
    # The imported range was rolled up: every reading in exactly one hourly bucket.
    [roll] = await admin_sql("select count(*) as hours, sum(count) as readings from "
                             "telemetry_rollup where asset_id = $1 and metric = 'power_kw'",
                             ids["TET-Z2"])
    assert roll["readings"] == n and roll["hours"] == len({
        ts.strftime("%Y%m%d%H") for ts in _tetouan_times(data_dir)})

    bad = await asyncio.to_thread(runner.invoke, app, [*args[:5], "--time-col", "DateTime",
                                                       "--value-col", "Temperature"])
    assert bad.exit_code == 2
    assert "--metric" in bad.stderr
