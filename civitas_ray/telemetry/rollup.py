"""Hourly rollups of the telemetry hypertable into `telemetry_rollup` (our own job).

The Apache build of TimescaleDB has no continuous aggregates, so this module keeps
`telemetry_rollup` (count/avg/min/max/last per stream and hour) itself:

- `rollup_range(start, end)` (re)computes every hour in the range from the raw rows,
  one transaction per hour, idempotently (upsert): run it again after late or imported
  data and the result is the same as if the data had always been there.
- `rollup_due()` is what the periodic job runs: from the newest rolled hour minus a
  look-back (late readings) up to the last closed hour, within the last week; older
  history (an import) is rolled by whoever wrote it, with `rollup_range`.
- Retention (issue 7) calls `rollup_range` over a range before dropping its raw chunks,
  so late data is never dropped without being rolled up.

Queries over long ranges read the rollup for whole hours and raw rows after it
(`telemetry/router.py`, `source=auto`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import asyncpg
from sqlalchemy import text

from civitas_ray.db.session import tenant_session

log = logging.getLogger(__name__)
HOUR = timedelta(hours=1)

_UPSERT_SQL = """
insert into telemetry_rollup (tenant_id, asset_id, metric, bucket, count, avg, min, max, last)
select tenant_id, asset_id, metric, time_bucket(interval '1 hour', ts), count(*), avg(value),
       min(value), max(value), last(value, ts)
  from telemetry
 where ts >= :s and ts < :e
 group by tenant_id, asset_id, metric, time_bucket(interval '1 hour', ts)
on conflict (asset_id, metric, bucket) do update
   set tenant_id = excluded.tenant_id, count = excluded.count, avg = excluded.avg,
       min = excluded.min, max = excluded.max, last = excluded.last
 where (telemetry_rollup.count, telemetry_rollup.avg, telemetry_rollup.min,
        telemetry_rollup.max, telemetry_rollup.last)
       is distinct from (excluded.count, excluded.avg, excluded.min, excluded.max,
                         excluded.last)
"""
_UPSERT = text(_UPSERT_SQL)
_UPSERT_ASYNCPG = _UPSERT_SQL.replace(":s", "$1").replace(":e", "$2")


@dataclass(frozen=True, slots=True)
class RollupResult:
    hours: int
    rows: int  # rollup rows written or changed
    start: datetime | None
    end: datetime | None
    seconds: float


def floor_hour(t: datetime) -> datetime:
    if t.tzinfo is None:
        raise ValueError("rollup times need a UTC offset")
    t = t.astimezone(UTC)
    return t.replace(minute=0, second=0, microsecond=0)


async def rollup_range(start: datetime, end: datetime, *, step_hours: int = 24,
                       conn: asyncpg.Connection | None = None) -> RollupResult:
    """Recompute every hour that overlaps [start, end), all tenants.

    One statement and one commit per `step_hours` (a day: one scan of one daily chunk).
    With `conn` (the importer's ingest connection, which bypasses RLS) it runs there
    instead of on the application's pool.
    """
    t0 = time.perf_counter()
    s, e = floor_hour(start), floor_hour(end)
    if e < end.astimezone(UTC):
        e += HOUR
    hours = rows = 0
    h = s
    while h < e:
        nxt = min(e, h + step_hours * HOUR)
        if conn is not None:
            async with conn.transaction():
                status = await conn.execute(_UPSERT_ASYNCPG, h, nxt)
            rows += int(status.rsplit(" ", 1)[-1])
        else:
            # A system transaction: the job serves every tenant (RLS allows it explicitly).
            async with tenant_session(None, system=True) as session:
                result = await session.execute(_UPSERT, {"s": h, "e": nxt})
                rows += max(int(getattr(result, "rowcount", 0) or 0), 0)
        hours += int((nxt - h) / HOUR)
        h = nxt
    out = RollupResult(hours=hours, rows=rows, start=s if hours else None,
                       end=e if hours else None, seconds=time.perf_counter() - t0)
    if hours:
        log.info("telemetry rolled up", extra={"hours": hours, "rows": rows,
                                               "start": s.isoformat(), "end": e.isoformat(),
                                               "seconds": round(out.seconds, 3)})
    return out


async def rollup_due(*, now: datetime | None = None, lookback_hours: int = 3,
                     backfill_hours: int = 24 * 7) -> RollupResult:
    """Roll the closed hours of the last `backfill_hours` not done yet, plus a look-back
    of `lookback_hours` for late readings. Older history (imports) is rolled explicitly
    with `rollup_range` (the importer and `civitas telemetry rollup` do)."""
    now = now or datetime.now(UTC)
    closed = floor_hour(now)  # hours before this one are complete
    floor = closed - backfill_hours * HOUR
    async with tenant_session(None, system=True) as session:
        newest = (await session.execute(text(
            "select max(bucket) from telemetry_rollup where bucket >= :f and bucket < :c"),
            {"f": floor, "c": closed})).scalar()
    start = floor if newest is None else max(floor, newest - (lookback_hours - 1) * HOUR)
    if start >= closed:
        return RollupResult(0, 0, None, None, 0.0)
    return await rollup_range(start, closed)
