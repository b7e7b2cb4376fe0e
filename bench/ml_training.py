"""Training time of the forecasting boosters on 1,000,000 rows x 30 features of real series.

The matrix: every real hourly series of the data folder, features built per series by the
project's own pipeline (`features.build_features`) with one 30-feature spec (10 lags, 7
rolling windows x mean/std, the normalized level, 5 calendar columns):
  * the 92 DAIAD trial A household meters, one series each (litres per clock hour, the
    cleaning rules of `datasets.daiad_district`, not summed);
  * I-94 traffic volume; Tetouan power, zones 1, 2 and 3.
The target is value / level, as `ForecastModel.fit` trains a normalized model, so one
pooled booster fits series of any scale. Per series, the newest 10 % of rows is the
hold-out, the 15 % before it the early-stopping validation, the rest training. The real
training rows (0.55 M) are concatenated, and each is repeated once or twice, evenly, up to
exactly `--rows` (the output says how many rows are real).

Timed (wall and CPU seconds, with the load average before and after):
  * one quantile booster (alpha 0.5) trained by `ForecastModel._train_set`, as `fit` trains
    each booster: LightGBM Dataset construction included, early stopping on the
    validation rows, DEFAULT_PARAMS unless a variant changes them;
  * the full 3-quantile training of `fit`: 3 early-stopped boosters, then 3 retrained on
    training + validation rows with the early-stopped rounds (`fit`'s interval
    calibration is a recursive forecast on one series and is not part of it).
Accuracy: MAE of the median booster on the hold-out rows (one step ahead, in units of
the series level), and its change against the default settings.

Run: .venv/bin/python -m bench.ml_training                   (~5 min on 2 shared cores)
     .venv/bin/python -m bench.ml_training --threads 1 --variants default,fast --no-full
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from bench.common import machine
from civitas_ray.ml import datasets
from civitas_ray.ml.features import LEVEL, FeatureSpec, build_features, feature_names
from civitas_ray.ml.models.base import DEFAULT_PARAMS, ForecastModel

ROOT = Path(__file__).resolve().parents[1]
HOLDOUT_FRACTION = 0.10

SPEC = FeatureSpec(freq="1h", lags=(1, 2, 3, 4, 6, 12, 24, 48, 168, 336),
                   windows=(3, 6, 12, 24, 48, 168, 336), calendar=True,
                   holidays_country=None, normalize=True)

# Settings tried when the defaults miss the goal; each entry changes DEFAULT_PARAMS.
VARIANTS: dict[str, dict[str, Any]] = {
    "default": {},
    "max_bin_63": {"max_bin": 63},
    "min_leaf_200": {"min_data_in_leaf": 200},
    "bagging_0.5": {"bagging_fraction": 0.5, "bagging_freq": 1},
    "features_0.5": {"feature_fraction": 0.5},
    "lr0.2_es20": {"learning_rate": 0.2, "early_stopping_rounds": 20},
    "cap_100": {"n_estimators": 100},
    "cap_50": {"n_estimators": 50},
    "bins63_bag0.5": {"max_bin": 63, "bagging_fraction": 0.5, "bagging_freq": 1},
    "quick": {"max_bin": 63, "bagging_fraction": 0.5, "bagging_freq": 1,
              "min_data_in_leaf": 200, "n_estimators": 100, "early_stopping_rounds": 20},
    "cap50_es10": {"max_bin": 63, "bagging_fraction": 0.5, "bagging_freq": 1,
                   "min_data_in_leaf": 200, "n_estimators": 50, "early_stopping_rounds": 10},
    "fast": {"max_bin": 63, "min_data_in_leaf": 200, "bagging_fraction": 0.5,
             "bagging_freq": 1, "feature_fraction": 0.5, "learning_rate": 0.2,
             "early_stopping_rounds": 20},
}


class PooledModel(ForecastModel):
    """The base model on the 30-feature spec: its `_train_set` trains the boosters."""

    name: ClassVar[str] = "bench_pooled"
    default_spec: ClassVar[FeatureSpec] = SPEC


class MedianOnly(PooledModel):
    """One quantile booster (the median), trained exactly as `fit` trains each of three."""

    def _booster_keys(self) -> list[str]:
        return ["q0.5"]


@dataclass
class Matrix:
    X: np.ndarray
    t: np.ndarray
    X_val: np.ndarray
    t_val: np.ndarray
    X_hold: np.ndarray
    t_hold: np.ndarray
    hold_meter: np.ndarray  # True where a hold-out row is a household meter's
    series: int
    meters: int
    real_rows: int


def real_series(data_dir: Path) -> list[tuple[bool, pd.Series]]:
    """(is a household meter, hourly series) for every real series."""
    series = [(True, s) for s in datasets.daiad_meters(data_dir)]
    series.append((False, datasets.i94_traffic(data_dir)["traffic_volume"]))
    series += [(False, datasets.tetouan_power(data_dir, zone)["power"]) for zone in (1, 2, 3)]
    return series


def build_matrix(data_dir: Path, rows: int) -> Matrix:
    """Features per series, time-ordered splits per series, training rows tiled to `rows`."""
    val_fraction = float(DEFAULT_PARAMS["validation_fraction"])
    parts: dict[str, list[np.ndarray]] = {k: [] for k in ("X", "t", "Xv", "tv", "Xh", "th")}
    level_col = feature_names(SPEC).index(LEVEL)
    n_series = n_meters = 0
    hold_meter: list[np.ndarray] = []
    for is_meter, s in real_series(data_dir):
        frame = build_features(s, SPEC)
        X = frame.to_numpy(dtype="float64")
        t = s.to_numpy(dtype="float64") / X[:, level_col]
        usable = np.flatnonzero(np.isfinite(t) & np.isfinite(X[:, : len(SPEC.lags)]).any(axis=1))
        if usable.size < 1000:
            continue
        n_series += 1
        n_meters += is_meter
        n_hold = int(usable.size * HOLDOUT_FRACTION)
        n_val = int((usable.size - n_hold) * val_fraction)
        fit_rows = usable[: usable.size - n_hold - n_val]
        val_rows = usable[usable.size - n_hold - n_val: usable.size - n_hold]
        hold_rows = usable[usable.size - n_hold:]
        for key, idx in (("X", fit_rows), ("Xv", val_rows), ("Xh", hold_rows)):
            parts[key].append(X[idx])
            parts["t" + key[1:]].append(t[idx])
        hold_meter.append(np.full(hold_rows.size, is_meter))
    X_fit, t_fit = np.concatenate(parts["X"]), np.concatenate(parts["t"])
    real = X_fit.shape[0]
    # Every real row once or twice, evenly over the series, time order kept.
    take = np.arange(rows) * real // rows
    return Matrix(X=np.ascontiguousarray(X_fit[take]), t=t_fit[take],
                  X_val=np.concatenate(parts["Xv"]), t_val=np.concatenate(parts["tv"]),
                  X_hold=np.concatenate(parts["Xh"]), t_hold=np.concatenate(parts["th"]),
                  hold_meter=np.concatenate(hold_meter), series=n_series, meters=n_meters,
                  real_rows=real)


@dataclass
class Timing:
    wall: float
    cpu: float
    rounds: dict[str, int]  # best (early-stopped) rounds per booster
    load: tuple[float, float]
    trained: int = 0  # rounds actually trained (best + the patience), all boosters


def timed(fn: Callable[[], dict[str, int]]) -> Timing:
    load_before = os.getloadavg()[0]
    wall, cpu = time.perf_counter(), time.process_time()
    rounds = fn()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return Timing(wall, cpu, rounds, (load_before, os.getloadavg()[0]))


def one_booster(m: Matrix, params: dict[str, Any]) -> tuple[Timing, float, float]:
    """Time one early-stopped median booster; its hold-out MAE on the meters and on the
    aggregate series (traffic, power)."""
    model = MedianOnly(params=params)
    out: dict[str, Any] = {}

    def train() -> dict[str, int]:
        out["boosters"], best = model._train_set(m.X, m.t, m.X_val, m.t_val, None)
        return best

    timing = timed(train)
    # LightGBM keeps only the best rounds; it trained `patience` more before stopping.
    timing.trained = min(timing.rounds["q0.5"] + int(model.params["early_stopping_rounds"]),
                         int(model.params["n_estimators"]))
    pred = out["boosters"]["q0.5"].predict(m.X_hold, num_threads=int(params["num_threads"]))
    err = np.abs(pred - m.t_hold)
    return timing, float(err[m.hold_meter].mean()), float(err[~m.hold_meter].mean())


def full_fit(m: Matrix, params: dict[str, Any]) -> tuple[Timing, float, float, float]:
    """Time `fit`'s booster training: 3 early-stopped, then 3 retrained with those rounds.
    Returns the timing, the median's hold-out MAE (meters, aggregates) and the share of
    hold-out rows inside the 0.1-0.9 interval."""
    model = PooledModel(params=params)

    def train() -> dict[str, int]:
        _, best = model._train_set(m.X, m.t, m.X_val, m.t_val, None)
        X_all, t_all = np.concatenate([m.X, m.X_val]), np.concatenate([m.t, m.t_val])
        model._boosters, _ = model._train_set(X_all, t_all, None, None, best)
        return best

    timing = timed(train)
    mid, lo, hi = model._predict_matrix(m.X_hold)
    err = np.abs(mid - m.t_hold)
    inside = float(np.mean((lo <= m.t_hold) & (m.t_hold <= hi)))
    return timing, float(err[m.hold_meter].mean()), float(err[~m.hold_meter].mean()), inside


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(
        os.environ.get("CIVITAS_DATA_DIR", ROOT.parent / "shared" / "data")))
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--threads", default="1,2", help="num_threads values, comma-separated")
    parser.add_argument("--variants", default="default,fast",
                        help=f"comma-separated, from: {', '.join(VARIANTS)}")
    parser.add_argument("--no-full", action="store_true", help="skip the 3-quantile fit")
    parser.add_argument("--full-variants", default="default,bins63_bag0.5,quick")
    parser.add_argument("--full-threads", default="1")
    args = parser.parse_args()
    threads = [int(x) for x in args.threads.split(",")]
    variants = args.variants.split(",")
    unknown = [v for v in [*variants, *args.full_variants.split(",")] if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")

    started = time.perf_counter()
    m = build_matrix(args.data_dir, args.rows)
    print(f"matrix: {m.X.shape[0]:,} training rows x {m.X.shape[1]} features from {m.series} "
          f"real series ({m.meters} DAIAD meters, I-94, Tetouan zones 1-3)\n"
          f"        {m.real_rows:,} real rows, evenly repeated to {args.rows:,}; validation "
          f"{m.X_val.shape[0]:,}, hold-out {m.X_hold.shape[0]:,}; built in "
          f"{time.perf_counter() - started:.1f} s")
    print(f"machine: {machine()}; LightGBM, objective quantile, n_estimators "
          f"{DEFAULT_PARAMS['n_estimators']}, force_row_wise")
    print(f"\none median booster (ForecastModel._train_set, early stopping; rounds: trained/best)\n"
          f"{'settings':22} {'threads':>7} {'wall s':>7} {'cpu s':>7} {'rounds':>8} "
          f"{'ms/round':>8} {'MAE meters':>10} {'MAE aggr.':>9} {'vs default':>16} "
          f"{'load':>11}")
    reference: dict[int, tuple[float, float]] = {}
    for name in variants:
        for n in threads:
            params = {**VARIANTS[name], "num_threads": n}
            t, mae_m, mae_a = one_booster(m, params)
            if name == "default":
                reference[n] = (mae_m, mae_a)
            ref = reference.get(n)
            change = (f"{(mae_m / ref[0] - 1) * 100:+7.1f}% {(mae_a / ref[1] - 1) * 100:+7.1f}%"
                      if ref else f"{'-':>16}")
            rounds = f"{t.trained}/{t.rounds['q0.5']}"
            print(f"{name:22} {n:7d} {t.wall:7.1f} {t.cpu:7.1f} {rounds:>8} "
                  f"{t.wall / t.trained * 1000:8.1f} {mae_m:10.4f} {mae_a:9.4f} {change} "
                  f"{t.load[0]:5.2f}/{t.load[1]:5.2f}", flush=True)
    if args.no_full:
        return
    print("\nfull 3-quantile training of fit (3 early-stopped + 3 retrained boosters)\n"
          f"{'settings':22} {'threads':>7} {'wall s':>7} {'cpu s':>7} "
          f"{'best q0.1/0.5/0.9':>17} {'MAE meters':>10} {'MAE aggr.':>9} "
          f"{'in 0.1-0.9':>10} {'load':>11}")
    for name in args.full_variants.split(","):
        for n in (int(x) for x in args.full_threads.split(",")):
            t, mae_m, mae_a, inside = full_fit(m, {**VARIANTS[name], "num_threads": n})
            rounds = "/".join(str(t.rounds[k]) for k in ("q0.1", "q0.5", "q0.9"))
            print(f"{name:22} {n:7d} {t.wall:7.1f} {t.cpu:7.1f} {rounds:>17} "
                  f"{mae_m:10.4f} {mae_a:9.4f} {inside:10.3f} "
                  f"{t.load[0]:5.2f}/{t.load[1]:5.2f}", flush=True)
    print("goal: 1M rows x 30 features trained in <= 30 s on 2 cores")


if __name__ == "__main__":
    main()
