"""Readers of the real city series in the shared data folder, as regular UTC series for
training, backtests and the accuracy benchmark. The data folder is read, never copied.

* I-94 (Minneapolis-St Paul) hourly traffic volume with weather: wall-clock hours in
  America/Chicago, one row per weather condition (the last row of an hour is kept),
  hours that do not exist or repeat at a DST change dropped; temperature 0 K is a
  missing reading.
* Tetouan zone power, 10-minute, 2017: clock taken as UTC, hourly means.
* DAIAD trial A water meters: per meter, register differences between consecutive
  readings (negative steps are resets, steps over 2 h span a gap, steps over 1000 L are
  register glitches: all dropped), summed
  per clock hour over all meters.
* MTA daily subway ridership.
"""

from __future__ import annotations

import io
import zipfile
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from civitas_ray.ml.series import regularize

TIMESERIES = "timeseries"
I94_FILE = "metro_interstate_traffic_volume_I94_2012-2018.csv"
TETOUAN_FILE = "tetouan_city_power_consumption_10min_2017.csv"
DAIAD_FILE = "daiad_smart_water_meter_trialA_hourly_2016-2017.zip"
MTA_FILE = "mta_nyc_daily_ridership_2020-2024.csv"
I94_WEATHER = ("temp", "rain_1h", "snow_1h", "clouds_all")
# A household meter step above this (litres within 2 h) is a register glitch, not use:
# the 99.99th percentile of the trial's steps is about 900 L.
MAX_METER_STEP_L = 1000.0


class DatasetError(FileNotFoundError):
    """A city data file that is not where the data folder says."""


def _path(data_dir: Path, name: str) -> Path:
    path = Path(data_dir) / TIMESERIES / name
    if not path.is_file():
        raise DatasetError(f"city data not found at {path}: set CIVITAS_DATA_DIR to the folder "
                           "that holds timeseries/")
    return path


@lru_cache(maxsize=4)
def _i94(data_dir: Path) -> pd.DataFrame:
    raw = pd.read_csv(_path(data_dir, I94_FILE))
    raw["date_time"] = pd.to_datetime(raw["date_time"])
    raw = raw.drop_duplicates("date_time", keep="last").set_index("date_time").sort_index()
    local = raw.index.tz_localize("America/Chicago", ambiguous="NaT", nonexistent="NaT")
    frame = raw[["traffic_volume", *I94_WEATHER]].astype("float64")
    frame.index = local
    frame = frame.loc[frame.index.notna()]
    frame.loc[frame["temp"] <= 0, "temp"] = np.nan
    return pd.DataFrame({c: regularize(frame[c], "1h") for c in frame.columns})


def i94_traffic(data_dir: Path) -> pd.DataFrame:
    """Hourly UTC frame: traffic_volume and the weather columns temp, rain_1h, snow_1h,
    clouds_all."""
    return _i94(Path(data_dir)).copy()


def i94_drop_events(data_dir: Path, threshold: float = 0.3) -> pd.Series:
    """1 where I-94 traffic in an hour is below `threshold` of the same hour a week
    earlier (closures, storms, holidays, sensor outages), 0 where not, NaN where either
    hour is missing: a real zone-hour event series for the incident model."""
    volume = _i94(Path(data_dir))["traffic_volume"]
    before = volume.shift(168)
    known = volume.notna() & before.notna() & (before > 0)
    events = (volume < threshold * before).astype("float64")
    return events.where(known).rename("i94_drop_events")


@lru_cache(maxsize=4)
def _tetouan(data_dir: Path, zone: int) -> pd.DataFrame:
    raw = pd.read_csv(_path(data_dir, TETOUAN_FILE))
    index = pd.to_datetime(raw["DateTime"], format="%m/%d/%y %H:%M", utc=True)
    power = pd.Series(raw[f"Zone {zone} Power Consumption"].to_numpy(), index=index)
    temp = pd.Series(raw["Temperature"].to_numpy(), index=index)
    return pd.DataFrame({"power": regularize(power, "1h"), "temperature": regularize(temp, "1h")})


def tetouan_power(data_dir: Path, zone: int = 1) -> pd.DataFrame:
    """Hourly UTC frame: mean power of a Tetouan zone and the temperature."""
    return _tetouan(Path(data_dir), zone).copy()


@lru_cache(maxsize=2)
def _daiad_increments(data_dir: Path) -> pd.DataFrame:
    """Cleaned register increments (meter, ts, used): positive steps of at most
    MAX_METER_STEP_L over at most two hours; resets and glitches dropped."""
    with zipfile.ZipFile(_path(data_dir, DAIAD_FILE)) as z:
        name = next(n for n in z.namelist() if n.endswith(".csv"))
        raw = pd.read_csv(io.BytesIO(z.read(name)), sep=";", usecols=[0, 1, 2],
                          names=["meter", "ts", "register"], header=0)
    raw["ts"] = pd.to_datetime(raw["ts"], format="%d/%m/%Y %H:%M:%S", utc=True)
    raw["register"] = pd.to_numeric(raw["register"], errors="coerce")
    raw = raw.dropna().drop_duplicates(["meter", "ts"]).sort_values(["meter", "ts"])
    same = raw["meter"].eq(raw["meter"].shift())
    used = raw["register"].diff()
    gap = raw["ts"].diff()
    ok = (same & (used >= 0) & (used <= MAX_METER_STEP_L) & (gap > pd.Timedelta(0))
          & (gap <= pd.Timedelta(hours=2)))
    return pd.DataFrame({"meter": raw["meter"][ok], "ts": raw["ts"][ok], "used": used[ok]})


@lru_cache(maxsize=2)
def _daiad(data_dir: Path) -> pd.Series:
    kept = _daiad_increments(data_dir)
    per_hour = pd.Series(kept["used"].to_numpy(), index=pd.DatetimeIndex(kept["ts"]))
    return regularize(per_hour, "1h", how="sum").rename("water_use")


def daiad_meters(data_dir: Path) -> list[pd.Series]:
    """Hourly use of each DAIAD meter (sorted by meter id), cleaned like the district."""
    kept = _daiad_increments(Path(data_dir))
    return [regularize(pd.Series(g["used"].to_numpy(), index=pd.DatetimeIndex(g["ts"])),
                       "1h", how="sum") for _, g in kept.groupby("meter", sort=True)]


def daiad_district(data_dir: Path) -> pd.Series:
    """Hourly UTC district consumption: the sum over the trial's meters."""
    return _daiad(Path(data_dir)).copy()


@lru_cache(maxsize=2)
def _mta(data_dir: Path) -> pd.Series:
    raw = pd.read_csv(_path(data_dir, MTA_FILE))
    index = pd.to_datetime(raw["Date"], utc=True)
    riders = pd.Series(raw["Subways: Total Estimated Ridership"].to_numpy(dtype="float64"),
                       index=index)
    return regularize(riders, "1D").rename("subway_riders")


def mta_subway(data_dir: Path) -> pd.Series:
    """Daily NYC subway ridership (UTC midnight stamps for the local service day)."""
    return _mta(Path(data_dir)).copy()
