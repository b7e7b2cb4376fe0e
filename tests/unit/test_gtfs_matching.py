"""GTFS-RT decoding, trip matching and delays on the real feeds, without a database.

Static versions are built straight from the GTFS files with the csv module, so these
tests check the realtime logic against the published schedule, not against our importer.
"""

from __future__ import annotations

import csv
import io
import math
import zipfile
from datetime import date
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from civitas_ray.errors import ValidationFailed
from civitas_ray.transit import matching
from civitas_ray.transit.matching import (
    STU_SKIPPED,
    StaticIndex,
    match_trips,
    propagate,
    stop_delays,
)
from civitas_ray.transit.realtime import analyse, parse_feed
from civitas_ray.transit.vehicles import TransitState, TripTable, Vehicle

pytestmark = pytest.mark.unit


def _seconds(hms: str) -> int | None:
    if not hms:
        return None
    h, m, s = (int(x) for x in hms.split(":"))
    return h * 3600 + m * 60 + s


def _ymd(s: str) -> date:
    return date(int(s[:4]), int(s[4:6]), int(s[6:]))


def _read(files: dict[str, str], name: str) -> list[dict[str, str]]:
    return list(csv.DictReader(io.StringIO(files.get(name, "")))) if name in files else []


def index_from_files(files: dict[str, str], version: str = "v1") -> StaticIndex:
    trips = [(r["trip_id"], r["route_id"], r["service_id"]) for r in _read(files, "trips.txt")]
    stop_times = [(r["trip_id"], int(r["stop_sequence"]), r["stop_id"],
                   _seconds(r["arrival_time"]), _seconds(r["departure_time"]))
                  for r in _read(files, "stop_times.txt")]
    stops = [(r["stop_id"], float(r["stop_lat"] or "nan"), float(r["stop_lon"] or "nan"), None)
             for r in _read(files, "stops.txt")]
    days = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
    calendars = [(r["service_id"], [r[d] == "1" for d in days], _ymd(r["start_date"]),
                  _ymd(r["end_date"])) for r in _read(files, "calendar.txt")]
    dates = [(r["service_id"], _ymd(r["date"]), int(r["exception_type"]))
             for r in _read(files, "calendar_dates.txt")]
    tz = _read(files, "agency.txt")[0]["agency_timezone"] if "agency.txt" in files else "UTC"
    return StaticIndex.build(version_id=version, tz=tz, trips=trips, stop_times=stop_times,
                             stops=stops, calendars=calendars, calendar_dates=dates)


def index_from_zip(path: Path) -> StaticIndex:
    with zipfile.ZipFile(path) as z:
        files = {n: z.read(n).decode("utf-8-sig") for n in z.namelist()}
    return index_from_files(files)


@pytest.fixture(scope="module")
def caltrain(data_dir: Path) -> StaticIndex:
    return index_from_zip(data_dir / "gtfs/caltrain/caltrain_gtfs_20230922.zip")


def test_caltrain_every_trip_update_lands_on_its_trip_and_stop(
        caltrain: StaticIndex, data_dir: Path) -> None:
    feed = parse_feed((data_dir / "gtfs/caltrain/ct-trip-updates.pb").read_bytes())
    match = match_trips(caltrain, feed.trips.trip_id, feed.trips.start_date,
                        header_ts=feed.header_ts)
    assert len(feed.trips) == 19
    assert (match.trip >= 0).all()
    assert [caltrain.trip_ids[t] for t in match.trip] == feed.trips.trip_id
    delays = stop_delays(caltrain, feed.trips, match)
    assert delays.stu.size == feed.trips.stu_seq.size  # every stop time update placed
    assert (delays.st_row >= 0).all()
    # The stop each update names is the stop of that sequence in the static trip.
    static_stops = [caltrain.stop_ids[s] for s in delays.stop]
    assert static_stops == feed.trips.stu_stop_id


def test_caltrain_delays_hand_checked(caltrain: StaticIndex, data_dir: Path) -> None:
    """Trip 124 on 2023-11-07 (PST, UTC-8), from stop_times.txt:
    seq 20 (70232) departs 17:03:00, predicted 01:05:04Z -> +124 s;
    seq 21 (70242) arrives 17:09:00, predicted 01:10:01Z -> +61 s;
    seq 22 (70262) arrives 17:16:00, predicted 01:16:16Z -> +16 s."""
    feed = parse_feed((data_dir / "gtfs/caltrain/ct-trip-updates.pb").read_bytes())
    match = match_trips(caltrain, feed.trips.trip_id, feed.trips.start_date,
                        header_ts=feed.header_ts)
    d = stop_delays(caltrain, feed.trips, match)
    trip = caltrain.trip_pos["124"]
    got = {int(s): (a, dd) for s, t, a, dd in zip(d.seq, d.trip, d.arrival_delay,
                                                   d.departure_delay, strict=True)
           if t == trip}
    assert got[20][1] == 124 and math.isnan(got[20][0])  # a departure-only update
    assert got[21] == (61, 61)
    assert got[22][0] == 16


def test_delay_only_updates_propagate_downstream_not_upstream(caltrain: StaticIndex) -> None:
    trip = caltrain.trip_pos["124"]
    n = int(caltrain.st_offsets[trip + 1] - caltrain.st_offsets[trip])
    out = propagate(caltrain, trip, date(2023, 11, 7),
                    [(5, 120.0, None, 0), (8, None, 60.0, 0), (10, 0.0, 0.0, STU_SKIPPED)])
    assert len(out) == n
    by_seq = {p.stop_sequence: p for p in out}
    assert by_seq[4].arrival_delay is None and by_seq[4].source == "none"
    assert (by_seq[5].arrival_delay, by_seq[5].source) == (120.0, "update")
    assert (by_seq[7].arrival_delay, by_seq[7].source) == (120.0, "propagated")
    assert by_seq[8].departure_delay == 60.0
    assert by_seq[9].arrival_delay == 60.0
    assert by_seq[10].source == "skipped" and by_seq[10].arrival_delay is None
    assert by_seq[11].arrival_delay == 60.0  # a skipped stop does not stop propagation
    # Scheduled times are the service day in Pacific time plus the static seconds.
    first = out[0]
    assert first.scheduled_arrival == pytest.approx(
        matching.service_day_epoch(date(2023, 11, 7), "America/Los_Angeles")
        + int(caltrain.st_arr[caltrain.st_offsets[trip]]))


def test_service_day_reference_is_noon_minus_12h_across_dst() -> None:
    # 2023-11-05, the day US DST ends: local midnight was 00:00 PDT = 07:00Z, but the
    # GTFS reference is noon PST (20:00Z) minus 12 h = 08:00Z, which is what times count from.
    assert matching.service_day_epoch(date(2023, 11, 5), "America/Los_Angeles") == 1699171200
    assert matching.service_day_epoch(date(2023, 11, 7), "America/Los_Angeles") == 1699344000


def test_nyc_subway_files_parse_with_extensions_ignored(data_dir: Path) -> None:
    for name in ("2_delay", "2_train_with_0_shape", "a_division", "b_division"):
        feed = parse_feed((data_dir / f"gtfs/nyc_subway/{name}.nyct.gtfsrt").read_bytes())
        assert feed.entities > 300
        assert len(feed.trips) > 100 and len(feed.vehicles) > 100
        assert all(t for t in feed.trips.trip_id)
        assert not np.isnan(feed.trips.arr_time).all()


def _nyc_2021(data_dir: Path) -> StaticIndex:
    base = data_dir / "gtfs/nyc_subway"
    files = {"trips.txt": (base / "nyct_static_trips_2021.txt").read_text(),
             "stops.txt": (base / "nyct_static_stops_2021.txt").read_text()}
    # The 2021 extract has no calendar: every service runs, so dates do not filter.
    services = {r["service_id"] for r in _read(files, "trips.txt")}
    files["calendar.txt"] = "service_id,monday,tuesday,wednesday,thursday,friday,saturday," \
        "sunday,start_date,end_date\n" + "".join(
            f"{s},1,1,1,1,1,1,1,20210101,20221231\n" for s in services)
    return index_from_files(files)


def test_nyc_short_trip_ids_match_by_documented_rule(data_dir: Path) -> None:
    index = _nyc_2021(data_dir)
    feed = parse_feed((data_dir / "gtfs/nyc_subway/a_division.nyct.gtfsrt").read_bytes())
    match = match_trips(index, feed.trips.trip_id, feed.trips.start_date,
                        header_ts=feed.header_ts)
    matched = match.trip >= 0
    assert matched.mean() > 0.8, matching.describe(match)
    for i in np.flatnonzero(matched):
        rt_id, static_id = feed.trips.trip_id[i], index.trip_ids[match.trip[i]]
        short = matching.short_form(static_id)
        assert short is not None
        # Either the whole short form is the realtime id, or both share their
        # route-direction key (origin time, route, direction).
        assert short == rt_id or matching.direction_key(short) == matching.direction_key(rt_id)
    assert (match.method == matching.METHOD_EXACT).sum() == 0


def test_nyc_rule_on_hand_written_ids() -> None:
    files = {
        "trips.txt": "route_id,service_id,trip_id\n"
                     "2,AFA21GEN-2048-Weekday-00,AFA21GEN-2048-Weekday-00_083950_2..S08R\n"
                     "1,ASP21GEN-1037-Sunday-00,ASP21GEN-1037-Sunday-00_124900_1..N03R\n"
                     "1,ASP21GEN-1037-Weekday-00,ASP21GEN-1037-Weekday-00_124900_1..N03R\n",
        "calendar.txt": "service_id,monday,tuesday,wednesday,thursday,friday,saturday,sunday,"
                        "start_date,end_date\n"
                        "AFA21GEN-2048-Weekday-00,1,1,1,1,1,0,0,20210101,20211231\n"
                        "ASP21GEN-1037-Sunday-00,0,0,0,0,0,0,1,20210101,20211231\n"
                        "ASP21GEN-1037-Weekday-00,1,1,1,1,1,0,0,20210101,20211231\n",
    }
    index = index_from_files(files)
    ids = ["083950_2..S08R", "124900_1..N", "124900_1..N", "999999_9..N", "083950_2..S08R"]
    dates = ["20211126", "20211128", "20211126", "20211126", "20211128"]
    m = match_trips(index, ids, dates, header_ts=None)
    got = [index.trip_ids[t] if t >= 0 else None for t in m.trip]
    assert got == ["AFA21GEN-2048-Weekday-00_083950_2..S08R",
                   "ASP21GEN-1037-Sunday-00_124900_1..N03R",  # Sunday 28 Nov: Sunday service
                   "ASP21GEN-1037-Weekday-00_124900_1..N03R",  # Friday 26 Nov: weekday
                   None,  # unknown: reported, not guessed
                   None]  # a weekday trip on a Sunday does not run: not matched
    assert list(m.method) == [matching.METHOD_SHORT, matching.METHOD_DIRECTION,
                              matching.METHOD_DIRECTION, 0, 0]


def test_netherlands_feed_decodes_into_columns(data_dir: Path) -> None:
    feed = parse_feed((data_dir / "gtfs/ovapi_nl/ovapi_nl_tripUpdates_20141130.pb").read_bytes())
    assert len(feed.trips) == 2847
    first: Any = feed.trips
    rows = np.flatnonzero(first.stu_trip == 0)
    assert list(first.stu_seq[rows][:3]) == [1, 3, 4]
    assert first.arr_delay[rows][0] == 0 and first.dep_delay[rows][0] == 19
    assert first.dep_time[rows][0] == 1417386859


def test_empty_and_garbage_payloads() -> None:
    with pytest.raises(ValidationFailed):
        parse_feed(b"")
    with pytest.raises(ValidationFailed):
        parse_feed(b"\xff\xff\xff not protobuf")


def _table(version: str, rows: list[tuple[int, int, int, float, float]],
           feed_ts: float) -> TripTable:
    """rows: (trip, stop, zone code, predicted, delay); one route."""
    a = np.asarray(rows, dtype=float).reshape(-1, 5)
    return TripTable(version=version, zone_names=["z0", "z1"], trip=a[:, 0].astype(np.int64),
                     key=a[:, 1].astype(np.int64), zone=a[:, 2].astype(np.int32),
                     predicted=a[:, 3], delay=a[:, 4], feed_ts=feed_ts)


def _vehicle(vid: str, ts: float, zone: str | None) -> Vehicle:
    return Vehicle(vid, ts, 0.0, 0.0, None, None, None, None, None, None, None, zone)


def test_zone_kpis_hand_computed() -> None:
    state = TransitState("t", "f")
    assert state.apply_vehicles([_vehicle("a", 10, "z0"), _vehicle("b", 10, "z0"),
                                 _vehicle("c", 10, "z1")]) == {"z0", "z1"}
    # An older fix of "a" changes nothing; a newer one moves it to z1.
    assert state.apply_vehicles([_vehicle("a", 5, "z1")]) == set()
    assert state.apply_vehicles([_vehicle("a", 20, "z1")]) == {"z0", "z1"}
    # Stop 7 in z0 gets four trips at 0, 600, 1200, 2400 s: gaps 600, 600, 1200,
    # mean 800, std 282.84..., CV 0.35355; delays 0, 30, 400 (late), -90 (early).
    rows = [(1, 7, 0, 0.0, 0.0), (2, 7, 0, 600.0, 30.0), (3, 7, 0, 1200.0, 400.0),
            (4, 7, 0, 2400.0, -90.0), (1, 8, 1, 100.0, math.nan)]
    assert state.apply_trips(_table("v1", rows, 100.0), full_dataset=True) == {"z0", "z1"}
    z0, z1 = state.zone_kpis(["z0", "z1"])
    assert (z0.vehicles, z0.trips, z0.mean_delay_s) == (1, 4, 85.0)
    assert z0.on_time_share == 0.5  # 0 and 30 s: within [-60, +300]
    assert z0.headway_cv == pytest.approx(math.sqrt(80_000) / 800)
    assert (z1.vehicles, z1.trips, z1.mean_delay_s, z1.headway_cv) == (2, 1, None, None)
    # An older feed is ignored; a differential one replaces only the trips it names.
    assert state.apply_trips(_table("v1", [(1, 7, 0, 0.0, 999.0)], 50.0),
                             full_dataset=True) == set()
    state.apply_trips(_table("v1", [(4, 7, 0, 2400.0, 10.0)], 200.0), full_dataset=False)
    assert state.zone_kpis(["z0"])[0].mean_delay_s == pytest.approx((0 + 30 + 400 + 10) / 4)


def test_feed_outside_the_versions_calendar_is_mismatched(data_dir: Path) -> None:
    """The same Caltrain trips, but a static version whose calendar ended before the
    realtime file's date: every trip id exists, yet nothing is matched."""
    with zipfile.ZipFile(data_dir / "gtfs/caltrain/caltrain_gtfs_20230922.zip") as z:
        files = {n: z.read(n).decode("utf-8-sig") for n in z.namelist()}
    files["calendar.txt"] = files["calendar.txt"].replace("20240601", "20231001")
    files["calendar_dates.txt"] = "service_id,date,exception_type\n"
    old = index_from_files(files)
    payload = (data_dir / "gtfs/caltrain/ct-trip-updates.pb").read_bytes()
    a = analyse(payload, old, None)
    assert a.mismatched and a.mismatch_reason is not None
    assert "19 of 19 service dates are outside its calendar" in a.mismatch_reason
    assert a.match is not None and (a.match.trip < 0).all()
    assert len(a.unmatched_ids) == 19
    # Against the right calendar the same file matches entirely.
    good = analyse(payload, index_from_files({**files, "calendar.txt": files["calendar.txt"]
                                              .replace("20231001", "20240601")}), None)
    assert not good.mismatched and good.match is not None and (good.match.trip >= 0).all()
