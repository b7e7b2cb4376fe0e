"""Traffic congestion per road asset or zone: volume or speed, hourly, weather-aware."""

from __future__ import annotations

from typing import ClassVar

from civitas_ray.ml.features import FeatureSpec
from civitas_ray.ml.models.base import ForecastModel, hourly_spec


class TrafficModel(ForecastModel):
    """Volumes and speeds follow the week and the holidays; rain and snow bend them,
    so weather columns are used whenever a weather stream is supplied."""

    name: ClassVar[str] = "traffic"
    default_spec: ClassVar[FeatureSpec] = hourly_spec(holidays_country="US")
    nonnegative: ClassVar[bool] = True
