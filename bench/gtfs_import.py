"""GTFS static import: rows/s for the Caltrain, NYC subway (routes 1-2) and Cairns feeds.

Each run imports the zip as a new version of one feed in the `civitas_bench` database,
through `static_import.import_feed` (what the CLI and the API call): parse in a worker
thread a batch ahead, INSERT ... unnest per 20,000-row batch as the app role under RLS,
stop -> zone assignment, activation, then deletion of the retired version's rows. A
second run of the same feed therefore also pays for retiring the first. "parse" is the
CSV parsing and validation alone (no database), to show where the time goes.
`rows` = agency + routes + stops + trips + stop_times + calendar rows + shape points.

    .venv/bin/python -m bench.gtfs_import [--runs 5] [--data-dir ../shared/data]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from pathlib import Path

from bench.common import ROOT, ensure_database, machine

FEEDS = {
    "caltrain": Path("gtfs/caltrain/caltrain_gtfs_20230922.zip"),
    "nyc_subway_1_2": Path("gtfs/nyc_subway/nyc_subway_gtfs_routes1-2_20241215.zip"),
    "cairns": Path("gtfs/cairns/cairns_gtfs_2014.zip"),
}


def parse_only(path: Path) -> tuple[float, int]:
    """Seconds to parse and validate every file (the importer's parsers, no database)."""
    from civitas_ray.transit import static_import as si

    started = time.perf_counter()
    feed = si._Feed(zf=si.open_zip(path), errors=si.ErrorLog())
    rows = 0
    for _, name, parser, _ in si._FILES:
        if name in feed.zf.namelist():
            rows += sum(len(b[0]) for b in parser(feed))
    return time.perf_counter() - started, rows


async def run(runs: int, data_dir: Path) -> None:
    from sqlalchemy import text

    from civitas_ray.db.session import dispose_engine, tenant_session
    from civitas_ray.transit import static_import as si

    await ensure_database()
    async with tenant_session(None, system=True) as s:
        tenant_id = (await s.execute(text(
            "insert into tenant (slug, name) values (:s, :s) returning id"),
            {"s": "bench-gtfs-" + uuid.uuid4().hex[:6]})).scalar_one()
    print(f"# GTFS static import, {machine()}, median of {runs} runs")
    print("| feed | rows | stop_times | import s | rows/s | stop_times/s | parse only s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, rel in FEEDS.items():
        path = data_dir / rel
        async with tenant_session(tenant_id) as s:
            feed = await si.create_feed(session=s, tenant_id=tenant_id, name=name)
        times, outcome = [], None
        for _ in range(runs):
            t0 = time.perf_counter()
            outcome = await si.import_feed(tenant_id=tenant_id, feed_id=feed.id, source=path)
            times.append(time.perf_counter() - t0)
        assert outcome is not None and outcome.errors == []
        parse = statistics.median([(await asyncio.to_thread(parse_only, path))[0]
                                   for _ in range(runs)])
        c, t = outcome.counts, statistics.median(times)
        print(f"| {name} | {c['rows']:,} | {c['stop_times']:,} | {t:.2f} | "
              f"{c['rows'] / t:,.0f} | {c['stop_times'] / t:,.0f} | {parse:.2f} |")
    await dispose_engine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data")
    args = ap.parse_args()
    asyncio.run(run(args.runs, args.data_dir))


if __name__ == "__main__":
    main()
