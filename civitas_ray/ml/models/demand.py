"""Service demand: counts per zone and hour (calls, trips, riders)."""

from __future__ import annotations

from typing import ClassVar

from civitas_ray.ml.features import FeatureSpec
from civitas_ray.ml.models.base import ForecastModel, hourly_spec


class DemandModel(ForecastModel):
    """Counts are never negative (every output is clipped at 0) and grow or shrink with
    the city, so the model learns counts relative to their trailing weekly mean."""

    name: ClassVar[str] = "demand"
    default_spec: ClassVar[FeatureSpec] = hourly_spec(holidays_country="US", normalize=True)
    nonnegative: ClassVar[bool] = True
