"""Real city time series for the stream-state tests, read once per run (numpy + stdlib).

* I-94 hourly traffic volume (Minneapolis-St Paul): wall-clock hours in
  America/Chicago, duplicate hours (one row per weather condition) resolved by keeping
  the last row, then converted to UTC instants; gaps left as they are.
* Tetouan Zone 1 power, 10-minute, 2017 (clock taken as UTC).
* DAIAD trial A, 92 household water meters, cumulative registers with resets and
  jitter: each meter's consumption is derived with the stream QualityMonitor
  (`{"cumulative": true}`), then summed per clock hour into a district series. A
  meter's step that spans more than two hours (a gap) is left out rather than
  dumped into one hour.
"""

from __future__ import annotations

import csv
import itertools
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from civitas_ray.streams.quality import MetricSpec, QualityMonitor
from civitas_ray.streams.timebase import US_PER_HOUR, calendar_for

TIMESERIES = "timeseries"


@dataclass(frozen=True)
class Series:
    name: str
    ts_us: np.ndarray
    values: np.ndarray
    tz: str


@cache
def i94_traffic(data_dir: Path) -> Series:
    path = data_dir / TIMESERIES / "metro_interstate_traffic_volume_I94_2012-2018.csv"
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        head = next(reader)
        i_ts, i_val = head.index("date_time"), head.index("traffic_volume")
        rows = [(r[i_ts], r[i_val]) for r in reader]
    naive = np.array([r[0] for r in rows], dtype="datetime64[s]").astype(
        "datetime64[us]").astype(np.int64)
    vals = np.array([float(r[1]) for r in rows])
    order = np.argsort(naive, kind="stable")
    naive, vals = naive[order], vals[order]
    last = np.r_[naive[1:] != naive[:-1], True]  # the last row of each wall-clock hour
    naive, vals = naive[last], vals[last]
    ts = calendar_for("America/Chicago").local_naive_to_utc_us(naive)
    order = np.argsort(ts, kind="stable")  # DST fall-back folds two wall hours into one
    ts, vals = ts[order], vals[order]
    last = np.r_[ts[1:] != ts[:-1], True]
    return Series("I-94 traffic_volume (hourly)", ts[last], vals[last], "America/Chicago")


@cache
def tetouan_power(data_dir: Path, zone: int = 1) -> Series:
    path = data_dir / TIMESERIES / "tetouan_city_power_consumption_10min_2017.csv"
    stamps: list[str] = []
    vals: list[float] = []
    with path.open(newline="") as fh:
        reader = csv.reader(fh)
        head = next(reader)
        col = head.index(f"Zone {zone} Power Consumption")
        for row in reader:
            day, clock = row[0].split(" ")
            m, d, y = day.split("/")
            hh, mi = clock.split(":")
            stamps.append(f"20{y}-{int(m):02d}-{int(d):02d}T{int(hh):02d}:{int(mi):02d}")
            vals.append(float(row[col]))
    ts = np.array(stamps, dtype="datetime64[us]").astype(np.int64)
    return Series(f"Tetouan zone {zone} power (10 min)", ts, np.array(vals), "UTC")


@cache
def daiad_meters(data_dir: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(meter key, ts_us, register) of every row, parsed column-wise from fixed widths."""
    path = data_dir / TIMESERIES / "daiad_smart_water_meter_trialA_hourly_2016-2017.zip"
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith(".csv"))
        raw = z.read(name)
    rows = np.array([ln for ln in raw.split(b"\n")[1:] if ln.strip()], dtype="S")
    b = rows.view("S1").reshape(rows.size, -1).view(np.uint8)
    # "<36-char key>;dd/mm/yyyy HH:MM:SS;<register>;<diff>"
    assert (b[:, 36] == ord(";")).all() and (b[:, 56] == ord(";")).all()

    def number(lo: int, hi: int) -> np.ndarray:
        digits = b[:, lo:hi].astype(np.int64) - 48
        return digits @ (10 ** np.arange(hi - lo - 1, -1, -1))

    day, mon, year = number(37, 39), number(40, 42), number(43, 47)
    hh, mi, ss = number(48, 50), number(51, 53), number(54, 56)
    months = (year - 1970) * 12 + mon - 1
    days = months.astype("datetime64[M]").astype("datetime64[D]").astype(np.int64) + day - 1
    ts = (days * 86_400 + hh * 3_600 + mi * 60 + ss) * 1_000_000
    tail = b[:, 57:]
    width = np.argmax(tail == ord(";"), axis=1)
    inside = np.arange(tail.shape[1])[None, :] < width[:, None]
    register = np.zeros(rows.size)
    for j in range(int(width.max())):
        register = np.where(inside[:, j], register * 10 + (tail[:, j] - 48.0), register)
    # a few registers are written like "4e+05": parse those rows as text
    odd = np.flatnonzero((inside & ((tail < ord("0")) | (tail > ord("9")))).any(axis=1))
    for i in odd.tolist():
        register[i] = float(rows[i][57:57 + int(width[i])])
    return rows.astype("S36"), ts.astype(np.int64), register


@cache
def daiad_district(data_dir: Path) -> Series:
    keys, ts, register = daiad_meters(data_dir)
    order = np.lexsort((ts, keys))
    keys, ts, register = keys[order], ts[order], register[order]
    bounds = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1], True])
    hours, used = [], []
    for lo, hi in itertools.pairwise(bounds.tolist()):
        t, v = ts[lo:hi], register[lo:hi]
        keep = np.r_[True, t[1:] != t[:-1]]
        t, v = t[keep], v[keep]
        cons = QualityMonitor(MetricSpec(cumulative=True)).update(
            t, v, interval_s=3_600.0).consumption
        assert cons is not None and (cons >= 0).all()
        step = np.diff(t, prepend=t[0])
        ok = (step > 0) & (step <= 2 * US_PER_HOUR)
        hours.append(t[ok] // US_PER_HOUR)
        used.append(cons[ok])
    hour, inverse = np.unique(np.concatenate(hours), return_inverse=True)
    total = np.bincount(inverse, weights=np.concatenate(used))
    return Series("DAIAD district water consumption (hourly sum of 92 meters)",
                  hour * US_PER_HOUR, total, "UTC")
