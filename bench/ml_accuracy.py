"""Accuracy of each forecasting model on real city data against the naive baselines.

Rolling-origin hold-out: each model is trained on the data before the hold-out, then
forecasts `horizon` steps from an origin every `horizon` steps to the end of the series,
each forecast from the data before its origin only. MAE, RMSE, sMAPE and interval
coverage of the model, the seasonal-naive and the last-value forecasts on the same steps.

Series (../shared/data, or CIVITAS_DATA_DIR / --data-dir):
  traffic   I-94 traffic_volume, hourly, weather covariates (temp, rain, snow, clouds);
            train 2016-07..2018-06, hold-out 2018-07..2018-09-30, 24 h ahead
  energy    Tetouan zone 1 power, hourly means, temperature covariate; train 2017-01..10,
            hold-out Nov-Dec 2017, 24 h ahead (seasonal naive: the day before)
  water     DAIAD trial A district (sum of 92 meters), hourly; hold-out Jan-Feb 2017
  demand    MTA daily subway ridership, freq 1D; train 2021-06..2023, hold-out 2024-01..10,
            7 days ahead
  incident  I-94 hours whose traffic is below 30 % of the same hour a week earlier
            (0/1 per hour); train 2015-10..2017, hold-out 2018-01..09, 24 h ahead;
            judged on RMSE (root Brier score), no interval coverage

Run: .venv/bin/python -m bench.ml_accuracy   (about a minute on 2 cores)
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import pandas as pd

from civitas_ray.ml import datasets
from civitas_ray.ml.backtest import BacktestResult, rolling_origin
from civitas_ray.ml.models import MODELS

ROOT = Path(__file__).resolve().parents[1]


def run(data_dir: Path) -> list[tuple[str, BacktestResult, float]]:
    i94 = datasets.i94_traffic(data_dir)
    power = datasets.tetouan_power(data_dir)
    weather = list(datasets.I94_WEATHER)
    traffic = i94.loc["2016-07-01":]
    cases: list[tuple[str, pd.Series, str, int, pd.DataFrame | None]] = [
        ("traffic", traffic["traffic_volume"], "2018-07-01", 24, traffic[weather]),
        ("energy", power["power"], "2017-11-01", 24, power[["temperature"]]),
        ("water", datasets.daiad_district(data_dir), "2017-01-01", 24, None),
        ("demand", datasets.mta_subway(data_dir).loc["2021-06-01":], "2024-01-01", 7, None),
        ("incident", datasets.i94_drop_events(data_dir).loc["2015-10-01":], "2018-01-01", 24,
         None),
    ]
    out = []
    for name, target, holdout, horizon, cov in cases:
        started = time.perf_counter()
        result = rolling_origin(MODELS[name], target, holdout, horizon, covariates=cov)
        out.append((name, result, time.perf_counter() - started))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", type=Path, default=Path(
        os.environ.get("CIVITAS_DATA_DIR", ROOT.parent / "shared" / "data")))
    args = parser.parse_args()
    print(f"{'model':9} {'forecast':15} {'n':>6} {'MAE':>12} {'RMSE':>12} {'sMAPE%':>7} "
          f"{'cover':>6}  beats seasonal naive   seconds")
    for name, result, seconds in run(args.data_dir):
        for who, m in result.metrics.items():
            coverage = f"{m['coverage']:.2f}" if "coverage" in m else "-"
            tail = (f"  {result.beats_seasonal_naive!s:5} ({result.selection_metric})"
                    f"          {seconds:5.1f}") if who == "model" else ""
            print(f"{name:9} {who:15} {m['n']:6.0f} {m['mae']:12.4g} {m['rmse']:12.4g} "
                  f"{m['smape']:7.2f} {coverage:>6}{tail}")


if __name__ == "__main__":
    main()
