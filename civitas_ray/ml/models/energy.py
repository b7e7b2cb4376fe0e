"""Electricity consumption per zone or feeder, hourly, temperature-aware."""

from __future__ import annotations

from typing import ClassVar

import pandas as pd

from civitas_ray.ml.features import FeatureSpec
from civitas_ray.ml.models.base import ForecastModel, hourly_spec


class EnergyModel(ForecastModel):
    """Load repeats day by day more than week by week (the seasonal-naive baseline is
    yesterday) and drifts with temperature and the seasons, hence the normalized level."""

    name: ClassVar[str] = "energy"
    default_spec: ClassVar[FeatureSpec] = hourly_spec(normalize=True)
    season: ClassVar[pd.Timedelta] = pd.Timedelta(days=1)
    nonnegative: ClassVar[bool] = True
